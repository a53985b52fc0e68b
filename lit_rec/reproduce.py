"""Reproduces Table 1 and Figure 2 of the DADRL paper and the DRL-Rec distillation report on one data set.

```
python -m lit_rec.reproduce --data configs/data/ml100k.yaml --data.path ../shared/data/ml-100k --out DIR \\
    [--budget smoke|quick|full] [--seeds N] [--methods DQN,DADRL] [--wandb offline|online|disabled]
```

Every method of `METHODS` is trained with the same data, split and frozen negatives (one data config, one
data seed), then tested. The budget rule: each method trains until validation stops improving, within the
same cap for all. A run stops when `val/ctr@10` has not improved for `PATIENCE` validations (EarlyStopping)
or at the cap of `--budget` (`CAPS`: `max_epochs` and `max_time`, identical for every learned method), and
is tested with its best-validation checkpoint (the one ModelCheckpoint on `val/ctr@10`); the DRL-Rec
student distils from the teacher's best checkpoint of the same seed. Budgets: `quick` (ML-100K, every
method, one seed: <= 10 min of one core), `full` (ML-1M users 1-2999, one seed: <= 60 min), `smoke` (a few
steps in two epochs, for tests). Seeds 0..N-1 vary the model (`seed_everything` and
`model.init_args.seed`), never the data. Any other argument (`--data.format=csv`, `--data.user_col=...`,
`--trainer FILE`, `--trainer.max_epochs=...`) is passed to every run after its config, as in `train.py`.

Writes to DIR: `table1.md` / `table1.json` (test CTR@k, AUC and ndcg@10_full, mean ± std over seeds, the
best epoch and the seconds of training of each method), `fig2_ctr.png` (`train/ctr` against
`train/episodes`, every method), `distill.md` / `distill.json` (teacher, student, student alone:
parameters, latency, AUC, CTR@k), `runs.json` (every run's metrics, curves, best epoch, epochs run and
what stopped it), `configs/` (the exact config of every run: `python train.py fit --config
DIR/configs/X.yaml` reruns one), `checkpoints/<run>/best.ckpt` (each run's best-validation checkpoint, the
one tested), `logs/` (each run's output) and `runs/<run>/wandb/offline-run-*` (one W&B run per training
run, all in one group, plus a `report` run with the tables and the figure).

A method is one line of `METHODS` (a config file and its budgets): docs/ADDING_A_METHOD.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import math
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 10, 20, 50, 100)
BUDGETS = ("smoke", "quick", "full")
EXTRA_COLUMNS = ("auc", "ndcg@10_full")
# DESIGN.md section 9: the product claim the student must meet or beat
DISTILL_TARGETS = {"param_ratio": 0.497, "latency_ratio": 0.767}


# The budget rule: every method trains until validation stops improving, within the same cap for all.
MONITOR = "val/ctr@10"
PATIENCE = 3  # validations without a better MONITOR before a run stops (EarlyStopping, every method alike)
# epochs before early stopping starts watching: a Q-learner can sit at the popularity level for its first
# epochs (DDQN on the synthetic simulator: val CTR@10 .292/.288/.277/.289, then .331/.393/.421 ... .453)
MIN_EPOCHS = 5  # early stopping's `start_from_epoch` (not in the smoke budget)
# The cap of every learned method per budget. `max_time` counts the whole fit, validations included.
CAPS: dict[str, dict[str, Any]] = {
    # two epochs of three steps (each logged, so that even they draw a curve): validation, early stopping
    # and the best checkpoint all run
    "smoke": {"max_epochs": 2, "max_steps": -1, "limit_train_batches": 3, "log_every_n_steps": 1},
    # ML-100K, all methods, one seed: 10 learned runs x 45 s + evaluation <= 10 minutes of one core
    "quick": {"max_epochs": 40, "max_steps": -1, "max_time": "00:00:00:45"},
    # ML-1M users 1-2999, one seed: 10 learned runs x 5 min + evaluation <= 60 minutes of one core
    "full": {"max_epochs": 40, "max_steps": -1, "max_time": "00:00:05:00"},
}


def capped(only: tuple[str, ...] = BUDGETS, **overrides: Any) -> dict[str, dict[str, Any]]:
    """Every budget's common cap (`CAPS`), with `overrides` on top in the budgets `only`: for a method that
    needs less than the cap."""
    return {name: {**cap, **(overrides if name in only else {})} for name, cap in CAPS.items()}


DEFAULT_BUDGETS = capped()


@dataclass(frozen=True)
class Method:
    """One row of Table 1: a config under `configs/`, its budgets and extra CLI arguments.

    `budgets` maps each budget name (`smoke`, `quick`, `full`) to trainer overrides; the default,
    `DEFAULT_BUDGETS`, is the common cap `CAPS` (every run also stops early on `val/ctr@10`). `role`
    wires DRL-Rec: a `student` run gets `--model.init_args.teacher_ckpt=` the best checkpoint of the
    same seed's `teacher` run (`requires` names the teacher method); `student_alone` is reported beside
    them in `distill.md`. `trainer` holds more trainer overrides for every budget.
    """

    name: str
    config: str
    budgets: dict[str, dict[str, Any]] = field(default_factory=lambda: DEFAULT_BUDGETS)
    args: tuple[str, ...] = ()
    role: str = "table"
    requires: str | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The name as a file/run name: lower case, `[a-z0-9_]`."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


# Table 1's rows in order. A new method is one line here plus its config (docs/ADDING_A_METHOD.md).
METHODS: list[Method] = [
    # counts clicks: one pass is all (smoke keeps its two short epochs, so that even it draws a curve)
    Method("Popularity", "configs/popularity.yaml", capped(only=("quick", "full"), max_epochs=1)),
    Method("LinUCB", "configs/linucb.yaml"),
    Method("SeqRec", "configs/seqrec.yaml"),
    Method("DQN", "configs/dqn.yaml"),
    Method("DDQN", "configs/ddqn.yaml"),
    Method("A2C-F", "configs/a2c_f.yaml"),
    Method("A2C-D", "configs/a2c_d.yaml"),
    Method("DADRL", "configs/dadrl.yaml"),
    Method("DRL-Rec teacher", "configs/drlrec_teacher.yaml", role="teacher"),
    Method("DRL-Rec student", "configs/drlrec_student.yaml", role="student", requires="DRL-Rec teacher"),
    Method("DRL-Rec student alone", "configs/drlrec_student.yaml", args=("--model.init_args.distill=false",),
           role="student_alone"),
]


# --------------------------------------------------------------------------- running


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[reproduce] {message}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    """What one training run left behind."""

    method: str
    seed: int
    metrics: dict[str, float]
    curve: list[tuple[int, float, float]]
    val_curve: list[dict[str, float]]
    train_negatives: int | None
    wall_s: float
    cpu_s: float = 0.0
    train_s: float = 0.0  # wall seconds of `trainer.fit` (validations included)
    best_epoch: int | None = None  # 0-based epoch of the best val/ctr@10 (the checkpoint tested); None: no validation
    epochs: int = 0  # epochs run (the last one possibly cut short by the time cap)
    stopped_by: str = ""  # early_stopping, max_time, max_epochs, max_steps or other
    checkpoint: str | None = None  # the tested best checkpoint (DRL-Rec: the student's teacher)
    module: Any = None  # kept only for the DRL-Rec latency measurement


class Reproduction:
    """Runs the methods for every seed and writes the reports."""

    def __init__(self, options: argparse.Namespace, passthrough: list[str]) -> None:
        self.options = options
        self.passthrough = passthrough
        self.out = Path(options.out)
        self.budget = options.budget
        self.seeds = list(range(options.seeds))
        self.methods = select_methods(options.methods)
        self.data_spec: dict[str, Any] = (yaml.safe_load(Path(options.data).read_text()) or {}) if options.data else {}
        self.dataset = dataset_name(self.data_spec, passthrough)
        self.group = options.group or f"reproduce-{self.dataset}-{self.budget}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        self.results: list[RunResult] = []
        self.failures: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"

    # ------------------------------------------------------------------ one run
    def run_spec(self, method: Method, seed: int) -> dict[str, Any]:
        """The method's config with this reproduction's seed, budget, logger and callbacks."""
        spec = yaml.safe_load((ROOT / method.config).read_text())
        spec["seed_everything"] = seed
        init = spec["model"].setdefault("init_args", {})
        if "seed" in init:
            init["seed"] = seed
        # the data file first, the method's own data keys (e.g. DADRL's batch size) over it; an agent that
        # takes one step of `num_envs` environments per batch gets batches of `num_envs` events, so that an
        # epoch is one pass over the train split for it too
        data = {**self.data_spec, **(spec.get("data") or {})}
        if "num_envs" in init and "batch_size" not in (spec.get("data") or {}):
            data["batch_size"] = int(init["num_envs"])
        if data:
            spec["data"] = data
        trainer = spec.setdefault("trainer", {})
        run_name = f"{method.slug}-seed{seed}"
        # the config's checkpoints and early stopping give way to the same ones for every method: the best
        # val/ctr@10 kept (no periodic files), and a stop after PATIENCE validations without improvement
        callbacks = [c for c in trainer.get("callbacks") or []
                     if not str(c.get("class_path", "")).endswith(("ModelCheckpoint", "EarlyStopping"))]
        callbacks += [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(self.checkpoint_dir(method, seed)), "filename": "best", "monitor": MONITOR,
                           "mode": "max", "save_top_k": 1}},
            {"class_path": "callbacks.early_stopping.WarmupEarlyStopping",
             "init_args": {"monitor": MONITOR, "mode": "max", "patience": PATIENCE, "check_on_train_epoch_end": False,
                           "start_from_epoch": self.start_from_epoch}},
            {"class_path": "callbacks.curve_recorder.CurveRecorder"},
        ]
        trainer.update(
            callbacks=callbacks,
            logger=self.logger_spec(method, seed, run_name),
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(self.out / "runs" / run_name),
            **method.budgets[self.budget],
            **method.trainer,
        )
        return spec

    def logger_spec(self, method: Method, seed: int, run_name: str) -> dict[str, Any] | bool:
        """One W&B run per training run, in this reproduction's group."""
        if self.options.wandb == "none":
            return False
        return {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {
                "save_dir": str(self.out / "runs" / run_name),
                "project": self.options.project,
                "name": run_name,
                "group": self.group,
                "job_type": method.slug,
                "tags": [self.budget, self.dataset, f"seed{seed}"],
                "mode": self.options.wandb,
            },
        }

    def run(self, method: Method, seed: int, extra: list[str]) -> RunResult:
        """Fits one method for one seed (in this process, through `lit_rec.cli.make_cli`), then tests its
        best-validation checkpoint."""
        from callbacks.curve_recorder import CurveRecorder
        from lit_rec.cli import make_cli

        run_name = f"{method.slug}-seed{seed}"
        config = self.out / "configs" / f"{run_name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(self.run_spec(method, seed), sort_keys=False))
        shutil.rmtree(self.checkpoint_dir(method, seed), ignore_errors=True)  # an earlier reproduction's best
        args = ["--config", str(config), *self.passthrough, *method.args, *extra]
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        with open(self.out / "logs" / f"{run_name}.log", "w") as output, \
                contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            print("args: fit", " ".join(args), flush=True)
            try:
                cli = make_cli(args, run=False)  # `fit` below, so that its time is the training time
                trainer = cli.trainer
                fit_started = time.perf_counter()
                trainer.fit(cli.model, datamodule=cli.datamodule)
                train_s = time.perf_counter() - fit_started
                # read before `test`: testing a checkpoint restores the callbacks' states saved in it
                recorder = next(c for c in trainer.callbacks if isinstance(c, CurveRecorder))
                curve, val_curve = list(recorder.points), list(recorder.val_points)
                epochs, stop = trainer.current_epoch, stopped_by(trainer)
                best = best_checkpoint(trainer)
                if not best and method.role == "teacher":  # no validation ran: the student distils the last state
                    self.checkpoint_dir(method, seed).mkdir(parents=True, exist_ok=True)
                    best = str(self.checkpoint_dir(method, seed) / "last.ckpt")
                    trainer.save_checkpoint(best)
                # the best checkpoint's weights are loaded into cli.model (its final state when there is none)
                trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
                metrics = {k: v for k, v in getattr(cli.model, "last_metrics", {}).items() if k.startswith("test/")}
                result = RunResult(method.name, seed, metrics, curve, val_curve, getattr(cli.model, "train_negatives", None),
                                   0.0, train_s=train_s, best_epoch=best_epoch(val_curve) if best else None,
                                   epochs=epochs, stopped_by=stop, checkpoint=best or None)
                if method.role in ("teacher", "student"):
                    for earlier in self.results:  # only the latest seed's networks are timed
                        if earlier.method == method.name:
                            earlier.module = None
                    result.module = cli.model
                self.finish_wandb(cli.trainer, method, seed, result)
            finally:
                finish_wandb_run()
        result.wall_s = time.perf_counter() - started
        result.cpu_s = time.process_time() - cpu_started
        return result

    def checkpoint_dir(self, method: Method, seed: int) -> Path:
        """Where a run's best checkpoint (`best.ckpt`) goes."""
        return self.out / "checkpoints" / f"{method.slug}-seed{seed}"

    def finish_wandb(self, trainer: Any, method: Method, seed: int, result: RunResult) -> None:
        """Adds the reproduction's context to the run config and the best validation CTR@k to the summary."""
        from callbacks.wandb_utils import find_wandb_logger

        logger = find_wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        run = logger.experiment
        run.config.update({"reproduce": {"method": method.name, "config": method.config, "budget": self.budget,
                                         "seed": seed, "group": self.group}}, allow_val_change=True)
        best = best_validation(result.val_curve)
        run.summary.update({f"best/val_ctr@{k}": v for k, v in best.items()})
        run.summary.update({"best/epoch": result.best_epoch, "train_s": result.train_s, "epochs": result.epochs,
                            "stopped_by": result.stopped_by})

    # ------------------------------------------------------------------ all runs
    def execute(self) -> int:
        """Runs every method and seed, writes the reports; returns the exit code."""
        self.out.mkdir(parents=True, exist_ok=True)
        total = len(self.methods) * len(self.seeds)
        log(f"{len(self.methods)} methods x {len(self.seeds)} seed(s) on {self.dataset}, budget {self.budget}, "
            f"W&B {self.options.wandb} (group {self.group}); output in {self.out}")
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
                    result = self.run(method, seed, extra)
                except (Exception, SystemExit) as error:  # noqa: BLE001 - one failed method must not lose the others
                    if is_input_error(error):
                        log(f"{method.name} seed {seed}: {last_line(self.out / 'logs' / f'{method.slug}-seed{seed}.log')}")
                        raise
                    self.fail(method, seed, f"{type(error).__name__}: {error}", done, total)
                    continue
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
            f"(see {self.out / 'logs' / f'{method.slug}-seed{seed}.log'})")

    def elapsed(self) -> str:
        """Wall time since the start, as `4m05s`."""
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    @property
    def start_from_epoch(self) -> int:
        """The first epoch whose validation early stopping counts (the smoke budget's two epochs: 0)."""
        return 0 if self.budget == "smoke" else MIN_EPOCHS

    # ------------------------------------------------------------------ reports
    def meta(self) -> dict[str, Any]:
        """What was run: data, budget, seeds, command."""
        return {
            "dataset": self.dataset,
            "budget": self.budget,
            "cap": CAPS[self.budget],
            "monitor": MONITOR,
            "patience": PATIENCE,
            "start_from_epoch": self.start_from_epoch,
            "seeds": self.seeds,
            "command": "python -m lit_rec.reproduce " + " ".join(self.options.argv),
            "wandb_group": self.group,
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
        """table1.md/json, fig2_ctr.png, distill.md/json, and the W&B report run."""
        meta = self.meta()
        rows = table_rows(self.results, [m.name for m in self.methods])
        (self.out / "table1.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        table = format_table1(rows, meta, self.failures)
        (self.out / "table1.md").write_text(table)
        plot_fig2(self.results, [m.name for m in self.methods], self.out / "fig2_ctr.png", meta)
        distill = self.distill_report()
        if distill is not None:
            (self.out / "distill.json").write_text(json.dumps({**meta, **distill}, indent=1))
            (self.out / "distill.md").write_text(format_distill(distill, meta))
        self.write_runs()
        self.wandb_report(rows, distill)
        print(table, flush=True)
        if distill is not None:
            print(format_distill(distill, meta), flush=True)
        log(f"done in {self.elapsed()}: {', '.join(sorted(p.name for p in self.out.iterdir() if p.is_file()))}"
            + (f"; {len(self.failures)} run(s) FAILED" if self.failures else ""))

    def distill_report(self) -> dict[str, Any] | None:
        """Teacher vs student vs student alone, when the three ran."""
        roles = {m.role: m.name for m in self.methods if m.role in ("teacher", "student", "student_alone")}
        if set(roles) != {"teacher", "student", "student_alone"}:
            return None
        by_role = {role: [r for r in self.results if r.method == name] for role, name in roles.items()}
        if not all(by_role.values()):
            return None
        from lit_rec.serving import num_parameters, serving_latency_ms

        teacher, student = by_role["teacher"][-1].module, by_role["student"][-1].module
        if teacher is None or student is None:
            return None
        repeats = {"smoke": 5, "quick": 100, "full": 200}[self.budget]
        work = self.out / "checkpoints"
        work.mkdir(parents=True, exist_ok=True)
        times = serving_latency_ms(teacher, student, work, repeats)
        params = {"teacher": num_parameters(teacher.online), "student": num_parameters(student.online)}
        params["student_alone"] = params["student"]  # the same network, trained without the teacher
        report: dict[str, Any] = {"roles": {}}
        for role, runs in by_role.items():
            entry: dict[str, Any] = {"method": roles[role], "seeds": [r.seed for r in runs], "params": params[role]}
            network = "teacher" if role == "teacher" else "student"
            entry["latency_ms"] = round(times[f"{network}_artefact"], 4)
            entry["latency_ms_eager"] = round(times[network], 4)
            for key in ("auc", *(f"ctr@{k}" for k in KS)):
                values = [r.metrics[f"test/{key}"] for r in runs if f"test/{key}" in r.metrics]
                entry[key] = statistics.fmean(values) if values else math.nan
                entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            report["roles"][role] = entry
        t, s = report["roles"]["teacher"], report["roles"]["student"]
        report["param_ratio"] = s["params"] / t["params"]
        report["latency_ratio"] = s["latency_ms"] / t["latency_ms"]
        report["latency_ratio_eager"] = s["latency_ms_eager"] / t["latency_ms_eager"]
        report["student_minus_teacher_auc"] = s["auc"] - t["auc"]
        report["latency"] = f"median of {repeats} interleaved repeats, 1000 candidates, one request, thread CPU time"
        report["meets"] = {
            "param_ratio": report["param_ratio"] <= DISTILL_TARGETS["param_ratio"],
            "latency_ratio": report["latency_ratio"] <= DISTILL_TARGETS["latency_ratio"],
            "student_auc_at_least_teacher": report["student_minus_teacher_auc"] >= 0,
        }
        for result in self.results:
            result.module = None
        return report

    def wandb_report(self, rows: list[dict[str, Any]], distill: dict[str, Any] | None) -> None:
        """One more run in the group (`job_type` report) holding Table 1, Figure 2 and the distillation table."""
        if self.options.wandb in ("none", "disabled"):
            return
        import wandb

        (self.out / "runs" / "report").mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.options.project, group=self.group, name="report", job_type="report",
                         dir=str(self.out / "runs" / "report"), mode=self.options.wandb,
                         tags=[self.budget, self.dataset], config={"reproduce": self.meta()})
        columns = ["method", *(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS, "best_epoch", "train_s"]
        run.log({
            "table1": wandb.Table(columns=columns, data=[[r["method"], *(r.get(c) for c in columns[1:])] for r in rows]),
            "fig2_ctr": wandb.Image(str(self.out / "fig2_ctr.png")),
        })
        if distill is not None:
            dcols = ["role", "params", "latency_ms", "auc", *(f"ctr@{k}" for k in KS)]
            run.log({"distill": wandb.Table(columns=dcols, data=[[role, *(e[c] for c in dcols[1:])]
                                                                  for role, e in distill["roles"].items()])})
            run.summary.update({k: distill[k] for k in ("param_ratio", "latency_ratio", "student_minus_teacher_auc")})
        run.finish()


def finish_wandb_run() -> None:
    """Ends the process's current W&B run, so the next WandbLogger starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def last_line(path: Path) -> str:
    """The last non-empty line of a run's log (jsonargparse's error message on bad arguments)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def is_input_error(error: BaseException) -> bool:
    """Bad data or arguments: every other method would fail the same way."""
    from datamodules import DataError

    return isinstance(error, (DataError, SystemExit))


def select_methods(names: str | None) -> list[Method]:
    """`METHODS`, or the comma-separated subset (case-insensitive names or slugs), with the teachers they need."""
    if not names:
        return list(METHODS)
    wanted = {n.strip().lower() for n in names.split(",") if n.strip()}
    known = {m.name.lower(): m for m in METHODS} | {m.slug: m for m in METHODS}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(m.name for m in METHODS)}")
    chosen = {known[n].name for n in wanted}
    for m in METHODS:
        if m.name in chosen and m.requires:
            chosen.add(m.requires)
    return [m for m in METHODS if m.name in chosen]


def dataset_name(data_spec: dict[str, Any], passthrough: list[str]) -> str:
    """A short name for the data: the last part of `--data.path` (or the data file's), else its format."""
    path, fmt = data_spec.get("path"), data_spec.get("format", "synthetic")
    for i, arg in enumerate(passthrough):
        if arg.startswith("--data.path="):
            path = arg.split("=", 1)[1]
        elif arg == "--data.path" and i + 1 < len(passthrough):
            path = passthrough[i + 1]
        elif arg.startswith("--data.format="):
            fmt = arg.split("=", 1)[1]
    if fmt == "synthetic" or not path:
        return str(fmt)
    return Path(str(path)).name or str(fmt)


def best_validation(val_curve: list[dict[str, float]]) -> dict[str, float]:
    """The best `val/ctr@k` of a run over its validations, keyed by k."""
    best: dict[str, float] = {}
    for point in val_curve:
        for k in KS:
            value = point.get(f"val/ctr@{k}")
            if value is not None and not math.isnan(value):
                best[str(k)] = max(best.get(str(k), -math.inf), value)
    return best


def best_checkpoint(trainer: Any) -> str:
    """The file of the trainer's ModelCheckpoint on `MONITOR` ("" when no validation ran)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor == MONITOR]
    return monitored[0].best_model_path if monitored else ""


def best_epoch(val_curve: list[dict[str, float]]) -> int | None:
    """The 0-based epoch of the first validation with the highest `MONITOR`: the one ModelCheckpoint keeps
    (it replaces its best only on a strict improvement)."""
    points = [p for p in val_curve if p.get(MONITOR) is not None and not math.isnan(p[MONITOR]) and "epoch" in p]
    if not points:
        return None
    best = max(p[MONITOR] for p in points)
    return int(next(p["epoch"] for p in points if p[MONITOR] == best))


def stopped_by(trainer: Any) -> str:
    """What ended the fit: `early_stopping` (no better `MONITOR` for PATIENCE validations), `max_time`,
    `max_epochs`, `max_steps`, or `other` (an interruption, say)."""
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and (callback.stopped_epoch > 0 or callback.stopping_reason_message):
            return "early_stopping"
        if isinstance(callback, Timer) and callback.time_remaining("train") is not None \
                and callback.time_remaining("train") <= 0:
            return "max_time"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    return "other"


# --------------------------------------------------------------------------- tables


def table_rows(results: list[RunResult], order: list[str]) -> list[dict[str, Any]]:
    """Random, then one row per method (means over seeds, `<key>_std` beside each mean): test metrics, the
    best epoch (`best_epoch`, 0-based; `best_epochs` per seed), epochs run, what stopped each seed's fit and
    the seconds of training (`train_s`, wall time of fit)."""
    rows: list[dict[str, Any]] = [{"method": "Random", **{f"ctr@{k}": 1 / (k + 1) for k in KS}, "auc": 0.5,
                                   "ndcg@10_full": None, "seeds": 0, "best_epoch": None, "train_s": None}]
    for name in order:
        runs = [r for r in results if r.method == name]
        if not runs:
            continue
        row: dict[str, Any] = {"method": name, "seeds": len(runs)}
        for key in (*(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS):
            values = [r.metrics[f"test/{key}"] for r in runs if f"test/{key}" in r.metrics]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        best_epochs = [r.best_epoch for r in runs if r.best_epoch is not None]
        row["best_epochs"] = best_epochs
        row["best_epoch"] = statistics.fmean(best_epochs) if best_epochs else None
        row["best_epoch_std"] = statistics.stdev(best_epochs) if len(best_epochs) > 1 else (0.0 if best_epochs else None)
        row["epochs"] = statistics.fmean(r.epochs for r in runs)
        row["stopped_by"] = [r.stopped_by for r in runs]
        row["train_s"] = round(statistics.fmean(r.train_s for r in runs), 1)
        row["train_s_std"] = round(statistics.stdev(r.train_s for r in runs), 1) if len(runs) > 1 else 0.0
        row["wall_s"] = round(statistics.fmean(r.wall_s for r in runs), 1)
        row["cpu_s"] = round(statistics.fmean(r.cpu_s for r in runs), 1)
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, best: float | None, digits: int = 3) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if row.get("seeds", 0) > 1 and row.get(f"{key}_std") is not None:
        text += f" ± {row[f'{key}_std']:.{digits}f}"
    if best is not None and row["method"] != "Random" and abs(value - best) < 1e-12:
        text = f"**{text}**"
    return text


def format_table1(rows: list[dict[str, Any]], meta: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """Table 1's layout (Method | k=1 ... k=100) plus AUC and ndcg@10_full, best learned value in bold, then
    the best epoch and the seconds of training."""
    keys = [*(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS]
    methods = [r for r in rows if r["method"] != "Random"]
    best = {key: max((r[key] for r in methods if r.get(key) is not None), default=None) for key in keys}
    seeds = len(meta["seeds"])
    lines = [
        f"# Table 1: {meta['dataset']}, budget `{meta['budget']}`, "
        + (f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"),
        "",
        "Test split, One-Plus-K CTR@k (the positive ranked first among itself and k frozen random negatives; "
        "ties share), AUC against the 100 negatives, full-ranking NDCG@10. Best learned value in bold; "
        "Random is 1/(k+1).",
        "",
        f"Each method trained until {meta.get('monitor', MONITOR)} stopped improving for "
        f"{meta.get('patience', PATIENCE)} validations"
        + (f" from epoch {meta['start_from_epoch']} on" if meta.get("start_from_epoch") else "")
        + ", within the same cap for all "
        f"({cap_text(meta.get('cap', CAPS[meta['budget']]))}), and was tested with its best-validation "
        "checkpoint. *best epoch*: the epoch (from 0) of that checkpoint; *train s*: wall seconds of the fit "
        "(validations included).",
        "",
        "| Method | k=1 | k=10 | k=20 | k=50 | k=100 | AUC | NDCG@10 (full) | best epoch | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"*{row['method']} (1/(k+1))*" if row["method"] == "Random" else row["method"]
        digits = {"ndcg@10_full": 4}
        cells = [_cell(row, key, best[key], digits.get(key, 3)) for key in keys]
        cells.append(_cell(row, "best_epoch", None, 0 if seeds == 1 else 1))
        cells.append(_cell(row, "train_s", None, 1))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"`{meta['command']}`  ", f"{meta['date']}, {meta['wall_s'] / 60:.1f} min wall "
              f"({meta['cpu_s'] / 60:.1f} min CPU of this process; load average {meta['load_average_at_start']} at the start), "
              f"torch threads {meta['torch_threads']}, W&B group `{meta['wandb_group']}`."]
    capped_runs = [f"{r['method']} ({', '.join(sorted(set(r['stopped_by'])))})" for r in methods
                   if any(s != "early_stopping" for s in r.get("stopped_by", [])) and r.get("epochs", 0) > 1]
    if capped_runs:
        lines += ["", "Stopped by the cap, not by early stopping (validation may still have been improving): "
                  + ", ".join(capped_runs) + "."]
    if failures:
        lines += ["", "Failed runs: " + "; ".join(f"{f['method']} seed {f['seed']}: {f['error']}" for f in failures)]
    return "\n".join(lines) + "\n"


def cap_text(cap: dict[str, Any]) -> str:
    """A budget's cap in words: `40 epochs, 45 s`."""
    parts = []
    if cap.get("max_epochs", -1) not in (-1, None):
        parts.append(f"{cap['max_epochs']} epochs")
    if cap.get("max_steps", -1) not in (-1, None):
        parts.append(f"{cap['max_steps']} steps")
    if cap.get("limit_train_batches") is not None:
        parts.append(f"{cap['limit_train_batches']} batches an epoch")
    if cap.get("max_time"):
        parts.append(f"{cap_seconds(cap):.0f} s")
    return ", ".join(parts) or "none"


def cap_seconds(cap: dict[str, Any]) -> float:
    """A cap's `max_time` (Lightning's `DD:HH:MM:SS`) in seconds; inf without one."""
    if not cap.get("max_time"):
        return math.inf
    days, hours, minutes, seconds = (int(x) for x in str(cap["max_time"]).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def format_distill(report: dict[str, Any], meta: dict[str, Any]) -> str:
    """The DRL-Rec table: parameters, latency, AUC and CTR@k of teacher, student and student alone."""
    roles = report["roles"]
    seeds = len(meta["seeds"])
    lines = [
        f"# DRL-Rec distillation: {meta['dataset']}, budget `{meta['budget']}`, "
        + (f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"),
        "",
        "| Model | Parameters | Latency (ms) | AUC | CTR@1 | CTR@10 | CTR@20 | CTR@50 | CTR@100 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"teacher": "Teacher", "student": "Student (distilled)", "student_alone": "Student alone"}
    for role in ("teacher", "student", "student_alone"):
        e = roles[role]
        cells = []
        for key in ("auc", *(f"ctr@{k}" for k in KS)):
            cell = f"{e[key]:.4f}" if key == "auc" else f"{e[key]:.3f}"
            if seeds > 1:
                cell += f" ± {e[key + '_std']:.4f}" if key == "auc" else f" ± {e[key + '_std']:.3f}"
            cells.append(cell)
        lines.append(f"| {names[role]} | {e['params']:,} | {e['latency_ms']:.3f} | " + " | ".join(cells) + " |")
    verdict = report["meets"]
    lines += [
        "",
        f"- Student / teacher parameters: {report['param_ratio']:.3f} (claim <= {DISTILL_TARGETS['param_ratio']}: "
        f"{'meets' if verdict['param_ratio'] else 'misses'}).",
        f"- Student / teacher latency: {report['latency_ratio']:.3f} on the exported TorchScript artefacts "
        f"({report['latency_ratio_eager']:.3f} eager; claim <= {DISTILL_TARGETS['latency_ratio']}: "
        f"{'meets' if verdict['latency_ratio'] else 'misses'}); {report['latency']}.",
        f"- Student AUC minus teacher AUC: {report['student_minus_teacher_auc']:+.4f} "
        f"({'meets' if verdict['student_auc_at_least_teacher'] else 'misses'} the claim >= 0).",
        "",
        f"`{meta['command']}`",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figure 2


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def mean_curve(curves: list[list[tuple[int, float, float]]], points: int = 200) -> tuple[list[float], list[float], list[float]]:
    """Seeds' smoothed curves on a common episode grid (up to the shortest): x, mean, std."""
    import numpy as np

    smoothed = []
    for curve in curves:
        xs = [p[1] for p in curve]
        ys = smooth([p[2] for p in curve], max(1, len(curve) // 25))
        smoothed.append((np.asarray(xs), np.asarray(ys)))
    end = min(x[-1] for x, _ in smoothed)
    start = max(x[0] for x, _ in smoothed)
    if len(smoothed) == 1:
        x, y = smoothed[0]
        return list(x), list(y), [0.0] * len(x)
    grid = np.linspace(start, end, points)
    ys = np.stack([np.interp(grid, x, y) for x, y in smoothed])
    return list(grid), list(ys.mean(axis=0)), list(ys.std(axis=0, ddof=1))


def plot_fig2(results: list[RunResult], order: list[str], path: Path, meta: dict[str, Any]) -> None:
    """`train/ctr` (moving average) against training episodes, one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    colours = plt.get_cmap("tab20").colors
    chance: set[int] = set()
    for i, name in enumerate(order):
        runs = [r for r in results if r.method == name and len(r.curve) >= 2]
        if not runs:
            continue
        x, y, s = mean_curve([r.curve for r in runs])
        negatives = runs[0].train_negatives
        label = name + (f"  (n={negatives})" if negatives is not None else "")
        style = "--" if name.startswith("DRL-Rec") else "-"
        colour = colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        ax.plot(x, y, style, color=colour, lw=1.8, label=label)
        if len(runs) > 1:
            import numpy as np

            ax.fill_between(x, np.asarray(y) - np.asarray(s), np.asarray(y) + np.asarray(s), color=colour, alpha=0.15, lw=0)
        if negatives is not None:
            chance.add(int(negatives))
    for n in sorted(chance):
        ax.axhline(1 / (n + 1), color="grey", ls=":", lw=1)
        ax.annotate(f"random, n={n}: 1/{n + 1}", xy=(0.995, 1 / (n + 1)), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="grey")
    seeds = len(meta["seeds"])
    ax.set_title(f"Figure 2: training CTR against training episodes - {meta['dataset']}, budget {meta['budget']}, "
                 + (f"mean ± std of {seeds} seeds" if seeds > 1 else "1 seed"), fontsize=11)
    ax.set_xlabel("training episodes (train/episodes: events / mean events per user)")
    ax.set_ylabel("train/ctr, moving average\n(the logged item chosen among it and n random items)")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own options; everything else passes through to every run's CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_rec.reproduce",
        description="Trains every method of Table 1 and DRL-Rec on one data set and writes the paper's tables and figure.",
        epilog="Other arguments (--data.path PATH, --data.format=csv, --trainer FILE, --trainer.max_epochs=N, ...) "
               "are passed to every run, after its config, as in train.py.",
        allow_abbrev=False,
    )
    parser.add_argument("--data", default=None, help="data config file (configs/data/<d>.yaml); default: synthetic")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--budget", choices=BUDGETS, default="quick",
                        help="training budget per method (see METHODS in lit_rec/reproduce.py); smoke is for tests")
    parser.add_argument("--seeds", type=int, default=1, help="model seeds 0..N-1 (the data seed stays fixed)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled", "none"), default=None,
                        help="W&B mode of every run (default: $WANDB_MODE, else offline); none: no logger at all")
    parser.add_argument("--project", default="lit_rec", help="W&B project")
    parser.add_argument("--group", default=None, help="W&B group (default: reproduce-<data>-<budget>-<time>)")
    options, passthrough = parser.parse_known_args(argv)
    if options.seeds < 1:
        parser.error("--seeds must be >= 1")
    if options.wandb is None:
        mode = os.environ.get("WANDB_MODE", "offline")
        options.wandb = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if options.wandb not in ("offline", "online", "disabled"):
            options.wandb = "offline"
    if options.data is not None and not Path(options.data).is_file():
        parser.error(f"--data: no such file {options.data}")
    options.argv = argv
    return options, passthrough


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m lit_rec.reproduce`."""
    from datamodules import DataError
    from lit_rec.cli import _silence_known_noise
    from lit_rec.runtime import keep_large_buffers_on_heap

    argv = list(sys.argv[1:] if argv is None else argv)
    options, passthrough = parse_args(argv)
    _silence_known_noise()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available", tips: not per run
    os.environ.setdefault("WANDB_SILENT", "true")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as train.py: small networks, shared CPUs (PITFALLS.md)
    keep_large_buffers_on_heap()  # as train.py
    reproduction = Reproduction(options, passthrough)
    try:
        return reproduction.execute()
    except (DataError, SystemExit) as error:
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        message = str(error) if isinstance(error, DataError) else f"bad arguments (code {error.code}); see {options.out}/logs"
        print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        return 2
    finally:
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
