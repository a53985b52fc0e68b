"""The memory-mapped cache: a hit does not read the input, a changed file or argument misses, writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import datamodules.pipeline as pipeline
from datamodules import cache, readers


def _write_log(path: Path, users: int = 8, per_user: int = 6) -> str:
    rows = [(f"u{u}", f"i{(3 * u + j) % 20}", 100 * u + j) for u in range(users) for j in range(per_user)]
    path.write_text("user,item,ts\n" + "".join(f"{u},{i},{ts}\n" for u, i, ts in rows))
    return str(path)


def _refuse(*_: object, **__: object) -> None:
    raise AssertionError("the input was read although the cache holds it")


def test_hit_does_not_read_the_input(tmp_path: Path, make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_log(tmp_path / "log.csv")
    first = make_dm(format="csv", path=path)
    expected = first.tensors
    monkeypatch.setattr(readers, "read_source", _refuse)
    second = make_dm(format="csv", path=path)
    assert (second.num_users, second.num_items) == (first.num_users, first.num_items)
    t = second.tensors
    assert torch.equal(t.train.history[:], expected.train.history[:])
    assert torch.equal(t.test.negatives, expected.test.negatives)
    assert t.user_ids == expected.user_ids and t.item_ids == expected.item_ids and t.dropped == expected.dropped


def test_synthetic_hit_does_not_simulate(make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"synthetic_users": 30, "synthetic_items": 50, "synthetic_events_per_user": 8}
    first = make_dm(**small)
    _ = first.num_items
    monkeypatch.setattr(pipeline, "simulate", _refuse)
    assert make_dm(**small).num_items == first.num_items
    with pytest.raises(AssertionError, match="cache holds it"):
        _ = make_dm(**{**small, "seed": 1}).num_items  # another seed is another cache entry


def test_changed_mtime_or_argument_misses(tmp_path: Path, make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_log(tmp_path / "log.csv")
    _ = make_dm(format="csv", path=path).num_items
    calls = []
    real = readers.read_source
    monkeypatch.setattr(readers, "read_source", lambda source: calls.append(source) or real(source))
    _ = make_dm(format="csv", path=path).num_items
    assert calls == []
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _ = make_dm(format="csv", path=path).num_items
    assert len(calls) == 1
    _ = make_dm(format="csv", path=path, min_user_interactions=2).num_items
    assert len(calls) == 2


def test_writes_are_atomic_and_damage_is_rebuilt(tmp_path: Path, make_dm) -> None:
    path = _write_log(tmp_path / "log.csv")
    dm = make_dm(format="csv", path=path)
    _ = dm.num_items
    folder = tmp_path / "cache"
    entries = list(folder.iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left behind
    assert sorted(p.name for p in entries[0].iterdir()) == sorted(cache.CACHE_FILES)
    # a second writer of the same entry (another DDP process) loses the rename quietly
    cache.write_cache(dm.prepared, entries[0], dm.pipeline_config)
    assert [p.name for p in folder.iterdir()] == [entries[0].name]
    before = dm.prepared.events.rows()  # dm maps the files: damaging one in place (never done by lit_rec) changes it
    (entries[0] / "events.user.npy").write_bytes(b"not an array")
    again = make_dm(format="csv", path=path)
    assert again.num_items == dm.num_items and again.prepared.events.rows() == before


def test_integer_and_float_arguments_share_an_entry(tmp_path: Path, make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_log(tmp_path / "log.csv")
    _ = make_dm(format="csv", path=path, positive_threshold=4, test_fraction=1).num_items  # as YAML gives them
    monkeypatch.setattr(readers, "read_source", _refuse)
    _ = make_dm(format="csv", path=path, positive_threshold=4.0, test_fraction=1.0).num_items
