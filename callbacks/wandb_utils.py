"""Finding the W&B logger of a trainer, if any."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def find_wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's WandbLogger, or None when it has none."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None
