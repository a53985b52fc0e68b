"""SeqRec: the shipped config fits from the command line, learns, checkpoints, and predicts top-k."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from lit_rec.networks import EncoderConfig
from lit_rec.cli import make_cli
from lit_rec.modules.seqrec import SeqRec

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "seqrec.yaml"
TINY_DATA = [
    "--data.synthetic_users=60",
    "--data.synthetic_items=50",
    "--data.synthetic_events_per_user=12",
    "--data.eval_ks=[1,5,10]",
    "--data.batch_size=64",
]


def _quiet(cache: Path) -> list[str]:
    return [
        "--config", str(CONFIG), "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--data.cache_dir={cache}",
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One small fit (2 epochs on a tiny simulated log) in its own folder."""
    folder = tmp_path_factory.mktemp("seqrec")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = make_cli(["fit", *_quiet(folder / "cache"), *TINY_DATA, "--trainer.max_epochs=2"])
    finally:
        os.chdir(cwd)
    return folder, cli


def test_fit_logs_checkpoints_and_saves_its_class(tiny_run: tuple[Path, object]) -> None:
    folder, cli = tiny_run
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/ctr", "val/ctr@10", "val/pop_ctr@10", "val/auc"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == "lit_rec.modules.seqrec.SeqRec"
    assert checkpoint["hyper_parameters"]["num_items"] == cli.datamodule.num_items
    assert "rng" in checkpoint["lit_rec_rng"]["generators"]


def test_predict_writes_unseen_top_k_per_user(tiny_run: tuple[Path, object]) -> None:
    folder, cli = tiny_run
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        make_cli(["predict", *_quiet(folder / "cache"), *TINY_DATA, "--ckpt_path=checkpoints/last.ckpt"])
    finally:
        os.chdir(cwd)
    frame = pl.read_parquet(folder / "predictions.parquet")
    tensors = cli.datamodule.tensors
    assert frame.columns == ["user", "rank", "item", "score"]
    assert frame["user"].n_unique() == tensors.num_users
    per_user = frame.group_by("user").agg(pl.col("rank"), pl.col("score"))
    assert all(ranks == list(range(1, 11)) for ranks in per_user["rank"].to_list())
    assert all(scores == sorted(scores, reverse=True) for scores in per_user["score"].to_list())
    # no recommended item was ever seen by its user (original ids on both sides)
    user_index = {u: i for i, u in enumerate(tensors.user_ids)}
    item_index = {item: i for i, item in enumerate(tensors.item_ids)}
    for user, item in frame.select("user", "item").iter_rows():
        u = user_index[user]
        seen = tensors.seen_items[tensors.seen_offsets[u] : tensors.seen_offsets[u + 1]]
        assert item_index[item] not in seen.tolist() and item_index[item] != 0


@pytest.fixture
def one_torch_thread():
    """One torch thread: the network is tiny, and on a shared 2-core machine more threads only oversubscribe (PITFALLS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_learns_next_items_on_a_deterministic_log(softmax: str, one_torch_thread) -> None:
    # every user walks the catalogue in order: the next item is always last item + 1
    torch.manual_seed(0)
    num_items = 30
    module = SeqRec(num_items=num_items, num_users=1, history_len=9, encoder=EncoderConfig(dim=32, dropout=0.0), lr=3e-3, softmax=softmax, sampled_negatives=20, seed=0)
    module.training_softmax.fit(torch.ones(num_items + 1, dtype=torch.long))  # what setup does with the train popularity
    optimizer = module.configure_optimizers()
    module.log, module.log_train_ctr = (lambda *a, **k: None), (lambda *a, **k: None)  # no trainer here
    for step in range(80):
        start = torch.randint(1, num_items - 10, (64,))
        window = start[:, None] + torch.arange(10)[None, :]
        window[:8, :3] = 0  # some windows start with padding (a user's first items)
        batch = {"user": torch.zeros(64, dtype=torch.long), "history": window[:, :-1], "item": window[:, -1]}
        loss = module.training_step(batch, step)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    history = torch.arange(1, 10)[None, :] + torch.arange(0, 15)[:, None]
    top = module.score_all_items({"user": torch.zeros(15, dtype=torch.long), "history": history})[:, 1:].argmax(1) + 1
    assert (top == history[:, -1] + 1).float().mean() > 0.9
    # every prefix is trained: a short history (left-padded) predicts its next item too
    short = torch.cat([torch.zeros(15, 6, dtype=torch.long), history[:, :3]], dim=1)
    top = module.score_all_items({"user": torch.zeros(15, dtype=torch.long), "history": short})[:, 1:].argmax(1) + 1
    assert (top == history[:, 2] + 1).float().mean() > 0.9


@pytest.mark.slow
def test_shipped_config_runs_from_the_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(CONFIG), "--trainer.max_steps=30",
         "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
