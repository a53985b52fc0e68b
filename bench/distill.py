"""DRL-Rec benchmark: teacher, distilled student and student alone, same budget, 3 seeds; one JSON line last.

`python bench/distill.py --quick` (MovieLens-100K, about 90 s of one core) or without `--quick`
(MovieLens-1M users 1-2999, ten times the steps). Each run goes through the shipped configs
(configs/drlrec_teacher.yaml, configs/drlrec_student.yaml) via `lit_rec.cli.make_cli`. Figures:
`param_ratio` (student / teacher parameters of the online Q-networks, target networks excluded),
`latency_ratio` (student / teacher median time to score 1000 candidates for one request, one
thread (its CPU time), interleaved repeats, on the TorchScript artefacts of `lit_rec.export` that serving runs;
`latency_ratio_eager` is the same on the eager modules), and the mean over seeds of `test/auc` and `test/ctr@k` of each.
`--ablation` also trains, per seed, one distilled student per flag of `ABLATIONS` turned off (same teacher
checkpoint, same budget): JSON key `ablation` ({"explore_filter_off": {"auc", "ctr@k", "auc_per_seed"}, ...},
with the `teacher`, `student` and `student_alone` rows of the same seeds) and a Markdown table on stderr;
`--ablation 0` runs the ablation for seed 0 only (the other keys still cover every seed).
Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_rec.cli import make_cli, method_config  # noqa: E402
from lit_rec.serving import num_parameters, serving_latency_ms  # noqa: E402

THREADS = 1
SETTINGS = {
    # data config, data path (relative to the repo), optimizer steps per run, seeds
    "quick": {"data": "configs/data/ml100k.yaml", "path": "../shared/data/ml-100k", "steps": 150, "seeds": [0, 1, 2]},
    "full": {"data": "configs/data/ml1m.yaml", "path": "../shared/data/ml-1m-users1-2999", "steps": 1500, "seeds": [0, 1, 2]},
}


# ablation runs: the distilled student with one DRLRecStudent flag turned off
ABLATIONS = ("explore_filter", "confidence", "kl", "hint")


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/distill] {message}", file=sys.stderr, flush=True)


def run_config(config: str, work: Path, data: dict[str, Any], steps: int, seed: int, extra: list[str]) -> Any:
    """Fits a shipped config for `steps` steps (no logger, validation, checkpoints or full ranking) and tests it."""
    spec = method_config(ROOT / config)
    spec["seed_everything"] = seed
    spec["model"]["init_args"]["seed"] = seed
    trainer = spec["trainer"]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    trainer.update({"accelerator": "cpu", "devices": 1, "max_steps": steps, "max_epochs": -1, "limit_val_batches": 0,
                    "enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "default_root_dir": str(work)})
    path = work / Path(config).name
    path.write_text(yaml.safe_dump(spec))
    args = ["fit", "--config", str(path), "--data", str(ROOT / data["data"]), f"--data.path={ROOT / data['path']}",
            f"--data.cache_dir={work / 'cache'}", "--model.init_args.full_ranking=false", *extra]
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's and CTRLogger's prints go to stderr
        cli = make_cli(args)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli


def latency(teacher: Any, student: Any, work: Path, repeats: int) -> dict[str, float]:
    """Median ms to score 1000 candidates for one request: eager modules and `lit_rec.export` artefacts, the four in turn."""
    return serving_latency_ms(teacher, student, work, repeats)


def summarise(results: dict[str, list[dict[str, float]]], ks: list[int]) -> dict[str, float]:
    """Means over seeds of test/auc and test/ctr@k for each role."""
    out: dict[str, float] = {}
    for role, runs in results.items():
        out[f"{role}_auc"] = statistics.fmean(r["test/auc"] for r in runs)
        for k in ks:
            out[f"{role}_ctr@{k}"] = statistics.fmean(r[f"test/ctr@{k}"] for r in runs)
    for role, runs in results.items():
        out[f"{role}_auc_per_seed"] = [round(r["test/auc"], 4) for r in runs]  # type: ignore[assignment]
    return out


def ablation_rows(results: dict[str, list[dict[str, float]]], ks: list[int]) -> dict[str, dict[str, Any]]:
    """Per role, the means over its runs (the ablation seeds) of test/auc and test/ctr@k, and the AUC per seed."""
    rows: dict[str, dict[str, Any]] = {}
    for role, runs in results.items():
        row: dict[str, Any] = {"auc": statistics.fmean(r["test/auc"] for r in runs)}
        row.update({f"ctr@{k}": statistics.fmean(r[f"test/ctr@{k}"] for r in runs) for k in ks})
        row["auc_per_seed"] = [round(r["test/auc"], 4) for r in runs]
        rows[role] = row
    return rows


def ablation_table(rows: dict[str, dict[str, Any]], ks: list[int]) -> str:
    """The ablation rows as a Markdown table (AUC and its difference to the full student, CTR@k)."""
    full = rows["student"]["auc"]
    lines = ["| run | AUC | AUC - student | " + " | ".join(f"CTR@{k}" for k in ks) + " | AUC per seed |",
             "|---|---|---|" + "---|" * len(ks) + "---|"]
    for name, row in rows.items():
        ctrs = " | ".join(f"{row[f'ctr@{k}']:.4f}" for k in ks)
        seeds = ", ".join(f"{a:.4f}" for a in row["auc_per_seed"])
        lines.append(f"| {name} | {row['auc']:.4f} | {row['auc'] - full:+.4f} | {ctrs} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    """Runs the benchmark and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MovieLens-100K, a short budget")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (overrides the setting)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (overrides the setting)")
    parser.add_argument("--repeats", type=int, default=200, help="interleaved latency repeats")
    parser.add_argument("--student-args", nargs="*", default=[], help="extra CLI arguments of all student runs")
    parser.add_argument("--ablation", type=int, nargs="*", default=None, metavar="SEED",
                        help=f"also train one student per flag off ({', '.join(ABLATIONS)}) from the same teacher; "
                             "with seeds: only for those seeds (default: every seed)")
    args = parser.parse_args()
    setting = dict(SETTINGS["quick" if args.quick else "full"])
    steps = args.steps or setting["steps"]
    seeds = args.seeds or setting["seeds"]
    if not (ROOT / setting["path"]).exists():
        sys.exit(f"bench/distill.py: data not found at {ROOT / setting['path']}")
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)  # lightning's LeafSpec notice (PITFALLS.md)
    warnings.filterwarnings("ignore", category=UserWarning)  # "few workers" and similar notices
    started = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {"teacher": [], "student": [], "student_alone": []}
    chosen = [] if args.ablation is None else [seed for seed in seeds if not args.ablation or seed in args.ablation]
    if args.ablation and set(args.ablation) - set(seeds):
        sys.exit(f"bench/distill.py: --ablation seeds {args.ablation} are not all in --seeds {seeds}")
    ablated: dict[str, list[dict[str, float]]] = {f"{flag}_off": [] for flag in ABLATIONS} if chosen else {}
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
        work = Path(tmp)
        for seed in seeds:
            teacher = run_config("configs/drlrec_teacher.yaml", work, setting, steps, seed, [])
            ckpt = work / f"teacher_{seed}.ckpt"
            teacher.trainer.save_checkpoint(ckpt)
            results["teacher"].append(teacher.model.last_metrics)
            student = run_config("configs/drlrec_student.yaml", work, setting, steps, seed,
                                 [f"--model.init_args.teacher_ckpt={ckpt}", *args.student_args])
            results["student"].append(student.model.last_metrics)
            alone = run_config("configs/drlrec_student.yaml", work, setting, steps, seed,
                               ["--model.init_args.distill=false", *args.student_args])
            results["student_alone"].append(alone.model.last_metrics)
            log(f"seed {seed}: auc teacher {results['teacher'][-1]['test/auc']:.4f} student {results['student'][-1]['test/auc']:.4f} "
                f"alone {results['student_alone'][-1]['test/auc']:.4f} ({time.perf_counter() - started:.0f} s)")
            for flag in ABLATIONS if seed in chosen else ():
                off = run_config("configs/drlrec_student.yaml", work, setting, steps, seed,
                                 [f"--model.init_args.teacher_ckpt={ckpt}", *args.student_args, f"--model.init_args.{flag}=false"])
                ablated[f"{flag}_off"].append(off.model.last_metrics)
                log(f"seed {seed}: auc student with {flag}=false {ablated[f'{flag}_off'][-1]['test/auc']:.4f} "
                    f"({time.perf_counter() - started:.0f} s)")
            ckpt.unlink()
            models = {"teacher": teacher.model, "student": student.model}
        times = latency(models["teacher"], models["student"], work, args.repeats)
    teacher_net, student_net = models["teacher"].online, models["student"].online
    report: dict[str, Any] = {
        "bench": "distill",
        "data": setting["path"],
        "threads": THREADS,
        "steps_per_run": steps,
        "seeds": seeds,
        "param_ratio": num_parameters(student_net) / num_parameters(teacher_net),
        "latency_ratio": times["student_artefact"] / times["teacher_artefact"],
        "latency_ratio_eager": times["student"] / times["teacher"],
        "teacher_params": num_parameters(teacher_net),
        "student_params": num_parameters(student_net),
        "latency_ms": {name: round(value, 4) for name, value in times.items()},
        **summarise(results, models["student"].eval_ks),
    }
    report["student_minus_teacher_auc"] = report["student_auc"] - report["teacher_auc"]
    if chosen:
        ks = models["student"].eval_ks
        same_seeds = {role: [r for seed, r in zip(seeds, runs) if seed in chosen] for role, runs in results.items()}
        order = ["teacher", "student", *ablated, "student_alone"]
        rows = ablation_rows({**same_seeds, **ablated}, ks)
        report["ablation_seeds"] = chosen
        report["ablation"] = {name: rows[name] for name in order}
        log(f"ablation, {steps} steps per run, seeds {chosen} (means over seeds):\n" + ablation_table(report["ablation"], ks))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["cpu_s"] = round(time.process_time(), 1)  # this process's CPU time: the wall time on an idle machine
    print(json.dumps(report))


if __name__ == "__main__":
    main()
