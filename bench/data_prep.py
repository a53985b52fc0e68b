"""Data preparation benchmark: raw MovieLens-1M (users 1-2999) to model-ready tensors, Polars pipeline vs pandas.

`python bench/data_prep.py [--quick]`. Side A is the project's pipeline,
`datamodules.pipeline.prepare` + `datamodules.tensors.build_tensors` (no cache); side B is the
vectorised pandas implementation of the same steps in `bench/pandas_prep.py`. Both draw the frozen
negatives with the same torch sampler (`datamodules.negatives.sample_unseen`) from the same inputs,
so the outputs are checked to be identical (users, items, ids, splits, histories, CSRs, popularity,
negatives, dropped counts) before anything is timed. The two sides run interleaved (A, B, A, B, ...)
and the medians are reported; torch and Polars are pinned to one thread (and Arrow, which pandas'
strings use). The time spent inside the shared torch sampler is reported too (`negatives_s`), with
the speedup of the table work alone (`speedup_tables`), since both sides pay it alike. `*_cpu`
figures are the same from process CPU time; `speedup_ceiling_cpu` is pandas' time over the
sampler's, the speedup a Polars side with free table work would reach.
Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

THREADS = 1
os.environ["POLARS_MAX_THREADS"] = str(THREADS)  # before polars is imported
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import polars as pl  # noqa: E402
import pyarrow  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import pandas_prep  # noqa: E402
from datamodules import negatives as negatives_module  # noqa: E402
from datamodules import pipeline  # noqa: E402
from datamodules.pipeline import PipelineConfig  # noqa: E402
from datamodules.readers import Source  # noqa: E402
from datamodules.tensors import Histories, RecTensors, build_tensors  # noqa: E402

DATA = "../shared/data/ml-1m-users1-2999"
TARGET_SPEEDUP = 3.0
HISTORY_LEN = 10
SETTINGS = {"quick": {"repeats": 3}, "full": {"repeats": 7}}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/data_prep] {message}", file=sys.stderr, flush=True)


class SamplerClock:
    """Wraps the shared negative sampler to add up the time spent in it (both sides call it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._inner = negatives_module.sample_unseen

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu_start

    def install(self) -> None:
        """Both pipelines look the sampler up in their own module namespace."""
        pipeline.sample_unseen = self
        pandas_prep.sample_unseen = self


def polars_side(path: str) -> Callable[[], RecTensors]:
    """The project's pipeline (configs/data/ml1m.yaml settings, eval_ks up to 100), no cache."""
    config = PipelineConfig(
        source=Source("movielens", path),
        positive_threshold=4.0,
        split="user",
        test_fraction=0.2,
        val_fraction=0.1,
        min_user_interactions=5,
        min_item_interactions=1,
        num_negatives=100,
        seed=0,
    )
    return lambda: build_tensors(pipeline.prepare(config), HISTORY_LEN)


def pandas_side(path: str) -> Callable[[], RecTensors]:
    """The pandas reference with the same settings."""
    config = pandas_prep.PandasConfig(path=path, positive_threshold=4.0, test_fraction=0.2, val_fraction=0.1,
                                      min_user_interactions=5, min_item_interactions=1, num_negatives=100, seed=0)
    return lambda: pandas_prep.prepare_tensors(config, HISTORY_LEN)


def differences(a: RecTensors, b: RecTensors) -> list[str]:
    """Fields where the two tensor sets differ (empty: identical)."""
    found = []
    for name in ("num_users", "num_items", "history_len", "item_ids", "user_ids", "dropped"):
        if getattr(a, name) != getattr(b, name):
            found.append(name)
    tensors = ["item_popularity", "train_offsets", "train_sequence", "seen_offsets", "seen_items", "all_offsets", "all_sequence"]
    tensors += [f"train.{f}" for f in ("user", "history", "item")]
    tensors += [f"{s}.{f}" for s in ("val", "test") for f in ("user", "history", "positive", "negatives")]
    for name in tensors:
        x, y = a, b
        for part in name.split("."):
            x, y = getattr(x, part), getattr(y, part)
        x, y = (v[:] if isinstance(v, Histories) else v for v in (x, y))  # train states: the rows a table held
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            found.append(name)
    return found


def raw_rows(path: str) -> int:
    """Lines of the raw log."""
    with pandas_prep.movielens_file(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def main() -> None:
    """Checks the two sides agree, times them interleaved and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (well within 2 minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (overrides the setting)")
    parser.add_argument("--data", default=str(ROOT / DATA), help="MovieLens folder")
    args = parser.parse_args()
    repeats = args.repeats or SETTINGS["quick" if args.quick else "full"]["repeats"]
    torch.set_num_threads(THREADS)
    pyarrow.set_cpu_count(THREADS)
    pyarrow.set_io_thread_count(THREADS)
    if not Path(args.data).exists():
        sys.exit(f"bench/data_prep.py: data not found at {args.data}")
    started = time.perf_counter()

    clock = SamplerClock()
    clock.install()
    sides = {"polars": polars_side(args.data), "pandas": pandas_side(args.data)}
    results = {name: run() for name, run in sides.items()}  # also the warm-up run of each side
    mismatch = differences(results["polars"], results["pandas"])
    if mismatch:
        sys.exit(f"bench/data_prep.py: Polars and pandas outputs differ in {', '.join(mismatch)}")
    tensors = results["polars"]
    log(f"outputs identical: {tensors.num_users} users, {tensors.num_items} items, "
        f"{len(tensors.train)}/{len(tensors.val)}/{len(tensors.test)} train/val/test events")

    times: dict[str, list[float]] = {name: [] for name in sides}
    sampler: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    sampler_cpu: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(repeats):
        for name, run in sides.items():  # interleaved: A, B, A, B, ...
            clock.seconds = clock.cpu_seconds = 0.0
            start, cpu_start = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            sampler[name].append(clock.seconds)
            sampler_cpu[name].append(clock.cpu_seconds)
        log(f"repeat {repeat + 1}/{repeats}: polars {times['polars'][-1]:.2f} s, pandas {times['pandas'][-1]:.2f} s")

    polars_s, pandas_s = statistics.median(times["polars"]), statistics.median(times["pandas"])
    negatives_s = statistics.median(sampler["polars"] + sampler["pandas"])
    polars_tables = statistics.median(t - s for t, s in zip(times["polars"], sampler["polars"]))
    pandas_tables = statistics.median(t - s for t, s in zip(times["pandas"], sampler["pandas"]))
    report = {
        "bench": "data_prep",
        "data": DATA,
        "threads": {"torch": torch.get_num_threads(), "polars": pl.thread_pool_size(), "arrow": pyarrow.cpu_count()},
        "timing": f"median of {repeats} interleaved repeats per side (after one untimed run each)",
        "rows": raw_rows(args.data),
        "events": len(tensors.train) + len(tensors.val) + len(tensors.test),
        "identical": True,
        "polars_s": round(polars_s, 4),
        "pandas_s": round(pandas_s, 4),
        "speedup": round(pandas_s / polars_s, 3),
        "negatives_s": round(negatives_s, 4),
        "polars_tables_s": round(polars_tables, 4),
        "pandas_tables_s": round(pandas_tables, 4),
        "speedup_tables": round(pandas_tables / polars_tables, 3),
        # the same from process CPU time (every library on one thread), blind to time spent descheduled
        "polars_cpu_s": round(statistics.median(cpu["polars"]), 4),
        "pandas_cpu_s": round(statistics.median(cpu["pandas"]), 4),
        "speedup_cpu": round(statistics.median(cpu["pandas"]) / statistics.median(cpu["polars"]), 3),
        "negatives_cpu_s": round(statistics.median(sampler_cpu["polars"] + sampler_cpu["pandas"]), 4),
        "speedup_tables_cpu": round(
            statistics.median(t - s for t, s in zip(cpu["pandas"], sampler_cpu["pandas"]))
            / statistics.median(t - s for t, s in zip(cpu["polars"], sampler_cpu["polars"])), 3),
        # the most any Polars side could reach while both call the shared sampler: pandas / sampler alone
        "speedup_ceiling_cpu": round(statistics.median(cpu["pandas"]) / statistics.median(sampler_cpu["polars"] + sampler_cpu["pandas"]), 3),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": pandas_s / polars_s >= TARGET_SPEEDUP,
        "versions": {"polars": pl.__version__, "pandas": pandas_prep.pd.__version__, "torch": torch.__version__},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
