"""StalenessCallback: per-step staleness statistics, run counters in its state, W&B histogram only with a W&B logger."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from callbacks.staleness import StalenessCallback
from lit_rec.federated import FederatedStats


class _Module:
    """Stands in for a LightningModule: exposes `federated_stats` and records `log` calls."""

    def __init__(self, stats: FederatedStats | None) -> None:
        self.federated_stats = stats
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = value


def _stats(staleness: list[int], dropped: int, reporting: int) -> FederatedStats:
    s = torch.tensor(staleness)
    return FederatedStats(staleness=s, weights=(1.0 + s.float()).pow(-0.5), reporting=reporting, dropped=dropped,
                          updates=len(staleness), lr_scale=1.0)


def _trainer(step: int, loggers: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, loggers=loggers or [], is_global_zero=True)


def test_logs_the_step_statistics_and_run_counters():
    callback = StalenessCallback(histogram_every_n_steps=100, histogram_bins=8)
    module = _Module(_stats([0, 3, 8], dropped=1, reporting=4))
    callback.on_train_batch_end(_trainer(1), module, None, None, 0)
    assert module.logged["staleness/mean"] == pytest.approx(11 / 3)
    assert module.logged["staleness/max"] == 8.0
    assert module.logged["staleness/weight_mean"] == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    assert module.logged["staleness/dropped_frac"] == pytest.approx(0.25)
    assert module.logged["federated/updates"] == 3 and module.logged["federated/clients"] == 4
    module.federated_stats = _stats([1], dropped=3, reporting=4)
    callback.on_train_batch_end(_trainer(2), module, None, None, 1)
    assert module.logged["federated/updates"] == 4  # cumulative
    assert module.logged["staleness/dropped_frac"] == pytest.approx(4 / 8)
    assert callback.counts.tolist() == [1, 1, 0, 1, 0, 0, 0, 1]  # Δ = 8 falls in the last bin


def test_state_round_trip_continues_the_counters():
    callback = StalenessCallback(histogram_bins=4)
    callback.on_train_batch_end(_trainer(1), _Module(_stats([2], 0, 1)), None, None, 0)
    other = StalenessCallback(histogram_bins=4)
    other.load_state_dict(callback.state_dict())
    assert (other.updates, other.reported, other.dropped) == (1, 1, 0) and other.counts.tolist() == [0, 0, 1, 0]


def test_modules_without_federated_statistics_are_skipped():
    module = _Module(None)
    StalenessCallback().on_train_batch_end(_trainer(1), module, None, None, 0)
    assert module.logged == {}


def test_histogram_is_skipped_quietly_without_wandb_and_drawn_with_it(tmp_path, monkeypatch):
    callback = StalenessCallback(histogram_every_n_steps=2, histogram_bins=4)
    module = _Module(_stats([0, 1], 0, 2))
    callback.on_train_batch_end(_trainer(2), module, None, None, 0)  # no logger: nothing drawn, counts restart
    assert callback.counts.sum() == 0

    from lightning.pytorch.loggers import WandbLogger

    logged = []
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    monkeypatch.setattr(type(logger), "experiment", property(lambda self: SimpleNamespace(log=lambda data, **kw: logged.append(data))))
    callback.on_train_batch_end(_trainer(4, [logger]), module, None, None, 1)
    assert len(logged) == 1 and "staleness/histogram" in logged[0]


def test_every_validation_draws_the_histogram_of_the_steps_since_the_last(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    logged = []
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    monkeypatch.setattr(type(logger), "experiment", property(lambda self: SimpleNamespace(log=lambda data, **kw: logged.append(data))))
    callback = StalenessCallback(histogram_every_n_steps=10_000, histogram_bins=4)  # far longer than this run
    module = _Module(_stats([0, 1, 1], 0, 3))
    for step in (1, 2, 3):
        callback.on_train_batch_end(_trainer(step, [logger]), module, None, None, step - 1)
    assert logged == []
    trainer = SimpleNamespace(global_step=3, loggers=[logger], is_global_zero=True)
    callback.on_validation_start(trainer, module)
    assert len(logged) == 1 and "staleness/histogram" in logged[0] and callback.counts.sum() == 0
    callback.on_validation_start(trainer, module)  # nothing new since: no empty histogram
    assert len(logged) == 1
