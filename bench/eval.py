"""Evaluation benchmark: One-Plus-K test evaluation of a trained DQN against the bare forward over the same tensors.

`python bench/eval.py [--quick]`. Data: MovieLens-1M users 1-2999 with configs/data/ml1m.yaml
(cached under .cache/lit_rec after the first run). The model is configs/dqn.yaml's DQN trained
for a few hundred optimizer steps first (`--quick`: fewer), through the shipped config.

Evaluation (`eval_s`) is what `RecModule` does in test (and validation): `Trainer.test` over the
test split, each batch `score_candidates` on `(B, 1 + K_max)` candidates, the model's
`OnePlusKMetrics` update (CTR@1/10/20/50/100, AUC, NDCG@10, MRR) and the popularity reference's,
then `compute()` and logging; full ranking off. `eval_full_s` is the same with full ranking on
(`hr@10_full`, `ndcg@10_full`), reported beside it. Its limit (`forward_s`) is the Q-network's
bare batched forward, `online.score(history, candidates)`, over the same states and
`(events, 1 + K_max)` candidates pre-cut into the same batches, under `torch.inference_mode`, with
no metric, loader or Lightning loop. `ratio = forward_s / eval_s` (1: evaluation costs nothing
beyond the forward); `ratio_full` the same against the evaluation with full ranking. The two sides
run interleaved and the medians are reported; torch and Polars on one thread. A per-part breakdown
of one evaluation (loader, scoring, metric updates) goes to the JSON as `breakdown_s`, and in full
mode a cProfile summary of one evaluation to stderr.
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

from lit_rec.cli import make_cli  # noqa: E402

DATA_CONFIG, DATA_PATH, MODEL_CONFIG = "configs/data/ml1m.yaml", "../shared/data/ml-1m-users1-2999", "configs/dqn.yaml"
TARGET_RATIO = 0.8
# full mode also interleaves the full-ranking evaluation and profiles one evaluation; quick mode runs it once
SETTINGS = {"quick": {"train_steps": 100, "repeats": 3, "full_ranking_repeats": 0}, "full": {"train_steps": 300, "repeats": 7, "full_ranking_repeats": 5}}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/eval] {message}", file=sys.stderr, flush=True)


def train_model(work: Path, steps: int, seed: int) -> Any:
    """Builds configs/dqn.yaml on ML-1M through the CLI and fits it for `steps` optimizer steps (no logger or checkpoints)."""
    spec = yaml.safe_load((ROOT / MODEL_CONFIG).read_text())
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


def evaluate(trainer: L.Trainer, model: Any, datamodule: Any, full_ranking: bool) -> tuple[float, dict[str, float]]:
    """Seconds of one `Trainer.test` and its metrics."""
    model.full_ranking = full_ranking
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.test(model, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start, dict(model.last_metrics)


def forward_batches(datamodule: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test states and `(B, 1 + K_max)` candidates cut into the evaluation's batches once, outside the timing."""
    test, size = datamodule.tensors.test, datamodule.eval_batch_size
    candidates = test.candidates
    return [(test.history[i : i + size], candidates[i : i + size]) for i in range(0, len(test), size)]


def bare_forward(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds of the Q-network's forward over every batch (eval mode, inference mode, nothing else)."""
    network = model.online.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for history, candidates in batches:
            network.score(history, candidates)
    return time.perf_counter() - start


def breakdown(model: Any, datamodule: Any) -> dict[str, float]:
    """One evaluation pass by hand, timing its parts (the per-batch work of `RecModule._evaluate`, full ranking off)."""
    parts = dict.fromkeys(("loader", "score", "model_metrics", "popularity_metrics", "compute"), 0.0)
    metrics, popularity_metrics = model.metrics["test"], model.metrics["test_pop"]
    metrics.reset()
    popularity_metrics.reset()
    with torch.inference_mode():
        clock = time.perf_counter()
        for batch in datamodule.test_dataloader():
            now = time.perf_counter()
            parts["loader"] += now - clock
            scores = model.score_candidates(batch, batch["candidates"])
            clock, now = now, time.perf_counter()
            parts["score"] += now - clock
            metrics.update(scores.float())
            clock, now = now, time.perf_counter()
            parts["model_metrics"] += now - clock
            popularity_metrics.update(model.popularity(batch["candidates"]))
            clock, now = now, time.perf_counter()
            parts["popularity_metrics"] += now - clock
            clock = time.perf_counter()
        now = time.perf_counter()
        metrics.compute()
        popularity_metrics.compute()
        parts["compute"] = time.perf_counter() - now
    metrics.reset()
    popularity_metrics.reset()
    return {k: round(v, 4) for k, v in parts.items()}


def profile_summary(trainer: L.Trainer, model: Any, datamodule: Any, lines: int = 20) -> str:
    """cProfile of one evaluation, top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate(trainer, model, datamodule, full_ranking=False)
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

        _, metrics = evaluate(trainer, model, datamodule, full_ranking=False)  # warm-up, and the reference metrics
        bare_forward(model, batches)
        times: dict[str, list[float]] = {"eval": [], "forward": []}
        for repeat in range(repeats):  # interleaved: eval, forward, eval, forward, ...
            seconds, again = evaluate(trainer, model, datamodule, full_ranking=False)
            assert again == metrics, "evaluation is not deterministic"
            times["eval"].append(seconds)
            times["forward"].append(bare_forward(model, batches))
            log(f"repeat {repeat + 1}/{repeats}: eval {times['eval'][-1]:.3f} s, forward {times['forward'][-1]:.3f} s")
        # with full ranking: interleaved with the forward too in full mode, one run in quick mode
        full_times: dict[str, list[float]] = {"eval": [], "forward": []}
        for repeat in range(max(1, setting["full_ranking_repeats"])):
            seconds, full_metrics = evaluate(trainer, model, datamodule, full_ranking=True)
            full_times["eval"].append(seconds)
            full_times["forward"].append(bare_forward(model, batches))
            log(f"full ranking {repeat + 1}: eval {seconds:.3f} s, forward {full_times['forward'][-1]:.3f} s")
        model.full_ranking = False
        parts = breakdown(model, datamodule)
        log("breakdown of one evaluation (s): " + json.dumps(parts))
        if not args.quick:
            log("cProfile of one evaluation, by own time:\n" + profile_summary(trainer, model, datamodule))

    eval_s, forward_s = statistics.median(times["eval"]), statistics.median(times["forward"])
    report = {
        "bench": "eval",
        "data": DATA_PATH,
        "model": f"{MODEL_CONFIG} (DQN) trained {steps} optimizer steps" if steps else f"{MODEL_CONFIG} (DQN) untrained",
        "threads": {"torch": torch.get_num_threads(), "polars": int(os.environ["POLARS_MAX_THREADS"])},
        "timing": f"median of {repeats} interleaved repeats per side (after one untimed run each)",
        "events": events,
        "candidates_per_event": int(batches[0][1].shape[1]),
        "batch_size": datamodule.eval_batch_size,
        "eval_s": round(eval_s, 4),
        "forward_s": round(forward_s, 4),
        "ratio": round(forward_s / eval_s, 3),
        "events_per_s": round(events / eval_s, 1),
        "target_ratio": TARGET_RATIO,
        "meets_target": forward_s / eval_s >= TARGET_RATIO,
        "eval_full_s": round(statistics.median(full_times["eval"]), 4),
        "ratio_full": round(statistics.median(full_times["forward"]) / statistics.median(full_times["eval"]), 3),
        "full_ranking_timing": f"median of {len(full_times['eval'])} interleaved repeats" if len(full_times["eval"]) > 1 else "one run",
        "breakdown_s": parts,
        "metrics": {k.removeprefix("test/"): round(v, 4) for k, v in full_metrics.items() if k.startswith("test/")},
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
