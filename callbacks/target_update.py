"""TargetNetworkUpdate: hard or soft (Polyak) updates of a module's target networks on a step schedule."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch


@torch.no_grad()
def update_target(online: torch.nn.Module, target: torch.nn.Module, tau: float) -> None:
    """`target <- (1 - tau) * target + tau * online` for parameters and float buffers (tau = 1: copy)."""
    pairs = [*zip(target.parameters(), online.parameters(), strict=True), *zip(target.buffers(), online.buffers(), strict=True)]
    for t, o in pairs:
        if tau < 1 and t.is_floating_point():
            t.lerp_(o, tau)
        else:
            t.copy_(o)


class TargetNetworkUpdate(L.Callback):
    """Every `every_n_steps` optimizer steps, copies (hard) or blends (soft, `tau`) online into target networks.

    The module exposes its pairs through `target_pairs() -> list[tuple[online, target]]`.
    The step of the last update is in `state_dict`, so a resumed run updates on the same steps.
    """

    def __init__(self, mode: Literal["hard", "soft"] = "hard", every_n_steps: int = 100, tau: float = 0.005) -> None:
        """Args:
        mode: `hard` copies the online weights; `soft` blends them with weight `tau`.
        every_n_steps: optimizer steps (`trainer.global_step`) between two updates.
        tau: blend weight of the soft update (ignored by `hard`).
        """
        if mode not in ("hard", "soft"):
            raise ValueError(f"TargetNetworkUpdate mode must be 'hard' or 'soft', got {mode!r}")
        if every_n_steps < 1 or not 0 < tau <= 1:
            raise ValueError(f"TargetNetworkUpdate needs every_n_steps >= 1 and 0 < tau <= 1, got {every_n_steps}, {tau}")
        self.mode = mode
        self.every_n_steps = every_n_steps
        self.tau = tau
        self.last_step = 0
        self.updates = 0

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(mode=self.mode, every_n_steps=self.every_n_steps, tau=self.tau)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checks that the module declares its target networks."""
        if not callable(getattr(pl_module, "target_pairs", None)):
            raise TypeError(f"TargetNetworkUpdate: {type(pl_module).__name__} has no target_pairs() method")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Updates the targets once `every_n_steps` optimizer steps have passed since the last update."""
        if trainer.global_step - self.last_step < self.every_n_steps:
            return
        tau = 1.0 if self.mode == "hard" else self.tau
        for online, target in pl_module.target_pairs():
            update_target(online, target, tau)
        self.last_step = trainer.global_step
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The step of the last update and the number of updates."""
        return {"last_step": self.last_step, "updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.last_step, self.updates = state_dict["last_step"], state_dict["updates"]
