"""The plain-text progress: epoch lines with batches/total and the max_steps budget, mid-epoch lines."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_rec.progress import EpochLineProgress


def test_epoch_and_mid_epoch_lines_show_batches_of_total_and_the_step_budget(capsys: pytest.CaptureFixture) -> None:
    trainer = L.Trainer(max_steps=3, limit_train_batches=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[EpochLineProgress(every_s=0)])
    trainer.fit(BoringModel())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert trainer.global_step == 3 and trainer.num_training_batches == 4  # the budget stops mid-epoch
    assert lines[0].startswith("epoch 1  batch 1/4  step 1/3") and "batch/s, eta" in lines[0]
    assert lines[0].endswith("to max_steps)")  # the budget ends before the epoch: the ETA is to the budget
    assert lines[-1].startswith("epoch 1  batch 3/4  step 3/3")


def test_without_a_step_budget_the_eta_is_to_the_epochs_end(capsys: pytest.CaptureFixture) -> None:
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[EpochLineProgress(every_s=0)])
    trainer.fit(BoringModel())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert lines[0].startswith("epoch 1/1  batch 1/4") and lines[0].endswith("to epoch end)")
