"""StatisticsModule: the base of methods learned from sufficient statistics rather than gradients."""

from __future__ import annotations

from typing import Any

import torch

from lit_rec.modules.base import RecModule


class StatisticsModule(RecModule):
    """A method learned from sufficient statistics (no gradients), such as LinUCB or Popularity.

    Lightning advances `global_step` (and with it `max_steps`, step-based validation and
    checkpoints) only through an optimizer's `step()`, so these methods step an optimizer over
    one empty parameter after each statistics update.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self._step_anchor = torch.nn.Parameter(torch.zeros(0))  # DDP refuses modules without a trainable parameter

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """An optimizer that changes nothing; stepping it advances `global_step`."""
        return torch.optim.SGD([self._step_anchor], lr=0.0)

    def advance_step(self) -> None:
        """Counts one training step in Lightning's progress."""
        self.optimizers().step()
