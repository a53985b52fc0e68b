"""Test-only helpers for end-to-end runs of `train.py`: a callback that freezes a fit right after a
checkpoint (so a test can SIGKILL it) and writes the final metrics, and a fork server that runs
`train.py` in fresh processes without paying the ~5-8 s of imports each time.

The fork server (`python tests/cli_harness.py`) imports the CLI once, then reads one JSON command per
line on stdin and answers one JSON line on stdout:
  {"run": [args...], "cwd": DIR, "log": FILE}  -> {"pid": PID}   (a child runs `train.py args...`;
                                                  with "script": PATH it runs that file instead)
  {"wait": PID}                                -> {"pid": PID, "code": N}   (N < 0: killed by signal -N)
Each child is a real, separate process running train.py as `__main__` (sys.argv as on a command line),
so SIGKILL kills exactly one run. Children never touch the server's pipes: stdin is /dev/null and
stdout/stderr go to the log file.

`python tests/cli_harness.py --sequence FILE` runs several CLI commands in one process (see
`run_sequence`): under DDP (configs/trainer/ddp_sim.yaml) Lightning starts the second rank once, and
both ranks then run the whole list.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L

from lit_rec.reproduce.methods import config_names

ROOT = Path(__file__).resolve().parents[1]


class FreezeAfterCheckpoint(L.Callback):
    """Stops the process (SIGSTOP on itself) at the first train batch after `global_step` reached `step`,
    i.e. after every checkpoint of that step is on disk (ModelCheckpoint saves at the end of the step's
    batch), writing `marker` first. At the end of fit writes `trainer.callback_metrics` to `metrics`.

    `step <= 0` never freezes (the uninterrupted and the resumed runs). With `final`, the state at the end
    of fit is also saved there as a full checkpoint (loops, callbacks, optimizers, RNG)."""

    def __init__(self, step: int = 0, marker: str | None = None, metrics: str | None = None, final: str | None = None) -> None:
        self.step, self.marker, self.metrics, self.final = step, marker, metrics, final

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if 0 < self.step <= trainer.global_step:
            expected = self.step
            self.step = 0
            if self.marker and trainer.is_global_zero:
                Path(self.marker).write_text(str(expected))
            os.kill(os.getpid(), signal.SIGSTOP)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.final:
            trainer.save_checkpoint(self.final)
        if self.metrics and trainer.is_global_zero:
            values = {k: float(v) for k, v in trainer.callback_metrics.items()}
            values["global_step"] = trainer.global_step
            Path(self.metrics).write_text(json.dumps(values, sort_keys=True))


def _child(args: list[str], cwd: str, log: str, script: str) -> None:
    """Runs `script` (train.py) with `args` in this (forked) process and exits with its exit code."""
    import runpy

    code = 0
    try:
        os.chdir(cwd)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    except BaseException:  # noqa: BLE001 - report anything as a failed run
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The fork server loop (see the module docstring)."""
    import lit_rec.cli  # noqa: F401 - the expensive imports, done once
    import datamodules.datamodule  # noqa: F401
    import callbacks  # noqa: F401
    import lit_rec.modules.a2c, lit_rec.modules.dadrl, lit_rec.modules.dqn, lit_rec.modules.drlrec  # noqa: E401, F401
    import lit_rec.modules.linucb, lit_rec.modules.popularity, lit_rec.modules.seqrec  # noqa: E401, F401

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        if "run" in command:
            pid = os.fork()
            if pid == 0:
                _child(command["run"], command["cwd"], command["log"], command.get("script", str(ROOT / "train.py")))
            reply: dict[str, Any] = {"pid": pid}
        else:
            pid, status = os.waitpid(command["wait"], 0)
            code = os.waitstatus_to_exitcode(status)
            reply = {"pid": pid, "code": code}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def run_sequence(path: str) -> None:
    """Runs the CLI commands listed in the JSON file `path`, `[{"args": [...], "metrics": FILE}, ...]`, one
    after another in this process (`make_cli`, as train.py does). After each, every rank writes
    `trainer.callback_metrics` to `FILE.rank<r>.json`. At the end rank 0 leaves the process group, waits
    for the ranks Lightning started and writes their exit codes to `<path>.exit_codes.json`."""
    import torch

    from lit_rec.cli import _silence_known_noise, make_cli

    _silence_known_noise()
    children = []
    rank = 0
    for item in json.loads(Path(path).read_text()):
        cli = make_cli(item["args"])
        rank = cli.trainer.global_rank
        children += getattr(getattr(cli.trainer.strategy, "_launcher", None), "procs", [])  # only the first
        values = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        Path(f"{item['metrics']}.rank{rank}.json").write_text(json.dumps(values, sort_keys=True))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if rank == 0:
        codes = [child.wait(timeout=120) for child in children]
        Path(f"{path}.exit_codes.json").write_text(json.dumps(codes))


# ---------------------------------------------------------------------------------------- test side
# (used by tests/conftest.py fixtures and the tests; nothing below runs in the children)

# a small simulator: 60 users x 150 items (100 frozen negatives per held-out event still fit), ~410 train
# events in 98 training windows of 5 items, 15 windows a batch: 7 train batches (= steps) per epoch, 2 epochs
DATA_ARGS = [
    "--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10",
    "--data.history_len=5", "--data.batch_size=15", "--trainer.max_epochs=2", "--trainer.logger=false",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]
CHECKPOINT_EVERY = 4  # step 4 is mid first epoch, step 8 early in the second
SMALL_NETWORK = ["--model.init_args.encoder.dim=32"]
# the arguments that shrink a method config to seconds (every argument not named here is the config's)
SHRINK: dict[str, list[str]] = {
    "seqrec": SMALL_NETWORK,
    "dqn": SMALL_NETWORK,
    "ddqn": SMALL_NETWORK,
    "drlrec_student": ["--model.init_args.num_candidates=64"],
}
# every config of the method registry (lit_rec.reproduce.methods), by name, with its shrinking arguments
METHODS: dict[str, list[str]] = {name: SHRINK.get(name, []) for name in config_names()}
# callback arguments changed so that their schedules fire within 14 steps
CALLBACK_ARGS = {
    "callbacks.staleness.StalenessCallback": {"histogram_every_n_steps": 3},
}


def callbacks_json(method: str, checkpoint_dir: Path, probe: dict[str, Any], every: int = CHECKPOINT_EVERY) -> str:
    """The method config's callback list (configs/callbacks/default.yaml's and the method's own) as one JSON
    value: the periodic ModelCheckpoint writing `step=N.ckpt` every `every` steps into `checkpoint_dir` (the one on
    val/ctr@10 as configured); FreezeAfterCheckpoint(**probe) last (early stopping, a key of its own, follows it)."""
    from lit_rec.cli import method_config

    config = method_config(ROOT / "configs" / f"{method}.yaml")
    result = []
    for callback in config["trainer"]["callbacks"]:
        class_path = callback["class_path"]
        init_args = dict(callback.get("init_args") or {})
        if class_path.endswith("ModelCheckpoint") and "monitor" not in init_args:
            init_args = {"dirpath": str(checkpoint_dir), "filename": "{step}", "every_n_train_steps": every,
                         "save_top_k": -1, "save_last": True}
        init_args.update(CALLBACK_ARGS.get(class_path, {}))
        result.append({"class_path": class_path, "init_args": init_args})
    result.append({"class_path": "cli_harness.FreezeAfterCheckpoint", "init_args": probe})
    return json.dumps(result)


class ForkServer:
    """The test's handle on `python tests/cli_harness.py` (see the module docstring)."""

    def __init__(self, env: dict[str, str]) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, cwd=ROOT, text=True,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited with {self.process.wait()}")
        return json.loads(line)

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def start(self, args: list[str], cwd: Path, log: Path, script: Path | None = None) -> int:
        """Starts `train.py args` (or `script args`) in a fresh process; returns its pid."""
        command = {"run": [str(a) for a in args], "cwd": str(cwd), "log": str(log)}
        if script is not None:
            command["script"] = str(script)
        return self._ask(command)["pid"]

    def wait(self, pid: int, timeout: float = 600.0) -> int:
        """Waits for a run; its exit code, or -signal when a signal ended it. A run still going after
        `timeout` seconds (a hung collective, say) is SIGKILLed and TimeoutError raised."""
        import select

        self.process.stdin.write(json.dumps({"wait": pid}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(f"run {pid} still going after {timeout} s: killed (exit {self._read()['code']})")
        return self._read()["code"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` in /proc/<pid>/stat (T: stopped, Z: exited), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two checkpoint trees differ (tensors bitwise, with dtype and shape)."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{path}: {a.dtype} {tuple(a.shape)} != {b.dtype} {tuple(b.shape)}"]
        nan_equal = a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        if torch.equal(a, b) or nan_equal:
            return []
        return [f"{path}: tensors differ (max |diff| {(a.double() - b.double()).abs().max().item():.3g})"]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return []  # both NaN
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


class Run:
    """One finished fit: its folder, exit code, final metrics (json) and end-of-fit checkpoint."""

    def __init__(self, folder: Path, code: int) -> None:
        self.folder, self.code = folder, code
        self.log = (folder / "log.txt").read_text() if (folder / "log.txt").exists() else ""
        metrics = folder / "metrics.json"
        self.metrics: dict[str, float] = json.loads(metrics.read_text()) if metrics.exists() else {}
        self.final = folder / "final.ckpt"
        self.checkpoints = folder / "ckpt"

    def check(self) -> "Run":
        assert self.code == 0 and self.metrics and self.final.is_file(), f"{self.folder}: exit {self.code}\n{self.log[-4000:]}"
        return self


class MethodRuns:
    """Fits of the METHODS through a ForkServer, each in its own folder under `root`; the uninterrupted
    fit of a method (the reference) runs once per session and is shared by the tests that need it."""

    def __init__(self, server: ForkServer, root: Path) -> None:
        self.server, self.root = server, root
        self.cache = root / "cache"
        self._references: dict[str, Run] = {}
        self._pending: dict[str, int] = {}

    def fit_args(self, method: str, folder: Path, freeze_step: int = 0, ckpt_path: Path | None = None,
                 trainer: str = "cpu", every: int = CHECKPOINT_EVERY) -> list[str]:
        """`train.py fit` of the shrunk method config into `folder` (checkpoints every `every` steps in
        `folder/ckpt`, FreezeAfterCheckpoint at `freeze_step`, end-of-fit metrics and checkpoint in `folder`)."""
        probe = {"step": freeze_step, "marker": str(folder / "frozen"), "metrics": str(folder / "metrics.json"),
                 "final": str(folder / "final.ckpt")}
        args = ["fit", "--config", str(ROOT / "configs" / f"{method}.yaml"), "--trainer", trainer_file(trainer),
                *DATA_ARGS, *METHODS[method], f"--data.cache_dir={self.cache}", f"--trainer.default_root_dir={folder}",
                f"--trainer.callbacks={callbacks_json(method, folder / 'ckpt', probe, every)}"]
        if method == "drlrec_student":
            args.append(f"--model.init_args.teacher_ckpt={self.reference('drlrec_teacher').final}")
        if ckpt_path is not None:
            args.append(f"--ckpt_path={ckpt_path}")
        return args

    def start(self, method: str, name: str, freeze_step: int = 0, ckpt_path: Path | None = None,
              every: int = CHECKPOINT_EVERY) -> tuple[int, Path]:
        """Starts a fit into `root/method/name`; returns (pid, folder)."""
        folder = self.root / method / name
        folder.mkdir(parents=True, exist_ok=True)
        args = self.fit_args(method, folder, freeze_step, ckpt_path, every=every)
        return self.server.start(args, folder, folder / "log.txt"), folder

    def finish(self, pid: int, folder: Path) -> Run:
        return Run(folder, self.server.wait(pid))

    def start_reference(self, method: str) -> None:
        """Starts the uninterrupted fit of `method` unless it ran or runs already."""
        if method not in self._references and method not in self._pending:
            self._pending[method], _ = self.start(method, "uninterrupted")

    def reference(self, method: str) -> Run:
        """The uninterrupted fit of `method` (run now if it has not been)."""
        if method not in self._references:
            self.start_reference(method)
            pid = self._pending.pop(method)
            self._references[method] = self.finish(pid, self.root / method / "uninterrupted").check()
        return self._references[method]

    def kill_when_frozen(self, pid: int, folder: Path, timeout: float = 300.0) -> int:
        """Waits until the run froze itself after its checkpoint, SIGKILLs it; returns its exit code."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = process_state(pid)
            if state in (None, "Z") or ((folder / "frozen").exists() and state in ("T", "t")):
                break
            time.sleep(0.05)
        if process_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
        return self.server.wait(pid)

    def eval_args(self, method: str, stage: str, trainer: str, folder: Path, ckpt_path: Path | None = None) -> list[str]:
        """`train.py <stage>` (validate or test) on `configs/trainer/<trainer>.yaml` of `ckpt_path` (default: the
        method's uninterrupted fit)."""
        ckpt_path = ckpt_path or self.reference(method).final
        args = [stage, "--config", str(ROOT / "configs" / f"{method}.yaml"), "--trainer", trainer_file(trainer),
                *DATA_ARGS, *METHODS[method], f"--data.cache_dir={self.cache}",
                f"--trainer.default_root_dir={folder / method / stage}", f"--ckpt_path={ckpt_path}"]
        if method == "drlrec_student":
            args.append(f"--model.init_args.teacher_ckpt={self.reference('drlrec_teacher').final}")
        return args

    def start_sequence(self, items: list[dict[str, Any]], folder: Path) -> int:
        """Starts one process running the CLI commands `items` (`run_sequence`); their logs go to `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sequence.json").write_text(json.dumps(items))
        return self.server.start(["--sequence", str(folder / "sequence.json")], folder, folder / "log.txt",
                                 script=Path(__file__).resolve())

    def finish_sequence(self, pid: int, folder: Path) -> tuple[int, list[int], str]:
        """(exit code, exit codes of the ranks Lightning started, log) of a `start_sequence` run."""
        code = self.server.wait(pid)
        ranks = folder / "sequence.json.exit_codes.json"
        other_codes = json.loads(ranks.read_text()) if ranks.exists() else []
        return code, other_codes, (folder / "log.txt").read_text()


def trainer_file(name: str) -> str:
    return str(ROOT / "configs" / "trainer" / f"{name}.yaml")


def read_metrics(prefix: str | Path) -> dict[int, dict[str, float]]:
    """{rank: metrics} written by `run_sequence` for the item whose `metrics` is `prefix`."""
    prefix = Path(prefix)
    result = {}
    for file in prefix.parent.glob(f"{prefix.name}.rank*.json"):
        result[int(file.name[len(prefix.name) + len(".rank"): -len(".json")])] = json.loads(file.read_text())
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sequence"]:
        run_sequence(sys.argv[2])
    else:
        serve()
