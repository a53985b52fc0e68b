"""LinUCB end to end: beats random on synthetic data, clears the targets on ML-100K, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_rec.cli import make_cli

ROOT = Path(__file__).resolve().parents[3]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def fit(tmp_path: Path, *extra: str):
    """Fits LinUCB in-process with no logger; returns the CLI (trainer and model)."""
    args = [
        "fit", "--config", str(ROOT / "configs/linucb.yaml"), "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--trainer.default_root_dir={tmp_path}", *extra,
    ]
    return make_cli(args)


def test_linucb_fits_on_synthetic_data_and_beats_random(tmp_path: Path) -> None:
    cli = fit(tmp_path, "--trainer.max_epochs=1")
    metrics = cli.model.last_metrics
    for k in (1, 10, 20, 50, 100):
        assert 0.0 <= metrics[f"val/ctr@{k}"] <= 1.0
    assert metrics["val/ctr@10"] > 2 / 11  # twice a random policy
    assert metrics["val/ctr@1"] >= metrics["val/ctr@10"] >= metrics["val/ctr@100"]
    # the windows are expanded: one epoch is one UCB choice and update per train event
    assert int(cli.model.events_seen) == len(cli.datamodule.tensors.train)


def checkpoint_every(steps: int, dirpath: Path) -> str:
    """A `--trainer.callbacks` override: checkpoints every `steps` steps into `dirpath`."""
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"every_n_train_steps": steps, "save_last": True, "dirpath": str(dirpath)}}
    return "--trainer.callbacks=" + json.dumps([callback])


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_ends_with_identical_metrics(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    # 150 users, batches of 32 windows: 15 steps an epoch; the checkpoint of step 7 is mid-epoch
    common = ["--trainer.max_epochs=2", "--data.synthetic_users=150", "--data.batch_size=32"]
    full = fit(tmp_path / "a", *common, checkpoint_every(7, tmp_path / "a_ckpt"))
    assert full.trainer.global_step == 2 * len(full.datamodule.train_dataloader()) == 30
    interrupted = fit(tmp_path / "b", *common, "--trainer.max_steps=10", checkpoint_every(7, ckpt_dir))
    assert interrupted.trainer.global_step == 10
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 7
    checkpoint = ckpt_dir / "last.ckpt"
    resumed = fit(tmp_path / "c", *common, checkpoint_every(7, tmp_path / "c_ckpt"), f"--ckpt_path={checkpoint}")
    assert resumed.trainer.global_step == full.trainer.global_step
    assert torch.equal(resumed.model.a_inv, full.model.a_inv)
    assert torch.equal(resumed.model.b, full.model.b)
    assert resumed.model.last_metrics == full.model.last_metrics


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not ML100K.exists(), reason=f"MovieLens 100K not found at {ML100K}")
def test_linucb_on_movielens_100k_clears_the_targets(tmp_path: Path) -> None:
    cli = fit(tmp_path, "--data", str(ROOT / "configs/data/ml100k.yaml"), f"--data.path={ML100K}")
    m = cli.model.last_metrics
    assert m["val/ctr@1"] > 0.7
    assert m["val/ctr@100"] > 0.03
    assert m["val/ctr@10"] >= m["val/pop_ctr@10"] - 0.02


def test_the_state_is_the_mean_factor_of_the_last_context_len_items() -> None:
    from lit_rec.modules.linucb import LinUCB

    model = LinUCB(num_items=6, num_users=2, history_len=5, rank=2, context_len=2)
    model.item_factors.copy_(torch.arange(14, dtype=torch.float32).view(7, 2))
    history = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 0, 6], [6, 6, 6, 4, 5]])
    # rows 0 and 2 share their last two items: older items do not move the state; PAD is left out of the mean
    state = model._state(history)
    assert torch.equal(state[0], state[2])
    assert torch.equal(state[0], (model.item_factors[4] + model.item_factors[5]) / 2)
    assert torch.equal(state[1], model.item_factors[6])
