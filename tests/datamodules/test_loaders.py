"""Loaders: batch contract, training windows, resumable train order (by hand and through Lightning), DDP sharding."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.loaders import EvalLoader, PredictLoader, ResumableLoader
from datamodules.tensors import window_anchors

SMALL = {"synthetic_users": 40, "synthetic_items": 60, "synthetic_events_per_user": 10, "eval_ks": [1, 5]}


@pytest.fixture
def dm(make_dm):
    """A small synthetic datamodule (a few hundred train events)."""
    return make_dm(batch_size=32, eval_batch_size=16, **SMALL)


def _indices(batches: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def test_batch_contract(dm) -> None:
    t, L_ = dm.tensors, dm.history_len
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"user", "history", "item", "index"}
    assert train["history"].shape == (32, L_) and train["user"].shape == train["item"].shape == (32,)
    assert all(v.dtype == torch.long for v in train.values())
    assert torch.equal(train["item"], t.train.item[train["index"]])
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"user", "history", "candidates", "index"} and val["candidates"].shape == (16, 1 + 5)
    assert torch.equal(val["candidates"][:, 0], t.val.positive[val["index"]])
    assert torch.equal(val["candidates"][:, 1:], t.val.negatives[val["index"]])
    predict = list(dm.predict_dataloader())
    assert torch.cat([b["user"] for b in predict]).tolist() == list(range(dm.num_users))
    assert torch.equal(predict[0]["history"], t.last_items(predict[0]["user"]))


def test_epoch_order_covers_every_event_once_and_changes_per_epoch(dm) -> None:
    events = ResumableLoader(dm.tensors.train, 32, seed=dm.seed)
    assert isinstance(events, _Stateful) and len(events) == -(-len(dm.tensors.train) // 32)
    first, second = _indices(list(events)), _indices(list(events))
    assert sorted(sum(first, [])) == list(range(len(dm.tensors.train)))
    assert first != second
    again = ResumableLoader(dm.tensors.train, 32, seed=dm.seed)
    assert _indices(list(again)) == first  # the order is a function of (seed, epoch)


def test_train_dataloader_serves_every_window_anchor_once_per_epoch(dm) -> None:
    anchors = window_anchors(dm.tensors.train.user, dm.history_len)
    loader = dm.train_dataloader()
    assert isinstance(loader, _Stateful) and len(loader) == -(-anchors.numel() // 32)
    first, second = _indices(list(loader)), _indices(list(loader))
    assert sorted(sum(first, [])) == anchors.tolist() and sorted(sum(second, [])) == anchors.tolist()
    assert first != second
    again = ResumableLoader(dm.tensors.train, 32, seed=dm.seed, rows=anchors)
    assert _indices(list(again)) == first


def _user_runs(user: torch.Tensor) -> list[range]:
    """The index range of each user's train events (events are grouped by user)."""
    runs, start = [], 0
    for end in range(1, user.numel() + 1):
        if end == user.numel() or user[end] != user[start]:
            runs.append(range(start, end))
            start = end
    return runs


@pytest.mark.parametrize("history_len", [1, 3, 4, 10])
def test_windows_target_every_train_event_exactly_once_and_never_mix_users(make_dm, history_len: int) -> None:
    dm = make_dm(batch_size=16, history_len=history_len, **SMALL)
    train = dm.tensors.train
    anchors = window_anchors(train.user, history_len)
    # each user's last event anchors a window, then every history_len-th event before it
    expected = [e for run in _user_runs(train.user) for e in run if (run[-1] - e) % history_len == 0]
    assert anchors.tolist() == expected
    targets = torch.zeros(len(train), dtype=torch.long)
    for batch in dm.train_dataloader():
        for user, history, item, anchor in zip(batch["user"], batch["history"], batch["item"], batch["index"]):
            # the window (history, then item) is a run of consecutive train items of one user
            window = torch.cat([history, item[None]])
            first = max(int(anchor) - history_len, int(dm.tensors.train_offsets[user]))
            real = window[window > 0]
            assert real.tolist() == train.item[first : int(anchor) + 1].tolist()
            assert (train.user[first : int(anchor) + 1] == user).all()
            # positions 1..L of the window are its targets: the events anchor - L + 1 .. anchor of this user
            predicted = torch.arange(int(anchor) - history_len + 1, int(anchor) + 1)
            targets[predicted[predicted >= int(dm.tensors.train_offsets[user])]] += 1
    assert torch.equal(targets, torch.ones_like(targets))
    assert window_anchors(torch.zeros(0, dtype=torch.long), 3).numel() == 0


def _consume(loader: ResumableLoader, steps: int, prefetch: int) -> tuple[list[list[int]], dict[str, int]]:
    """Runs `steps` training steps with `prefetch` batches fetched ahead, then takes the checkpoint state."""
    iterator = iter(loader)
    pending = [next(iterator) for _ in range(prefetch)]
    done: list[list[int]] = []
    for _ in range(steps):
        try:
            pending.append(next(iterator))
        except StopIteration:  # only a prefetching consumer runs into the end
            pass
        done.append(pending.pop(0)["index"].tolist())
    return done, loader.state_dict()


@pytest.mark.parametrize("prefetch", [0, 1])  # 0: Lightning with a sized loader; 1: a prefetching fetcher
@pytest.mark.parametrize("steps", [0, 1, 3, 9, 10])  # 10 batches per epoch: 10 = at the epoch's end
def test_resume_continues_with_the_uninterrupted_batches(dm, steps: int, prefetch: int) -> None:
    events = dm.tensors.train
    batch_size = -(-len(events) // 10)
    reference = ResumableLoader(events, batch_size, seed=5)
    assert len(reference) == 10
    uninterrupted = _indices(list(reference)) + _indices(list(reference))
    done, state = _consume(ResumableLoader(events, batch_size, seed=5, lookahead=prefetch), steps, prefetch)
    assert done == uninterrupted[:steps] and state["consumed"] in (steps, 0)
    resumed = ResumableLoader(events, batch_size, seed=5)
    resumed.load_state_dict(state)
    rest = _indices(list(resumed))
    if steps < 10:
        rest += _indices(list(resumed))  # the next epoch after the resumed one
    assert done + rest == uninterrupted


def test_train_ddp_ranks_split_every_global_batch(dm) -> None:
    events = dm.tensors.train
    whole = ResumableLoader(events, 32, seed=1)
    ranks = [ResumableLoader(events, 32, seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for global_batch, *parts in zip(list(whole), *(list(r) for r in ranks), strict=True):
        assert torch.equal(torch.cat([p["index"] for p in parts]), global_batch["index"])
    tiny = ResumableLoader(events, len(events) - 1, seed=1, rank=0, world_size=2)  # last global batch: 1 event
    assert len(tiny) == 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_ddp_shards_cover_every_event_exactly_once(dm, world_size: int) -> None:
    for split, make in ((dm.tensors.val, dm.val_dataloader), (dm.tensors.test, dm.test_dataloader)):
        shards = [EvalLoader(split, 16, rank=r, world_size=world_size) for r in range(world_size)]
        seen = torch.cat([b["index"] for shard in shards for b in shard])
        assert seen.tolist() == list(range(len(split)))  # contiguous, unpadded, in order
        assert sum(len(s) for s in shards) >= len(make())
    users = torch.cat([b["user"] for r in range(2) for b in PredictLoader(dm.tensors, 7, rank=r, world_size=2)])
    assert users.tolist() == list(range(dm.num_users))


class _Recorder(L.LightningModule):
    """Records the train indices it sees; one dummy parameter so that the optimizer steps."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["index"].tolist())
        return (self.weight * batch["item"].float().mean()).sum()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.seen.append(batch["index"].tolist())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return batch["user"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm, folder: Path, ckpt_path: str | None = None, every: int = 1) -> _Recorder:
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=folder, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_top_k=-1, filename="{step}")],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_resume_replays_exactly_the_remaining_batches(make_dm, tmp_path: Path) -> None:
    dm = make_dm(batch_size=8, **SMALL)  # 40 windows (one per user): 5 batches an epoch
    per_epoch = len(dm.train_dataloader())
    full = _fit(dm, tmp_path / "full").seen
    assert per_epoch == 5 and len(full) == 2 * per_epoch
    for step in (3, per_epoch):  # mid-epoch, and the last batch of the first epoch
        resumed = _fit(make_dm(batch_size=8, **SMALL), tmp_path / f"resume{step}",
                       ckpt_path=str(tmp_path / "full" / f"step={step}.ckpt"), every=1000).seen
        assert resumed == full[step:], step


def test_lightning_validate_and_predict_see_every_row_once(dm, tmp_path: Path) -> None:
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    model = _Recorder()
    trainer.validate(model, datamodule=dm)
    assert sorted(sum(model.seen, [])) == list(range(len(dm.tensors.val)))
    users = torch.cat(trainer.predict(model, datamodule=dm))
    assert users.tolist() == list(range(dm.num_users))
