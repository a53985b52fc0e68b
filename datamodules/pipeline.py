"""The one Polars pipeline: canonical log -> cleaned, re-indexed, split events with frozen negatives (cached).

Steps, for every format alike: drop rows with a null user/item/ts (or rating); exact duplicates
(the same event logged twice: user, item, ts and rating equal) counted as dropped, the first in file
order being the one the dedupe keeps, and the logged (user, item) pairs kept for the negatives (the
two whole-log steps, in bounded memory: `datamodules.logged`); keep positives (rating >= threshold,
or every row when there is no rating); drop repeated
(user, item) positives keeping the first chronologically; iterative k-core; re-index
(users 0..U-1, items 1..I by sorted original id, numerically when all ids are integers);
chronological order (ts, then file order `row`); split; frozen negatives. Positives are
selected before de-duplication so that an ad shown twice and clicked the second time keeps
its click. `datamodules.cache` stores the result.

The original ids are strings; they are hashed once, right after the null check, into dense integer
codes (`encode_ids`), and every later step (positives, dedupe, the logged pairs, k-core, re-indexing,
sorting) works on those codes; the strings come back only for the ids that survive, in `id_index`.
The frozen negatives stay the sampler's tensors. With `eval_max_events`, val and test each keep a
seeded uniform sample of that many events (`datamodules.eval_sample`) and negatives are drawn for the
sample only; `None` (or a split no larger) keeps every event, exactly as before. Integer columns
leave the pipeline in the narrowest dtype that fits (`narrowest`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from datamodules import readers
from datamodules.errors import DataError
from datamodules.eval_sample import sample_rows
from datamodules.arrays import ROWS_PER_SLICE, on_slices, run_starts, sorted_with_positions
from datamodules.logged import LoggedPairs, count_copies
from datamodules.negatives import sample_unseen, sample_unseen_sparse
from datamodules.readers import Source
from datamodules.synthetic import SyntheticConfig, simulate

PIPELINE_VERSION = 6  # bump when the prepared frames change meaning or layout
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
DROP_REASONS = {
    "null_user": "with a null user",
    "null_item": "with a null item",
    "null_ts": "with a null timestamp",
    "null_rating": "with a null rating",
    "exact_duplicate": "logged twice (same user, item, timestamp and rating; kept the first)",
    "below_threshold": "with a rating below the positive threshold",
    "duplicate": "repeating a (user, item) positive (kept the first)",  # a later interaction, not a copy
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
    eval_max_events: int | None = None  # per held-out split; None: every event
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

    events: pl.DataFrame  # user, item, ts, row, pos, split (0/1/2), narrowest integer dtypes; sorted by (user, pos)
    negatives: dict[int, torch.Tensor]  # VAL / TEST -> (E_eval, K) item ids, rows in the split's (sampled) event order
    user_ids: pl.Series  # original id of user index u
    item_ids: pl.Series  # original id of item index i + 1
    dropped: dict[str, int]
    num_negatives: int  # K per val/test event
    eval_rows: dict[int, np.ndarray | None] = field(default_factory=dict)  # VAL / TEST -> sampled rows of the split (None: all)
    mapped: dict[str, np.ndarray] = field(default_factory=dict)  # event columns memory-mapped from the cache (read_cache)

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


def read_canonical(config: PipelineConfig) -> tuple[pl.DataFrame, pl.Series | None]:
    """The canonical frame of the configured source (simulated for `synthetic`), and the id of each user code
    when the reader coded the users itself (`readers.read_source_coded`; None: `user` holds the ids)."""
    if config.source.format == "synthetic":
        return simulate(config.synthetic), None
    return readers.read_source_coded(config.source)


def prepare(config: PipelineConfig) -> Prepared:
    """Runs every step on the configured source (no cache)."""
    with single_threaded():
        return _prepare(config)


def _prepare(config: PipelineConfig) -> Prepared:
    dropped = dict.fromkeys(DROP_REASONS, 0)
    raw, coded_users = read_canonical(config)
    raw = drop_nulls(raw, dropped)
    raw, user_ids, item_ids = encode_ids(raw, coded_users)
    # exact duplicates: counted, not removed (the dedupe keeps their original), in the log and among its positives;
    # only counts depend on them, so they are counted on a second thread while the positives are de-duplicated
    rated = "rating" in raw.columns
    with ThreadPoolExecutor(1) as background:
        counting = background.submit(count_copies, raw, pl.col("rating") >= config.threshold if rated else pl.lit(True))
        logged = LoggedPairs.of(raw)  # every logged pair: frozen negatives avoid them all
        events = select_positives(raw, config.threshold, dropped).drop("rating", strict=False)
        del raw  # the whole log: freed once counted (at 100M rows it is most of the memory)
        events = dedupe(events, dropped)
        copies, positive_copies = counting.result()
    dropped["exact_duplicate"] += copies
    dropped["below_threshold"] -= copies - positive_copies  # a copy below the threshold counts as a copy only
    dropped["duplicate"] -= positive_copies  # the dedupe removed them too: copies, not repeats
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
    user_index, user_ids = id_index(events["user"], user_ids, start=0)
    item_index, item_ids = id_index(events["item"], item_ids, start=1)
    events = chronological(_apply_index(events, user_index, item_index), time_ordered=True)  # dedupe sorted by time
    events = split_events(events, config)
    _check_split(events, config)
    eval_rows = {code: sample_rows(int((events["split"] == code).sum()), config.eval_max_events, config.seed, code)
                 for code in (VAL, TEST)}
    negatives = frozen_negatives(events, logged, user_index, item_index, user_ids, item_ids.len(), config, eval_rows)
    return Prepared(narrowed(events), negatives, user_ids, item_ids, dropped, config.num_negatives, eval_rows)


def narrowest(largest: int, smallest: int = 0) -> pl.DataType:
    """The narrowest Polars integer dtype holding `smallest..largest` (signed when `smallest` < 0)."""
    kinds = _SIGNED if smallest < 0 else _UNSIGNED
    return next((kind for kind, numpy in kinds if np.iinfo(numpy).min <= smallest and largest <= np.iinfo(numpy).max),
                pl.Int64)


_SIGNED = ((pl.Int8, np.int8), (pl.Int16, np.int16), (pl.Int32, np.int32), (pl.Int64, np.int64))
_UNSIGNED = ((pl.UInt8, np.uint8), (pl.UInt16, np.uint16), (pl.UInt32, np.uint32), (pl.Int64, np.int64))


def narrowed(events: pl.DataFrame) -> pl.DataFrame:
    """`events` with user, item, pos, row and split in the narrowest integer dtype that fits (ts stays Int64)."""
    columns = [c for c in ("user", "item", "pos", "row", "split") if c in events.columns]
    bounds = events.select(*(pl.col(c).min().alias(f"{c}_min") for c in columns),
                           *(pl.col(c).max().alias(f"{c}_max") for c in columns)).row(0, named=True)
    return events.with_columns(
        pl.col(c).cast(narrowest(int(bounds[f"{c}_max"] or 0), min(int(bounds[f"{c}_min"] or 0), 0))) for c in columns
    )


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


def encode_ids(frame: pl.DataFrame, user_ids: pl.Series | None = None) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """Replaces the `user` and `item` strings by dense integer codes (0..n-1, first appearance order).

    Returns the frame and, per column, the original ids by code (`ids[code]`). Each string is
    hashed once here; joins, sorts and groupings downstream then work on small integers.
    `user_ids`: the `user` column holds codes already (a coding reader's), these are their ids.
    """
    columns, ids = [], []
    for name in ("user", "item"):
        if name == "user" and user_ids is not None:
            columns.append(frame["user"].cast(pl.UInt32))
            ids.append(user_ids.rename("id"))
            continue
        code, distinct = _encode(frame[name])
        columns.append(code.alias(name))
        ids.append(distinct.rename("id"))
    return frame.with_columns(columns), ids[0], ids[1]


def _encode(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """UInt32 codes of one id column and the id (a string) of each code."""
    if isinstance(column.dtype, pl.Enum):  # the typed Outbrain reader's users: the codes are there already
        return column.to_physical().cast(pl.UInt32), column.dtype.categories
    if column.dtype.is_integer():  # integer ids (typed reader): codes in numeric order
        codes, distinct = _integer_codes(column)
        return codes, distinct.cast(pl.String)
    column = column if column.dtype == pl.String else column.cast(pl.String)
    distinct = column.unique(maintain_order=True)
    return column.cast(pl.Enum(distinct)).to_physical().cast(pl.UInt32), distinct


_LOOKUP_SPAN = 1 << 26  # integer id ranges up to which codes come from a dense lookup table (256 MB)


def _integer_codes(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """UInt32 code of each integer id (its rank among the distinct ids) and the sorted distinct ids.

    Ids within a range of `_LOOKUP_SPAN`: a presence table marked slice by slice, its running count is the
    code (no hash table of the column: at 100M rows `unique` alone took seconds); wider ids: a sorted
    `unique` and a binary search."""
    low, high = column.min(), column.max()
    if low is None or int(high) - int(low) >= _LOOKUP_SPAN:
        distinct = column.unique().sort()
        return distinct.search_sorted(column).cast(pl.UInt32), distinct
    low = int(low)
    present = np.zeros(int(high) - low + 1, dtype=bool)

    def mark(start: int) -> None:  # slices: no int64 copy of the whole column; every writer writes True
        present[column.slice(start, ROWS_PER_SLICE).to_numpy() - low] = True

    on_slices(mark, column.len())
    table = (np.cumsum(present, dtype=np.int64) - 1).astype(np.uint32)
    codes = np.empty(column.len(), dtype=np.uint32)

    def code(start: int) -> None:
        codes[start : start + ROWS_PER_SLICE] = table[column.slice(start, ROWS_PER_SLICE).to_numpy() - low]

    on_slices(code, column.len())
    distinct = pl.Series(column.name, np.flatnonzero(present) + low).cast(column.dtype)
    return pl.Series(column.name, codes), distinct


def dedupe(frame: pl.DataFrame, dropped: dict[str, int]) -> pl.DataFrame:
    """Keeps the chronologically first row of each (user, item) (integer codes); every row removed counts as a
    `duplicate` (the caller moves exact copies to `exact_duplicate`). An exact copy has its original's ts and a
    later `row`, so the original is the row kept."""
    # readers number rows in file order and the filters keep it: then a stable sort by ts is the (ts, row) order
    ordered = frame.sort("ts", maintain_order=True) if frame["row"].is_sorted() else frame.sort("ts", "row")
    key = pl.col("user").cast(pl.Int64) * (pl.col("item").max().cast(pl.Int64) + 1) + pl.col("item")
    kept = ordered.filter(first_occurrences(ordered.select(key.alias("key")).to_series()))
    dropped["duplicate"] += frame.height - kept.height
    return kept


def first_occurrences(keys: pl.Series) -> pl.Series:
    """Whether each value is its first occurrence (`is_first_distinct`), by one parallel sort of (key, position)
    instead of a hash table (19M keys: 1.6-2.7 s against 3.4-4.0 s)."""
    ordered, position = sorted_with_positions(keys)
    first = np.zeros(ordered.size, dtype=bool)
    first[position[run_starts(ordered)]] = True
    return pl.Series(first)


def k_core(frame: pl.DataFrame, min_user: int, min_item: int, dropped: dict[str, int]) -> pl.DataFrame:
    """Iteratively drops users with < min_user and items with < min_item events until both hold."""
    before = frame.height
    if min_user <= 1 and min_item <= 1:  # every user and item of a row has that row: nothing to drop
        return frame
    while True:
        kept = frame.filter((pl.len().over("user") >= min_user) & (pl.len().over("item") >= min_item))
        if kept.height == frame.height:
            break
        frame = kept
    dropped["k_core"] += before - frame.height
    return frame


def id_index(codes: pl.Series, ids: pl.Series, start: int) -> tuple[np.ndarray, pl.Series]:
    """Indices of the codes in use: sorted by original id (numerically when all are integers), from `start`.

    Returns `index` (`index[code]`, -1 for a code not in use) and the original ids in index order.
    """
    used = codes.unique().sort()
    frame = pl.DataFrame({"code": used, "id": ids.gather(used)})
    if frame["id"].str.contains(r"^[0-9]{1,18}$").all():
        frame = frame.with_columns(pl.col("id").cast(pl.Int64).alias("number")).sort("number", "id")
    elif not frame["id"].is_sorted():  # codes in id order (a coding reader's) are left as they are
        frame = frame[string_order(frame["id"])]
    index = np.full(ids.len(), -1, dtype=np.int64)
    index[frame["code"].to_numpy()] = np.arange(start, start + frame.height, dtype=np.int64)
    return index, frame["id"]


def string_order(ids: pl.Series) -> pl.Series:
    """The indices that sort distinct strings bytewise (as `sort`), by two big-endian UInt64 keys of their
    first 16 bytes when every id is ASCII, NUL-free and at most 16 bytes long (uuids: 4x faster)."""
    short = ids.str.len_bytes()
    if (ids.len() == 0 or short.max() > 16 or (short != ids.str.len_chars()).any()
            or ids.str.contains("\x00", literal=True).any()):
        return ids.arg_sort()
    padded = (ids.str.slice(start, 8).str.pad_end(8, "\x00").cast(pl.Binary) for start in (0, 8))
    halves = [half.bin.reinterpret(dtype=pl.UInt64, endianness="big") for half in padded]
    return pl.DataFrame({"high": halves[0], "low": halves[1]}).with_row_index().sort("high", "low")["index"]


def _apply_index(frame: pl.DataFrame, user_index: np.ndarray, item_index: np.ndarray) -> pl.DataFrame:
    """Replaces the codes of `frame` (every code in use) by their indices."""
    return frame.with_columns(
        pl.Series("user", user_index[frame["user"].to_numpy()]),
        pl.Series("item", item_index[frame["item"].to_numpy()]),
    )


def chronological(frame: pl.DataFrame, time_ordered: bool = False) -> pl.DataFrame:
    """Sorts by (user, ts, row) and adds `pos`, the event's position in its user's sequence.

    `time_ordered`: the rows are already in (ts, row) order, so a stable sort by user is enough (4x faster).
    """
    frame = frame.select("user", "item", "ts", "row")
    if time_ordered:  # a stable sort of the row numbers by user, then one gather (1.7x numpy's stable argsort)
        order = frame.select("user").with_row_index("order").sort("user", maintain_order=True)["order"]
        frame = frame[order]
    else:
        frame = frame.sort("user", "ts", "row")
    user = frame["user"].to_numpy()
    first = np.concatenate([[0], np.flatnonzero(user[1:] != user[:-1]) + 1])  # each user's first event
    starts = np.repeat(first, np.diff(np.append(first, user.size)))
    return frame.with_columns(pl.Series("pos", np.arange(user.size, dtype=np.int64) - starts))


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
    stamps = events["ts"].sort()  # the (ts, row) order's timestamps: ties hold equal values
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
    events: pl.DataFrame,
    logged: LoggedPairs,
    user_index: np.ndarray,
    item_index: np.ndarray,
    user_ids: pl.Series,
    num_items: int,
    config: PipelineConfig,
    eval_rows: dict[int, np.ndarray | None] | None = None,
) -> dict[int, torch.Tensor]:
    """K negatives per evaluated val/test event (`(E_eval, K)` per split, rows in event order), uniform over the
    items its user never touched (any pair in `logged`), one generator per split.

    `eval_rows[split]` selects the split's evaluated events (None: all). Only the evaluated users' logged
    pairs are gathered (in chunks), so memory follows the sample, not the log."""
    k = config.num_negatives
    num_users = user_ids.len()
    user = events["user"].to_numpy().astype(np.int64)
    split = events["split"].to_numpy()
    chosen = {}
    for code in (VAL, TEST):
        users = user[split == code]
        rows = (eval_rows or {}).get(code)
        chosen[code] = users if rows is None else users[rows]
    needed = np.zeros(num_users, dtype=bool)
    for users in chosen.values():
        needed[users] = True
    keys = torch.from_numpy(logged.keys(user_index, item_index, needed, num_items))  # sorted
    counts = torch.bincount(keys // (num_items + 1), minlength=num_users)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    items = keys % (num_items + 1)

    def draw(code: int) -> torch.Tensor:
        users = torch.from_numpy(chosen[code])
        _check_enough_unseen(users, counts, num_items, k, user_ids, config)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + code)
        sampler = sample_unseen if (eval_rows or {}).get(code) is None else sample_unseen_sparse  # a sample: large log
        return sampler(users, offsets, items, num_items, k, generator)

    with ThreadPoolExecutor(2) as pool:  # one generator per split: the two draw at once, each as it would alone
        return dict(zip((VAL, TEST), pool.map(draw, (VAL, TEST))))


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
