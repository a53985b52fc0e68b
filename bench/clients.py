"""Federation scaling benchmark: DADRL server steps/s and peak RSS with 1,000, 10,000 and 100,000 simulated clients.

`python bench/clients.py [--quick]`. Each client count runs in its own subprocess (so each peak RSS
is its own): synthetic data with that many users (one client per user; a fixed catalogue of
`ITEMS` Zipf-popular items; lognormal activity, about `MEAN_EVENTS` train events per client), and
configs/dadrl.yaml's module (`lit_rec.modules.actor_critic.ActorCriticRec`, mode dadrl: sessions
arrivals, polynomial staleness weights, private user vectors, clamp policy) with the same cohort
size at every count (`COHORT`, the shipped default for a batch of 256: 256 // t_max), trained under
the Lightning Trainer (no logger, checkpoints or validation; StalenessCallback on). Steps/s is the
steady state after `WARMUP` steps. The counts run in turn, `--rounds` times (interleaved: 1k, 10k,
100k, 1k, ...); medians per count. torch and Polars on one thread.

With session arrivals the staleness a client sees grows with the number of clients (a user's
next session is further away in server steps), and the module makes one batched call per
distinct stale version: so `--arrival exponential` (a fixed number of devices training at once,
whose Δ does not depend on the client count) is the control that holds the work per step fixed;
`--both` runs it as well. Each row reports the mean Δ and the distinct versions per step.

Memory: `rss_mb` is the process's peak RSS; `data_mb` the synthetic tensors themselves (they grow
with the events, not with the federation); `train_peak_mb` the peak after the data were built
(/proc/self/clear_refs reset); `client_state_bytes` the bytes of per-client state the module holds
(the Clients table, the arrival model's per-client arrays and the candidate sampler's per-user
offsets), per client. Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

THREADS = 1
os.environ["POLARS_MAX_THREADS"] = str(THREADS)  # before polars is imported
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = "configs/dadrl.yaml"
COUNTS = (1_000, 10_000, 100_000)
ITEMS = 1000
MEAN_EVENTS = 12
HISTORY_LEN = 10
COHORT = 256 // 5  # the shipped default: the data's batch size (256) // t_max (5)
WARMUP = 3
TARGET_FLATNESS = 0.15
SETTINGS = {"quick": {"steps": 12, "rounds": 1}, "full": {"steps": 40, "rounds": 3}}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/clients] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- worker (one client count)


def rss_now_mb() -> float:
    """Current resident set size."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_since_reset_mb() -> float:
    """VmHWM: the peak RSS since the last `reset_peak()` (or since the start)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def synthetic_tensors(num_users: int, seed: int) -> Any:
    """`RecTensors` of `num_users` clients: lognormal activity (>= 2 events), Zipf items, no val/test events."""
    import torch

    from datamodules.tensors import EvalTensors, EventTensors, RecTensors, csr_offsets, histories

    g = torch.Generator().manual_seed(seed)
    activity = torch.exp(0.8 * torch.randn(num_users, generator=g, dtype=torch.float64))
    lengths = (2 + (MEAN_EVENTS - 2) * activity / activity.mean()).round().long()
    user = torch.repeat_interleave(torch.arange(num_users), lengths)
    popularity = 1.0 / torch.arange(1, ITEMS + 1, dtype=torch.float64)
    item = torch.multinomial(popularity, int(lengths.sum()), replacement=True, generator=g) + 1
    offsets = csr_offsets(user, num_users)
    index = torch.arange(user.numel())
    history = histories(item, index, offsets[user], HISTORY_LEN)
    seen = torch.sort(user * (ITEMS + 1) + item).values
    empty = EvalTensors(torch.zeros(0, dtype=torch.long), torch.zeros(0, HISTORY_LEN, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), torch.zeros(0, 100, dtype=torch.long))
    return RecTensors(
        num_users=num_users, num_items=ITEMS, history_len=HISTORY_LEN,
        item_popularity=torch.bincount(item, minlength=ITEMS + 1),
        train=EventTensors(user, history, item), val=empty, test=empty,
        train_offsets=offsets, train_sequence=item, seen_offsets=offsets, seen_items=seen % (ITEMS + 1),
        item_ids=["<PAD>", *map(str, range(1, ITEMS + 1))], user_ids=[], dropped={},
    )


def tensor_mb(tensors: Any) -> float:
    """Bytes of every tensor of `RecTensors` (views counted once per storage)."""
    import torch

    seen, total = set(), 0
    stack = [tensors]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            key = value.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif hasattr(value, "__dataclass_fields__"):
            stack.extend(getattr(value, f) for f in value.__dataclass_fields__)
    return total / 2**20


def client_state_bytes(model: Any) -> int:
    """Bytes of the per-client tensors the module keeps (clients, arrival model, sampler offsets)."""
    import torch

    n, total = model.clients.num_clients, 0
    for owner in (model.clients, model.arrivals, model.negatives):
        for value in vars(owner).values():
            if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
                total += value.numel() * value.element_size()
    return total


def worker(num_clients: int, steps: int, arrival: str, seed: int) -> dict[str, Any]:
    """Trains the shipped DADRL module on `num_clients` synthetic clients; steps/s and memory."""
    import lightning as L
    import torch
    import yaml

    sys.path.insert(0, str(ROOT))
    from callbacks.staleness import StalenessCallback
    from datamodules.loaders import ResumableLoader
    from lit_rec.modules.actor_critic import ActorCriticRec

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    rss_imports = rss_now_mb()
    tensors = synthetic_tensors(num_clients, seed)
    gc.collect()
    rss_data = rss_now_mb()
    peak_reset = reset_peak()

    class Data(L.LightningDataModule):
        """Only paces the loop (DADRL ignores the batches) and exposes the tensors."""

        batch_size = 256

        def __init__(self) -> None:
            super().__init__()
            self.tensors = tensors

        def train_dataloader(self) -> ResumableLoader:
            return ResumableLoader(self.tensors.train, self.batch_size, seed)

    spec = yaml.safe_load((ROOT / MODEL_CONFIG).read_text())["model"]["init_args"]
    spec.update(cohort_size=COHORT, arrival=arrival, seed=seed)
    torch.manual_seed(seed)
    model = ActorCriticRec(**spec, num_items=ITEMS, num_users=num_clients, full_ranking=False)
    starts: list[float] = []
    staleness: list[float] = []
    versions: list[int] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            stale = pl_module.federated_stats["staleness"]
            staleness.append(float(stale.float().mean()) if stale.numel() else 0.0)
            versions.append(int(torch.unique(stale).numel()))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=WARMUP + steps, max_epochs=-1, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[StalenessCallback(), Clock()], default_root_dir=os.getcwd())
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(model, datamodule=Data())
    timed = starts[WARMUP:]
    return {
        "clients": num_clients,
        "arrival": arrival,
        "events": len(tensors.train),
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "mean_staleness": statistics.fmean(staleness[WARMUP:]),
        "distinct_versions_per_step": statistics.fmean(versions[WARMUP:]),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": rss_imports,
        "rss_after_data_mb": rss_data,
        "train_peak_mb": peak_since_reset_mb() if peak_reset else None,
        "data_mb": tensor_mb(tensors),
        "client_state_bytes": client_state_bytes(model),
        "private_bytes": model.clients.private.numel() * model.clients.private.element_size() if model.clients.private is not None else 0,
    }


# ---------------------------------------------------------------------------- driver


def run_worker(count: int, steps: int, arrival: str, seed: int) -> dict[str, Any]:
    """One client count in a fresh interpreter; its last stdout line is the row."""
    command = [sys.executable, __file__, "--worker", str(count), "--steps", str(steps), "--arrival", arrival, "--seed", str(seed)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        sys.exit(f"bench/clients.py: the worker for {count} clients failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(rows: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per client count, flatness, and the memory growth from the smallest to the largest count."""
    median = {c: {k: statistics.median(r[k] for r in rs) for k in ("steps_per_s", "rss_mb", "train_peak_mb", "data_mb")
                  if rs[0][k] is not None} for c, rs in rows.items()}
    small, large = min(rows), max(rows)
    first = {c: rs[0] for c, rs in rows.items()}
    growth = median[large]["rss_mb"] - median[small]["rss_mb"]
    data_growth = median[large]["data_mb"] - median[small]["data_mb"]
    return {
        "steps_per_s": {str(c): round(m["steps_per_s"], 3) for c, m in median.items()},
        "rss_mb": {str(c): round(m["rss_mb"], 1) for c, m in median.items()},
        "flatness": round(abs(1 - median[large]["steps_per_s"] / median[small]["steps_per_s"]), 4),
        "data_mb": {str(c): round(m["data_mb"], 1) for c, m in median.items()},
        "train_peak_mb": {str(c): round(m["train_peak_mb"], 1) for c, m in median.items() if "train_peak_mb" in m},
        "rss_growth_mb": round(growth, 1),
        "rss_growth_beyond_data_bytes_per_client": round((growth - data_growth) * 2**20 / (large - small), 1),
        "client_state_bytes_per_client": round(first[large]["client_state_bytes"] / large, 1),
        "private_bytes_per_client": round(first[large]["private_bytes"] / large, 1),
        "mean_staleness": {str(c): round(statistics.median(r["mean_staleness"] for r in rs), 2) for c, rs in rows.items()},
        "distinct_versions_per_step": {str(c): round(statistics.median(r["distinct_versions_per_step"] for r in rs), 2)
                                       for c, rs in rows.items()},
        "events": {str(c): rs[0]["events"] for c, rs in rows.items()},
    }


def main() -> None:
    """Runs every client count in subprocesses, interleaved over rounds, and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and one round (within 2 minutes)")
    parser.add_argument("--steps", type=int, default=None, help="timed server steps per run (after the warm-up)")
    parser.add_argument("--rounds", type=int, default=None, help="runs per client count, interleaved")
    parser.add_argument("--arrival", default="sessions", choices=("sessions", "exponential"), help="arrival model of the main figures")
    parser.add_argument("--both", action="store_true", help="also run the other arrival model (reported under `control`)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    steps, rounds = args.steps or setting["steps"], args.rounds or setting["rounds"]
    if args.worker is not None:
        print(json.dumps(worker(args.worker, steps, args.arrival, args.seed)))
        return
    started = time.perf_counter()
    arrivals = [args.arrival] + ([a for a in ("sessions", "exponential") if a != args.arrival] if args.both else [])
    results: dict[str, dict[int, list[dict[str, Any]]]] = {a: {c: [] for c in COUNTS} for a in arrivals}
    for round_ in range(rounds):
        for arrival in arrivals:
            for count in COUNTS:  # interleaved: each count once per round
                row = run_worker(count, steps, arrival, args.seed)
                results[arrival][count].append(row)
                log(f"round {round_ + 1}/{rounds} {arrival} {count} clients: {row['steps_per_s']:.2f} steps/s, "
                    f"peak RSS {row['rss_mb']:.0f} MB (data {row['data_mb']:.0f} MB), mean staleness "
                    f"{row['mean_staleness']:.1f}, {row['distinct_versions_per_step']:.1f} versions/step")
    main_summary = summary(results[args.arrival])
    report: dict[str, Any] = {
        "bench": "clients",
        "model": f"{MODEL_CONFIG} (mode dadrl), arrival={args.arrival}",
        "data": f"synthetic: {ITEMS} items, ~{MEAN_EVENTS} train events per client",
        "cohort_size": COHORT,
        "threads": {"torch": THREADS, "polars": THREADS},
        "timing": f"{steps} server steps after {WARMUP} warm-up steps per run, median of {rounds} interleaved runs per count, one subprocess each",
        **main_summary,
        "target_flatness": TARGET_FLATNESS,
        "meets_target": main_summary["flatness"] <= TARGET_FLATNESS,
    }
    for arrival in arrivals[1:]:
        control = summary(results[arrival])
        report[f"control_{arrival}"] = {k: control[k] for k in ("steps_per_s", "rss_mb", "flatness", "mean_staleness", "distinct_versions_per_step")}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
