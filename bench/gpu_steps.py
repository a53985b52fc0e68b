"""GPU training-step benchmark: DQN and DADRL steps/s on CUDA (fp32 and bf16 autocast) against the CPU.

`python bench/gpu_steps.py [--quick] [--scales 1,8] [--methods DQN,DADRL]`. Every side is the shipped
config (configs/dqn.yaml, configs/dadrl.yaml) on the synthetic default data, built through the CLI with
the same seed, and trained by `Trainer.fit` with the shipped callbacks except ModelCheckpoint (no logger,
no validation, no progress bar). Sides, each its own module (a module is never moved between devices):
- `cpu_1t`: the CPU with one torch thread (what `train.py` uses by default);
- `cpu_all`: the CPU with every core;
- `cuda_fp32`: one GPU, `precision="32-true"`;
- `cuda_bf16`: one GPU, `precision="bf16-mixed"` (autocast; what configs/trainer/gpu.yaml ships).
Scale `s` multiplies the data's `--data.batch_size` (training windows per batch; the synthetic default's
`SHIPPED_BATCH`): DQN trains on `s` times the windows a step, DADRL's cohort grows with it (cohort_size null:
the batch size / local_steps). Each side first runs a warm-up fit, then timed fits in
interleaved rounds (the order rotates each round); a fit's rate is the steady state from the start of
its third step to the start of its last, with the GPU synchronised at each step start. Medians over
rounds. Without CUDA the GPU sides are skipped (the script still checks its CPU sides run).
Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.datamodule import RecDataModule  # noqa: E402
from lit_rec.cli import make_cli  # noqa: E402
from train_step import StepClock, bench_spec, shipped_callbacks, steady_rate  # noqa: E402 - bench/train_step.py, beside this file

SHIPPED_BATCH = int(inspect.signature(RecDataModule.__init__).parameters["batch_size"].default)  # the default data's windows a batch
METHODS = {  # name: (config, CLI arguments of scale s)
    "DQN": ("configs/dqn.yaml", lambda s: [f"--data.batch_size={SHIPPED_BATCH * s}"]),
    "DADRL": ("configs/dadrl.yaml", lambda s: [f"--data.batch_size={SHIPPED_BATCH * s}"]),
}
SIDES = {  # name: (accelerator, precision, torch threads; 0 = every core)
    "cpu_1t": ("cpu", "32-true", 1),
    "cpu_all": ("cpu", "32-true", 0),
    "cuda_fp32": ("gpu", "32-true", 1),
    "cuda_bf16": ("gpu", "bf16-mixed", 1),
}
SETTINGS = {"quick": {"block": 25, "rounds": 2}, "full": {"block": 60, "rounds": 3}}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/gpu_steps] {message}", file=sys.stderr, flush=True)


class SyncedStepClock(StepClock):
    """`StepClock` that first waits for the GPU to finish the previous step."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


class Side:
    """One method at one scale on one side: a CLI-built module, its datamodule and the shipped callbacks."""

    def __init__(self, method: str, scale: int, side: str, work: Path, seed: int) -> None:
        config, scale_args = METHODS[method]
        spec, self.callback_specs = bench_spec(ROOT / config, seed)
        path = work / f"{method}_{scale}_{side}.yaml"
        path.write_text(yaml.safe_dump(spec))
        with contextlib.redirect_stdout(sys.stderr):
            self.cli = make_cli(["--config", str(path), *scale_args(scale)], run=False)
        self.accelerator, self.precision, self.threads = SIDES[side]
        self.work = work
        self.rates: list[float] = []
        self.last_loss = float("nan")

    def fit(self, steps: int) -> float:
        """One `Trainer.fit` of `steps` steps on this side's module; its steady steps/s."""
        torch.set_num_threads(self.threads or os.cpu_count() or 1)
        clock = SyncedStepClock()
        callbacks = shipped_callbacks(self.callback_specs)
        trainer = L.Trainer(accelerator=self.accelerator, devices=1, precision=self.precision, max_steps=steps, max_epochs=-1,
                            limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            log_every_n_steps=self.cli.trainer.log_every_n_steps,
                            callbacks=[*callbacks, clock], default_root_dir=str(self.work))
        with contextlib.redirect_stdout(sys.stderr):
            trainer.fit(self.cli.model, datamodule=self.cli.datamodule)
        loss = trainer.callback_metrics.get("train/loss")
        self.last_loss = float(loss) if loss is not None else float("nan")
        return steady_rate(clock.starts)


def profile(side: Side, steps: int) -> None:
    """Top ops of one fit by CPU self time and by CUDA time (torch.profiler), to stderr."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        rate = side.fit(steps)
    log(f"profile of a {steps}-step fit at {rate:.1f} steps/s")
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60), file=sys.stderr)
    for key in ("self_device_time_total", "self_cuda_time_total"):  # the name changed across torch releases
        with contextlib.suppress(Exception):
            print(table.table(sort_by=key, row_limit=10, max_name_column_width=60), file=sys.stderr)
            break


def main() -> None:
    """Times every side of every method and scale in interleaved rounds and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short fits (about 2 minutes with a GPU)")
    parser.add_argument("--scales", default="1,8", help="batch multipliers, comma-separated")
    parser.add_argument("--methods", default="DQN,DADRL", help=f"comma-separated, of {sorted(METHODS)}")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {list(SIDES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one fit per method on the fastest GPU side (torch.profiler, top ops to stderr)")
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    warnings.filterwarnings("ignore")
    cuda = torch.cuda.is_available()
    sides = [s for s in args.sides.split(",") if cuda or SIDES[s][0] == "cpu"]
    if not cuda:
        log("no CUDA device: only the CPU sides run")
    device = torch.cuda.get_device_name(0) if cuda else "none"
    log(f"device {device}, torch {torch.__version__}, {os.cpu_count()} CPUs, sides {sides}")
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    losses: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_steps_") as tmp:
        for method in args.methods.split(","):
            for scale in [int(s) for s in args.scales.split(",")]:
                key = f"x{scale}"
                built = {side: Side(method, scale, side, Path(tmp), args.seed) for side in sides}
                for side, run in built.items():
                    run.fit(setting["block"])  # warm-up: kernels, allocator
                for r in range(setting["rounds"]):
                    order = sides[r % len(sides):] + sides[: r % len(sides)]
                    for side in order:
                        built[side].rates.append(built[side].fit(setting["block"]))
                results.setdefault(method, {})[key] = {s: round(statistics.median(b.rates), 2) for s, b in built.items()}
                losses.setdefault(method, {})[key] = {s: round(b.last_loss, 4) for s, b in built.items()}
                log(f"{method} {key}: " + ", ".join(f"{s} {v:.1f} steps/s" for s, v in results[method][key].items())
                    + f" (last train/loss {losses[method][key]})")
                if args.profile and cuda and scale == 1:
                    profile(built["cuda_fp32"], setting["block"])
                del built
                if cuda:
                    torch.cuda.empty_cache()

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    speedup = {
        m: {k: {"cuda_fp32_vs_cpu_1t": ratio(v.get("cuda_fp32"), v.get("cpu_1t")),
                "cuda_bf16_vs_cpu_1t": ratio(v.get("cuda_bf16"), v.get("cpu_1t")),
                "cuda_bf16_vs_cpu_all": ratio(v.get("cuda_bf16"), v.get("cpu_all")),
                "cuda_bf16_vs_cuda_fp32": ratio(v.get("cuda_bf16"), v.get("cuda_fp32"))} for k, v in scales.items()}
        for m, scales in results.items()
    }
    print(json.dumps({"device": device, "torch": torch.__version__, "cpus": os.cpu_count(), "block_steps": setting["block"],
                      "rounds": setting["rounds"], "steps_per_s": results, "speedup": speedup, "last_loss": losses,
                      "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
