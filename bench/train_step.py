"""Training-step benchmark: the DQN module under the Lightning Trainer against a plain PyTorch loop doing the same work.

`python bench/train_step.py [--quick]`. Both sides are configs/dqn.yaml's DQN on MovieLens-1M users
1-2999 (configs/data/ml1m.yaml: batches of 128 training windows of `history_len` 50, cached under
.cache/lit_rec), built twice from the same seed through the CLI. One step is what `DQN.training_step`
does on one batch of windows from the datamodule's train loader: `q_losses` (the online network
encodes every position and scores the catalogue, the target network gives V of the next position),
`ce_weight * CE + td_weight * TD`, the `train/ctr` hits of the greedy policy against random rivals,
then backward, clipping by `max_grad_norm`, an Adam step and the shipped target update
(`DQN.sync_targets`: soft, tau 0.05, every step).
- Lightning: `Trainer.fit` with the shipped callbacks except ModelCheckpoint (no checkpoint files),
  no logger, no progress bar or model summary, no validation.
- Plain: a `for` loop over the same datamodule's train loader calling the same module's `q_losses`,
  `loss.backward()`, `clip_grad_norm_`, `optimizer.step()` and `lit_rec.functional.td.update_target`.
First both run the same number of steps from scratch (the global torch seed reset before each, for
dropout) and must end with bit-identical parameters (same batches, same updates, same random draws).
Then they are timed in interleaved blocks (Lightning, plain, Lightning, ...; each Lightning block a
fresh `fit` on the warmed module, each plain block a fresh pass of the loader from its first epoch,
as a fresh fit starts); a block's rate is the steady state,
measured from the start of its third step to the start of its last, so it counts every per-step
cost (loader, hooks, logging) but not the one-off `fit` start-up, which is reported apart
(`fit_startup_s`). Medians over blocks; torch and Polars on one thread. `overhead` is from wall
time; `overhead_cpu` is the same from the process's CPU time (both sides are single-threaded, so on
an idle machine the two agree; on a busy one CPU time leaves out the time the process waited for a core).
Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

THREADS = 1
os.environ["POLARS_MAX_THREADS"] = str(THREADS)  # before polars is imported
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_rec.functional.td import update_target  # noqa: E402
from lit_rec.cli import make_cli, method_config  # noqa: E402
from lit_rec.functional.next_item import greedy_hits, random_rivals  # noqa: E402

DATA_CONFIG, DATA_PATH, MODEL_CONFIG = "configs/data/ml1m.yaml", "../shared/data/ml-1m-users1-2999", "configs/dqn.yaml"
TARGET_OVERHEAD = 0.10
WARMUP = 2  # steps of each block before the clock starts
SETTINGS = {"quick": {"check_steps": 12, "block": 15, "blocks": 3}, "full": {"check_steps": 50, "block": 50, "blocks": 7}}  # ML-1M: 44 batches an epoch


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/train_step] {message}", file=sys.stderr, flush=True)


def bench_spec(config: Path, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A method config (`lit_rec.cli.method_config`) with `seed`, no logger and no ModelCheckpoint; and its
    callbacks as the CLI orders them (early stopping, a key of its own, last), for a Trainer of the bench's own."""
    spec = method_config(config)
    spec["seed_everything"] = seed
    callbacks = [c for c in spec["trainer"]["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    spec["trainer"] = {"callbacks": callbacks, "logger": False, "enable_checkpointing": False}
    return spec, [*callbacks, spec["early_stopping"]]


def shipped_spec(work: Path, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    """configs/dqn.yaml without ModelCheckpoint (written to `work`), and its callbacks."""
    spec, callbacks = bench_spec(ROOT / MODEL_CONFIG, seed)
    path = work / "dqn.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, callbacks


def build(config: Path) -> Any:
    """A fresh CLI (model, datamodule, callbacks) from the config; same seed, same initial parameters."""
    args = ["--config", str(config), "--data", str(ROOT / DATA_CONFIG), f"--data.path={ROOT / DATA_PATH}",
            f"--data.cache_dir={ROOT / '.cache/lit_rec'}"]
    with contextlib.redirect_stdout(sys.stderr):
        return make_cli(args, run=False)


class StepClock(L.Callback):
    """Time (wall and process CPU) at the start of every training batch, and when `fit` was called."""

    def __init__(self) -> None:
        self.fit_called = time.perf_counter()
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())


def shipped_callbacks(specs: list[dict[str, Any]]) -> list[L.Callback]:
    """Fresh instances of the config's callbacks (a new fit starts their schedules anew)."""
    made = []
    for spec in specs:
        module, name = spec["class_path"].rsplit(".", 1)
        made.append(getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {})))
    return made


def lightning_block(cli: Any, steps: int, callbacks: list[dict[str, Any]], work: Path) -> StepClock:
    """One `Trainer.fit` of `steps` steps on the (possibly already trained) module, with the shipped callbacks."""
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=cli.trainer.log_every_n_steps,
                        callbacks=[*shipped_callbacks(callbacks), clock], default_root_dir=str(work))
    clock.fit_called = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock


class PlainLoop:
    """The DQN training step as a plain PyTorch loop over the same module's networks and the same datamodule's batches."""

    def __init__(self, model: Any, datamodule: Any, target_every: int, tau: float) -> None:
        self.model, self.datamodule = model, datamodule
        model.training_softmax.fit(datamodule.tensors.item_popularity)  # what DQN.setup does for training
        self.optimizer = model.configure_optimizers()
        self.rivals = max(1, model.train_negatives)  # RecModule.train_negatives, linked from the data
        self.target_every, self.tau = target_every, tau
        self.steps = 0
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """Losses and train CTR (as `DQN.training_step`), backward, clip, Adam step; the target update on schedule."""
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        m = self.model
        self.optimizer.zero_grad(set_to_none=True)
        losses = m.q_losses(batch["history"], batch["item"])
        loss = m.ce_weight * losses.ce + m.td_weight * losses.td
        columns = losses.columns  # train/ctr as `log_window_ctr` computes it (the same draws from the module's generator)
        hits = greedy_hits(columns.masked_scores().detach(), columns.target, random_rivals(columns, self.rivals, m.rng.generator))
        self.ctr = hits.float().mean()
        loss.backward()
        if m.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(m.online.parameters(), m.max_grad_norm)
        self.optimizer.step()
        self.loss = loss.detach()
        self.steps += 1
        if self.steps % self.target_every == 0:
            update_target(m.online, m.target, self.tau)

    def run(self, steps: int) -> None:
        """`steps` steps from a fresh train loader (epoch 0, then the next epochs), as a fresh `fit` sees them.

        The modules keep their train/eval modes, as under `Trainer.fit` (Lightning 2.6 calls no `train()` at the
        start of a fit), so both sides apply dropout in the same submodules."""
        loader = self.datamodule.train_dataloader()
        done = 0
        while done < steps:
            for batch in loader:
                self.step(batch)
                done += 1
                if done == steps:
                    break


def steady_rate(starts: list[float]) -> float:
    """Steps per second between the start of step WARMUP and the start of the last step."""
    assert len(starts) > WARMUP + 1, f"a block needs more than {WARMUP + 1} steps"
    return (len(starts) - 1 - WARMUP) / (starts[-1] - starts[WARMUP])


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between two modules' parameters."""
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def main() -> None:
    """Checks the two loops agree, times them interleaved and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short blocks (well within 2 minutes)")
    parser.add_argument("--block", type=int, default=None, help="steps per timed block (overrides the setting)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per side (overrides the setting)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    block, blocks = args.block or setting["block"], args.blocks or setting["blocks"]
    if not (ROOT / DATA_PATH).exists():
        sys.exit(f"bench/train_step.py: data not found at {ROOT / DATA_PATH}")
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)  # lightning's LeafSpec notice (PITFALLS.md)
    warnings.filterwarnings("ignore", category=UserWarning)  # "few workers" and similar notices
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        work = Path(tmp)
        config, callbacks = shipped_spec(work, args.seed)
        lightning_cli, plain_cli = build(config), build(config)
        target_every = plain_cli.model.target_every_n_steps
        tau = 1.0 if plain_cli.model.target_update == "hard" else plain_cli.model.target_tau
        plain = PlainLoop(plain_cli.model, plain_cli.datamodule, target_every, tau)
        model, datamodule = lightning_cli.model, lightning_cli.datamodule
        log(f"{type(model).__name__}: batch_size {datamodule.batch_size} windows of history_len {model.history_len}, "
            f"{sum(p.numel() for p in model.online.parameters())} parameters, target update tau {tau} every {target_every} "
            f"steps; callbacks {[c['class_path'].rsplit('.', 1)[-1] for c in callbacks]}")

        # the same work: after the same steps from the same seed, the same parameters
        check = setting["check_steps"]
        torch.manual_seed(args.seed)  # dropout draws from the global generator
        lightning_block(lightning_cli, check, callbacks, work)
        torch.manual_seed(args.seed)
        plain.run(check)
        difference = max(max_difference(model.online, plain.model.online), max_difference(model.target, plain.model.target))
        log(f"after {check} steps each: max |parameter difference| = {difference:.3g}")
        if difference != 0:  # same batches, same random draws, same kernels: bit-identical
            sys.exit(f"bench/train_step.py: Lightning and plain loops diverged after {check} steps (max diff {difference})")

        rates: dict[str, list[float]] = {"lightning": [], "plain": []}
        cpu_rates: dict[str, list[float]] = {"lightning": [], "plain": []}
        startup: list[float] = []
        for repeat in range(blocks):  # interleaved: Lightning, plain, Lightning, plain, ...
            clock = lightning_block(lightning_cli, block, callbacks, work)
            rates["lightning"].append(steady_rate(clock.starts))
            cpu_rates["lightning"].append(steady_rate(clock.cpu_starts))
            startup.append(clock.starts[0] - clock.fit_called)
            plain.starts, plain.cpu_starts = [], []
            plain.run(block)
            rates["plain"].append(steady_rate(plain.starts))
            cpu_rates["plain"].append(steady_rate(plain.cpu_starts))
            log(f"block {repeat + 1}/{blocks}: lightning {rates['lightning'][-1]:.1f} steps/s, plain {rates['plain'][-1]:.1f} steps/s")

        profile = cProfile.Profile()
        profile.enable()
        lightning_block(lightning_cli, block, callbacks, work)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(15)
        log("cProfile of one Lightning block, by own time:\n" + out.getvalue())

    lightning, plain_rate = statistics.median(rates["lightning"]), statistics.median(rates["plain"])
    report = {
        "bench": "train_step",
        "data": DATA_PATH,
        "model": f"{MODEL_CONFIG} (DQN)",
        "batch_size": datamodule.batch_size,
        "history_len": model.history_len,
        "target_update": {"tau": tau, "every_n_steps": target_every},
        "threads": {"torch": torch.get_num_threads(), "polars": int(os.environ["POLARS_MAX_THREADS"])},
        "timing": f"median of {blocks} interleaved blocks of {block} steps per side (steady state, from step {WARMUP + 1})",
        "same_parameters_after_steps": check,
        "max_parameter_difference": difference,
        "lightning_steps_per_s": round(lightning, 2),
        "plain_steps_per_s": round(plain_rate, 2),
        "overhead": round(1 - lightning / plain_rate, 4),
        "target_overhead": TARGET_OVERHEAD,
        "meets_target": 1 - lightning / plain_rate <= TARGET_OVERHEAD,
        # the same from process CPU time: steps per CPU-second, blind to time spent descheduled on a busy machine
        "overhead_cpu": round(1 - statistics.median(cpu_rates["lightning"]) / statistics.median(cpu_rates["plain"]), 4),
        "blocks_wall_steps_per_s": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
        "fit_startup_s": round(statistics.median(startup), 3),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
