"""Evaluation benchmark: One-Plus-K test evaluation of a trained DQN against the bare forward over the same tensors.

`python bench/eval.py [--quick]`. Data: MovieLens-1M users 1-2999 with configs/data/ml1m.yaml
(cached under .cache/lit_rec after the first run). The model is configs/dqn.yaml's DQN trained
for a few hundred optimizer steps first (`--quick`: fewer), through the shipped config.

Evaluation (`eval_s`) is what `RecModule` does in test (and validation) as shipped: `Trainer.test`
over the test split with the default `full_ranking=True` (no method config turns it off): per chunk
of `eval_chunk_size` events `score_candidates_and_all` scores the `(B, 1 + K_max)` candidates and
the whole catalogue from one encoding of the states, the full-ranking metrics (`hr@10_full`,
`ndcg@10_full`) are updated (events with 10 of their frozen negatives above the positive count as
misses without a full count), then per batch the model's `OnePlusKMetrics` (CTR@1/10/20/50/100, AUC,
NDCG@10, MRR) and the popularity reference's; then `compute()` and logging. `eval_sampled_s` is the
same with `full_ranking=False` (One-Plus-K only, `score_candidates` per batch). Their limit
(`forward_s`) is the Q-network's bare batched forward, `online.score(history, candidates)`, over the
same states and `(events, 1 + K_max)` candidates pre-cut into the same batches, under
`torch.inference_mode`, with no metric, loader or Lightning loop. `ratio = forward_s / eval_s`
(`ratio_cpu` the same from process CPU time)
(1: evaluation costs nothing beyond the forward; above 1 is possible, since the evaluation reads the
candidates' Q-values from the catalogue's matrix product, which is cheaper than the forward's
`(B, C, H)` gather), `ratio_sampled = forward_s / eval_sampled_s`. The three run interleaved and
the medians are reported; torch and Polars on one thread. A per-part breakdown of one default
evaluation (loader, scoring, metric updates) goes to the JSON as `breakdown_s`, and in full mode a
cProfile summary of one to stderr.
Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
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

from lit_rec.cli import make_cli, method_config  # noqa: E402

DATA_CONFIG, DATA_PATH, MODEL_CONFIG = "configs/data/ml1m.yaml", "../shared/data/ml-1m-users1-2999", "configs/dqn.yaml"
TARGET_RATIO = 0.8
SETTINGS = {"quick": {"train_steps": 100, "repeats": 5}, "full": {"train_steps": 300, "repeats": 9}}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/eval] {message}", file=sys.stderr, flush=True)


def train_model(work: Path, steps: int, seed: int) -> Any:
    """Builds configs/dqn.yaml on ML-1M through the CLI and fits it for `steps` optimizer steps (no logger or checkpoints)."""
    spec = method_config(ROOT / MODEL_CONFIG)
    spec["seed_everything"] = seed
    trainer = spec["trainer"]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    trainer.update({"accelerator": "cpu", "devices": 1, "max_steps": steps, "max_epochs": -1, "limit_val_batches": 0,
                    "enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "default_root_dir": str(work)})
    config = work / "dqn.yaml"
    config.write_text(yaml.safe_dump(spec))
    args = ["--config", str(config), "--data", str(ROOT / DATA_CONFIG), f"--data.path={ROOT / DATA_PATH}",
            f"--data.cache_dir={ROOT / '.cache/lit_rec'}"]
    with contextlib.redirect_stdout(sys.stderr):
        cli = make_cli(args, run=False)
        if steps > 0:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_trainer(work: Path) -> L.Trainer:
    """A bare Trainer for `test`: no logger, callbacks, progress bar or summary (the evaluation itself is timed)."""
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[], default_root_dir=str(work))


CPU: dict[str, float] = {}  # process CPU seconds of the last `evaluate` / `bare_forward`


def evaluate(trainer: L.Trainer, model: Any, datamodule: Any, full_ranking: bool) -> tuple[float, dict[str, float]]:
    """Seconds of one `Trainer.test` and its metrics."""
    model.full_ranking = full_ranking
    start, cpu_start = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.test(model, datamodule=datamodule, verbose=False)
    CPU["evaluate"] = time.process_time() - cpu_start
    return time.perf_counter() - start, dict(model.last_metrics)


def forward_batches(datamodule: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test states and `(B, 1 + K_max)` candidates cut into the evaluation's batches once, outside the timing."""
    test, size = datamodule.tensors.test, datamodule.eval_batch_size
    candidates = test.candidates
    return [(test.history[i : i + size], candidates[i : i + size]) for i in range(0, len(test), size)]


def bare_forward(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds of the Q-network's forward over every batch (eval mode, inference mode, nothing else)."""
    network = model.online.eval()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for history, candidates in batches:
            network.score(history, candidates)
    CPU["forward"] = time.process_time() - cpu_start
    return time.perf_counter() - start


def breakdown(model: Any, datamodule: Any) -> dict[str, float]:
    """One default evaluation pass by hand, timing its parts (the per-batch work of `RecModule._evaluate`, full ranking on)."""
    parts = dict.fromkeys(("loader", "score", "full_ranking", "model_metrics", "popularity_metrics", "compute"), 0.0)
    metrics, popularity_metrics, full_metrics = model.metrics["test"], model.metrics["test_pop"], model.full_metrics["test"]
    for metric in (metrics, popularity_metrics, full_metrics):
        metric.reset()
    chunk = model.eval_chunk_size
    with torch.inference_mode():
        clock = time.perf_counter()
        for batch in datamodule.test_dataloader():
            parts["loader"] += time.perf_counter() - clock
            chunks = []
            for start in range(0, batch["candidates"].shape[0], chunk):
                part = {k: v[start : start + chunk] for k, v in batch.items()}
                clock = time.perf_counter()
                scores, full = model.score_candidates_and_all(part, part["candidates"])
                chunks.append(scores)
                now = time.perf_counter()
                parts["score"] += now - clock
                model._update_full_ranking("test", full, part)  # seen items, skipped misses, counts
                parts["full_ranking"] += time.perf_counter() - now
            clock = time.perf_counter()
            metrics.update(torch.cat(chunks).float())
            clock, now = time.perf_counter(), clock
            parts["model_metrics"] += clock - now
            popularity_metrics.update(model.popularity(batch["candidates"]))
            parts["popularity_metrics"] += time.perf_counter() - clock
            clock = time.perf_counter()
        now = time.perf_counter()
        metrics.compute()
        popularity_metrics.compute()
        full_metrics.compute()
        parts["compute"] = time.perf_counter() - now
    for metric in (metrics, popularity_metrics, full_metrics):
        metric.reset()
    return {k: round(v, 4) for k, v in parts.items()}


def profile_summary(trainer: L.Trainer, model: Any, datamodule: Any, lines: int = 20) -> str:
    """cProfile of one default evaluation (full ranking on), top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate(trainer, model, datamodule, full_ranking=True)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main() -> None:
    """Trains the DQN, checks both sides, times them interleaved and prints the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps and repeats (well within 2 minutes)")
    parser.add_argument("--train-steps", type=int, default=None, help="DQN optimizer steps before evaluating (0: untrained)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (overrides the setting)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    steps = setting["train_steps"] if args.train_steps is None else args.train_steps
    repeats = args.repeats or setting["repeats"]
    if not (ROOT / DATA_PATH).exists():
        sys.exit(f"bench/eval.py: data not found at {ROOT / DATA_PATH}")
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=FutureWarning)  # lightning's LeafSpec notice (PITFALLS.md)
    warnings.filterwarnings("ignore", category=UserWarning)  # "few workers" and similar notices
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        work = Path(tmp)
        cli = train_model(work, steps, args.seed)
        model, datamodule = cli.model, cli.datamodule
        train_s = time.perf_counter() - started
        log(f"DQN trained for {model.global_step if steps else 0} steps in {train_s:.1f} s")
        trainer = test_trainer(work)
        batches = forward_batches(datamodule)
        events = sum(len(h) for h, _ in batches)

        # warm-up, and the reference metrics of both evaluations
        _, metrics = evaluate(trainer, model, datamodule, full_ranking=True)
        _, sampled_metrics = evaluate(trainer, model, datamodule, full_ranking=False)
        bare_forward(model, batches)
        times: dict[str, list[float]] = {"eval": [], "eval_sampled": [], "forward": []}
        cpu_times: dict[str, list[float]] = {"eval": [], "eval_sampled": [], "forward": []}
        for repeat in range(repeats):  # interleaved: eval, eval_sampled, forward, eval, ...
            seconds, again = evaluate(trainer, model, datamodule, full_ranking=True)
            assert again == metrics, "evaluation is not deterministic"
            times["eval"].append(seconds)
            cpu_times["eval"].append(CPU["evaluate"])
            seconds, again = evaluate(trainer, model, datamodule, full_ranking=False)
            assert again == sampled_metrics, "evaluation is not deterministic"
            times["eval_sampled"].append(seconds)
            cpu_times["eval_sampled"].append(CPU["evaluate"])
            times["forward"].append(bare_forward(model, batches))
            cpu_times["forward"].append(CPU["forward"])
            log(f"repeat {repeat + 1}/{repeats}: eval {times['eval'][-1]:.3f} s, eval_sampled {times['eval_sampled'][-1]:.3f} s, "
                f"forward {times['forward'][-1]:.3f} s")
        model.full_ranking = True
        parts = breakdown(model, datamodule)
        log("breakdown of one evaluation (s): " + json.dumps(parts))
        if not args.quick:
            log("cProfile of one evaluation, by own time:\n" + profile_summary(trainer, model, datamodule))

    eval_s, forward_s = statistics.median(times["eval"]), statistics.median(times["forward"])
    eval_sampled_s = statistics.median(times["eval_sampled"])
    sampled_differ = {k: (sampled_metrics[k], v) for k, v in metrics.items() if k in sampled_metrics and sampled_metrics[k] != v}
    report = {
        "bench": "eval",
        "data": DATA_PATH,
        "model": f"{MODEL_CONFIG} (DQN) trained {steps} optimizer steps" if steps else f"{MODEL_CONFIG} (DQN) untrained",
        "threads": {"torch": torch.get_num_threads(), "polars": int(os.environ["POLARS_MAX_THREADS"])},
        "timing": f"median of {repeats} interleaved repeats per side (after one untimed run each)",
        "events": events,
        "candidates_per_event": int(batches[0][1].shape[1]),
        "batch_size": datamodule.eval_batch_size,
        "eval_chunk_size": model.eval_chunk_size,
        "eval_s": round(eval_s, 4),
        "eval_sampled_s": round(eval_sampled_s, 4),
        "forward_s": round(forward_s, 4),
        "ratio": round(forward_s / eval_s, 3),
        "ratio_sampled": round(forward_s / eval_sampled_s, 3),
        # the same from process CPU time (one thread), blind to time spent descheduled on a busy machine
        "ratio_cpu": round(statistics.median(cpu_times["forward"]) / statistics.median(cpu_times["eval"]), 3),
        "ratio_sampled_cpu": round(statistics.median(cpu_times["forward"]) / statistics.median(cpu_times["eval_sampled"]), 3),
        "events_per_s": round(events / eval_s, 1),
        "target_ratio": TARGET_RATIO,
        "meets_target": forward_s / eval_s >= TARGET_RATIO and forward_s / eval_sampled_s >= TARGET_RATIO,
        # One-Plus-K metrics of the two evaluations (candidates scored by the shared-encoding path vs score_candidates)
        "sampled_metrics_differ": {k.removeprefix("test/"): v for k, v in sampled_differ.items()},
        "breakdown_s": parts,
        "metrics": {k.removeprefix("test/"): round(v, 4) for k, v in metrics.items() if k.startswith("test/")},
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
