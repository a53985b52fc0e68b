"""CTRLogger: the CTR@k table and bar chart at every validation and test end, and Figure 2's x-axis."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L

from callbacks.wandb_utils import find_wandb_logger
from datamodules.eval_sample import ctr_half_width


def format_ctr_table(
    metrics: dict[str, float], stage: str, ks: list[int], sample: tuple[int, int] | None = None
) -> str:
    """A plain-text table of the model's and the popularity reference's CTR@k; with `sample` (evaluated
    events, events in the split) a last line gives the sample size and the 95% interval of each CTR@k."""
    header = f"{stage:<12}" + "".join(f"{'k=' + str(k):>9}" for k in ks)
    model = f"{'model':<12}" + "".join(f"{metrics.get(f'{stage}/ctr@{k}', float('nan')):>9.4f}" for k in ks)
    pop = f"{'popularity':<12}" + "".join(f"{metrics.get(f'{stage}/pop_ctr@{k}', float('nan')):>9.4f}" for k in ks)
    random = f"{'random':<12}" + "".join(f"{1 / (k + 1):>9.4f}" for k in ks)
    extra = "  ".join(
        f"{name}={metrics[f'{stage}/{name}']:.4f}"
        for name in ("auc", "ndcg@10", "mrr", "hr@10_full", "ndcg@10_full")
        if f"{stage}/{name}" in metrics
    )
    lines = [header, model, pop, random, extra]
    if sample is not None:
        evaluated, population = sample
        widths = "".join(
            f"{ctr_half_width(metrics.get(f'{stage}/ctr@{k}', float('nan')), evaluated, population):>9.4f}" for k in ks
        )
        what = "all events: exact" if evaluated >= population else "a seeded sample (eval_max_events)"
        lines.append(f"{'95% CI ±':<12}{widths}  ({evaluated} of {population} events, {what})")
    return "\n".join(lines)


def _sample(trainer: L.Trainer, stage: str) -> tuple[int, int] | None:
    """(events evaluated, events in the split) of the data module's `stage` split, when it has tensors."""
    tensors = getattr(getattr(trainer, "datamodule", None), "_tensors", None)
    split = getattr(tensors, stage, None)
    return (len(split), split.split_size) if split is not None and hasattr(split, "split_size") else None


class CTRLogger(L.Callback):
    """Prints the CTR@k table and logs it to W&B (a table and a bar chart) on rank 0.

    Without a W&B logger the media are skipped quietly; the printed table stays.
    """

    def __init__(self, print_table: bool = True) -> None:
        """Settings (each a config key).

        Args:
            print_table: print the CTR@k table to stdout at every validation and test end.
        """
        self.print_table = print_table

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Makes `train/episodes` the x-axis of the training CTR curve in W&B, and `trainer/global_step` that of
        every validation metric (a metric defined by name loses the logger's `*` default, so `val/ctr@k`,
        whose summary is its max, names its step metric again); defines the simulated time `val/sim_time`
        (in every validation's row: the x-axis of CTR@k against simulated seconds) and `federated/sim_time`."""
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is not None and trainer.is_global_zero:
            run = wandb_logger.experiment
            run.define_metric("train/episodes")
            run.define_metric("train/ctr", step_metric="train/episodes")
            run.define_metric("val/*", step_metric="trainer/global_step")
            for k in getattr(pl_module, "eval_ks", []):
                run.define_metric(f"val/ctr@{k}", step_metric="trainer/global_step", summary="max")
            # the federated methods' simulated seconds: logged in the row of every val/ctr@k, so a chart can take
            # `val/sim_time` as its x-axis (CTR@10 against simulated time); `federated/sim_time` with every server step
            run.define_metric("val/sim_time", step_metric="trainer/global_step", summary="max")
            run.define_metric("federated/sim_time", step_metric="trainer/global_step", summary="max")

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics: dict[str, Any] = getattr(pl_module, "last_metrics", {})
        ks = list(getattr(pl_module, "eval_ks", []))
        if not ks or f"{stage}/ctr@{ks[0]}" not in metrics:
            return
        if self.print_table:
            trained = getattr(pl_module, "trained_steps", None)  # a tested checkpoint's step (RecModule)
            step = trainer.global_step if stage == "val" or trained is None else trained
            table = format_ctr_table(metrics, stage, ks, _sample(trainer, stage))
            print(f"\n[{stage} @ step {step}]\n" + table, file=sys.stdout, flush=True)
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is None:
            return
        import wandb

        rows = [[k, metrics[f"{stage}/ctr@{k}"], metrics.get(f"{stage}/pop_ctr@{k}"), 1 / (k + 1)] for k in ks]
        table = wandb.Table(columns=["k", "ctr", "pop_ctr", "random"], data=rows)
        wandb_logger.experiment.log(
            {
                f"{stage}/ctr_table": table,
                f"{stage}/ctr_bar": wandb.plot.bar(table, "k", "ctr", title=f"{stage} CTR@k"),
            },
            commit=False,
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reports the validation CTR@k."""
        self._report(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reports the test CTR@k."""
        self._report(trainer, pl_module, "test")
