"""The whole-log steps in bounded memory: the exact-duplicate count and the logged (user, item) pairs.

These are the only steps that see every row (not just the positives). Neither keeps a hash table of
the whole log: `count_copies` hashes each row to 64 bits, finds the repeated hashes with one sort
(16 bytes a row), then compares the few candidate rows exactly; `LoggedPairs`
keeps the pair codes as two narrow arrays and de-duplicates only the pairs of the users that are
evaluated, when the frozen negatives need them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from datamodules.arrays import ROWS_PER_SLICE, on_slices, run_starts

_SEED = 18


def count_copies(frame: pl.DataFrame, among: pl.Expr | None = None) -> tuple[int, int]:
    """Rows equal to an earlier row in every column but `row` (the same event logged twice), exactly: in the
    whole frame, and among the rows where `among` holds (the count of the frame filtered by it; 0 when None)."""
    if frame.height < 2:
        return 0, 0
    hashes = row_hashes(frame)
    ordered = pl.Series(hashes).sort().to_numpy()  # Polars' parallel sort: 3x faster than a hash table of every row
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if repeated.size == 0:
        return 0, 0
    # identical rows hash alike, so every copy and its original are candidates (with a rare colliding row);
    # a copy and its original agree on `among`'s columns, so the filtered frame's candidates are these, filtered
    candidates = frame.filter(pl.Series(hashes).is_in(pl.Series(repeated).implode())).select(pl.exclude("row"))
    kept = candidates.filter(among) if among is not None else candidates.clear()
    return candidates.height - candidates.n_unique(), kept.height - kept.n_unique()


def row_hashes(frame: pl.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's columns but `row` (`DataFrame.hash_rows`: no struct copy of the columns,
    3x the speed of hashing a struct in slices)."""
    return frame.select(pl.exclude("row")).hash_rows(_SEED).to_numpy()


@dataclass
class LoggedPairs:
    """Every logged (user, item) pair as integer codes, one per row (repeats kept until asked)."""

    user: np.ndarray  # (N,) user codes
    item: np.ndarray  # (N,) item codes

    @classmethod
    def of(cls, frame: pl.DataFrame) -> LoggedPairs:
        """The pairs of an encoded frame (its `user` and `item` code columns)."""
        return cls(frame["user"].to_numpy(), frame["item"].to_numpy())

    def keys(self, user_index: np.ndarray, item_index: np.ndarray, needed: np.ndarray, num_items: int) -> np.ndarray:
        """Sorted distinct keys `user * (num_items + 1) + item` (indices) of the `needed` users' pairs.

        `user_index[code]` / `item_index[code]` are the indices (-1: dropped by the filters, then so is
        the pair); `needed[user]` marks the users whose pairs are wanted. Runs in chunks of rows.
        """
        wanted = np.zeros(user_index.size, dtype=bool)
        used = user_index >= 0
        wanted[used] = needed[user_index[used]]

        def slice_keys(start: int) -> np.ndarray:
            user = self.user[start : start + ROWS_PER_SLICE]
            keep = wanted[user]
            pair_user, pair_item = user_index[user[keep]], item_index[self.item[start : start + ROWS_PER_SLICE][keep]]
            return pair_user[pair_item >= 0] * (num_items + 1) + pair_item[pair_item >= 0]

        parts = [np.zeros(0, dtype=np.int64), *on_slices(slice_keys, self.user.size)]
        keys = pl.Series(np.concatenate(parts)).sort().to_numpy()  # Polars' parallel sort: 4x numpy's unique here
        return keys[run_starts(keys)]
