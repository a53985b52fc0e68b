"""Array steps over the whole log: slices run on Polars' thread count, and the runs of a sorted array.

numpy releases the GIL inside its vectorised calls, so a step that writes each slice's own rows runs
its slices in parallel on a thread pool as large as Polars' (the cores Polars' own steps use).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import polars as pl

ROWS_PER_SLICE = 1 << 22  # rows per vectorised step over the whole log (~100 MB of temporaries)
Result = TypeVar("Result")


def on_slices(step: Callable[[int], Result], rows: int) -> list[Result]:
    """`step(start)` for every slice start `0, ROWS_PER_SLICE, ...` below `rows`, on Polars' thread count; results in order."""
    with ThreadPoolExecutor(pl.thread_pool_size()) as pool:
        return list(pool.map(step, range(0, rows, ROWS_PER_SLICE)))


def run_starts(ordered: np.ndarray) -> np.ndarray:
    """`(N,)` bool: where each run of equal values of the sorted `ordered (N,)` begins."""
    starts = np.empty(ordered.size, dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


def sorted_with_positions(values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """`values` in ascending order and the position each came from (ties in position order): one parallel sort."""
    by_value = pl.DataFrame({"value": values}).with_row_index("position").sort("value", "position")
    return by_value["value"].to_numpy(), by_value["position"].to_numpy()
