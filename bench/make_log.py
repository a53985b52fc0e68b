"""A synthetic Outbrain-shaped click log: clicks_train.csv + events.csv with Kaggle's columns, N click rows.

`python bench/make_log.py OUT_DIR --rows N [--seed S]`. The shape follows the real competition data:
each display (a page view, one row of events.csv) shows 2-12 ads (mean ~5.2, one row each in
clicks_train.csv) of which exactly one is clicked; ad popularity is Zipf-like (p ∝ 1/rank: a few
ads in many displays, a long tail in one or two); ~70% of displays belong to a user seen once
(Outbrain: ~86% of users appear once), the rest to a pool of returning users drawn with
p(rank) ∝ rank^-1/2 (a tail of heavy users, none holding more than ~0.1% of the displays at 100M);
timestamps (ms after Outbrain's epoch) grow with display_id over 15 days. Generated and written in
chunks of displays, vectorised, so memory stays bounded (~1 GB) whatever N. One JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ADS_PER_DISPLAY = (2, 12)  # Outbrain's range; 2 + Poisson(3.2) clipped gives a mean near its 5.2
ROWS_PER_AD = 180  # Outbrain: 87M click rows over ~480k ads
ONE_OFF_SHARE = 0.7  # displays whose user appears nowhere else
RETURNING_POOL = 0.05  # returning users per display
MIN_ADS = 1000
SPAN_MS = 15 * 86_400_000
CHUNK_ROWS = 8_000_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uuids(numbers: np.ndarray) -> pl.Series:
    """14-hex-character ids (Outbrain's uuid width), a bijective scramble of the user numbers."""
    scrambled = (numbers.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64((1 << 56) - 1)
    nibbles = (scrambled[:, None] >> (np.arange(13, -1, -1, dtype=np.uint64) * np.uint64(4))[None, :]) & np.uint64(15)
    text = np.ascontiguousarray(_HEX[nibbles.astype(np.int64)]).view("S14").ravel()
    return pl.Series("uuid", text).cast(pl.String)


def ad_counts(displays: int, rng: np.random.Generator) -> np.ndarray:
    """Ads shown per display."""
    low, high = ADS_PER_DISPLAY
    return np.clip(low + rng.poisson(3.2, displays), low, high)


def zipf_ranks(size: int, population: int, rng: np.random.Generator) -> np.ndarray:
    """Ranks 0..population-1 with p(rank) ∝ 1/(rank + 1) (log-uniform, a long tail)."""
    return np.minimum((np.exp(rng.random(size) * np.log(population + 1)) - 1).astype(np.int64), population - 1)


def users_of(displays: np.ndarray, total_displays: int, rng: np.random.Generator) -> np.ndarray:
    """User number per display: one-off users are numbered by display, returning ones drawn from a Zipf pool."""
    pool = max(1, int(total_displays * RETURNING_POOL))
    returning = rng.random(displays.size) >= ONE_OFF_SHARE
    user = displays.astype(np.int64) + pool  # one-off: numbers above the pool, one per display
    user[returning] = (pool * rng.random(int(returning.sum())) ** 2).astype(np.int64)  # p(rank) ∝ rank^-1/2
    return user


def chunk_frames(
    first_display: int, counts: np.ndarray, total_displays: int, ad_ids: np.ndarray, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The events and clicks rows of displays `first_display ..` with `counts` ads each."""
    displays = np.arange(first_display, first_display + counts.size, dtype=np.int64)
    stamp = (displays - 1) * SPAN_MS // total_displays + rng.integers(0, 1000, displays.size)
    events = pl.DataFrame(
        {
            "display_id": displays,
            "uuid": uuids(users_of(displays, total_displays, rng)),
            "document_id": rng.integers(1, 3_000_000, displays.size),
            "timestamp": stamp,
            "platform": rng.integers(1, 4, displays.size),
            "geo_location": pl.Series(["US>CA>807", "US>NY>501", "GB>H9", "CA>ON", "US>TX>623"]).gather(
                rng.integers(0, 5, displays.size)
            ),
        }
    )
    row_display = np.repeat(displays, counts)
    start = np.cumsum(counts) - counts
    clicked = np.zeros(row_display.size, dtype=np.int8)
    clicked[start + (rng.random(counts.size) * counts).astype(np.int64)] = 1  # exactly one click per display
    clicks = pl.DataFrame(
        {"display_id": row_display, "ad_id": ad_ids[zipf_ranks(row_display.size, ad_ids.size, rng)], "clicked": clicked}
    )
    return events, clicks


def make_log(out: Path, rows: int, seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """Writes `out/clicks_train.csv` (exactly `rows` rows) and `out/events.csv`; returns sizes and seconds."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = ad_counts(rows, rng)  # more displays than needed; cut where the rows reach `rows`
    total_displays = int(np.searchsorted(np.cumsum(counts), rows) + 1)
    counts = counts[:total_displays]
    counts[-1] -= int(counts.sum()) - rows
    ad_ids = rng.permutation(np.arange(1, max(rows // ROWS_PER_AD, MIN_ADS) + 1))  # popularity rank -> ad id
    per_chunk = max(1, chunk_rows * total_displays // max(rows, 1))
    with (out / "events.csv").open("wb") as events_file, (out / "clicks_train.csv").open("wb") as clicks_file:
        for first in range(0, total_displays, per_chunk):
            events, clicks = chunk_frames(first + 1, counts[first : first + per_chunk], total_displays, ad_ids, rng)
            events.write_csv(events_file, include_header=first == 0)
            clicks.write_csv(clicks_file, include_header=first == 0)
    return {
        "rows": rows,
        "displays": total_displays,
        "ads": int(ad_ids.size),
        "csv_gb": round(sum((out / n).stat().st_size for n in ("events.csv", "clicks_train.csv")) / 1e9, 3),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    """CLI: writes the log and prints its summary as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(make_log(args.out, args.rows, args.seed)), file=sys.stdout)


if __name__ == "__main__":
    main()
