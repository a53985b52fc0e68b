"""The evaluation sample: a seeded uniform subset of a held-out split's events, and its CTR@k interval."""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def sample_rows(size: int, max_events: int | None, seed: int, split: int) -> np.ndarray | None:
    """Sorted indices of `max_events` of a split's `size` events, uniform without replacement; None keeps all.

    None (no bound) or a split of at most `max_events` events keeps every event: the exact evaluation.
    The draw depends only on (seed, split, size, max_events): numpy's PCG64 seeded with `[seed, split]`.
    """
    if max_events is None or size <= max_events:
        return None
    rng = np.random.default_rng([seed, split])
    return np.sort(rng.choice(size, size=max_events, replace=False)).astype(np.int64)


def ctr_half_width(ctr: float, sampled: int, population: int, z: float = Z_95) -> float:
    """Half-width of the normal interval of a sampled mean CTR@k against the whole split.

    A per-event CTR lies in [0, 1] with mean `ctr`, so its variance is at most ctr * (1 - ctr); the
    finite-population factor makes it 0 when every event is evaluated (the figure is then exact).
    """
    if sampled <= 0 or population <= 1 or not 0 <= ctr <= 1:
        return math.nan if sampled <= 0 else 0.0
    fpc = max(population - sampled, 0) / (population - 1)
    return z * math.sqrt(ctr * (1 - ctr) / sampled * fpc)
