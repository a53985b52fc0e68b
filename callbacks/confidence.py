"""ConfidenceCallback: DRL-Rec's confidence formula for distillation, its running statistics and its logs."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from callbacks.wandb_utils import find_wandb_logger
from lit_rec.functional.distill import batch_max_confidence, exp_confidence, running_mean_update


class ConfidenceCallback(L.Callback):
    """Gives a distillation module its per-instance confidence `c(delta)` of the teacher's squared TD errors.

    `batch_max` is the official code's `1 - delta / max delta` over the batch; `exp` is the
    batch-independent `exp(-delta / sigma^2)` with sigma^2 a running mean of delta (averaged across
    ranks, so every rank weights alike). Both are clamped to `[min_confidence, 1]`. The module
    calls `pl_module.confidence_fn(delta)` (attached at setup) and leaves the values of its last
    step in `pl_module.last_confidence`; this callback logs `distill/confidence_mean` every step
    and, on rank 0 with a W&B logger, a histogram every `histogram_every_n_steps` steps.
    """

    def __init__(
        self,
        formula: Literal["batch_max", "exp"] = "batch_max",
        min_confidence: float = 0.0,
        momentum: float = 0.99,
        histogram_every_n_steps: int = 100,
    ) -> None:
        """Args:
        formula: `batch_max` (official DRL-Rec code) or `exp` (exp(-delta / running sigma^2)).
        min_confidence: lower clamp of every confidence (1 is the upper clamp).
        momentum: weight of the past in the running sigma^2 of `exp`.
        histogram_every_n_steps: optimizer steps between two W&B histograms of the confidences.
        """
        if formula not in ("batch_max", "exp"):
            raise ValueError(f"ConfidenceCallback formula must be 'batch_max' or 'exp', got {formula!r}")
        if not 0.0 <= min_confidence <= 1.0 or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"ConfidenceCallback needs 0 <= min_confidence <= 1 and 0 <= momentum < 1, got {min_confidence}, {momentum}"
            )
        self.formula = formula
        self.min_confidence = min_confidence
        self.momentum = momentum
        self.histogram_every_n_steps = histogram_every_n_steps
        self.sigma2 = torch.zeros(())  # running mean of delta (`exp` only)
        self.count = 0  # batches folded into sigma2
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Attaches `confidence_fn` to the module."""
        self._trainer = trainer
        pl_module.confidence_fn = self.confidence

    def confidence(self, td_error: Tensor) -> Tensor:
        """Confidences `(B,)` in `[min_confidence, 1]` of squared TD errors `(B,)` (updates sigma^2 under `exp`)."""
        delta = td_error.detach()
        if self.formula == "batch_max":
            return batch_max_confidence(delta, self.min_confidence)
        batch_mean = delta.mean()
        if self._trainer is not None and self._trainer.world_size > 1:
            batch_mean = self._trainer.strategy.reduce(batch_mean, reduce_op="mean")
        self.sigma2 = running_mean_update(self.sigma2.to(delta.device), batch_mean, self.momentum, self.count)
        self.count += 1
        return exp_confidence(delta, self.sigma2, self.min_confidence)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs `distill/confidence_mean` (and `distill/sigma2` under `exp`); a W&B histogram on rank 0."""
        confidence: Tensor | None = getattr(pl_module, "last_confidence", None)
        if confidence is None or confidence.numel() == 0:
            return
        pl_module.log("distill/confidence_mean", confidence.float().mean(), on_step=True, on_epoch=False)
        if self.formula == "exp":
            pl_module.log("distill/sigma2", self.sigma2.float(), on_step=True, on_epoch=False)
        if not trainer.is_global_zero or self.histogram_every_n_steps <= 0 or trainer.global_step % self.histogram_every_n_steps:
            return
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is None:
            return
        import wandb

        histogram = wandb.Histogram(confidence.detach().float().cpu().numpy())
        wandb_logger.experiment.log({"distill/confidence_hist": histogram, "trainer/global_step": trainer.global_step}, commit=False)

    def state_dict(self) -> dict[str, Any]:
        """The running sigma^2 and the number of batches behind it."""
        return {"sigma2": self.sigma2.detach().cpu().clone(), "count": self.count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.sigma2, self.count = state_dict["sigma2"].clone(), state_dict["count"]
