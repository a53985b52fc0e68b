"""A reproduction's W&B runs: one per training run, all in one group, plus a `report` run with the tables
and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_rec.reproduce.curves import best_validation
from lit_rec.reproduce.methods import KS, Method
from lit_rec.reproduce.report import EXTRA_COLUMNS
from lit_rec.wandb_utils import find_wandb_logger

if TYPE_CHECKING:
    from lit_rec.reproduce.fit import RunResult, Settings

TABLE1_COLUMNS = ["method", *(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS, "best_epoch", "train_s"]
DISTILL_COLUMNS = ["role", "params", "latency_ms", "auc", *(f"ctr@{k}" for k in KS)]


def logger_spec(settings: Settings, method: Method, seed: int, run_name: str) -> dict[str, Any] | bool:
    """The run config's logger: one W&B run per training run, in this reproduction's group (none: False)."""
    if settings.wandb == "none":
        return False
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {
            "save_dir": str(settings.out / "runs" / run_name),
            "project": settings.project,
            "name": run_name,
            "group": settings.group,
            "job_type": method.slug,
            "tags": [settings.budget, settings.dataset, f"seed{seed}"],
            "mode": settings.wandb,
        },
    }


def annotate_run(trainer: Any, settings: Settings, method: Method, seed: int, result: RunResult) -> None:
    """Adds the reproduction's context to the run config and the best validation CTR@k to the summary."""
    logger = find_wandb_logger(trainer)
    if logger is None or not trainer.is_global_zero:
        return
    run = logger.experiment
    run.config.update({"reproduce": {"method": method.name, "config": method.config, "budget": settings.budget,
                                     "seed": seed, "group": settings.group}}, allow_val_change=True)
    best = best_validation(result.val_curve)
    run.summary.update({f"best/val_ctr@{k}": v for k, v in best.items()})
    run.summary.update({"best/epoch": result.best_epoch, "train_s": result.train_s, "epochs": result.epochs,
                        "stopped_by": result.stopped_by})


def ctr_by_method(rows: list[dict[str, Any]]) -> tuple[list[int], list[list[float]], list[str]]:
    """Table 1's test CTR@k as line series: the ks, one list of CTRs per method with every k, the methods' names."""
    complete = [r for r in rows if all(isinstance(r.get(f"ctr@{k}"), (int, float)) for k in KS)]
    return list(KS), [[float(r[f"ctr@{k}"]) for k in KS] for r in complete], [str(r["method"]) for r in complete]


def report_run(settings: Settings, meta: dict[str, Any], rows: list[dict[str, Any]], figure: Path,
               distill: dict[str, Any] | None, sim_time_figure: Path | None = None) -> None:
    """One more run in the group (`job_type` report) holding Table 1 (and its CTR@k as a W&B line chart, one line per
    method), Figure 2, its companion against simulated time and the distillation table."""
    if settings.wandb in ("none", "disabled"):
        return
    import wandb

    folder = settings.out / "runs" / "report"
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=settings.project, group=settings.group, name="report", job_type="report",
                     dir=str(folder), mode=settings.wandb, tags=[settings.budget, settings.dataset],
                     config={"reproduce": meta})
    ks, ctrs, methods = ctr_by_method(rows)
    run.log({
        "ctr_by_method": wandb.plot.line_series(xs=ks, ys=ctrs, keys=methods, title="Test CTR@k by method", xname="k"),
        "table1": wandb.Table(columns=TABLE1_COLUMNS, data=[[r["method"], *(r.get(c) for c in TABLE1_COLUMNS[1:])]
                                                             for r in rows]),
        "fig2_ctr": wandb.Image(str(figure)),
        **({"fig2_sim_time": wandb.Image(str(sim_time_figure))} if sim_time_figure is not None else {}),
    })
    if distill is not None:
        run.log({"distill": wandb.Table(columns=DISTILL_COLUMNS, data=[[role, *(e[c] for c in DISTILL_COLUMNS[1:])]
                                                                        for role, e in distill["roles"].items()])})
        run.summary.update({k: distill[k] for k in ("param_ratio", "latency_ratio", "student_minus_teacher_auc")})
    run.finish()
