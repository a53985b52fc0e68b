"""The pipeline on hand-made logs: positives, dedupe, k-core, re-indexing, splits, histories, dropped counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import DataError
from datamodules.pipeline import first_occurrences, format_dropped


def _log(path: Path, rows: list[tuple]) -> str:
    """Writes (user, item, ts, rating) rows; the rating is read only when rating_col is given."""
    path.write_text("user,item,ts,rating\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return str(path)


def _splits(dm) -> dict[str, list[list[int]]]:
    """Per user (index order): the split codes of their events in chronological order."""
    events = dm.prepared.events
    return {
        dm.tensors.user_ids[u]: group["split"].to_list()
        for (u,), group in events.group_by("user", maintain_order=True)
    }


def test_user_split_fractions_round_half_up_and_keep_one_train_event(tmp_path: Path, make_dm) -> None:
    rows = [(f"u{n}", f"i{n}_{j}", j, 5) for n in (1, 2, 5, 10) for j in range(n)]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), test_fraction=0.2, val_fraction=0.1,
                 eval_ks=[1])
    assert _splits(dm) == {
        "u1": [0],
        "u2": [0, 2],
        "u5": [0, 0, 0, 1, 2],
        "u10": [0, 0, 0, 0, 0, 0, 0, 1, 2, 2],
    }


def test_leave_one_out_and_whole_numbers(tmp_path: Path, make_dm) -> None:
    rows = [(f"u{n}", f"i{n}_{j}", j, 5) for n in (3, 6) for j in range(n)]
    path = _log(tmp_path / "log.csv", rows)
    loo = make_dm(format="csv", path=path, test_fraction=1, val_fraction=1, eval_ks=[1])
    assert _splits(loo) == {"u3": [0, 1, 2], "u6": [0, 0, 0, 0, 1, 2]}
    two = make_dm(format="csv", path=path, test_fraction=2, val_fraction=0, eval_ks=[1])
    assert _splits(two) == {"u3": [0, 2, 2], "u6": [0, 0, 0, 0, 2, 2]}
    assert two.statistics()["val_events"] == 0 and len(two.val_dataloader()) == 0


def test_time_split_is_a_global_cut_that_keeps_ties_together(tmp_path: Path, make_dm) -> None:
    stamps = [1, 2, 3, 4, 5, 6, 7, 7, 8, 9]  # 10 events: test from the 9th (ts 8), val from the 8th (ts 7)
    rows = [(f"u{k % 3}", f"i{k}", ts, 5) for k, ts in enumerate(stamps)]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), split="time", test_fraction=0.2,
                 val_fraction=0.1, eval_ks=[1])
    events = dm.prepared.events.sort("ts", "row")
    assert events["split"].to_list() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]  # both 7s go to val


def test_histories_chronological_with_file_order_tie_break(tmp_path: Path, make_dm) -> None:
    # user a: items 1..5 at ts 10, 20, 20, 30, 40 (the tie is broken by file order: 2 before 3)
    rows = [("a", 1, 10, 5), ("b", 7, 5, 5), ("a", 2, 20, 5), ("a", 3, 20, 5), ("b", 8, 6, 5), ("a", 5, 40, 5),
            ("a", 4, 30, 5), ("b", 9, 7, 5), ("b", 6, 8, 5)]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), test_fraction=1, val_fraction=1,
                 history_len=3, eval_ks=[1])
    t = dm.tensors
    item = {name: i for i, name in enumerate(t.item_ids)}
    a1, a2, a3, a4, a5 = (item[str(k)] for k in (1, 2, 3, 4, 5))
    b7, b8, b9, b6 = (item[str(k)] for k in (7, 8, 9, 6))
    assert t.train.history[t.train.user == 0].tolist() == [[0, 0, 0], [0, 0, a1], [0, a1, a2]]
    assert t.train.item[t.train.user == 0].tolist() == [a1, a2, a3]
    assert t.train.history[t.train.user == 1].tolist() == [[0, 0, 0], [0, 0, b7]]
    assert t.val.history.tolist() == [[a1, a2, a3], [0, b7, b8]] and t.val.positive.tolist() == [a4, b9]
    assert t.test.history.tolist() == [[a2, a3, a4], [b7, b8, b9]] and t.test.positive.tolist() == [a5, b6]
    assert t.train_sequence[t.train_offsets[0] : t.train_offsets[1]].tolist() == [a1, a2, a3]
    assert t.seen_items[t.seen_offsets[1] : t.seen_offsets[2]].tolist() == sorted([b7, b8, b9, b6])
    assert t.item_popularity[0] == 0 and int(t.item_popularity.sum()) == len(t.train)
    assert t.last_items(torch.tensor([0, 1])).tolist() == [[a3, a4, a5], [b8, b9, b6]]


def test_positives_dedupe_k_core_and_dropped_counts(tmp_path: Path, make_dm) -> None:
    rows = [
        ("A", "x", 1, 5), ("A", "y", 2, 5), ("A", "z", 3, 5),
        ("B", "x", 4, 5), ("B", "y", 5, 5),
        ("C", "z", 6, 5),  # C has one positive: removed, then z has one: A-z removed
        ("B", "w", 7, 2),  # below the threshold, but B touched w
        ("A", "x", 0, 4),  # an earlier repeat of A-x: this one is kept, the ts=1 row is the duplicate
        ("B", "y", 9, 1),  # a low repeat is not a positive, so not a duplicate either
        ("D", "x", 8, ""),  # null rating
        ("E", "v", 10, 5), ("E", "u", 11, 5), ("F", "v", 12, 5), ("F", "u", 13, 5),  # a second 2-core
    ]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), rating_col="rating",
                 positive_threshold=4, min_user_interactions=2, min_item_interactions=2, test_fraction=1,
                 val_fraction=0, eval_ks=[1])
    assert dm.dropped == {"null_user": 0, "null_item": 0, "null_ts": 0, "null_rating": 1, "exact_duplicate": 0,
                          "below_threshold": 2, "duplicate": 1, "k_core": 2}
    events = dm.prepared.events
    assert (dm.num_users, dm.num_items) == (4, 4)
    assert dm.tensors.item_ids == ["<PAD>", "u", "v", "x", "y"]
    assert events.select("user", "item", "ts").rows() == [
        (0, 3, 0), (0, 4, 2), (1, 3, 4), (1, 4, 5), (2, 2, 10), (2, 1, 11), (3, 2, 12), (3, 1, 13)
    ]
    # B's low-rated w is not indexed (no positive), so it cannot be a negative anyway
    negatives = dm.tensors.test.negatives[dm.tensors.test.user <= 1]
    assert set(negatives.flatten().tolist()) <= {1, 2}
    assert format_dropped(dm.dropped) == [
        "dropped 1 row with a null rating",
        "dropped 2 rows with a rating below the positive threshold",
        "dropped 1 row repeating a (user, item) positive (kept the first)",
        "dropped 2 rows removed by the k-core filter (min_user/min_item_interactions)",
    ]
    assert "dropped 2 rows" in " ".join(dm.describe())


def test_exact_duplicates_counted_apart_from_repeat_interactions(tmp_path: Path, make_dm) -> None:
    rows = [
        ("A", "x", 1, 5), ("A", "y", 2, 5), ("A", "z", 3, 5),
        ("A", "x", 1, 5),  # the same event logged twice: an exact duplicate
        ("A", "x", 1, 5),  # and a third time
        ("A", "y", 7, 5),  # a later repeat of A-y: a repeat interaction
        ("A", "z", 3, 4),  # same user, item and time, another rating: a repeat, not a copy
        ("B", "w", 4, 2), ("B", "w", 4, 2),  # a copied row below the threshold is still a copy
        ("B", "x", 5, 5), ("B", "y", 6, 5), ("B", "z", 8, 5),
        ("C", "u", 10, 5), ("C", "v", 11, 5),  # items A and B never touched: their negatives
    ]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), rating_col="rating", positive_threshold=4,
                 test_fraction=1, val_fraction=0, eval_ks=[1])
    assert dm.dropped == {"null_user": 0, "null_item": 0, "null_ts": 0, "null_rating": 0, "exact_duplicate": 3,
                          "below_threshold": 1, "duplicate": 2, "k_core": 0}
    assert dm.statistics()["dropped"] == dm.dropped == dm.tensors.dropped
    assert dm.prepared.events.sort("user", "pos")["row"].to_list() == [0, 1, 2, 9, 10, 11, 12, 13]
    assert format_dropped(dm.dropped)[0] == (
        "dropped 3 rows logged twice (same user, item, timestamp and rating; kept the first)")
    # the columns read are compared: without rating_col the two A-z rows at ts 3 are copies too
    clicks = make_dm(format="csv", path=_log(tmp_path / "clicks.csv", rows), test_fraction=1, val_fraction=0,
                     eval_ks=[1], cache_dir=str(tmp_path / "clicks_cache"))
    assert (clicks.dropped["exact_duplicate"], clicks.dropped["duplicate"]) == (4, 1)


def test_reindex_sorts_integer_ids_numerically(tmp_path: Path, make_dm) -> None:
    rows = [(u, i, t, 5) for t, (u, i) in enumerate([("10", "3"), ("9", "20"), ("100", "3"), ("9", "3"),
                                                       ("10", "20"), ("100", "20")])]
    dm = make_dm(format="csv", path=_log(tmp_path / "log.csv", rows), eval_ks=[1], test_fraction=1,
                 val_fraction=0)
    with pytest.raises(DataError, match="user '9'.*at least max\\(eval_ks\\)=1"):
        _ = dm.tensors  # every user has seen both items: no negative left
    dm = make_dm(format="csv", path=_log(tmp_path / "log2.csv", [*rows, ("1", "7", 9, 5)]), eval_ks=[1],
                 test_fraction=1, val_fraction=0)
    assert dm.tensors.user_ids == ["1", "9", "10", "100"] and dm.tensors.item_ids == ["<PAD>", "3", "7", "20"]


def test_statistics_match_tensors(make_dm) -> None:
    dm = make_dm(synthetic_users=60, synthetic_items=80, synthetic_events_per_user=12, eval_ks=[1, 10])
    stats, t = dm.statistics(), dm.tensors
    assert (stats["users"], stats["items"]) == (t.num_users, t.num_items) == (dm.num_users, dm.num_items)
    assert (stats["train_events"], stats["val_events"], stats["test_events"]) == (len(t.train), len(t.val),
                                                                                 len(t.test))
    assert t.train.history.shape == (len(t.train), 10) and t.test.negatives.shape == (len(t.test), 10)
    assert set(stats["dropped"]) >= {"null_user", "duplicate", "k_core"}
    counts = dm.prepared.events.group_by("user").agg(pl.col("split").max())
    assert counts["split"].min() == 2  # with >= 5 events every user has a test event


def test_first_occurrences_marks_what_is_first_distinct_marks() -> None:
    """The dedupe's sort-based first occurrence equals Polars' hash-based one (repeats far apart, adjacent, none)."""
    rng = np.random.default_rng(3)
    for keys in (rng.integers(0, 50, 1000), rng.integers(0, 10**12, 1000), np.repeat([5, 1, 5], 3), np.array([7]), np.zeros(0, dtype=np.int64)):
        series = pl.Series(keys.astype(np.int64))
        assert first_occurrences(series).to_list() == series.is_first_distinct().to_list()
