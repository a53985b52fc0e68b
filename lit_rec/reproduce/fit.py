"""One training run of a reproduction: the method's config with the common budget, fit, then the test of
its best-validation checkpoint."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lit_rec.config_files import shipped_config
from lit_rec.reproduce.curves import CurveRecorder, best_epoch
from lit_rec.reproduce.methods import MIN_EPOCHS, MONITOR, PATIENCE, ROOT, Method
from lit_rec.reproduce.wandb_runs import annotate_run, logger_spec
from lit_rec.wandb_utils import finish_wandb_run


@dataclass(frozen=True)
class Settings:
    """What every run of one reproduction shares: output folder, budget, data, W&B mode and group."""

    out: Path
    budget: str
    dataset: str  # a short name of the data, for tags and titles
    data_spec: dict[str, Any]  # the `--data` file's keys
    passthrough: tuple[str, ...]  # arguments for every run's CLI, after its config
    wandb: str  # offline, online, disabled, or none (no logger)
    project: str
    group: str

    @property
    def start_from_epoch(self) -> int:
        """The first epoch whose validation early stopping counts (the smoke budget's two epochs: 0)."""
        return 0 if self.budget == "smoke" else MIN_EPOCHS

    def run_name(self, method: Method, seed: int) -> str:
        """`<slug>-seed<N>`: the name of the run's config, log, checkpoint folder and W&B run."""
        return f"{method.slug}-seed{seed}"

    def checkpoint_dir(self, method: Method, seed: int) -> Path:
        """Where a run's best checkpoint (`best.ckpt`) goes."""
        return self.out / "checkpoints" / self.run_name(method, seed)

    def log_file(self, method: Method, seed: int) -> Path:
        """Where a run's stdout and stderr go."""
        return self.out / "logs" / f"{self.run_name(method, seed)}.log"


@dataclass
class RunResult:
    """What one training run left behind."""

    method: str
    seed: int
    metrics: dict[str, float]
    curve: list[tuple[int, float, float]]
    val_curve: list[dict[str, float]]
    train_negatives: int | None
    wall_s: float
    cpu_s: float = 0.0
    train_s: float = 0.0  # wall seconds of `trainer.fit` (validations included)
    best_epoch: int | None = None  # 0-based epoch of the best val/ctr@10 (the checkpoint tested); None: no validation
    epochs: int = 0  # epochs run (the last one possibly cut short by the time cap)
    stopped_by: str = ""  # early_stopping, max_time, max_epochs, max_steps or other
    checkpoint: str | None = None  # the tested best checkpoint (DRL-Rec: the student's teacher)
    module: Any = None  # kept only for the DRL-Rec latency measurement
    test_sample: tuple[int, int] | None = None  # (test events evaluated, test events in the split)


def test_sample(datamodule: Any) -> tuple[int, int] | None:
    """(events evaluated, events in the split) of the data module's test split; None when it has no tensors."""
    split = getattr(getattr(datamodule, "_tensors", None), "test", None)
    return (len(split), split.split_size) if split is not None and hasattr(split, "split_size") else None


def run_spec(settings: Settings, method: Method, seed: int) -> dict[str, Any]:
    """The method's config (configs/callbacks/default.yaml's callbacks and its own) with this reproduction's
    seed, budget, logger and callbacks."""
    from lit_rec.cli import method_config

    path = Path(method.config)  # configs/<x> is a shipped config, found in an installed wheel too
    spec = method_config(shipped_config(path.relative_to("configs")) if path.parts[:1] == ("configs",) else ROOT / path)
    spec["seed_everything"] = seed
    init = spec["model"].setdefault("init_args", {})
    if "seed" in init:
        init["seed"] = seed
    # the data file first, the method's own data keys (e.g. DADRL's batch size) over it; an agent that
    # takes one step of `num_envs` environments per batch gets batches of `num_envs` events, so that an
    # epoch is one pass over the train split for it too
    data = {**settings.data_spec, **(spec.get("data") or {})}
    if "num_envs" in init and "batch_size" not in (spec.get("data") or {}):
        data["batch_size"] = int(init["num_envs"])
    if data:
        spec["data"] = data
    trainer = spec.setdefault("trainer", {})
    run_name = settings.run_name(method, seed)
    # the config's checkpoints and early stopping give way to the same ones for every method: the best
    # val/ctr@10 kept (no periodic files), and a stop after PATIENCE validations without improvement (by the
    # config's own early-stopping class, WarmupEarlyStopping of configs/callbacks/default.yaml)
    stopping = (spec.get("early_stopping") or {}).get("class_path")
    if not stopping:
        raise ValueError(f"{method.config}: no early_stopping class_path; reproduce stops every method early with "
                         "the config's own (configs/callbacks/default.yaml)")
    spec["early_stopping"] = {
        "class_path": stopping,
        "init_args": {"monitor": MONITOR, "mode": "max", "patience": PATIENCE, "check_on_train_epoch_end": False,
                      "start_from_epoch": settings.start_from_epoch}}
    callbacks = [c for c in trainer.get("callbacks") or [] if not str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    callbacks += [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(settings.checkpoint_dir(method, seed)), "filename": "best", "monitor": MONITOR,
                       "mode": "max", "save_top_k": 1}},
        {"class_path": f"{CurveRecorder.__module__}.CurveRecorder"},
    ]
    trainer.update(
        callbacks=callbacks,
        logger=logger_spec(settings, method, seed, run_name),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(settings.out / "runs" / run_name),
        **method.budgets[settings.budget],
        **method.trainer,
    )
    return spec


def fit_and_test(settings: Settings, method: Method, seed: int, extra: list[str]) -> RunResult:
    """Fits one method for one seed (in this process, through `lit_rec.cli.make_cli`), then tests its
    best-validation checkpoint. The module is kept in the result (`module`) for DRL-Rec's teacher and student."""
    from lit_rec.cli import make_cli

    run_name = settings.run_name(method, seed)
    config = settings.out / "configs" / f"{run_name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(run_spec(settings, method, seed), sort_keys=False))
    shutil.rmtree(settings.checkpoint_dir(method, seed), ignore_errors=True)  # an earlier reproduction's best
    args = ["--config", str(config), *settings.passthrough, *method.args, *extra]
    settings.log_file(method, seed).parent.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    with open(settings.log_file(method, seed), "w") as output, \
            contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        print("args: fit", " ".join(args), flush=True)
        try:
            cli = make_cli(args, run=False)  # `fit` below, so that its time is the training time
            trainer = cli.trainer
            fit_started = time.perf_counter()
            trainer.fit(cli.model, datamodule=cli.datamodule)
            train_s = time.perf_counter() - fit_started
            # read before `test`: testing a checkpoint restores the callbacks' states saved in it
            recorder = next(c for c in trainer.callbacks if isinstance(c, CurveRecorder))
            curve, val_curve = list(recorder.points), list(recorder.val_points)
            epochs, stop = trainer.current_epoch, stopped_by(trainer)
            best = best_checkpoint(trainer)
            if not best and method.role == "teacher":  # no validation ran: the student distils the last state
                settings.checkpoint_dir(method, seed).mkdir(parents=True, exist_ok=True)
                best = str(settings.checkpoint_dir(method, seed) / "last.ckpt")
                trainer.save_checkpoint(best)
            # the best checkpoint's weights are loaded into cli.model (its final state when there is none)
            trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
            metrics = {k: v for k, v in getattr(cli.model, "last_metrics", {}).items() if k.startswith("test/")}
            result = RunResult(method.name, seed, metrics, curve, val_curve, cli.model.train_negatives,
                               0.0, train_s=train_s, best_epoch=best_epoch(val_curve) if best else None,
                               epochs=epochs, stopped_by=stop, checkpoint=best or None,
                               module=cli.model if method.role in ("teacher", "student") else None)
            result.test_sample = test_sample(cli.datamodule)
            annotate_run(trainer, settings, method, seed, result)
        finally:
            finish_wandb_run()
    result.wall_s = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu_started
    return result


def best_checkpoint(trainer: Any) -> str:
    """The file of the trainer's ModelCheckpoint on `MONITOR` ("" when no validation ran)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor == MONITOR]
    return monitored[0].best_model_path if monitored else ""


def stopped_by(trainer: Any) -> str:
    """What ended the fit: `early_stopping` (no better `MONITOR` for PATIENCE validations), `max_time`,
    `max_epochs`, `max_steps`, or `other` (an interruption, say)."""
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and (callback.stopped_epoch > 0 or callback.stopping_reason_message):
            return "early_stopping"
        if isinstance(callback, Timer) and callback.time_remaining("train") is not None \
                and callback.time_remaining("train") <= 0:
            return "max_time"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    return "other"
