"""Time to quality: training seconds until a method's val CTR@10 first reaches a threshold; one JSON line last.

`python bench/time_to_quality.py [--quick] [--methods dadrl seqrec] [--threshold T] [--max-epochs N]`.
Full (default): MovieLens-1M users 1-2999, threshold 0.69 (the SASRec reference reaches its best,
.704 test CTR@10, after 316 s of one thread). `--quick`: MovieLens-100K, threshold 0.50.
Each method runs its shipped config (`configs/<method>.yaml`) through `lit_rec.cli.make_cli`, one torch
thread, validating every epoch; the clock counts training only (validation time is excluded: it is
the same work for every method), from the first training batch. A run stops at the threshold, at
`--max-epochs`, or by its config's early stopping. The methods run one after the other in the same
process on the same data (training runs cannot be interleaved); `ratio` is each method's seconds over
the first method's. Progress goes to stderr; the JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_rec.cli import make_cli, method_config  # noqa: E402

THREADS = 1
SETTINGS = {
    "quick": {"data": "configs/data/ml100k.yaml", "path": "../shared/data/ml-100k", "threshold": 0.50, "max_epochs": 40},
    "full": {"data": "configs/data/ml1m.yaml", "path": "../shared/data/ml-1m-users1-2999", "threshold": 0.69, "max_epochs": 40},
}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench/time_to_quality] {message}", file=sys.stderr, flush=True)


class TrainingClock(L.Callback):
    """Counts training seconds (validation excluded) and records `(epoch, seconds, val/ctr@10)`; stops at `threshold`."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.seconds = 0.0
        self.curve: list[dict[str, float]] = []
        self.reached: float | None = None
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics["val/ctr@10"])
        self.curve.append({"epoch": trainer.current_epoch, "seconds": round(self.seconds, 2), "val_ctr@10": round(value, 4)})
        log(f"epoch {trainer.current_epoch}: {self.seconds:.1f} s of training, val CTR@10 {value:.4f}")
        if self.reached is None and value >= self.threshold:
            self.reached = self.seconds
            trainer.should_stop = True
        self._started = time.perf_counter()  # the rest of the epoch, if validation ran mid-epoch


def run(method: str, setting: dict[str, Any], work: Path, threshold: float, max_epochs: int) -> dict[str, Any]:
    """Fits `configs/<method>.yaml` until val CTR@10 reaches `threshold` (or it stops); its clock's figures."""
    spec = method_config(ROOT / "configs" / f"{method}.yaml")
    trainer = spec["trainer"]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith(("ModelCheckpoint", "PredictionWriter"))]
    trainer.update({"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "max_steps": -1, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "default_root_dir": str(work / method)})
    path = work / f"{method}.yaml"
    path.write_text(yaml.safe_dump(spec))
    clock = TrainingClock(threshold)
    args = ["--config", str(path), "--data", str(ROOT / setting["data"]), f"--data.path={ROOT / setting['path']}",
            f"--data.cache_dir={work / 'cache'}", "--model.init_args.full_ranking=false"]
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's and CTRLogger's prints go to stderr
        cli = make_cli(args, run=False)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = max((point["val_ctr@10"] for point in clock.curve), default=None)
    return {"seconds_to_threshold": None if clock.reached is None else round(clock.reached, 1), "reached": clock.reached is not None,
            "training_seconds": round(clock.seconds, 1), "epochs": len(clock.curve), "best_val_ctr@10": best, "curve": clock.curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MovieLens-100K, threshold 0.50")
    parser.add_argument("--methods", nargs="+", default=["dadrl", "seqrec"], help="configs/<method>.yaml to time, first is the reference of `ratio`")
    parser.add_argument("--threshold", type=float, default=None, help="val CTR@10 to reach (default: 0.69 full, 0.50 quick)")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on epochs per method")
    options = parser.parse_args()
    setting = SETTINGS["quick" if options.quick else "full"]
    if not (ROOT / setting["path"]).exists():
        sys.exit(f"bench/time_to_quality: data folder {ROOT / setting['path']} is missing")
    threshold = setting["threshold"] if options.threshold is None else options.threshold
    max_epochs = setting["max_epochs"] if options.max_epochs is None else options.max_epochs
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lit_rec_ttq_") as tmp:
        for method in options.methods:
            log(f"{method}: training until val CTR@10 >= {threshold} (at most {max_epochs} epochs)")
            results[method] = run(method, setting, Path(tmp), threshold, max_epochs)
    first = results[options.methods[0]]["seconds_to_threshold"]
    for method in options.methods:
        seconds = results[method]["seconds_to_threshold"]
        results[method]["ratio"] = None if first is None or seconds is None else round(seconds / first, 3)
    print(json.dumps({"bench": "time_to_quality", "mode": "quick" if options.quick else "full", "threads": THREADS,
                      "threshold": threshold, "max_epochs": max_epochs, "data": setting["path"], "methods": results,
                      "seconds_to_threshold": results[options.methods[0]]["seconds_to_threshold"]}))


if __name__ == "__main__":
    main()
