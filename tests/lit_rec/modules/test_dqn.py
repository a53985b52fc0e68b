"""DQN / DDQN end to end on the synthetic simulator: learning, step counting, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_rec.cli import make_cli
from lit_rec.modules.dqn import DQN

ROOT = Path(__file__).resolve().parents[3]
# checkpoints of a manual-optimisation module hold the post-step state on purpose (train.py filters this too)
pytestmark = pytest.mark.filterwarnings("ignore:.*no pre-optimization state was saved")
# small and fast: a 32-wide encoder, 56 training steps per epoch on the default simulator
FAST = ["--model.init_args.dim=32", "--model.init_args.lr=0.003", "--model.init_args.num_envs=128"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (these fits are small, and two threads on a busy 2-core machine run ~30x slower,
    PITFALLS.md); the process-wide thread count and deterministic flag are restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def callbacks(target_every: int = 100, checkpoint: dict | None = None) -> str:
    """`--trainer.callbacks=` with a TargetNetworkUpdate and, when given, a ModelCheckpoint."""
    chosen = [{"class_path": "callbacks.target_update.TargetNetworkUpdate", "init_args": {"every_n_steps": target_every}}]
    if checkpoint is not None:
        chosen.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint})
    return "--trainer.callbacks=" + json.dumps(chosen)


def fit(config: str, tmp_path: Path, *args: str) -> DQN:
    """Runs `fit` through the CLI with no logger, no progress bar and no data cache; returns the module."""
    cli = make_cli(
        [
            "fit",
            "--config", str(ROOT / "configs" / f"{config}.yaml"),
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.cache_dir=null",
            "--model.init_args.full_ranking=false",
            *FAST,
            *args,
        ]
    )
    return cli.model


@pytest.mark.slow
def test_dqn_beats_popularity_on_synthetic_data(tmp_path: Path) -> None:
    model = fit("dqn", tmp_path, "--trainer.max_epochs=4", callbacks(checkpoint={"dirpath": str(tmp_path / "ckpt"), "save_last": True}))
    metrics = model.last_metrics
    assert metrics["val/ctr@10"] > metrics["val/pop_ctr@10"] + 0.01, metrics
    assert metrics["val/ctr@100"] > metrics["val/pop_ctr@100"], metrics
    logged = model.trainer.callback_metrics
    assert {"train/loss", "train/ctr", "train/epsilon", "train/episodes"} <= set(logged)
    assert model.trainer.global_step == 4 * 56
    assert logged["train/epsilon"] == pytest.approx(0.05)
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


@pytest.mark.parametrize("env", ["replay", "user_model"])
def test_ddqn_runs_in_both_environments(tmp_path: Path, env: str) -> None:
    model = fit(
        "ddqn", tmp_path, "--trainer.max_steps=12", "--trainer.limit_val_batches=1", "--trainer.enable_checkpointing=false",
        callbacks(), f"--model.init_args.env={env}",
        "--model.init_args.learning_starts=256",
    )
    assert model.double and model.env_name == env
    assert model.trainer.global_step == 12
    assert len(model.buffer) == 12 * 128
    assert torch.isfinite(model.trainer.callback_metrics["train/loss"])


def test_steps_without_updates_still_advance_global_step(tmp_path: Path) -> None:
    before = DQN(num_items=300, num_users=500, dim=32, seed=0).online.state_dict()
    model = fit(
        "dqn", tmp_path, "--trainer.max_steps=7", "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
        callbacks(), "--model.init_args.learning_starts=100000",
    )
    assert model.trainer.global_step == 7  # no-op optimizer steps are counted
    assert all(torch.equal(before[k], v) for k, v in model.online.state_dict().items())  # ... and change nothing
    assert "train/loss" not in model.trainer.callback_metrics


def test_updates_per_step_multiplies_optimizer_steps(tmp_path: Path) -> None:
    model = fit(
        "dqn", tmp_path, "--trainer.max_steps=8", "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
        callbacks(), "--model.init_args.updates_per_step=2",
        "--model.init_args.learning_starts=1",
    )
    assert model.trainer.global_step == 8
    assert model.env_steps == 4 and len(model.buffer) == 4 * 128


def test_act_is_greedy_at_zero_epsilon_and_uniform_at_one() -> None:
    model = DQN(num_items=50, num_users=10, dim=16, hint_dim=8, num_heads=2, seed=0)
    history = torch.randint(1, 51, (400, 10))
    candidates = torch.randint(1, 51, (400, 6))
    greedy = model.online.eval().score(history, candidates).argmax(1)
    assert torch.equal(model.act(history, candidates, 0.0), greedy)
    uniform = model.act(history, candidates, 1.0)
    assert torch.bincount(uniform, minlength=6).min() > 40  # 400 draws over 6 columns
    assert model.target_pairs()[0] == (model.online, model.target)
    assert not any(p.requires_grad for p in model.target.parameters())


def _parameters(model: DQN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize(("config", "env"), [("dqn", "replay"), ("ddqn", "user_model")])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, config: str, env: str) -> None:
    # checkpoints every 30 steps; 2 epochs of 56 steps; the target network is copied every 20 steps.
    # deterministic: with several CPU threads some kernels (embedding backward) add in a varying
    # order, so even two uninterrupted runs would differ in the last bits.
    common = [
        "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
        f"--model.init_args.env={env}",
        "--model.init_args.dropout=0.1",
        "--model.init_args.learning_starts=512",
    ]
    every_30 = {"every_n_train_steps": 30, "save_top_k": -1, "filename": "{step}"}
    whole = fit(config, tmp_path / "whole", *common, callbacks(20, {**every_30, "dirpath": str(tmp_path / "whole_ckpt")}))
    checkpoint = tmp_path / "whole_ckpt" / "step=30.ckpt"
    assert checkpoint.exists()
    resumed = fit(
        config, tmp_path / "resumed", *common, callbacks(20, {**every_30, "dirpath": str(tmp_path / "resumed_ckpt")}),
        f"--ckpt_path={checkpoint}",
    )
    assert resumed.trainer.global_step == whole.trainer.global_step == 112
    assert resumed.last_metrics == whole.last_metrics
    a, b = _parameters(whole), _parameters(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert all(torch.equal(whole.buffer.storage[k], resumed.buffer.storage[k]) for k in whole.buffer.storage)
    # the checkpoint alone rebuilds the module (strict=False: RecModule.setup adds the popularity scorer's buffer)
    restored = DQN.load_from_checkpoint(checkpoint, strict=False)
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(v, saved[f"online.{k}"]) for k, v in restored.online.state_dict().items())
    assert restored.double == (config == "ddqn") and restored.env is None
