"""Real logs from ../shared/data with the shipped data configs' settings; prints their statistics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from datamodules import RecDataModule

DATA = Path(__file__).parents[2].parent / "shared" / "data"
ML_CONFIG = {
    "format": "movielens",
    "positive_threshold": 4,
    "min_user_interactions": 5,
    "split": "user",
    "test_fraction": 0.2,
    "val_fraction": 0.1,
}

pytestmark = pytest.mark.real_data


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the repo's sibling ../shared/data)")
    return path


def _check(dm: RecDataModule) -> dict:
    t = dm.tensors
    stats = dm.statistics()
    assert stats["train_events"] == len(t.train) and stats["test_events"] == len(t.test) > 0
    seen = torch.zeros(t.num_users, t.num_items + 1, dtype=torch.bool)
    seen[torch.repeat_interleave(torch.arange(t.num_users), t.seen_offsets.diff()), t.seen_items] = True
    assert not seen[t.test.user[:, None], t.test.negatives].any()
    print("\n" + "\n".join(dm.describe()))
    return stats


def test_movielens_100k(tmp_path: Path) -> None:
    path = _require(DATA / "ml-100k")
    stats = _check(RecDataModule(path=str(path), cache_dir=str(tmp_path), **ML_CONFIG))
    assert stats["users"] == 938 and stats["items"] == 1447
    total = stats["train_events"] + stats["val_events"] + stats["test_events"]
    assert total + sum(stats["dropped"].values()) == 100_000


def test_movielens_1m_users_1_2999_uncached_then_cached(tmp_path: Path) -> None:
    path = _require(DATA / "ml-1m-users1-2999")
    start = time.perf_counter()
    first = RecDataModule(path=str(path), cache_dir=str(tmp_path), **ML_CONFIG)
    stats = _check(first)
    uncached = time.perf_counter() - start
    start = time.perf_counter()
    second = RecDataModule(path=str(path), cache_dir=str(tmp_path), **ML_CONFIG)
    _ = second.tensors
    cached = time.perf_counter() - start
    print(f"ML-1M (users 1-2999) prepare + tensors: uncached {uncached:.2f} s, cached {cached:.2f} s")
    assert stats["users"] == 2999
    assert torch.equal(second.tensors.test.negatives, first.tensors.test.negatives)
    assert cached < uncached


def test_outbrain_sample_time_split(tmp_path: Path) -> None:
    path = _require(DATA / "outbrain-sample" / "clicks_events_sample.csv")
    stats = _check(
        RecDataModule(format="outbrain", path=str(path), split="time", min_user_interactions=1,
                      min_item_interactions=1, cache_dir=str(tmp_path))
    )
    assert stats["dropped"]["below_threshold"] > 0 and stats["val_events"] > 0
