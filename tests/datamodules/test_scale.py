"""Issue #18: narrow ids, typed lazy reads, the evaluation sample, the memory-mapped cache, make_log, identity."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import cache, readers
from datamodules.eval_sample import ctr_half_width, sample_rows
from datamodules.pipeline import TEST, VAL, narrowest
from datamodules.tensors import Histories, RecTensors

REPO = Path(__file__).parents[2]
sys.path.insert(0, str(REPO / "bench"))
from make_log import make_log  # noqa: E402

OUTBRAIN = {"format": "outbrain", "positive_threshold": 1, "min_user_interactions": 1, "split": "time"}
# sha256 prefixes of every RecTensors field built by the pipeline before issue #18 (commit e15dede), cache off
OLD_DIGESTS = {
    "synthetic": "d085dc40096a50e8",
    "synthetic_time": "453b9fca7c49b4ac",
    "synthetic_small": "3f336afb18970915",
    "make_log_20k": "d2e4607a668f0d8a",
}
FIELDS = ("item_popularity", "train_offsets", "train_sequence", "seen_offsets", "seen_items", "all_offsets", "all_sequence")


def digest(t: RecTensors) -> str:
    """A hash of every tensor field (as int64), the ids and the dropped counts."""
    h = hashlib.sha256()
    for name in FIELDS:
        h.update(getattr(t, name).long().contiguous().numpy().tobytes())
    for part in (t.train, t.val, t.test):
        for name, value in vars(part).items():
            value = value[:] if isinstance(value, Histories) else value  # the rows a stored table held
            if isinstance(value, torch.Tensor):
                h.update(name.encode())
                h.update(value.long().contiguous().numpy().tobytes())
    h.update("|".join(t.item_ids + t.user_ids).encode())
    h.update(repr(sorted(t.dropped.items())).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def outbrain_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20k-row make_log log (clicks_train.csv + events.csv)."""
    folder = tmp_path_factory.mktemp("outbrain")
    make_log(folder, 20_000, seed=0)
    return folder


# ------------------------------------------------------------------ identity with the pipeline before #18
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("synthetic", {}),
        ("synthetic_time", {"split": "time"}),
        ("synthetic_small", {"synthetic_users": 60, "synthetic_items": 80, "synthetic_events_per_user": 12,
                             "history_len": 5, "eval_ks": [1, 5, 20]}),
    ],
)
def test_tensors_equal_the_old_pipeline(name: str, kwargs: dict, make_dm) -> None:
    for cache_dir in (None, "default"):  # uncached, then written and read back through the mapped cache
        options = {**kwargs, "min_user_interactions": 5, "eval_ks": kwargs.get("eval_ks", [1, 10, 20, 50, 100])}
        if cache_dir is None:
            options["cache_dir"] = None
        assert digest(make_dm(**options).tensors) == OLD_DIGESTS[name]


DATA = REPO.parent / "shared" / "data"
# the same digest on the real logs (../shared/data), pipeline at e15dede vs now, cache off, default arguments
REAL_DIGESTS = {
    "ml100k": ({"format": "movielens", "path": "ml-100k"}, "73b9759b2c347d1c"),
    "ml100k_time": ({"format": "movielens", "path": "ml-100k", "split": "time"}, "bd30fdf7b7977d87"),
    "ml1m": ({"format": "movielens", "path": "ml-1m-users1-2999"}, "79deb1e04caf6c7c"),
    "outbrain_sample": ({"format": "outbrain", "path": "outbrain-sample/clicks_events_sample.csv",
                         "positive_threshold": 1, "min_user_interactions": 1, "split": "time"}, "3a833c2311ab0e57"),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(REAL_DIGESTS))
def test_real_logs_equal_the_old_pipeline(name: str) -> None:
    from datamodules import RecDataModule

    kwargs, expected = REAL_DIGESTS[name]
    if not (DATA / kwargs["path"]).exists():
        pytest.skip(f"real data not found at {DATA / kwargs['path']}")
    data = RecDataModule(cache_dir=None, **{**kwargs, "path": str(DATA / kwargs["path"])})
    assert digest(data.tensors) == expected


def test_outbrain_pair_equals_the_old_text_path(outbrain_log: Path, make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    typed = make_dm(path=str(outbrain_log), eval_ks=[1, 5, 10], cache_dir=None, **OUTBRAIN)
    assert digest(typed.tensors) == OLD_DIGESTS["make_log_20k"]
    monkeypatch.setattr(readers, "outbrain_pair_by_arrays", lambda *_: None)  # the lazy join with an Enum of users
    lazy = make_dm(path=str(outbrain_log), eval_ks=[1, 5, 10], cache_dir=None, **OUTBRAIN)
    assert digest(lazy.tensors) == OLD_DIGESTS["make_log_20k"]
    monkeypatch.setattr(readers, "scan_outbrain_pair", lambda *_: (_ for _ in ()).throw(ValueError("typed off")))
    text = make_dm(path=str(outbrain_log), eval_ks=[1, 5, 10], cache_dir=None, **OUTBRAIN)
    assert digest(text.tensors) == OLD_DIGESTS["make_log_20k"]


def _decoded(frame: pl.DataFrame, ids: pl.Series | None) -> list[tuple]:
    """Rows with the user as its id string (codes through `ids`, an Enum cast)."""
    user = ids.gather(frame["user"]) if ids is not None else frame["user"].cast(pl.String)
    return frame.with_columns(user.alias("user")).rows()


def test_the_array_join_gives_the_lazy_joins_rows_with_users_coded_in_id_order(tmp_path: Path, write_text) -> None:
    """Kaggle-shaped pair: hex uuids coded by rank, display ids joined through an array; gaps, blanks, repeats kept as before."""
    write_text(tmp_path / "events.csv", "display_id,uuid,document_id,timestamp,platform,geo_location\n"
               "1,0f3a,9,100,1,US\n2,0a11,9,200,1,US\n2,ffff,9,250,1,US\n3, ,9,300,1,US\n5,0f3a,9,500,1,US\n6,00b2,9,600,1,US\n")
    write_text(tmp_path / "clicks_train.csv", "display_id,ad_id,clicked\n"
               "1,7,1\n1,8,0\n2,7,1\n3,9,1\n4,7,1\n5,8,1\n6,7,0\n99,7,1\n,8,1\n")
    coded = readers.outbrain_pair_by_arrays(tmp_path / "clicks_train.csv", tmp_path / "events.csv")
    assert coded is not None
    frame, ids = coded
    assert ids.to_list() == ["00b2", "0a11", "0f3a"]  # byte order: codes 0, 1, 2
    assert frame["user"].to_list() == [2, 2, 1, None, None, 2, 0, None, None]  # display 2: its first row; 3 blank; 4, 99, null: none
    assert frame["user"].dtype == pl.UInt32 and frame["ts"].null_count() == 3
    lazy = readers.scan_outbrain_pair(tmp_path / "clicks_train.csv", tmp_path / "events.csv").collect()
    assert _decoded(frame, ids) == _decoded(lazy, None)
    assert frame.schema == {**lazy.schema, "user": pl.UInt32}


def test_hex_codes_only_for_lowercase_hex_of_one_width() -> None:
    codes, ids = readers.hex_codes(pl.Series("u", ["0b", "0a", None, "0b", "ff"]))
    assert codes.to_list() == [1, 0, None, 1, 2] and ids.to_list() == ["0a", "0b", "ff"]
    for odd in (["ab", "abc"], ["AB", "cd"], ["zz", "ab"], ["0x1", "abc"], ["a" * 16, "b" * 16]):
        assert readers.hex_codes(pl.Series(odd)) is None, odd


def test_a_pair_the_arrays_do_not_fit_is_read_by_the_lazy_join(tmp_path: Path, write_text) -> None:
    """Sparse display ids (or ids other than hex) take `scan_outbrain_pair`: same rows, users not coded by the reader."""
    write_text(tmp_path / "events.csv", "display_id,uuid,document_id,timestamp,platform,geo_location\n"
               "1,u1,9,100,1,US\n2,u2,9,200,1,US\n")
    write_text(tmp_path / "clicks_train.csv", "display_id,ad_id,clicked\n1,7,1\n2,8,1\n")
    source = readers.Source("outbrain", str(tmp_path))
    frame, ids = readers.read_source_coded(source)
    assert ids is None and frame["user"].cast(pl.String).to_list() == ["u1", "u2"]
    write_text(tmp_path / "events.csv", "display_id,uuid,document_id,timestamp,platform,geo_location\n"
               "1,0a,9,100,1,US\n20000000,0b,9,200,1,US\n")
    write_text(tmp_path / "clicks_train.csv", "display_id,ad_id,clicked\n1,7,1\n20000000,8,1\n")
    assert readers.outbrain_pair_by_arrays(tmp_path / "clicks_train.csv", tmp_path / "events.csv") is None
    frame, ids = readers.read_source_coded(source)
    assert ids is None and frame["user"].cast(pl.String).to_list() == ["0a", "0b"]


# ------------------------------------------------------------------ narrow ids, typed lazy reads
def test_narrowest_dtype() -> None:
    assert [narrowest(n) for n in (0, 255, 256, 65_536, 2**32)] == [pl.UInt8, pl.UInt8, pl.UInt16, pl.UInt32, pl.Int64]
    assert narrowest(100, -1) == pl.Int8 and narrowest(40_000, -1) == pl.Int32


def test_ids_are_stored_narrow(make_dm) -> None:
    dm = make_dm(synthetic_users=30, synthetic_items=50, synthetic_events_per_user=8)
    schema = dm.prepared.events.schema
    assert schema["user"] == pl.UInt8 and schema["item"] == pl.UInt8 and schema["split"] == pl.UInt8
    assert schema["ts"] == pl.Int64
    assert dm.prepared.negatives[TEST].dtype == torch.int32  # mapped from the cache: the narrowest index dtype
    assert dm.tensors.test.candidates.dtype == torch.int64  # batches promote


def test_typed_scan_reads_only_the_needed_columns_with_their_dtypes(outbrain_log: Path) -> None:
    scan = readers.scan_outbrain_pair(outbrain_log / "clicks_train.csv", outbrain_log / "events.csv")
    schema = scan.collect_schema()
    assert list(schema) == ["user", "item", "ts", "rating", "row"]
    assert isinstance(schema["user"], pl.Enum) and schema["item"] == pl.Int64 and schema["rating"] == pl.Int8
    plan = scan.explain()
    assert "document_id" not in plan and "geo_location" not in plan and "platform" not in plan


def test_a_value_the_typed_scan_rejects_goes_to_the_text_path(tmp_path: Path, write_text) -> None:
    header = "display_id,uuid,document_id,timestamp,platform,geo_location\n"
    write_text(tmp_path / "clicks_train.csv", "display_id,ad_id,clicked\n1,7,1\n1,x8,0\n")
    write_text(tmp_path / "events.csv", header + "1,a,1,soon,1,US\n")
    with pytest.raises(readers.DataError, match=r"events.csv: column 'timestamp' line 2"):
        readers.read_outbrain(tmp_path)
    write_text(tmp_path / "events.csv", header + "1,a,1,5,1,US\n")
    assert readers.read_outbrain(tmp_path)["item"].to_list() == ["7", "x8"]  # a string id: the text path reads it


# ------------------------------------------------------------------ the evaluation sample
def test_sample_rows_is_seeded_bounded_and_none_below_the_bound() -> None:
    assert sample_rows(50, None, 0, TEST) is None and sample_rows(50, 50, 0, TEST) is None
    rows = sample_rows(10_000, 300, 3, TEST)
    assert rows.size == 300 and np.unique(rows).size == 300 and np.all(np.diff(rows) > 0) and rows.max() < 10_000
    assert np.array_equal(rows, sample_rows(10_000, 300, 3, TEST))
    assert not np.array_equal(rows, sample_rows(10_000, 300, 4, TEST))
    assert not np.array_equal(rows, sample_rows(10_000, 300, 3, VAL))


def test_ctr_half_width() -> None:
    assert ctr_half_width(0.4, 100, 100) == 0.0  # every event evaluated: exact
    assert ctr_half_width(0.5, 10_000, 10**9) == pytest.approx(1.96 * 0.005, rel=1e-3)


def test_null_and_a_large_bound_keep_the_exact_evaluation(make_dm) -> None:
    small = {"synthetic_users": 40, "synthetic_items": 60, "synthetic_events_per_user": 10, "eval_ks": [1, 5]}
    exact = make_dm(eval_max_events=None, **small).tensors
    bounded = make_dm(eval_max_events=10**6, **small).tensors
    assert digest(exact) == digest(bounded) and exact.test.population is None


def test_a_sample_is_bounded_reproducible_and_avoids_seen_items(tmp_path: Path, make_dm) -> None:
    small = {"synthetic_users": 40, "synthetic_items": 60, "synthetic_events_per_user": 10, "eval_ks": [1, 5]}
    dm = make_dm(eval_max_events=7, **small)
    t = dm.tensors
    full = make_dm(eval_max_events=None, **small).tensors
    assert len(t.test) == len(t.val) == 7 and t.test.negatives.shape == (7, 5)
    assert t.test.split_size == len(full.test) and t.test.population == len(full.test)
    stats = dm.statistics()
    assert stats["test_eval_events"] == 7 and stats["test_events"] == len(full.test)
    assert any("eval_max_events=7" in line for line in dm.describe())
    seen = torch.zeros(t.num_users, t.num_items + 1, dtype=torch.bool)
    seen[torch.repeat_interleave(torch.arange(t.num_users), t.seen_offsets.diff()), t.seen_items] = True
    assert not seen[t.test.user[:, None], t.test.negatives.long()].any()
    again = make_dm(eval_max_events=7, cache_dir=str(tmp_path / "other"), **small).tensors
    assert digest(again) == digest(t)


# ------------------------------------------------------------------ the memory-mapped cache
def test_the_cache_opens_memory_mapped_without_copying(make_dm, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"synthetic_users": 30, "synthetic_items": 50, "synthetic_events_per_user": 8}
    _ = make_dm(**small).prepared  # writes the entry
    maps: dict[str, np.ndarray] = {}
    real = cache.mapped
    monkeypatch.setattr(cache, "mapped", lambda path: maps.setdefault(path.name, real(path)))
    dm = make_dm(**small)
    prepared = dm.prepared
    assert all(isinstance(a, np.memmap) for a in maps.values()) and "negatives.test.npy" in maps
    negatives = maps["negatives.test.npy"]
    assert prepared.negatives[TEST].data_ptr() == negatives.ctypes.data  # a view of the map
    assert dm.tensors.test.negatives.data_ptr() == negatives.ctypes.data  # and so is the tensor the loaders gather
    assert prepared.events["user"].to_numpy().ctypes.data == maps["events.user.npy"].ctypes.data
    batch = next(iter(dm.test_dataloader()))
    assert batch["candidates"].dtype == torch.int64
    history = dm.tensors.train.history  # train states: gathered per batch from the mapped item column
    assert isinstance(history, Histories) and history.sequence.data_ptr() == maps["events.item.npy"].ctypes.data
    assert history.sequence.dtype == torch.uint8 and history.shape == (len(dm.tensors.train), dm.history_len)
    train = next(iter(dm.train_dataloader()))
    assert train["history"].dtype == torch.int64 and torch.equal(train["history"], history[train["index"]])


# ------------------------------------------------------------------ make_log
def test_make_log_shape_and_skew(outbrain_log: Path) -> None:
    clicks, events = pl.read_csv(outbrain_log / "clicks_train.csv"), pl.read_csv(outbrain_log / "events.csv")
    assert clicks.columns == ["display_id", "ad_id", "clicked"] and clicks.height == 20_000
    assert events.columns == ["display_id", "uuid", "document_id", "timestamp", "platform", "geo_location"]
    per_display = clicks.group_by("display_id").agg(pl.col("clicked").sum(), pl.len())
    assert per_display["clicked"].to_list() == [1] * per_display.height  # one click per display
    assert per_display.height == events.height and events["timestamp"].is_sorted()
    users = events.group_by("uuid").len()
    assert (users["len"] == 1).mean() > 0.6  # many one-off users
    ads = clicks.group_by("ad_id").len().sort("len", descending=True)["len"]
    assert ads.head(ads.len() // 10).sum() / clicks.height > 0.3  # the top 10% of ads hold a third of the rows
    again = outbrain_log.parent / "again"
    make_log(again, 20_000, seed=0)
    assert (again / "clicks_train.csv").read_bytes() == (outbrain_log / "clicks_train.csv").read_bytes()
