"""ConfidenceLogger: logs the module's confidences (and sigma^2 under `exp`), W&B histograms on rank 0, supplies no formula."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from callbacks.confidence import ConfidenceLogger


def fake_trainer(loggers: list | None = None, global_step: int = 0) -> SimpleNamespace:
    """The trainer attributes the callback reads."""
    return SimpleNamespace(world_size=1, is_global_zero=True, global_step=global_step, loggers=loggers or [])


def fake_student(formula: str = "batch_max") -> MagicMock:
    """The attributes of a DRLRecStudent the callback reads."""
    return MagicMock(last_confidence=torch.tensor([0.2, 0.4]), confidence_formula=formula, confidence_sigma2=torch.tensor(2.5))


def test_logs_the_mean_and_skips_media_quietly_without_wandb() -> None:
    callback, module = ConfidenceLogger(histogram_every_n_steps=1), fake_student()
    callback.on_train_batch_end(fake_trainer(), module, None, None, 0)  # type: ignore[arg-type]
    name, value = module.log.call_args.args
    assert name == "distill/confidence_mean" and value.item() == pytest.approx(0.3)
    assert module.log.call_count == 1


def test_logs_the_modules_running_sigma2_under_exp() -> None:
    module = fake_student("exp")
    ConfidenceLogger().on_train_batch_end(fake_trainer(), module, None, None, 0)  # type: ignore[arg-type]
    logged = {call.args[0]: call.args[1] for call in module.log.call_args_list}
    assert logged["distill/sigma2"].item() == 2.5


def test_histogram_goes_to_wandb_on_rank_zero() -> None:
    wandb_logger = MagicMock(spec=WandbLogger)
    callback, module = ConfidenceLogger(histogram_every_n_steps=10), fake_student()
    callback.on_train_batch_end(fake_trainer([wandb_logger], global_step=7), module, None, None, 0)  # type: ignore[arg-type]
    wandb_logger.experiment.log.assert_not_called()  # not a histogram step
    callback.on_train_batch_end(fake_trainer([wandb_logger], global_step=10), module, None, None, 0)  # type: ignore[arg-type]
    logged = wandb_logger.experiment.log.call_args.args[0]
    assert "distill/confidence_hist" in logged


def test_supplies_nothing_to_the_module() -> None:
    callback, module = ConfidenceLogger(), SimpleNamespace(last_confidence=None)
    callback.setup(fake_trainer(), module, "fit")  # type: ignore[arg-type]
    callback.on_train_batch_end(fake_trainer(), module, None, None, 0)  # type: ignore[arg-type]
    assert vars(module) == {"last_confidence": None}
