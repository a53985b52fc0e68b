"""NonFiniteGuard: a NaN gradient stops training naming the step, or is skipped and counted."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from callbacks.non_finite import NonFiniteGuard


class PoisonedModule(L.LightningModule):
    """A one-weight regression whose loss becomes NaN at `poison_step`."""

    def __init__(self, poison_step: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.poison_step = poison_step
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        loss = (self.weight * batch[0]).pow(2).mean()
        if self.global_step == self.poison_step:
            loss = loss * torch.tensor(float("nan"))
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def fit(module: L.LightningModule, guard: NonFiniteGuard, steps: int = 5) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=8)
    trainer.fit(module, data)
    return trainer


def test_raise_names_the_step() -> None:
    with pytest.raises(FloatingPointError, match="global step 2"):
        fit(PoisonedModule(poison_step=2), NonFiniteGuard("raise"))


def test_skip_keeps_weights_finite_and_counts() -> None:
    module = PoisonedModule(poison_step=2)
    guard = NonFiniteGuard("skip")
    trainer = fit(module, guard)
    assert torch.isfinite(module.weight).all()
    assert guard.skipped == 1
    assert trainer.global_step == 5  # the skipped step still counts in Lightning's progress


def test_skipped_step_leaves_weights_unchanged() -> None:
    poisoned, clean = PoisonedModule(poison_step=0), PoisonedModule(poison_step=-1)
    fit(poisoned, NonFiniteGuard("skip"), steps=1)
    fit(clean, NonFiniteGuard("skip"), steps=1)
    assert torch.equal(poisoned.weight, torch.ones(1))
    assert not torch.equal(clean.weight, torch.ones(1))
