"""Runs a reproduction: every method for every seed (DRL-Rec's student after its teacher), a progress line
per run, `runs.json` after each, then the tables, the figure and the W&B report."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lit_rec.reproduce.curves import best_validation
from lit_rec.reproduce.distill import distill_report, format_distill
from lit_rec.reproduce.figures import plot_fig2, plot_sim_time
from lit_rec.reproduce.fit import RunResult, Settings, fit_and_test
from lit_rec.reproduce.methods import CAPS, KS, MONITOR, PATIENCE, Method
from lit_rec.reproduce.report import format_table1, table_rows
from lit_rec.reproduce.wandb_runs import report_run


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[reproduce] {message}", file=sys.stderr, flush=True)


class Reproduction:
    """Runs the methods for every seed and writes the reports."""

    def __init__(self, settings: Settings, methods: list[Method], seeds: int, command: str) -> None:
        self.settings = settings
        self.methods = methods
        self.seeds = list(range(seeds))
        self.command = command
        self.results: list[RunResult] = []
        self.failures: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"

    @property
    def out(self) -> Path:
        """The output folder."""
        return self.settings.out

    def execute(self) -> int:
        """Runs every method and seed, writes the reports; returns the exit code."""
        self.out.mkdir(parents=True, exist_ok=True)
        total = len(self.methods) * len(self.seeds)
        log(f"{len(self.methods)} methods x {len(self.seeds)} seed(s) on {self.settings.dataset}, budget "
            f"{self.settings.budget}, W&B {self.settings.wandb} (group {self.settings.group}); output in {self.out}")
        done = 0
        for method in self.methods:
            for seed in self.seeds:
                done += 1
                extra: list[str] = []
                if method.role == "student" and method.requires:
                    teacher = next((r for r in self.results if r.method == method.requires and r.seed == seed), None)
                    ckpt = teacher.checkpoint if teacher is not None else None
                    if ckpt is None or not Path(ckpt).exists():
                        self.fail(method, seed, f"no checkpoint of {method.requires} seed {seed}", done, total)
                        continue
                    extra.append(f"--model.init_args.teacher_ckpt={ckpt}")  # the teacher's best
                try:
                    result = fit_and_test(self.settings, method, seed, extra)
                except (Exception, SystemExit) as error:  # noqa: BLE001 - one failed method must not lose the others
                    if is_input_error(error):
                        log(f"{method.name} seed {seed}: {last_line(self.settings.log_file(method, seed))}")
                        raise
                    self.fail(method, seed, f"{type(error).__name__}: {error}", done, total)
                    continue
                for earlier in self.results:  # only the latest seed's networks are timed
                    if earlier.method == method.name:
                        earlier.module = None
                self.results.append(result)
                m = result.metrics
                log(f"{done}/{total} {method.name} seed {seed}: test "
                    + " ".join(f"ctr@{k} {m.get(f'test/ctr@{k}', math.nan):.3f}" for k in KS)
                    + f" auc {m.get('test/auc', math.nan):.3f} ndcg@10_full {m.get('test/ndcg@10_full', math.nan):.4f}"
                    + f" (best epoch {result.best_epoch} of {result.epochs}, stopped by {result.stopped_by};"
                    + f" {result.train_s:.0f} s training, {result.wall_s:.0f} s wall, {result.cpu_s:.0f} s CPU;"
                    + f" {self.elapsed()} so far)")
                self.write_runs()
        self.write_reports()
        return 1 if self.failures else 0

    def fail(self, method: Method, seed: int, reason: str, done: int, total: int) -> None:
        """Records and reports a failed run."""
        self.failures.append({"method": method.name, "seed": seed, "error": reason.splitlines()[0][:500]})
        log(f"{done}/{total} {method.name} seed {seed}: FAILED: {reason.splitlines()[0][:300]} "
            f"(see {self.settings.log_file(method, seed)})")

    def elapsed(self) -> str:
        """Wall time since the start, as `4m05s`."""
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def meta(self) -> dict[str, Any]:
        """What was run: data, budget, seeds, command."""
        return {
            "dataset": self.settings.dataset,
            "budget": self.settings.budget,
            "cap": CAPS[self.settings.budget],
            "monitor": MONITOR,
            "patience": PATIENCE,
            "start_from_epoch": self.settings.start_from_epoch,
            "seeds": self.seeds,
            "command": self.command,
            "wandb_group": self.settings.group,
            "wall_s": round(time.perf_counter() - self.started, 1),
            "cpu_s": round(time.process_time(), 1),  # this process only: about the wall time on an idle machine
            "load_average_at_start": self.load_at_start,
            "torch_threads": torch.get_num_threads(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def write_runs(self) -> None:
        """`runs.json`: every finished run's test metrics and curves (rewritten after each run)."""
        runs = [{"method": r.method, "seed": r.seed, "wall_s": round(r.wall_s, 1), "cpu_s": round(r.cpu_s, 1),
                 "train_s": round(r.train_s, 1), "best_epoch": r.best_epoch, "epochs": r.epochs,
                 "stopped_by": r.stopped_by, "checkpoint": r.checkpoint, "train_negatives": r.train_negatives,
                 "metrics": r.metrics, "best_val": best_validation(r.val_curve), "curve": r.curve,
                 "val_curve": r.val_curve} for r in self.results]
        payload = {"meta": self.meta(), "runs": runs, "failures": self.failures}
        (self.out / "runs.json").write_text(json.dumps(payload))

    def write_reports(self) -> None:
        """table1.md/json, fig2_ctr.png, fig2_sim_time.png (the federated methods), distill.md/json, and the W&B report run."""
        meta = self.meta()
        names = [m.name for m in self.methods]
        rows = table_rows(self.results, names)
        (self.out / "table1.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        table = format_table1(rows, meta, self.failures)
        (self.out / "table1.md").write_text(table)
        plot_fig2(self.results, names, self.out / "fig2_ctr.png", meta)
        sim_time_figure = self.out / "fig2_sim_time.png"
        if not plot_sim_time(self.results, sim_time_figure, meta):
            sim_time_figure.unlink(missing_ok=True)  # an earlier reproduction's
        distill = distill_report(self.results, self.methods, self.settings.budget, self.out / "checkpoints")
        for result in self.results:
            result.module = None
        if distill is not None:
            (self.out / "distill.json").write_text(json.dumps({**meta, **distill}, indent=1))
            (self.out / "distill.md").write_text(format_distill(distill, meta))
        self.write_runs()
        report_run(self.settings, self.meta(), rows, self.out / "fig2_ctr.png", distill,
                   sim_time_figure if sim_time_figure.exists() else None)
        print(table, flush=True)
        if distill is not None:
            print(format_distill(distill, meta), flush=True)
        log(f"done in {self.elapsed()}: {', '.join(sorted(p.name for p in self.out.iterdir() if p.is_file()))}"
            + (f"; {len(self.failures)} run(s) FAILED" if self.failures else ""))


def last_line(path: Path) -> str:
    """The last `error:` line of a run's log (the CLI's message on bad arguments), else its last non-empty line."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def is_input_error(error: BaseException) -> bool:
    """Bad data or arguments: every other method would fail the same way."""
    from datamodules import DataError

    return isinstance(error, (DataError, SystemExit))
