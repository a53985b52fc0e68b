"""W&B helpers shared by lit_rec and the callbacks: a trainer's WandbLogger, its run's reference, ending the process's run."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.loggers import WandbLogger

CHECKPOINT_KEY = "wandb_run"  # where a checkpoint keeps the reference of the W&B run that trained it


def find_wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's WandbLogger, or None when it has none."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def finish_wandb_run() -> None:
    """Ends the process's current W&B run, so the next WandbLogger starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def run_reference(trainer: L.Trainer) -> dict[str, str] | None:
    """`{"id", "name", "group", "project"}` of the trainer's W&B run, or None without a started WandbLogger run."""
    logger = find_wandb_logger(trainer)
    if logger is None or getattr(logger, "_experiment", None) is None:
        return None
    run = logger.experiment
    reference = {key: getattr(run, key, None) for key in ("id", "name", "group", "project")}
    return {key: str(value) for key, value in reference.items() if value}
