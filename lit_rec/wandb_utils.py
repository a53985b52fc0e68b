"""W&B helpers shared by lit_rec and the callbacks: a trainer's WandbLogger, ending the process's run."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.loggers import WandbLogger


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
