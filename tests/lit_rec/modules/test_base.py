"""RecModule's shared training helpers: history_len checks, and `window_events` (a batch of windows -> its events)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import RecDataModule
from lit_rec.modules.popularity import Popularity

SMALL = {"synthetic_users": 40, "synthetic_items": 60, "synthetic_events_per_user": 10, "eval_ks": [1, 5], "min_user_interactions": 1}


def data(tmp_path: Path, history_len: int, batch_size: int = 8) -> RecDataModule:
    return RecDataModule(history_len=history_len, batch_size=batch_size, cache_dir=str(tmp_path / "cache"), **SMALL)


class OnData(Popularity):
    """A module that reads the given data's tensors without a trainer."""

    def __init__(self, dm: RecDataModule, **kwargs) -> None:
        super().__init__(num_items=dm.num_items, num_users=dm.num_users, **kwargs)
        self._data = dm

    @property
    def tensors(self):
        return self._data.tensors


@pytest.mark.parametrize("history_len", [1, 3, 10])
def test_window_events_are_every_train_event_once_per_epoch_with_its_full_history(tmp_path: Path, history_len: int) -> None:
    dm = data(tmp_path, history_len)
    module = OnData(dm, history_len=history_len)
    train, offsets = dm.tensors.train, dm.tensors.train_offsets
    seen = torch.zeros(len(train), dtype=torch.long)
    for batch in dm.train_dataloader():
        history, item = module.window_events(batch)
        # a window predicts its last history_len events of its user, each with the train history of that event
        events = [e for user, anchor in zip(batch["user"].tolist(), batch["index"].tolist())
                  for e in range(max(anchor - history_len + 1, int(offsets[user])), anchor + 1)]
        assert history.shape == (len(events), history_len)
        assert torch.equal(item, train.item[events]) and torch.equal(history, train.history[events])
        seen[events] += 1
    assert torch.equal(seen, torch.ones_like(seen))


def test_history_len_and_train_negatives_are_checked() -> None:
    with pytest.raises(ValueError, match="history_len must be >= 1"):
        Popularity(num_items=10, num_users=3, history_len=0)
    with pytest.raises(ValueError, match="train_negatives must be >= 0"):
        Popularity(num_items=10, num_users=3, train_negatives=-1)


@pytest.mark.parametrize("epochs", [1, 2])
def test_popularity_counts_every_train_click_once_per_epoch(tmp_path: Path, epochs: int) -> None:
    dm = data(tmp_path, history_len=3)
    module = Popularity(num_items=dm.num_items, num_users=dm.num_users, history_len=3)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == epochs * len(dm.train_dataloader())
    assert torch.equal(module.counts, epochs * dm.tensors.item_popularity)
    assert int(module.events_seen) == epochs * len(dm.tensors.train)  # train/episodes counts events, not windows
