"""The one Polars pipeline: canonical log -> cleaned, re-indexed, split events with frozen negatives (cached).

Steps, for every format alike: drop rows with a null user/item/ts (or rating); keep
positives (rating >= threshold, or every row when there is no rating); drop repeated
(user, item) positives keeping the first chronologically; iterative k-core; re-index
(users 0..U-1, items 1..I by sorted original id, numerically when all ids are integers);
chronological order (ts, then file order `row`); split; frozen negatives. Positives are
selected before de-duplication so that an ad shown twice and clicked the second time keeps
its click. `datamodules.cache` stores the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from datamodules import readers
from datamodules.errors import DataError
from datamodules.negatives import sample_unseen
from datamodules.readers import Source
from datamodules.synthetic import SyntheticConfig, simulate

PIPELINE_VERSION = 3  # bump when the prepared frames change meaning or layout
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
DROP_REASONS = {
    "null_user": "with a null user",
    "null_item": "with a null item",
    "null_ts": "with a null timestamp",
    "null_rating": "with a null rating",
    "below_threshold": "with a rating below the positive threshold",
    "duplicate": "repeating a (user, item) positive (kept the first)",
    "k_core": "removed by the k-core filter (min_user/min_item_interactions)",
}


@dataclass(frozen=True)
class PipelineConfig:
    """Every argument that changes the prepared frames (all of them key the cache)."""

    source: Source
    positive_threshold: float = 4.0
    split: str = "user"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    min_user_interactions: int = 5
    min_item_interactions: int = 1
    num_negatives: int = 100
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()

    @property
    def label(self) -> str:
        """What error messages call the input."""
        return str(self.source.path) if self.source.format != "synthetic" else "<synthetic>"

    @property
    def threshold(self) -> float:
        """The positive threshold in force: Outbrain's `clicked` is positive at 1."""
        return 1.0 if self.source.format == "outbrain" else self.positive_threshold


@dataclass
class Prepared:
    """The pipeline's output frames."""

    events: pl.DataFrame  # user, item, ts, row, pos, split (0/1/2); sorted by (user, pos)
    negatives: pl.DataFrame  # long: event (row of `events`), negative; val then test, each by event
    user_ids: pl.Series  # original id of user index u
    item_ids: pl.Series  # original id of item index i + 1
    dropped: dict[str, int]
    num_negatives: int  # K per val/test event

    @property
    def num_users(self) -> int:
        """Users 0..num_users-1."""
        return self.user_ids.len()

    @property
    def num_items(self) -> int:
        """Items 1..num_items (0 is PAD)."""
        return self.item_ids.len()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Runs torch on one thread, then restores the count: these ops are small, and on a busy
    2-core machine a second intra-op thread made them 10x slower (PITFALLS.md, "Threads")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def format_dropped(dropped: dict[str, int]) -> list[str]:
    """One line per reason with a non-zero count, e.g. `dropped 7 rows with a null user`."""
    return [
        f"dropped {count} row{'s' if count != 1 else ''} {DROP_REASONS.get(reason, f'({reason})')}"
        for reason, count in dropped.items()
        if count
    ]


# ---------------------------------------------------------------------------- pipeline


def read_canonical(config: PipelineConfig) -> pl.DataFrame:
    """The canonical frame of the configured source (simulated for `synthetic`)."""
    if config.source.format == "synthetic":
        return simulate(config.synthetic)
    return readers.read_source(config.source)


def prepare(config: PipelineConfig) -> Prepared:
    """Runs every step on the configured source (no cache)."""
    with single_threaded():
        return _prepare(config)


def _prepare(config: PipelineConfig) -> Prepared:
    dropped = dict.fromkeys(DROP_REASONS, 0)
    raw = drop_nulls(read_canonical(config), dropped)
    touched = raw.select("user", "item").unique()  # every logged pair: frozen negatives avoid them all
    events = select_positives(raw, config.threshold, dropped)
    events = dedupe(events, dropped)
    events = k_core(events, config.min_user_interactions, config.min_item_interactions, dropped)
    if events.height == 0:
        raise DataError.at(
            config.label,
            "events",
            f"some left after the filters (positive_threshold={config.threshold}, "
            f"min_user_interactions={config.min_user_interactions}, "
            f"min_item_interactions={config.min_item_interactions})",
            "none",
        )
    user_map, item_map = id_index(events["user"], start=0), id_index(events["item"], start=1)
    events = chronological(_apply_index(events, user_map, item_map))
    events = split_events(events, config)
    _check_split(events, config)
    touched = _apply_index(touched, user_map, item_map)
    negatives = frozen_negatives(events, touched, user_map["id"], item_map.height, config)
    return Prepared(events, negatives, user_map["id"], item_map["id"], dropped, config.num_negatives)


def drop_nulls(frame: pl.DataFrame, dropped: dict[str, int]) -> pl.DataFrame:
    """Drops rows with a null user, item, ts (or rating, when there is one), counting each reason once."""
    for column in ("user", "item", "ts", "rating"):
        if column in frame.columns:
            before = frame.height
            frame = frame.filter(pl.col(column).is_not_null())
            dropped[f"null_{column}"] += before - frame.height
    return frame


def select_positives(frame: pl.DataFrame, threshold: float, dropped: dict[str, int]) -> pl.DataFrame:
    """Keeps rows rated >= threshold; without a rating column every row is a click."""
    if "rating" not in frame.columns:
        return frame
    kept = frame.filter(pl.col("rating") >= threshold)
    dropped["below_threshold"] += frame.height - kept.height
    return kept


def dedupe(frame: pl.DataFrame, dropped: dict[str, int]) -> pl.DataFrame:
    """Keeps the chronologically first row of each (user, item)."""
    kept = frame.sort("ts", "row").unique(["user", "item"], keep="first", maintain_order=True)
    dropped["duplicate"] += frame.height - kept.height
    return kept


def k_core(frame: pl.DataFrame, min_user: int, min_item: int, dropped: dict[str, int]) -> pl.DataFrame:
    """Iteratively drops users with < min_user and items with < min_item events until both hold."""
    before = frame.height
    while True:
        kept = frame.filter((pl.len().over("user") >= min_user) & (pl.len().over("item") >= min_item))
        if kept.height == frame.height:
            break
        frame = kept
    dropped["k_core"] += before - frame.height
    return frame


def id_index(ids: pl.Series, start: int) -> pl.DataFrame:
    """`{id, index}` for the distinct ids sorted (numerically when all are integers), indices from `start`."""
    frame = pl.DataFrame({"id": ids.unique()})
    if frame["id"].str.contains(r"^[0-9]{1,18}$").all():
        frame = frame.with_columns(pl.col("id").cast(pl.Int64).alias("number")).sort("number", "id").drop("number")
    else:
        frame = frame.sort("id")
    return frame.with_row_index("index", offset=start).with_columns(pl.col("index").cast(pl.Int64))


def _apply_index(frame: pl.DataFrame, user_map: pl.DataFrame, item_map: pl.DataFrame) -> pl.DataFrame:
    """Replaces original ids by indices; rows whose user or item is not indexed are dropped."""
    users = user_map.rename({"id": "user", "index": "user_index"})
    items = item_map.rename({"id": "item", "index": "item_index"})
    return (
        frame.join(users, on="user", how="inner")
        .join(items, on="item", how="inner")
        .drop("user", "item")
        .rename({"user_index": "user", "item_index": "item"})
    )


def chronological(frame: pl.DataFrame) -> pl.DataFrame:
    """Sorts by (user, ts, row) and adds `pos`, the event's position in its user's sequence."""
    frame = frame.select("user", "item", "ts", "row").sort("user", "ts", "row")
    return frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("user").alias("pos"))


def held_out(total: pl.Expr, amount: float) -> pl.Expr:
    """How many events `amount` holds out of `total`: a fraction (< 1, rounded half up) or a count."""
    if amount >= 1:
        return pl.lit(int(amount), dtype=pl.Int64)
    return (total * amount + 0.5).floor().cast(pl.Int64)


def split_events(events: pl.DataFrame, config: PipelineConfig) -> pl.DataFrame:
    """Adds `split` (0 train, 1 val, 2 test) by the per-user (`user`) or global time (`time`) rule."""
    if config.split == "user":
        return _split_per_user(events, config.test_fraction, config.val_fraction)
    return _split_by_time(events, config.test_fraction, config.val_fraction)


def _split_per_user(events: pl.DataFrame, test: float, val: float) -> pl.DataFrame:
    """The last `test` of each user's events to test, the `val` before them to val; >= 1 train event stays."""
    n = pl.len().over("user")
    n_test = pl.min_horizontal(pl.max_horizontal(held_out(n, test), 1), n - 1)
    floor_val = 1 if val > 0 else 0
    n_val = pl.max_horizontal(pl.min_horizontal(pl.max_horizontal(held_out(n, val), floor_val), n - 1 - n_test), 0)
    split = (
        pl.when(pl.col("pos") >= n - n_test)
        .then(TEST)
        .when(pl.col("pos") >= n - n_test - n_val)
        .then(VAL)
        .otherwise(TRAIN)
    )
    return events.with_columns(split.cast(pl.Int8).alias("split"))


def _split_by_time(events: pl.DataFrame, test: float, val: float) -> pl.DataFrame:
    """A global cut: events at or after the (1 - test) quantile of time are test, the `val` before them val."""
    stamps = events.sort("ts", "row")["ts"]
    total = stamps.len()
    n_test = pl.select(held_out(pl.lit(total), test)).item()
    n_val = pl.select(held_out(pl.lit(total), val)).item()
    test_start = min(max(total - n_test, 0), total - 1)
    val_start = min(max(test_start - n_val, 0), test_start)
    test_from, val_from = stamps[test_start], stamps[val_start]
    split = pl.when(pl.col("ts") >= test_from).then(TEST).when(pl.col("ts") >= val_from).then(VAL).otherwise(TRAIN)
    return events.with_columns(split.cast(pl.Int8).alias("split"))


def _check_split(events: pl.DataFrame, config: PipelineConfig) -> None:
    counts = dict(events.group_by("split").len().iter_rows())
    for code in (TRAIN, TEST):
        if not counts.get(code):
            raise DataError.at(
                config.label,
                f"{SPLIT_NAMES[code]} split",
                f"at least one event (split={config.split!r}, test_fraction={config.test_fraction}, "
                f"val_fraction={config.val_fraction}; {events.height} events of {events['user'].n_unique()} users)",
                "none",
            )


def frozen_negatives(
    events: pl.DataFrame, touched: pl.DataFrame, user_ids: pl.Series, num_items: int, config: PipelineConfig
) -> pl.DataFrame:
    """K negatives per val/test event (long frame: event, negative), uniform over items its user never
    touched, one generator per split. Long rather than an Array column: Parquet reads it ~8x faster."""
    k = config.num_negatives
    num_users = user_ids.len()
    touched = touched.select("user", "item").unique().sort("user", "item")
    counts = torch.bincount(touched["user"].to_torch(), minlength=num_users)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    items = touched["item"].to_torch().clone()
    frames = []
    for code in (VAL, TEST):
        rows = events.with_row_index("event").filter(pl.col("split") == code)
        users = rows["user"].to_torch().clone()
        _check_enough_unseen(users, counts, num_items, k, user_ids, config)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + code)
        sampled = sample_unseen(users, offsets, items, num_items, k, generator)
        event = rows["event"].cast(pl.Int64).to_numpy()
        frames.append(pl.DataFrame({"event": np.repeat(event, k), "negative": sampled.flatten().numpy()}))
    return pl.concat(frames, rechunk=True)


def _check_enough_unseen(
    users: torch.Tensor,
    counts: torch.Tensor,
    num_items: int,
    k: int,
    user_ids: pl.Series,
    config: PipelineConfig,
) -> None:
    if users.numel() == 0:
        return
    unseen = num_items - counts[users]
    short = torch.nonzero(unseen < k).flatten()
    if short.numel():
        user = int(users[short[0]])
        raise DataError.at(
            config.label,
            f"user {user_ids[user]!r}",
            f"at least max(eval_ks)={k} items the user never interacted with, to draw negatives from",
            f"{int(unseen[short[0]])} of {num_items} items",
        )
