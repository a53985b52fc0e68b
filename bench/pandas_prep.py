"""The reference pandas implementation of the data pipeline, for `bench/data_prep.py` (not used by lit_rec).

Same steps and semantics as `datamodules.pipeline.prepare` + `datamodules.tensors.build_tensors`
on a MovieLens `ratings.dat` / `u.data` log (user item rating ts; ids kept as the original
strings): drop null rows, positives (rating >= threshold), dedupe (first by (ts, file order)),
iterative k-core, re-index (sorted original id, numerically when all ids are integers),
chronological order (ts, then file order), per-user split, histories and frozen negatives.
Vectorised pandas only (groupby / merge / rank / factorize, no Python loop over rows); the
frozen negatives use the project's torch sampler (`datamodules.negatives.sample_unseen`) on the
same inputs and seeds, so both implementations must give identical tensors.

Only the user split (`split="user"`) is implemented: the benchmark's configs/data/ml1m.yaml uses it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datamodules.negatives import sample_unseen
from datamodules.pipeline import DROP_REASONS, TEST, TRAIN, VAL
from datamodules.tensors import RecTensors, tensors_from_events

COLUMNS = ["user", "item", "rating", "ts"]


@dataclass(frozen=True)
class PandasConfig:
    """The `PipelineConfig` fields this implementation reads."""

    path: str
    positive_threshold: float = 4.0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    min_user_interactions: int = 5
    min_item_interactions: int = 1
    num_negatives: int = 100
    seed: int = 0


def movielens_file(path: str | Path) -> Path:
    """`ratings.dat` or `u.data` in the folder (or the file itself)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in ("u.data", "ratings.dat"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no u.data or ratings.dat")


def read_movielens(path: str | Path) -> pd.DataFrame:
    """user, item (original ids as strings), rating (float64), ts (int64), row (file order)."""
    file = movielens_file(path)
    data = file.read_bytes()
    if b"::" in data[: data.find(b"\n")]:
        data = data.replace(b"::", b"\t")  # the C parser splits on one character only (as Polars)
    frame = pd.read_csv(
        io.BytesIO(data),
        sep="\t",
        header=None,
        names=COLUMNS,
        usecols=range(4),
        dtype={"user": "str", "item": "str", "rating": "float64", "ts": "Int64"},
        engine="c",
    )
    frame["row"] = np.arange(len(frame), dtype=np.int64)
    return frame


def drop_nulls(frame: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """Drops rows with a null user, item, ts or rating, counting each reason once (in that order)."""
    for column in ("user", "item", "ts", "rating"):
        keep = frame[column].notna().to_numpy()
        dropped[f"null_{column}"] += int((~keep).sum())
        if not keep.all():
            frame = frame[keep]
    return frame


def index_ids(codes: np.ndarray, uniques: pd.Index, start: int) -> tuple[np.ndarray, np.ndarray]:
    """New index of each used code and the original ids in index order (numeric sort when all ids are integers)."""
    used = np.unique(codes)
    ids = pd.Series(np.asarray(uniques, dtype=object)[used])
    if ids.str.fullmatch(r"[0-9]{1,18}").all():
        order = pd.DataFrame({"number": ids.astype("int64"), "id": ids}).sort_values(["number", "id"], kind="stable").index
    else:
        order = ids.sort_values(kind="stable").index
    order = order.to_numpy()
    new_index = np.full(len(uniques), -1, dtype=np.int64)
    new_index[used[order]] = np.arange(len(order), dtype=np.int64) + start
    return new_index, ids.to_numpy()[order]


def k_core(frame: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Iteratively drops users with < min_user and items with < min_item events until both hold."""
    while True:
        user_count = frame.groupby("u")["u"].transform("size")
        item_count = frame.groupby("i")["i"].transform("size")
        keep = ((user_count >= min_user) & (item_count >= min_item)).to_numpy()
        if keep.all():
            return frame
        frame = frame[keep]


def held_out(total: pd.Series, amount: float) -> pd.Series:
    """A fraction (< 1, rounded half up) of `total`, or the count `amount`."""
    if amount >= 1:
        return pd.Series(int(amount), index=total.index, dtype="int64")
    return np.floor(total * amount + 0.5).astype("int64")


def split_per_user(events: pd.DataFrame, test: float, val: float) -> np.ndarray:
    """0 train / 1 val / 2 test per event (events sorted by user, then chronological with `pos`)."""
    n = events.groupby("user")["user"].transform("size")
    n_test = held_out(n, test).clip(lower=1)
    n_test = np.minimum(n_test, n - 1)
    floor_val = 1 if val > 0 else 0
    n_val = np.maximum(np.minimum(held_out(n, val).clip(lower=floor_val), n - 1 - n_test), 0)
    pos = events["pos"]
    return np.where(pos >= n - n_test, TEST, np.where(pos >= n - n_test - n_val, VAL, TRAIN)).astype(np.int8)


@dataclass
class PandasPrepared:
    """What the pandas pipeline hands to `build_tensors`."""

    events: pd.DataFrame  # user, item, ts, row, pos, split; sorted by (user, pos)
    negatives: dict[int, torch.Tensor]  # split code -> (E_split, K) in event order
    user_ids: np.ndarray
    item_ids: np.ndarray
    dropped: dict[str, int]


def prepare(config: PandasConfig) -> PandasPrepared:
    """Runs every step on the MovieLens log at `config.path`."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    raw = drop_nulls(read_movielens(config.path), dropped)
    # ids as integer codes once; the original strings come back at re-indexing
    user_codes, user_uniques = pd.factorize(raw["user"])
    item_codes, item_uniques = pd.factorize(raw["item"])
    raw = pd.DataFrame({"u": user_codes, "i": item_codes, "ts": raw["ts"].to_numpy("int64"),
                        "row": raw["row"].to_numpy(), "rating": raw["rating"].to_numpy()})
    before = len(raw)
    raw = raw.drop_duplicates(["u", "i", "ts", "rating"], keep="first")  # the same event logged twice
    dropped["exact_duplicate"] += before - len(raw)
    touched = raw[["u", "i"]].drop_duplicates()

    positive = (raw["rating"] >= config.positive_threshold).to_numpy()
    dropped["below_threshold"] += int((~positive).sum())
    events = raw[positive]
    before = len(events)
    events = events.sort_values(["ts", "row"], kind="stable").drop_duplicates(["u", "i"], keep="first")
    dropped["duplicate"] += before - len(events)
    before = len(events)
    events = k_core(events, config.min_user_interactions, config.min_item_interactions)
    dropped["k_core"] += before - len(events)
    if events.empty:
        raise ValueError(f"{config.path}: no events left after the filters")

    user_index, user_ids = index_ids(events["u"].to_numpy(), user_uniques, start=0)
    item_index, item_ids = index_ids(events["i"].to_numpy(), item_uniques, start=1)
    events = pd.DataFrame({"user": user_index[events["u"].to_numpy()], "item": item_index[events["i"].to_numpy()],
                           "ts": events["ts"].to_numpy(), "row": events["row"].to_numpy()})
    events = events.sort_values(["user", "ts", "row"], kind="stable", ignore_index=True)
    events["pos"] = events.groupby("user").cumcount().astype("int64")
    events["split"] = split_per_user(events, config.test_fraction, config.val_fraction)
    counts = events["split"].value_counts()
    if not counts.get(TRAIN) or not counts.get(TEST):
        raise ValueError(f"{config.path}: no train or no test event")

    touched_user, touched_item = user_index[touched["u"].to_numpy()], item_index[touched["i"].to_numpy()]
    indexed = (touched_user >= 0) & (touched_item >= 0)  # pairs of users/items dropped by the filters go
    touched = pd.DataFrame({"user": touched_user[indexed], "item": touched_item[indexed]})
    negatives = frozen_negatives(events, touched, len(user_ids), len(item_ids), config)
    return PandasPrepared(events, negatives, user_ids, item_ids, dropped)


def frozen_negatives(
    events: pd.DataFrame, touched: pd.DataFrame, num_users: int, num_items: int, config: PandasConfig
) -> dict[int, torch.Tensor]:
    """K negatives per val/test event from the project's sampler, fed the same CSR and seeds as the Polars pipeline."""
    touched = touched.sort_values(["user", "item"], kind="stable")
    counts = torch.bincount(torch.from_numpy(touched["user"].to_numpy()), minlength=num_users)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    items = torch.from_numpy(touched["item"].to_numpy().copy())
    split = events["split"].to_numpy()
    out = {}
    for code in (VAL, TEST):
        users = torch.from_numpy(events["user"].to_numpy()[split == code].copy())
        if int((num_items - counts[users] < config.num_negatives).sum()):
            raise ValueError(f"{config.path}: a user has fewer than {config.num_negatives} unseen items")
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + code)
        out[code] = sample_unseen(users, offsets, items, num_items, config.num_negatives, generator)
    return out


def build_tensors(prepared: PandasPrepared, history_len: int) -> RecTensors:
    """The same `RecTensors` as `datamodules.tensors.build_tensors` (the same `tensors_from_events`)."""
    events = prepared.events
    user, item, split, pos = (torch.from_numpy(events[c].to_numpy().astype(np.int64)) for c in ("user", "item", "split", "pos"))
    return tensors_from_events(
        user, item, split, pos, prepared.negatives, history_len,
        item_ids=["<PAD>", *(str(i) for i in prepared.item_ids)], user_ids=[str(u) for u in prepared.user_ids],
        dropped=dict(prepared.dropped),
    )


def prepare_tensors(config: PandasConfig, history_len: int = 10) -> RecTensors:
    """Raw log -> model-ready tensors."""
    return build_tensors(prepare(config), history_len)
