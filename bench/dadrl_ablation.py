"""DADRL ablation (ml-100k) and the actor-critic methods on ml-1m-users1-2999; one JSON line last.

`python bench/dadrl_ablation.py --suite ablation` trains the shipped `configs/dadrl.yaml` on
MovieLens-100K and one variant per switched-off component (staleness weighting, personalisation,
max_staleness 0 / 8 / 32, session instead of exponential arrivals, the advantage term of the actor's
loss (`pg_weight=0`: supervised actor only), the small entropy bonus, Poisson cohorts with differential privacy); `--suite ml1m` trains DADRL,
A2C-F and A2C-D on MovieLens-1M users 1-2999. Every run has the same budget (`--epochs`), one
torch thread, and is a subprocess of its own (`--jobs` at once). Each reports the test CTR@k,
AUC, its last validation CTR@k and the mean staleness it trained with. Progress goes to stderr,
a Markdown table to stderr at the end, the JSON object to the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 10, 20, 50, 100)
DATA = {
    "ml100k": ("configs/data/ml100k.yaml", "../shared/data/ml-100k"),
    "ml1m": ("configs/data/ml1m.yaml", "../shared/data/ml-1m-users1-2999"),
}
# name -> (config, extra CLI arguments): one component off per variant
SUITES: dict[str, tuple[str, dict[str, tuple[str, list[str]]]]] = {
    "ablation": (
        "ml100k",
        {
            "DADRL (shipped)": ("configs/dadrl.yaml", []),
            "weighting off (constant)": ("configs/dadrl.yaml", ["--model.init_args.weighting=constant"]),
            "personalisation off": ("configs/dadrl.yaml", ["--model.init_args.personalization=false"]),
            "max_staleness 0": ("configs/dadrl.yaml", ["--model.init_args.max_staleness=0"]),
            "max_staleness 8": ("configs/dadrl.yaml", ["--model.init_args.max_staleness=8"]),
            "max_staleness 32": ("configs/dadrl.yaml", ["--model.init_args.max_staleness=32"]),
            "sessions arrivals": ("configs/dadrl.yaml", ["--model.init_args.arrival=sessions"]),
            "supervised actor only (pg_weight 0)": ("configs/dadrl.yaml", ["--model.init_args.pg_weight=0"]),
            "entropy bonus 0.01": ("configs/dadrl.yaml", ["--model.init_args.entropy_coef=0.01"]),
            "poisson arrivals + DP (sigma 1)": ("configs/dadrl.yaml", ["--model.init_args.arrival=poisson", "--model.init_args.dp_noise_multiplier=1.0", "--model.init_args.clip_norm=5.0", "--model.init_args.aggregation=clients"]),
        },
    ),
    "ml1m": (
        "ml1m",
        {
            "DADRL": ("configs/dadrl.yaml", []),
            "A2C-F": ("configs/a2c_f.yaml", []),
            "A2C-D": ("configs/a2c_d.yaml", []),
        },
    ),
}

RUNNER = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from lit_rec.cli import make_cli
out, args = sys.argv[1], sys.argv[2:]
cli = make_cli(["fit", *args])
staleness = cli.trainer.callback_metrics.get("staleness/mean")
epsilon = cli.trainer.callback_metrics.get("privacy/epsilon")
val = dict(cli.model.last_metrics)
cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
test = dict(cli.model.last_metrics)
json.dump({"val": val, "test": test, "staleness_mean": None if staleness is None else float(staleness),
           "epsilon": None if epsilon is None else float(epsilon),
           "steps": cli.trainer.global_step}, open(out, "w"))
"""


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/dadrl_ablation] {message}", file=sys.stderr, flush=True)


def run(name: str, config: str, extra: list[str], data: tuple[str, str], epochs: int, work: Path) -> dict[str, Any]:
    """One fit + test in a subprocess; returns its metrics."""
    slug = "".join(c if c.isalnum() else "_" for c in name)
    out = work / f"{slug}.json"
    args = [
        "--config", config, "--data", data[0], f"--data.path={data[1]}", f"--trainer.max_epochs={epochs}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={work / slug}",
        "--trainer.callbacks=[{class_path: callbacks.staleness.StalenessCallback}]", "--early_stopping=null",
        "--model.init_args.full_ranking=false", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUNNER, str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    metrics = json.loads(out.read_text())
    metrics["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"{name}: test ctr@10 {metrics['test']['test/ctr@10']:.4f} ctr@100 {metrics['test']['test/ctr@100']:.4f} "
        f"staleness {metrics['staleness_mean']} ({metrics['wall_s']} s)")
    return metrics


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table of test CTR@k, AUC, last val CTR@10 and mean staleness."""
    head = "| variant | " + " | ".join(f"CTR@{k}" for k in KS) + " | AUC | val CTR@10 | staleness mean | epsilon |"
    lines = [head, "|" + "---|" * (len(KS) + 5)]
    for name, m in rows.items():
        t = m["test"]
        stale = "-" if m["staleness_mean"] is None else f"{m['staleness_mean']:.1f}"
        lines.append(f"| {name} | " + " | ".join(f"{t[f'test/ctr@{k}']:.4f}" for k in KS)
                     + f" | {t['test/auc']:.4f} | {m['val']['val/ctr@10']:.4f} | {stale} | {m.get('epsilon') or '-'} |")
    return "\n".join(lines)


def main() -> None:
    """Runs the suite and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="ablation")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of every run (the budget)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = parser.parse_args()
    data_key, variants = SUITES[args.suite]
    data = DATA[data_key]
    if not (ROOT / data[1]).exists():
        sys.exit(f"bench/dadrl_ablation.py: data not found at {ROOT / data[1]}")
    chosen = {k: v for k, v in variants.items() if args.only is None or k in args.only}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_dadrl_") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(run, name, config, extra, data, args.epochs, Path(tmp)) for name, (config, extra) in chosen.items()}
        rows = {name: future.result() for name, future in futures.items()}
    print(table(rows), file=sys.stderr)
    report = {
        "bench": "dadrl_ablation",
        "suite": args.suite,
        "data": data[1],
        "epochs": args.epochs,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": {name: {**{f"ctr@{k}": round(m["test"][f"test/ctr@{k}"], 4) for k in KS}, "auc": round(m["test"]["test/auc"], 4),
                        "val_ctr@10": round(m["val"]["val/ctr@10"], 4), "val_ctr@100": round(m["val"]["val/ctr@100"], 4),
                        "pop_val_ctr@10": round(m["val"].get("val/pop_ctr@10", float("nan")), 4),
                        "staleness_mean": m["staleness_mean"], "epsilon": m.get("epsilon"), "wall_s": m["wall_s"]} for name, m in rows.items()},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
