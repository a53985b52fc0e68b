"""Runs every benchmark and records its output in BENCHMARKS.md (`make bench`: full mode; `--quick` passes through).

`python bench/run_all.py [--quick] [--only NAME ...] [--no-write]`. Each script runs in its own
process (`python bench/<name>.py [--quick]`); its progress goes to this process's stderr and its
last stdout line, one JSON object, is collected. BENCHMARKS.md is rewritten only between
`<!-- bench:start -->` and `<!-- bench:end -->` (added at the end when missing), so hand-written
sections around them survive; the section keeps each script's latest quick and latest full run
(hidden `bench:record` lines carry them from one rewrite to the next). A script that fails is recorded as failed and the others still
run; the exit code is then 1. The last stdout line is one JSON object: every script's result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SCRIPTS = ("data_prep", "eval", "train_step", "clients", "distill")
GPU_SCRIPTS = ("gpu_steps",)  # run only where torch sees CUDA (or when named with --only)
# the figure each script is judged on: (key, comparison, target); distill's claim is DESIGN.md section 9
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "data_prep": [("speedup", ">=", 3.0)],
    "eval": [("ratio", ">=", 0.8), ("ratio_sampled", ">=", 0.8)],
    "train_step": [("overhead", "<=", 0.10)],
    "clients": [("flatness", "<=", 0.15)],
    "distill": [("param_ratio", "<=", 0.497), ("latency_ratio", "<=", 0.767), ("student_minus_teacher_auc", ">=", 0.0)],
    "gpu_steps": [],  # no target: issue #9 asks for the figures (BENCHMARKS.md, GPU)
}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/run_all] {message}", file=sys.stderr, flush=True)


def run_script(name: str, quick: bool) -> dict[str, Any]:
    """Runs `bench/<name>.py`; its record: command, mode, seconds, and the result (the last stdout line) or the failure."""
    command = [sys.executable, f"bench/{name}.py", *(["--quick"] if quick else [])]
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"running {' '.join(command[1:])}")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    seconds = round(time.perf_counter() - started, 1)
    shown = f"python {' '.join(command[1:])}"
    base = {"command": shown, "mode": "quick" if quick else "full", "started": when, "load": load, "seconds": seconds}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        log(f"{name} failed (exit {done.returncode}) after {seconds} s")
        return {**base, "ok": False, "exit": done.returncode}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        log(f"{name}: the last stdout line is not JSON: {lines[-1][:200]!r}")
        return {**base, "ok": False, "exit": done.returncode}
    log(f"{name} done in {seconds} s")
    return {**base, "ok": True, "result": result}


def verdicts(name: str, result: dict[str, Any]) -> list[str]:
    """`key = value (target >= x): meets/misses` for each target of the script."""
    lines = []
    for key, comparison, target in TARGETS.get(name, []):
        value = result.get(key)
        if not isinstance(value, (int, float)):
            lines.append(f"`{key}` missing (target {comparison} {target})")
            continue
        ok = value >= target if comparison == ">=" else value <= target
        lines.append(f"`{key}` = {value:.4g} (target {comparison} {target}): {'meets' if ok else 'MISSES'}")
    return lines


def git_commit() -> str:
    """The checkout's commit, `+dirty` when the tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


RECORD = "<!-- bench:record "  # one hidden line per script inside the section: its run record as JSON


def previous_records() -> dict[str, dict[str, Any]]:
    """The run records of the current generated section by `name:mode` (a run replaces only its own script and mode)."""
    if not BENCHMARKS.exists():
        return {}
    records = {}
    for line in BENCHMARKS.read_text().splitlines():
        if line.startswith(RECORD) and line.endswith(" -->"):
            key, _, payload = line[len(RECORD) : -len(" -->")].partition(" ")
            try:
                records[key] = json.loads(payload)
            except json.JSONDecodeError:
                continue
    return records


def render(runs: dict[str, dict[str, Any]], started: str, load: str) -> str:
    """The generated section (between the markers): a verdict table, then each run's command and JSON line.

    `runs` maps `name:mode` to a run record; each script's latest quick and latest full run are kept.
    """
    lines = [
        START,
        "## Latest results (generated by `bench/run_all.py`; edits between the markers are overwritten)",
        "",
        f"- Last run started {started}; machine: {platform.machine()}, {os.cpu_count()} cores, load average {load} at "
        f"its start (a shared machine: only ratios of two sides measured in the same run are comparable); "
        f"Python {platform.python_version()}, commit {git_commit()}.",
        "- `make bench` (= `python bench/run_all.py`) runs every script in full mode; `python bench/run_all.py --quick` "
        "in quick mode; `--only NAME ...` reruns some. The latest quick and the latest full run of each script are kept.",
        "- Threads: every script pins torch to 1 thread (`torch.set_num_threads(1)`) and Polars to 1 "
        "(`POLARS_MAX_THREADS=1` set before importing polars), and runs the two sides of each comparison "
        "interleaved, reporting medians of the alternating repeats.",
        "",
        "| script | mode | command | started | seconds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for key, run in runs.items():
        name = key.split(":")[0]
        verdict = "; ".join(verdicts(name, run["result"])) if run["ok"] else f"FAILED (exit {run['exit']})"
        lines.append(f"| {name} | {run.get('mode', '?')} | `{run['command']}` | {run.get('started', '?')} | {run['seconds']} | {verdict} |")
    for key, run in runs.items():
        name = key.split(":")[0]
        lines += ["", f"### {name} ({run.get('mode', '?')})", "", f"`{run['command']}`, started {run.get('started', '?')}, load average {run.get('load', '?')} at its start", ""]
        if run["ok"]:
            lines += ["```json", json.dumps(run["result"]), "```"]
        else:
            lines.append(f"Failed with exit code {run['exit']} (its stderr went to the console).")
        lines.append(f"{RECORD}{key} {json.dumps(run)} -->")
    lines.append(END)
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replaces the generated section of BENCHMARKS.md (or appends it), keeping everything else."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if START in text and END in text and text.index(START) < text.index(END):
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)


def main() -> None:
    """Runs the scripts, rewrites the generated section and prints every result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS + GPU_SCRIPTS, default=None, help="run only these scripts")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = args.only or (SCRIPTS + GPU_SCRIPTS if torch.cuda.is_available() else SCRIPTS)
    runs = {name: run_script(name, args.quick) for name in names}
    if not args.no_write:
        mode = "quick" if args.quick else "full"
        records = {**previous_records(), **{f"{name}:{mode}": run for name, run in runs.items()}}
        merged = {f"{n}:{m}": records[f"{n}:{m}"] for n in SCRIPTS + GPU_SCRIPTS for m in ("full", "quick") if f"{n}:{m}" in records}
        write_section(render(merged, started, load))
        log(f"wrote {BENCHMARKS.relative_to(ROOT)}")
    print(json.dumps({name: run.get("result", {"failed": run.get("exit")}) for name, run in runs.items()}))
    if not all(run["ok"] for run in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
