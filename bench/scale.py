"""Scale benchmark: synthetic Outbrain logs of 1M, 10M, 100M click rows, CSV to a ready RecDataModule.

`python bench/scale.py [--quick | --sizes N ...] [--dir WORK]` (`--quick`: 1M and 10M rows; `--sizes`: those
row counts, the plot left alone). For each size,
`bench/make_log.py` writes the log, then two fresh subprocesses run on it:
  - ours: `RecDataModule(format="outbrain", ...)` with `configs/data/outbrain.yaml`'s settings and the
    default `eval_max_events`, `prepare_data()` + `setup("fit")`: read, join, clean, k-core, split,
    re-index, frozen negatives for the evaluation sample, the memory-mapped cache written, and the
    tensors (histories) built;
  - bare: the physical limit, Polars' `scan_csv(clicks_train.csv).sort("ad_id").sink_parquet(...)`.
`wall_s` is timed inside each child from just before the work (imports excluded: ~4 s of torch and
Lightning, constant in N); `peak_rss_gb` is the child's `ru_maxrss` (os.wait4), imports included.
Each side runs `--repeats` times (default 2), interleaved (bare, ours, bare, ours), each of ours from an
empty cache; the best run of each side is reported (`runs_s` lists them all).
`limit_ratio` = our `wall_s` / the bare scan's, same run; `slope` is the log-log fit of our wall
time against rows, 10M to 100M (with --quick 1M to 10M, with --sizes smallest to largest: `slope_range`
says which). Polars uses its
default thread pool (both cores here), torch one thread. A log-log plot goes to docs/scale.png.
Progress on stderr; one JSON line last on stdout. The work folder is emptied after each size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZES = {"quick": [1_000_000, 10_000_000], "full": [1_000_000, 10_000_000, 100_000_000]}
OUTBRAIN = {"positive_threshold": 1, "min_user_interactions": 1, "min_item_interactions": 1, "split": "time",
            "test_fraction": 0.2, "val_fraction": 0.1}
PLOT = ROOT / "docs" / "scale.png"


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/scale] {message}", file=sys.stderr, flush=True)


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Runs `python bench/scale.py <args>` and returns its last-line JSON and its peak RSS in GB."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed with exit code {process.returncode}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1e6  # KiB on Linux -> ~GB


def child_prepare(log_dir: str, cache_dir: str) -> dict[str, Any]:
    """Ours: CSV to a ready RecDataModule (cache written, tensors built)."""
    import torch

    torch.set_num_threads(1)
    from datamodules import RecDataModule

    started = time.perf_counter()
    data = RecDataModule(format="outbrain", path=log_dir, cache_dir=cache_dir, **OUTBRAIN)
    data.prepare_data()
    data.setup("fit")
    wall = time.perf_counter() - started
    stats = data.statistics()
    return {"wall_s": wall, **{k: v for k, v in stats.items() if k != "dropped"}}


def child_bare(log_dir: str, out: str) -> dict[str, Any]:
    """The limit: a bare scan, sort and Parquet sink of clicks_train.csv."""
    import polars as pl

    started = time.perf_counter()
    pl.scan_csv(Path(log_dir) / "clicks_train.csv").sort("ad_id").sink_parquet(out)
    return {"wall_s": time.perf_counter() - started}


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(rows: int, work: Path, repeats: int) -> dict[str, Any]:
    """Generates a log of `rows` rows and times ours and the bare scan on it, `repeats` times each, interleaved."""
    log_dir, cache_dir = work / f"log_{rows}", work / f"cache_{rows}"
    made = json.loads(subprocess.run([sys.executable, str(ROOT / "bench" / "make_log.py"), str(log_dir),
                                      "--rows", str(rows)], check=True, capture_output=True, text=True).stdout)
    log(f"{rows:,} rows: log written in {made['seconds']} s ({made['csv_gb']} GB)")
    bare_runs, our_runs = [], []
    for attempt in range(repeats):  # bare, ours, bare, ours, ...: both sides see the same drift in the load
        shutil.rmtree(cache_dir, ignore_errors=True)  # every run of ours starts without a cache
        bare_runs.append(run_child(["--child", "bare", str(log_dir), str(work / "bare.parquet")]))
        log(f"{rows:,} rows [{attempt + 1}/{repeats}]: bare scan+sort+sink {bare_runs[-1][0]['wall_s']:.1f} s, {bare_runs[-1][1]:.2f} GB")
        our_runs.append(run_child(["--child", "prepare", str(log_dir), str(cache_dir)]))
        log(f"{rows:,} rows [{attempt + 1}/{repeats}]: ours {our_runs[-1][0]['wall_s']:.1f} s, {our_runs[-1][1]:.2f} GB")
    (bare, bare_rss), (ours, rss) = (min(runs, key=lambda run: run[0]["wall_s"]) for runs in (bare_runs, our_runs))  # best of N
    result = {
        "rows": rows,
        "wall_s": round(ours["wall_s"], 2),
        "rows_per_s": round(rows / ours["wall_s"]),
        "peak_rss_gb": round(rss, 3),
        "cache_mb": round(folder_bytes(cache_dir) / 1e6, 1),
        "bare_s": round(bare["wall_s"], 2),
        "bare_rss_gb": round(bare_rss, 3),
        "limit_ratio": round(ours["wall_s"] / bare["wall_s"], 2),
        "runs_s": {"ours": [round(run["wall_s"], 2) for run, _ in our_runs], "bare": [round(run["wall_s"], 2) for run, _ in bare_runs]},
        "csv_gb": made["csv_gb"],
        "log_s": made["seconds"],
        **{k: ours[k] for k in ("users", "items", "train_events", "val_events", "test_events", "test_eval_events")},
    }
    for path in (log_dir, cache_dir, work / "bare.parquet"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return result


def slope(results: list[dict[str, Any]], smallest: int) -> float:
    """Least-squares slope of log(wall_s) against log(rows) over the sizes >= `smallest`."""
    points = [(math.log(r["rows"]), math.log(r["wall_s"])) for r in results if r["rows"] >= smallest]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Time and peak memory against rows, log-log, ours beside the bare scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in results]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    time_axis.loglog(rows, [r["wall_s"] for r in results], "o-", label="ours: CSV to ready RecDataModule")
    time_axis.loglog(rows, [r["bare_s"] for r in results], "s--", label="bare scan_csv+sort+sink_parquet")
    time_axis.set(xlabel="click rows", ylabel="wall seconds", title="time")
    memory_axis.loglog(rows, [r["peak_rss_gb"] for r in results], "o-", label="ours")
    memory_axis.loglog(rows, [r["bare_rss_gb"] for r in results], "s--", label="bare")
    memory_axis.axhline(8, color="grey", linewidth=0.8, linestyle=":", label="8 GB target")
    memory_axis.set(xlabel="click rows", ylabel="peak RSS (GB)", title="memory")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", linewidth=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    """Runs every size and prints the summary as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M and 10M rows only")
    parser.add_argument("--sizes", type=int, nargs="+", help="these row counts instead (e.g. 10000000 30000000)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lit_rec_scale"), help="work folder (emptied)")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per size, interleaved; the best is reported")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "LOG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, log_dir, out = args.child
        print(json.dumps((child_prepare if kind == "prepare" else child_bare)(log_dir, out)))
        return
    mode = "sizes" if args.sizes else "quick" if args.quick else "full"
    sizes = sorted(args.sizes) if args.sizes else SIZES[mode]
    args.dir.mkdir(parents=True, exist_ok=True)
    results = [measure(rows, args.dir, args.repeats) for rows in sizes]
    smallest = 1_000_000 if args.quick else min(sizes) if args.sizes else 10_000_000
    if not args.sizes:  # a partial run leaves the documented plot alone
        plot(results, args.plot)
    summary = {
        "bench": "scale",
        "mode": mode,
        "sizes": results,
        "slope": round(slope(results, smallest), 3) if len(sizes) > 1 else None,
        "slope_range": f"{smallest / 1e6:g}M-{max(sizes) / 1e6:g}M" + (" (quick)" if args.quick else ""),
        "targets": {"peak_rss_gb_100m": 8.0, "limit_ratio": 3.0, "slope": 1.1},
        "threads": {"polars": os.environ.get("POLARS_MAX_THREADS", "default (all cores)"), "torch": 1},
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "plot": None if args.sizes else str(args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
