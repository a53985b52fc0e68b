"""ConfidenceLogger: logs the DRL-Rec student's distillation confidences; the formula is the module's."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from callbacks.wandb_utils import find_wandb_logger


class ConfidenceLogger(L.Callback):
    """Logs `distill/confidence_mean` every step (and `distill/sigma2` under the `exp` formula), and on rank 0
    with a W&B logger a histogram of the confidences every `histogram_every_n_steps` steps.

    It reads the module's `last_confidence` (the last training step's confidences, `DRLRecStudent`) and, under
    `confidence_formula == "exp"`, its running `confidence_sigma2`; a module without them is skipped quietly.
    The confidence formula and its running state belong to the module, which weights alike with no callback.
    """

    def __init__(self, histogram_every_n_steps: int = 100) -> None:
        """Settings (each a config key).

        Args:
            histogram_every_n_steps: optimizer steps between two W&B histograms of the confidences (0: none).
        """
        self.histogram_every_n_steps = histogram_every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs `distill/confidence_mean` (and `distill/sigma2` under `exp`); a W&B histogram on rank 0."""
        confidence: Tensor | None = getattr(pl_module, "last_confidence", None)
        if confidence is None or confidence.numel() == 0:
            return
        pl_module.log("distill/confidence_mean", confidence.float().mean(), on_step=True, on_epoch=False)
        if getattr(pl_module, "confidence_formula", None) == "exp":
            pl_module.log("distill/sigma2", pl_module.confidence_sigma2.float(), on_step=True, on_epoch=False)
        if not trainer.is_global_zero or self.histogram_every_n_steps <= 0 or trainer.global_step % self.histogram_every_n_steps:
            return
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is None:
            return
        import wandb

        histogram = wandb.Histogram(confidence.detach().float().cpu().numpy())
        wandb_logger.experiment.log({"distill/confidence_hist": histogram, "trainer/global_step": trainer.global_step}, commit=False)
