"""Asynchrony that pays: simulated time to a target validation CTR@10 of DADRL, A2C-D and A2C-F on the device clock; one JSON line last.

`python bench/async_time.py [--quick] [--datasets ml100k ml1m] [--max-epochs N] [--no-sweeps]`.
Each method trains its shipped config (`configs/{dadrl,a2c_d,a2c_f}.yaml`) with the device clock
overridden (`--model.init_args.clock.*`), through reproduce's own fit (`lit_rec.reproduce.fit.fit_and_test`:
early stopping on val CTR@10 with patience 3 from epoch 5, the best checkpoint tested) under one common
cap of epochs (`--max-epochs`, 20; 6 with `--quick`), so every figure is independent of the host's load
(`--cap-seconds` is only a safety net). Devices: speed 50 events per simulated second (median), network
delay 1 s per update; `heavy` tail = log-normal speeds with sigma 1.5, `moderate` sigma 0.75, `none` =
constant speeds (the control). Every method simulates the same devices (same clock seed).

Equal events per server step: A2C-D's shipped round is a cohort of 64 devices (the data's batch of 128
windows over its `local_steps: 2`) each replaying two windows, and waits for the slowest; DADRL runs FedBuff
on the clock (`arrival: clock`) with 128 devices training at once, one window each, a freed slot refilled
by an idle device as each report arrives, and a server step per buffer of K = 128 reports. So DADRL has
twice A2C-D's devices in flight at half the work each (at constant speeds its throughput is 1.5x);
BENCHMARKS.md gives the control with A2C-D at `local_steps: 1` (128 devices, one window each: 0.64). A2C-F
is the centralised line (a datacenter at the median device speed, no network delay).

The target: 95% of A2C-F's best validation CTR@10. If DADRL or A2C-D (heavy tail) never reaches it, the
target becomes 95% of the lower of their two best validation CTR@10 (`target_rule` says which), and each
pair falls back the same way. Per run: the simulated seconds of the first validation at or above the
target (`sim_s_to_target`, one validation per epoch), the best validation and the test CTR@10 of the best
checkpoint.

Fields: `speedup_vs_a2c_d` = A2C-D's simulated time to the target / DADRL's (heavy tail; ML-1M users
1-2999 in full mode, ML-100K with `--quick`), `ctr10_gap` = A2C-D's test CTR@10 - DADRL's (same runs),
`control_speedup` = the same ratio with constant speeds; on the sweep datasets (`--sweeps-on`, ML-100K)
`tail_sweep` (none / moderate / heavy) and `k_sweep` (K = 32 / 64 / 128, 128 devices training at once,
heavy tail; the batch size is K, so an epoch stays one pass over the train events) give each case's times
and ratio; `equal_work` is A2C-D at `local_steps: 1` (128 devices of one window: DADRL's concurrency
and work) against DADRL, constant and heavy (`control_speedup_equal_work`: its constant-speed ratio);
`a2c_d_deadline` is A2C-D with heavy tails and a 10 s round deadline (the late members dropped,
as production FL does) and DADRL's speedup against it.

Full mode: ML-100K with the sweeps (12 runs, about a minute each), then ML-1M users 1-2999 (5 runs, about
25 s an epoch, 8-20 epochs each): about 60 minutes of one core; `--datasets ml1m` and `--datasets ml100k`
in two processes halve it on two cores. `--quick`: ML-100K, 6 epochs a run: about 8 minutes. One torch
thread; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_rec.reproduce.fit import RunResult, Settings, fit_and_test  # noqa: E402
from lit_rec.reproduce.methods import Method, capped  # noqa: E402

THREADS = 1
TARGET_FRACTION = 0.95
DATASETS = {
    "ml100k": {"data": "configs/data/ml100k.yaml", "path": "../shared/data/ml-100k"},
    "ml1m": {"data": "configs/data/ml1m.yaml", "path": "../shared/data/ml-1m-users1-2999"},
}
TAILS = {  # the devices' speed distribution (median 50 events per simulated second, 1 s of network delay)
    "none": ["--model.init_args.clock.kind=constant"],
    "moderate": ["--model.init_args.clock.kind=lognormal", "--model.init_args.clock.sigma=0.75"],
    "heavy": ["--model.init_args.clock.kind=lognormal", "--model.init_args.clock.sigma=1.5"],
}
CONFIGS = {"DADRL": "configs/dadrl.yaml", "A2C-D": "configs/a2c_d.yaml", "A2C-F": "configs/a2c_f.yaml"}
COHORT = 128  # configs/data/{ml100k,ml1m}.yaml's batch_size: windows per server step of every method, DADRL's buffer K
# DADRL on the clock with 128 devices training at once, one window each (A2C-D: 64 devices of two windows)
METHOD_ARGS = {"DADRL": ["--model.init_args.arrival=clock", f"--model.init_args.concurrency={COHORT}"], "A2C-D": [], "A2C-F": []}
DEADLINE = 10.0  # simulated seconds of A2C-D's rounds in its deadline run (heavy tail: up to 16% of members late)
K_SWEEP = (32, 64)  # besides K = 128 (the batch size), with the heavy tail and the same 128 devices training at once
SPEEDUP_DATASET = {"quick": "ml100k", "full": "ml1m"}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/async_time] {message}", file=sys.stderr, flush=True)


def run(settings: Settings, name: str, method: str, args: list[str], cap: dict[str, Any]) -> dict[str, Any]:
    """One fit and test (reproduce's `fit_and_test`) of `method` with `args`; its validation curve against simulated time."""
    result: RunResult = fit_and_test(settings, Method(name, CONFIGS[method], capped(**cap), args=tuple(METHOD_ARGS[method] + args)), 0, [])
    curve = [{"epoch": int(p["epoch"]), "sim_s": round(p["val/sim_time"], 1), "val_ctr@10": round(p["val/ctr@10"], 4)}
             for p in result.val_curve if "val/sim_time" in p]
    out = {"test_ctr@10": round(result.metrics["test/ctr@10"], 4), "best_val_ctr@10": max((p["val_ctr@10"] for p in curve), default=None),
           "epochs": result.epochs, "stopped_by": result.stopped_by, "train_s": round(result.train_s, 1),
           "final_sim_s": curve[-1]["sim_s"] if curve else None, "curve": curve}
    log(f"{name}: best val CTR@10 {out['best_val_ctr@10']}, test {out['test_ctr@10']}, {out['epochs']} epochs "
        f"({out['stopped_by']}), {out['final_sim_s']} simulated s, {out['train_s']} s of training")
    return out


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """Simulated seconds of the first validation at or above `target` (None: never)."""
    return next((p["sim_s"] for p in curve if p["val_ctr@10"] >= target), None)


def ratio(slow: float | None, fast: float | None) -> float | None:
    """`slow / fast` (None when either never reached the target)."""
    return None if slow is None or fast is None or fast <= 0 else round(slow / fast, 3)


def bench_dataset(key: str, work: Path, cap: dict[str, Any], sweeps: bool, budget: str) -> dict[str, Any]:
    """Every run on one dataset; the target, times to it and ratios."""
    setting = DATASETS[key]
    data = yaml.safe_load((ROOT / setting["data"]).read_text())
    data.update(path=str((ROOT / setting["path"]).resolve()), cache_dir=str(work / "cache"))
    settings = Settings(out=work / key, budget=budget, dataset=key, data_spec=data,
                        passthrough=("--model.init_args.full_ranking=false",), wandb="none", project="bench", group="async_time")
    runs: dict[str, dict[str, Any]] = {"A2C-F": run(settings, f"{key} A2C-F", "A2C-F", TAILS["heavy"], cap)}
    for tail in ("heavy", "none", *(("moderate",) if sweeps else ())):
        for method in ("DADRL", "A2C-D"):
            runs[f"{method} {tail}"] = run(settings, f"{key} {method} {tail}", method, TAILS[tail], cap)
    if sweeps:
        runs["A2C-D heavy deadline"] = run(settings, f"{key} A2C-D heavy deadline", "A2C-D",
                                           [*TAILS["heavy"], f"--model.init_args.deadline={DEADLINE}"], cap)
        for tail in ("none", "heavy"):  # A2C-D at one local step: 128 devices of one window, DADRL's concurrency and work
            runs[f"A2C-D {tail} local_steps 1"] = run(settings, f"{key} A2C-D {tail} local_steps 1", "A2C-D",
                                                      [*TAILS[tail], "--model.init_args.local_steps=1"], cap)
        for k in K_SWEEP:
            runs[f"DADRL heavy K={k}"] = run(settings, f"{key} DADRL heavy K={k}", "DADRL", [*TAILS["heavy"], f"--data.batch_size={k}"], cap)
    best = {name: r["best_val_ctr@10"] or 0.0 for name, r in runs.items()}
    target, rule = TARGET_FRACTION * best["A2C-F"], f"{TARGET_FRACTION:.0%} of A2C-F's best val CTR@10"
    if min(best["DADRL heavy"], best["A2C-D heavy"]) < target:
        target = TARGET_FRACTION * min(best["DADRL heavy"], best["A2C-D heavy"])
        rule = f"{TARGET_FRACTION:.0%} of the lower of DADRL's and A2C-D's best val CTR@10 (heavy tail): A2C-F's was out of reach"
    for r in runs.values():
        r["sim_s_to_target"] = time_to(r["curve"], target)

    def versus(dadrl: str, other: str) -> dict[str, Any]:
        """DADRL run `dadrl` against `other`: times to the common target, or to 95% of the lower best of the two
        when either misses it (`target` says which), the speedup and the test CTR@10 gap (other - DADRL)."""
        a, b = runs[dadrl], runs[other]
        pair_target = target
        if a["sim_s_to_target"] is None or b["sim_s_to_target"] is None:
            pair_target = TARGET_FRACTION * min(best[dadrl], best[other])
        fast, slow = time_to(a["curve"], pair_target), time_to(b["curve"], pair_target)
        return {"target": round(pair_target, 4), "dadrl_sim_s": fast, "other_sim_s": slow, "speedup": ratio(slow, fast),
                "ctr10_gap": round(b["test_ctr@10"] - a["test_ctr@10"], 4)}

    tails = {tail: versus(f"DADRL {tail}", f"A2C-D {tail}") for tail in TAILS if f"DADRL {tail}" in runs}
    ks = {str(k): {**versus(name, "A2C-D heavy"), "test_ctr@10": runs[name]["test_ctr@10"]}
          for k, name in [(128, "DADRL heavy"), *((k, f"DADRL heavy K={k}") for k in K_SWEEP)] if name in runs}
    equal_work = {tail: versus(f"DADRL {tail}", f"A2C-D {tail} local_steps 1") for tail in ("none", "heavy")
                  if f"A2C-D {tail} local_steps 1" in runs}
    return {"target": round(target, 4), "target_rule": rule, "a2c_f_sim_s": runs["A2C-F"]["sim_s_to_target"],
            "tail_sweep": tails, "k_sweep": ks, "equal_work": equal_work,
            "a2c_d_deadline": {"deadline_s": DEADLINE, **versus("DADRL heavy", "A2C-D heavy deadline")} if "A2C-D heavy deadline" in runs else None,
            "runs": runs}


PLOTTED = {  # run name: (label, colour, line style)
    "A2C-F": ("A2C-F (datacenter)", "tab:green", "-"),
    "DADRL heavy": ("DADRL, heavy tail", "tab:blue", "-"),
    "A2C-D heavy": ("A2C-D, heavy tail", "tab:red", "-"),
    "DADRL none": ("DADRL, constant speeds", "tab:blue", ":"),
    "A2C-D none": ("A2C-D, constant speeds", "tab:red", ":"),
}


def plot(datasets: dict[str, Any], path: Path) -> None:
    """Validation CTR@10 against simulated hours (log scale), one panel per dataset, with its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5.2), dpi=110, squeeze=False)
    for ax, (key, result) in zip(axes[0], datasets.items()):
        for name, (label, colour, style) in PLOTTED.items():
            curve = result["runs"].get(name, {}).get("curve") or []
            if curve:
                ax.plot([p["sim_s"] / 3600 for p in curve], [p["val_ctr@10"] for p in curve], style, marker="o", ms=2.5,
                        color=colour, label=label)
        ax.axhline(result["target"], color="grey", lw=0.8, ls="--", label=f"target {result['target']:.3f}")
        heavy = result["tail_sweep"].get("heavy", {})
        speedup = heavy.get("speedup")
        ax.set_title(f"{key}: DADRL reaches the target {speedup:.1f}x sooner than A2C-D (heavy tail)" if speedup
                     else f"{key}: DADRL vs A2C-D (heavy tail)", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("simulated hours (device clock), log scale")
        ax.set_ylabel("val CTR@10")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ML-100K only, at most 6 epochs a run")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None,
                        help="datasets to run (default: ml100k with --quick, else ml100k and ml1m)")
    parser.add_argument("--cap-seconds", type=int, default=1800, help="a safety cap of wall seconds per run (the cap is epochs)")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs per run at most (default 20 full, 6 quick)")
    parser.add_argument("--no-sweeps", action="store_true", help="only the heavy tail and the control (no moderate tail, no K sweep)")
    parser.add_argument("--sweeps-on", nargs="*", default=["ml100k"], help="datasets that run the sweeps (default ml100k)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw val CTR@10 against simulated hours into this PNG")
    parser.add_argument("--plot-from", nargs="+", type=Path, default=None,
                        help="draw --plot from these earlier JSON outputs (their last lines) instead of running")
    options = parser.parse_args()
    if options.plot_from:
        merged = {}
        for file in options.plot_from:
            merged.update(json.loads(file.read_text().strip().splitlines()[-1])["datasets"])
        plot(merged, options.plot or ROOT / "docs" / "async_time.png")
        return
    budget = "quick" if options.quick else "full"
    keys = options.datasets or (["ml100k"] if options.quick else ["ml100k", "ml1m"])
    for key in keys:
        if not (ROOT / DATASETS[key]["path"]).exists():
            sys.exit(f"bench/async_time: data folder {ROOT / DATASETS[key]['path']} is missing")
    seconds = options.cap_seconds
    cap = {"max_epochs": options.max_epochs or (6 if options.quick else 20),
           "max_time": f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"}
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lit_rec_async_time_") as tmp:
        for key in keys:
            log(f"{key}: cap {cap}")
            results[key] = bench_dataset(key, Path(tmp), cap, not options.no_sweeps and key in options.sweeps_on, budget)
    if options.plot:
        plot(results, options.plot)
    main_key = SPEEDUP_DATASET[budget] if SPEEDUP_DATASET[budget] in results else keys[-1]
    main_case = results[main_key]["tail_sweep"]
    print(json.dumps({
        "bench": "async_time", "mode": budget, "threads": THREADS, "cap": cap, "speedup_dataset": main_key,
        "speedup_vs_a2c_d": main_case["heavy"]["speedup"], "ctr10_gap": main_case["heavy"]["ctr10_gap"],
        "control_speedup": main_case["none"]["speedup"], "speedup_target": main_case["heavy"]["target"],
        "control_target": main_case["none"]["target"],
        "control_speedup_equal_work": next((r["equal_work"]["none"]["speedup"] for r in results.values()
                                            if "none" in r.get("equal_work", {})), None), "wall_s": round(time.perf_counter() - started, 1),
        "datasets": results,
    }))


if __name__ == "__main__":
    main()
