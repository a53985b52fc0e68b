"""TargetNetworkUpdate: hard copies on schedule, soft Polyak blends, state in checkpoints, a real fit."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from callbacks.target_update import TargetNetworkUpdate, update_target


class _Pairs(torch.nn.Module):
    """A module with one online/target pair (a linear layer and a BatchNorm buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        self.target = copy.deepcopy(self.online).requires_grad_(False)

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.online, self.target)]

    def shift_online(self, value: float) -> None:
        with torch.no_grad():
            for p in self.online.parameters():
                p.fill_(value)
            self.online[1].running_mean.fill_(value)
            self.online[1].num_batches_tracked.fill_(7)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in [*module.parameters(), *module.buffers()]])


def _end_batch(callback: TargetNetworkUpdate, module: _Pairs, step: int) -> None:
    callback.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, 0)  # type: ignore[arg-type]


def test_hard_update_copies_every_n_steps():
    module, callback = _Pairs(), TargetNetworkUpdate(mode="hard", every_n_steps=3)
    module.shift_online(1.0)
    for step in (1, 2):
        _end_batch(callback, module, step)
        assert not torch.equal(_flat(module.target), _flat(module.online))
    _end_batch(callback, module, 3)
    assert torch.equal(_flat(module.target), _flat(module.online))
    assert (callback.last_step, callback.updates) == (3, 1)
    module.shift_online(2.0)
    _end_batch(callback, module, 5)
    assert module.target[0].weight.flatten().tolist() == [1.0] * 4
    _end_batch(callback, module, 6)
    assert module.target[0].weight.flatten().tolist() == [2.0] * 4


def test_soft_update_blends_floats_and_copies_integer_buffers():
    module, callback = _Pairs(), TargetNetworkUpdate(mode="soft", every_n_steps=1, tau=0.25)
    module.shift_online(0.0)
    with torch.no_grad():
        module.target[0].weight.fill_(4.0)
    _end_batch(callback, module, 1)
    assert module.target[0].weight.flatten().tolist() == [3.0] * 4  # 0.75 * 4 + 0.25 * 0
    assert int(module.target[1].num_batches_tracked) == 7


def test_update_target_with_tau_one_is_a_copy():
    module = _Pairs()
    module.shift_online(0.5)
    update_target(module.online, module.target, 1.0)
    assert torch.equal(_flat(module.online), _flat(module.target))


def test_state_round_trip_and_argument_checks():
    callback = TargetNetworkUpdate(mode="hard", every_n_steps=4)
    callback.last_step, callback.updates = 8, 2
    restored = TargetNetworkUpdate(mode="hard", every_n_steps=4)
    restored.load_state_dict(callback.state_dict())
    assert (restored.last_step, restored.updates) == (8, 2)
    assert TargetNetworkUpdate(mode="soft").state_key != TargetNetworkUpdate(mode="hard").state_key
    with pytest.raises(ValueError, match="mode"):
        TargetNetworkUpdate(mode="polyak")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tau"):
        TargetNetworkUpdate(mode="soft", tau=0.0)


class _Learner(L.LightningModule):
    """Regression with a target copy, to run the callback inside a real Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.online = torch.nn.Linear(2, 1)
        self.target = copy.deepcopy(self.online).requires_grad_(False)

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.online, self.target)]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.online(batch) - 1).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.online.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(10, 2), batch_size=1)


def test_inside_a_trainer_the_target_tracks_the_online_network(tmp_path):
    callback = TargetNetworkUpdate(mode="hard", every_n_steps=4)
    module = _Learner()
    trainer = L.Trainer(
        max_steps=10, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert (callback.last_step, callback.updates) == (8, 2)
    assert not torch.equal(module.online.weight, module.target.weight)  # two steps since the last copy
    with pytest.raises(TypeError, match="target_pairs"):
        L.Trainer(max_steps=1, callbacks=[TargetNetworkUpdate()], logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, default_root_dir=tmp_path).fit(_NoPairs())


class _NoPairs(_Learner):
    target_pairs = None  # type: ignore[assignment]
