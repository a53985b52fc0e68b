"""Evaluation under DDP (configs/trainer/ddp_sim.yaml): every test event counted once, same CTR@k as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs train.py with W&B off and one torch thread per process."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_metrics(log_dir: Path) -> dict[str, float]:
    """The test/* row of a CSVLogger's metrics.csv."""
    (metrics_file,) = log_dir.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    row = next(r for r in rows if r.get("test/ctr@1"))
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v}


test_metrics.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_ddp_sim_test_metrics_equal_one_process(tmp_path: Path) -> None:
    config = str(ROOT / "configs/linucb.yaml")
    common = ["--config", config, f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.enable_progress_bar=false"]
    run(["fit", *common, "--trainer.max_steps=20", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path / 'fit'}",
         "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {dirpath: "
         + str(tmp_path / "ckpt") + ", save_last: true}}]"], tmp_path)
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    results = {}
    for name, trainer in (("one", "cpu.yaml"), ("ddp", "ddp_sim.yaml")):
        log_dir = tmp_path / name
        run(["test", *common, "--trainer", str(ROOT / "configs/trainer" / trainer), f"--ckpt_path={checkpoint}",
             "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={log_dir}"], tmp_path)
        results[name] = test_metrics(log_dir)
    assert results["one"]["test/ctr@10"] > 0
    assert results["ddp"] == results["one"]
