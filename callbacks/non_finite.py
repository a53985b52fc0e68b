"""NonFiniteGuard: a NaN or inf gradient never reaches the weights silently."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class NonFiniteGuard(L.Callback):
    """Checks every gradient before each optimizer step.

    `policy="raise"` stops training with an error naming the step; `policy="skip"` drops the
    step's gradients (optimizers leave parameters without a gradient untouched, Adam's moments
    included) and counts it as `train/nonfinite_skipped`. A NaN loss shows up here too, as NaN
    gradients. Works for manual optimisation and for gradients written by hand into `p.grad`.
    """

    def __init__(self, policy: str = "raise") -> None:
        """Settings (each a config key).

        Args:
            policy: `raise` (stop with an error) or `skip` (drop the step and count it).
        """
        if policy not in ("raise", "skip"):
            raise ValueError(f"policy must be 'raise' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Raises or drops the gradients when any of them is not finite."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused max-abs over every gradient (a single sync) is NaN or inf exactly when some
        # gradient value is; checking each tensor apart cost a sync per parameter on every step.
        if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf")))):
            return
        bad = sum(int((~torch.isfinite(g)).sum()) for g in grads)
        if self.policy == "raise":
            raise FloatingPointError(
                f"non-finite gradient at global step {trainer.global_step} (epoch {trainer.current_epoch}): "
                f"{bad} NaN/inf values; set NonFiniteGuard(policy='skip') to drop such steps instead"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        """The number of skipped steps."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the count."""
        self.skipped = int(state_dict["skipped"])
