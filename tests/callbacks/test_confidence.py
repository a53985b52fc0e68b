"""ConfidenceCallback: both formulas on hand numbers, clamping, running sigma^2 in state_dict, quiet without W&B."""

from __future__ import annotations

import math
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from callbacks.confidence import ConfidenceCallback


def fake_trainer(loggers: list | None = None, global_step: int = 0) -> SimpleNamespace:
    """The trainer attributes the callback reads."""
    return SimpleNamespace(world_size=1, is_global_zero=True, global_step=global_step, loggers=loggers or [])


def test_batch_max_formula_on_hand_numbers_with_clamping() -> None:
    callback = ConfidenceCallback(formula="batch_max", min_confidence=0.25)
    c = callback.confidence(torch.tensor([0.0, 1.0, 4.0]))
    assert torch.allclose(c, torch.tensor([1.0, 0.75, 0.25]), atol=1e-6)  # 1 - delta / 4, the last clamped from 0


def test_exp_formula_keeps_a_running_sigma2() -> None:
    callback = ConfidenceCallback(formula="exp", momentum=0.5)
    first = callback.confidence(torch.tensor([0.0, 2.0]))  # sigma^2 = mean delta = 1
    assert torch.allclose(first, torch.tensor([1.0, math.exp(-2.0)]))
    second = callback.confidence(torch.tensor([4.0, 4.0]))  # sigma^2 = 0.5 * 1 + 0.5 * 4 = 2.5
    assert callback.sigma2.item() == pytest.approx(2.5)
    assert torch.allclose(second, torch.full((2,), math.exp(-4.0 / 2.5)))
    clamped = ConfidenceCallback(formula="exp", min_confidence=0.5).confidence(torch.tensor([0.0, 10.0]))
    assert clamped.tolist() == [1.0, 0.5]


def test_state_dict_round_trip_continues_the_running_sigma2() -> None:
    a = ConfidenceCallback(formula="exp", momentum=0.9)
    a.confidence(torch.tensor([1.0, 3.0]))
    b = ConfidenceCallback(formula="exp", momentum=0.9)
    b.load_state_dict(a.state_dict())
    delta = torch.tensor([0.5, 5.0])
    assert torch.equal(a.confidence(delta), b.confidence(delta))
    assert a.count == b.count == 2


def test_setup_attaches_the_formula_to_the_module() -> None:
    callback, module = ConfidenceCallback(), SimpleNamespace()
    callback.setup(fake_trainer(), module, "fit")  # type: ignore[arg-type]
    assert module.confidence_fn == callback.confidence


def test_logs_the_mean_and_skips_media_quietly_without_wandb() -> None:
    callback = ConfidenceCallback(histogram_every_n_steps=1)
    module = MagicMock(last_confidence=torch.tensor([0.2, 0.4]))
    callback.on_train_batch_end(fake_trainer(), module, None, None, 0)  # type: ignore[arg-type]
    name, value = module.log.call_args.args
    assert name == "distill/confidence_mean" and value.item() == pytest.approx(0.3)


def test_histogram_goes_to_wandb_on_rank_zero() -> None:
    wandb_logger = MagicMock(spec=WandbLogger)
    callback = ConfidenceCallback(histogram_every_n_steps=10)
    module = MagicMock(last_confidence=torch.tensor([0.2, 0.4]))
    callback.on_train_batch_end(fake_trainer([wandb_logger], global_step=7), module, None, None, 0)  # type: ignore[arg-type]
    wandb_logger.experiment.log.assert_not_called()  # not a histogram step
    callback.on_train_batch_end(fake_trainer([wandb_logger], global_step=10), module, None, None, 0)  # type: ignore[arg-type]
    logged = wandb_logger.experiment.log.call_args.args[0]
    assert "distill/confidence_hist" in logged


def test_rejects_unknown_formula() -> None:
    with pytest.raises(ValueError, match="formula"):
        ConfidenceCallback(formula="softmax")  # type: ignore[arg-type]
