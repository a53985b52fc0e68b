"""Federation scaling benchmark: DADRL server steps/s and peak RSS with 1,000, 10,000 and 100,000 simulated clients.

`python bench/clients.py [--quick]`. Each client count runs in its own subprocess (so each peak RSS
is its own): synthetic data with that many users (one client per user; a fixed catalogue of
`ITEMS` Zipf-popular items; lognormal activity, about `MEAN_EVENTS` train events per client), and
configs/dadrl.yaml's module (`lit_rec.modules.dadrl.DADRL`: polynomial
staleness weights, private user vectors, clamp policy; each client replays windows of `t_max` =
`HISTORY_LEN` events) with the same cohort size at every count (the shipped one: the data's batch size
// local_steps, the data module's default batch size where the config sets none), trained under
the Lightning Trainer (no logger, checkpoints or validation; StalenessCallback on). Steps/s is the
steady state after `WARMUP` steps. The counts run in turn, `--rounds` times (interleaved: 1k, 10k,
100k, 1k, ...); medians per count. torch and Polars on one thread.

With session arrivals the staleness a client sees grows with the number of clients (a user's
next session is further away in server steps), and the module makes one batched call per
distinct stale version: so `--arrival exponential` (a fixed number of devices training at once,
whose Δ does not depend on the client count) is the control that holds the work per step fixed;
`--both` runs it as well. Each row reports the mean Δ and the distinct versions per step.

Memory: `rss_mb` is the process's peak RSS; `data_mb` the synthetic tensors themselves (they grow
with the events, not with the federation); `rss_after_data_mb` the RSS once they are built (freed
temporaries handed back with malloc_trim); `train_peak_mb` the peak from then on (VmHWM reset via
/proc/self/clear_refs) and `training_rss_mb` = train_peak - rss_after_data, what building the
federation and training add; `client_state_bytes_per_client` the bytes of per-client tensors the
module holds (the Clients table, the arrival model's per-client arrays), of which
`private_bytes_per_client` the private user vectors; `rss_growth_beyond_data_bytes_per_client` = (peak RSS growth - data growth) / added clients. Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
WARMUP = 3
TARGET_FLATNESS = 0.15
SETTINGS = {"quick": {"block": 15, "blocks": 5, "both": False}, "full": {"block": 30, "blocks": 9, "both": True}}


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


def release_free_memory() -> None:
    """Collects garbage and hands freed heap pages back to the OS (glibc), so RSS shows live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
    """Bytes of the per-client tensors the module keeps (clients, arrival model)."""
    import torch

    n, total = model.clients.num_clients, 0
    for owner in (model.clients, model.arrivals):
        for value in vars(owner).values():
            if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
                total += value.numel() * value.element_size()
    return total


PROTOCOL = "@@"  # prefix of the worker's protocol lines on stdout (anything else there is ignored)


def shipped_cohort() -> tuple[dict[str, Any], int, int]:
    """configs/dadrl.yaml's model arguments, its data batch size (the data module's default where it sets none),
    and its cohort size (explicit, or batch // local_steps, as `ActorCriticBase` takes it)."""
    import inspect

    import yaml

    sys.path.insert(0, str(ROOT))
    from datamodules.datamodule import RecDataModule

    spec = yaml.safe_load((ROOT / MODEL_CONFIG).read_text())
    model = spec["model"]["init_args"]
    default_batch = inspect.signature(RecDataModule.__init__).parameters["batch_size"].default
    batch = int((spec.get("data") or {}).get("batch_size", default_batch))
    cohort = model.get("cohort_size") or max(1, batch // int(model.get("local_steps") or 1))
    return model, batch, int(cohort)


def worker(num_clients: int, block: int, blocks: int, arrival: str, seed: int) -> None:
    """Trains the shipped DADRL module on `num_clients` synthetic clients, one block of steps per `go` on stdin.

    Protocol lines on stdout: `ready` once built; after each timed block its wall and CPU
    seconds; at the end the memory figures. The driver keeps the three client counts' workers
    alive and lets one block run at a time, so the counts are interleaved block by block.
    """
    import lightning as L
    import torch

    sys.path.insert(0, str(ROOT))
    from callbacks.staleness import StalenessCallback
    from datamodules.loaders import ResumableLoader
    from lit_rec.modules.dadrl import DADRL
    from lit_rec.runtime import keep_large_buffers_on_heap

    protocol = sys.stdout

    def say(kind: str, **fields: Any) -> None:
        protocol.write(f"{PROTOCOL}{json.dumps({'kind': kind, **fields})}\n")
        protocol.flush()

    torch.set_num_threads(THREADS)
    keep_large_buffers_on_heap()  # as train.py does: without it the 1k worker paid page faults the 100k one did not
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    rss_imports = rss_now_mb()
    tensors = synthetic_tensors(num_clients, seed)
    release_free_memory()  # the data's temporaries would otherwise stay in RSS
    rss_data = rss_now_mb()
    peak_reset = reset_peak()

    spec, batch_size, cohort = shipped_cohort()

    class Data(L.LightningDataModule):
        """Only paces the loop (DADRL ignores the batches) and exposes the tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.tensors, self.batch_size = tensors, batch_size

        def train_dataloader(self) -> ResumableLoader:
            return ResumableLoader(self.tensors.train, self.batch_size, seed)

    spec.update(cohort_size=cohort, arrival=arrival, seed=seed)
    torch.manual_seed(seed)
    model = DADRL(**spec, num_items=ITEMS, num_users=num_clients, history_len=HISTORY_LEN, full_ranking=False)
    staleness: list[float] = []
    versions: list[int] = []
    boundaries = {0, *(WARMUP + i * block for i in range(blocks))}

    class Gate(L.Callback):
        """At each block boundary: reports the block just run (the first is the warm-up), then waits for `go`."""

        def __init__(self) -> None:
            self.wall = self.cpu = 0.0

        def _report(self, warmup: bool) -> None:
            say("block", warmup=warmup, wall_s=time.perf_counter() - self.wall, cpu_s=time.process_time() - self.cpu)

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            if step not in boundaries:
                return
            if step == 0:
                say("ready")
            else:
                self._report(warmup=step == WARMUP)
            sys.stdin.readline()  # wait for `go`: the other workers are idle meanwhile
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step > WARMUP:
                stale = pl_module.federated_stats.staleness
                staleness.append(float(stale.float().mean()) if stale.numel() else 0.0)
                versions.append(int(torch.unique(stale).numel()))

        def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            self._report(warmup=False)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=WARMUP + blocks * block, max_epochs=-1, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[StalenessCallback(), Gate()], default_root_dir=os.getcwd())
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(model, datamodule=Data())
    say(
        "done",
        clients=num_clients,
        events=len(tensors.train),
        mean_staleness=statistics.fmean(staleness),
        distinct_versions_per_step=statistics.fmean(versions),
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_after_imports_mb=rss_imports,
        rss_after_data_mb=rss_data,
        train_peak_mb=peak_since_reset_mb() if peak_reset else None,
        data_mb=tensor_mb(tensors),
        client_state_bytes=client_state_bytes(model),
        private_bytes=model.clients.private.numel() * model.clients.private.element_size() if model.clients.private is not None else 0,
    )


# ---------------------------------------------------------------------------- driver


class Worker:
    """One client count's worker process and its protocol."""

    def __init__(self, count: int, block: int, blocks: int, arrival: str, seed: int) -> None:
        command = [sys.executable, __file__, "--worker", str(count), "--block", str(block), "--blocks", str(blocks),
                   "--arrival", arrival, "--seed", str(seed)]
        self.count = count
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read(self) -> dict[str, Any]:
        """The next protocol message."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        code = self.process.wait()
        sys.exit(f"bench/clients.py: the worker for {self.count} clients stopped (exit {code}); rerun it alone: "
                 f"python bench/clients.py --worker {self.count}")

    def go(self) -> dict[str, Any]:
        """Lets the worker run its next block; returns what it reports."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self.read()


def run_counts(block: int, blocks: int, arrival: str, seed: int) -> dict[int, dict[str, Any]]:
    """The three client counts' workers, blocks interleaved (1k, 10k, 100k, 1k, ...): per count its blocks and memory."""
    workers = []
    for count in COUNTS:  # built one after another (building is not timed, but keeps the memory peaks apart)
        worker_ = Worker(count, block, blocks, arrival, seed)
        message = worker_.read()
        assert message["kind"] == "ready", message
        workers.append(worker_)
    for w in workers:
        message = w.go()  # the warm-up block
        assert message["kind"] == "block" and message["warmup"], message
    rows: dict[int, dict[str, Any]] = {w.count: {"blocks": []} for w in workers}
    for i in range(blocks):
        for w in workers:
            message = w.go()
            assert message["kind"] == "block" and not message["warmup"], message
            rows[w.count]["blocks"].append(message)
        log(f"{arrival} block {i + 1}/{blocks}: " + ", ".join(
            f"{w.count} clients {block / rows[w.count]['blocks'][-1]['wall_s']:.2f} steps/s" for w in workers))
    for w in workers:
        done = w.read()
        assert done["kind"] == "done", done
        rows[w.count].update(done)
        w.process.wait()
    return rows


def summary(rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per client count: median steps/s over blocks (wall and CPU clocks), memory; flatness and memory growth."""
    rate = {c: statistics.median(r["block"] / b["wall_s"] for b in r["blocks"]) for c, r in rows.items()}
    cpu_rate = {c: statistics.median(r["block"] / b["cpu_s"] for b in r["blocks"]) for c, r in rows.items()}
    small, large = min(rows), max(rows)
    growth = rows[large]["rss_mb"] - rows[small]["rss_mb"]
    data_growth = rows[large]["data_mb"] - rows[small]["data_mb"]
    return {
        "steps_per_s": {str(c): round(v, 3) for c, v in rate.items()},
        "rss_mb": {str(c): round(r["rss_mb"], 1) for c, r in rows.items()},
        "flatness": round(abs(1 - rate[large] / rate[small]), 4),
        "cpu_steps_per_s": {str(c): round(v, 3) for c, v in cpu_rate.items()},
        "flatness_cpu": round(abs(1 - cpu_rate[large] / cpu_rate[small]), 4),
        "data_mb": {str(c): round(r["data_mb"], 1) for c, r in rows.items()},
        "train_peak_mb": {str(c): round(r["train_peak_mb"], 1) for c, r in rows.items() if r["train_peak_mb"] is not None},
        "rss_after_data_mb": {str(c): round(r["rss_after_data_mb"], 1) for c, r in rows.items()},
        "training_rss_mb": {str(c): round(r["train_peak_mb"] - r["rss_after_data_mb"], 1) for c, r in rows.items()
                            if r["train_peak_mb"] is not None},
        "rss_growth_mb": round(growth, 1),
        "rss_growth_beyond_data_bytes_per_client": round((growth - data_growth) * 2**20 / (large - small), 1),
        "client_state_bytes_per_client": round(rows[large]["client_state_bytes"] / large, 1),
        "private_bytes_per_client": round(rows[large]["private_bytes"] / large, 1),
        "mean_staleness": {str(c): round(r["mean_staleness"], 2) for c, r in rows.items()},
        "distinct_versions_per_step": {str(c): round(r["distinct_versions_per_step"], 2) for c, r in rows.items()},
        "events": {str(c): r["events"] for c, r in rows.items()},
    }


def main() -> None:
    """Runs the client counts' workers with their blocks interleaved and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short blocks, main arrival model only (within 2 minutes)")
    parser.add_argument("--block", type=int, default=None, help="server steps per timed block")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per client count, interleaved")
    parser.add_argument("--arrival", default="exponential", choices=("sessions", "exponential"), help="arrival model of the main figures")
    parser.add_argument("--both", action="store_true", default=None, help="also run the other arrival model (default in full mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    block, blocks = args.block or setting["block"], args.blocks or setting["blocks"]
    if args.worker is not None:
        worker(args.worker, block, blocks, args.arrival, args.seed)
        return
    both = setting["both"] if args.both is None else args.both
    started = time.perf_counter()
    arrivals = [args.arrival] + ([a for a in ("exponential", "sessions") if a != args.arrival] if both else [])
    results = {}
    for arrival in arrivals:
        rows = run_counts(block, blocks, arrival, args.seed)
        for row in rows.values():
            row["block"] = block
        results[arrival] = summary(rows)
    main_summary = results[args.arrival]
    report: dict[str, Any] = {
        "bench": "clients",
        "model": f"{MODEL_CONFIG} with arrival={args.arrival}",
        "data": f"synthetic: {ITEMS} items, ~{MEAN_EVENTS} train events per client",
        "cohort_size": shipped_cohort()[2],
        "threads": {"torch": THREADS, "polars": THREADS},
        "timing": (f"median of {blocks} blocks of {block} server steps per count after {WARMUP} warm-up steps; the three counts "
                   "run in their own processes, blocks interleaved (1k, 10k, 100k, 1k, ...)"),
        **main_summary,
        "target_flatness": TARGET_FLATNESS,
        "meets_target": main_summary["flatness"] <= TARGET_FLATNESS,
    }
    for arrival in arrivals[1:]:
        report[arrival] = {k: results[arrival][k] for k in ("steps_per_s", "rss_mb", "flatness", "cpu_steps_per_s", "flatness_cpu",
                                                            "mean_staleness", "distinct_versions_per_step")}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
