"""DQN / DDQN on training windows: the loss, the next state of a position, learning end to end, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_rec.networks import EncoderConfig
from lit_rec.cli import make_cli
from lit_rec.functional.next_item import cross_entropy, window_targets
from lit_rec.functional.td import replay_td_loss
from lit_rec.modules.dqn import DQN

ROOT = Path(__file__).resolve().parents[3]
# small and fast: a 32-wide encoder
FAST = ["--model.init_args.encoder.dim=32", "--model.init_args.lr=0.003"]
NUM_ITEMS, HISTORY_LEN = 20, 5


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (these fits are small, and two threads on a busy 2-core machine run ~30x slower,
    PITFALLS.md); the process-wide thread count and deterministic flag are restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def callbacks(checkpoint: dict | None = None) -> list[str]:
    """`--trainer.callbacks=` with no callback or, when given, only a ModelCheckpoint (the module syncs its own
    targets), and no early stopping."""
    chosen = [] if checkpoint is None else [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    return ["--trainer.callbacks=" + json.dumps(chosen), "--early_stopping=null"]


def hard_target_every(n: int) -> list[str]:
    """Model arguments: copy the online network into the target every `n` optimizer steps."""
    return ["--model.init_args.target_update=hard", f"--model.init_args.target_every_n_steps={n}"]


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


def windows(b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of windows: left-padded histories (row 0 has only two items) and their next items."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (b, HISTORY_LEN), generator=g)
    history[0, :3] = 0
    return {"user": torch.arange(b), "history": history, "item": torch.randint(1, NUM_ITEMS + 1, (b,), generator=g)}


def module(**overrides) -> DQN:
    args = dict(num_items=NUM_ITEMS, num_users=6, history_len=HISTORY_LEN, encoder=EncoderConfig(dim=16, dropout=0.0), seed=0)
    return DQN(**{**args, **overrides})


@pytest.mark.parametrize("double", [False, True])
def test_td_bootstraps_each_position_from_the_next_position_of_its_window(double: bool) -> None:
    model = module(double=double, gamma=0.5, loss="mse")
    with torch.no_grad():  # a target network that differs from the online one
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batch = windows()
    history = batch["history"]
    targets, mask = window_targets(history, batch["item"])
    losses = model.q_losses(history, batch["item"])
    rows, cols = losses.where
    assert rows.numel() == int(mask.sum()) == 6 * HISTORY_LEN - 2  # the positions whose next item exists (row 0: its last PAD predicts its first item)
    # entry k's next state is entry k + 1 (the next position of the same window), except at a window's last position
    assert torch.equal(losses.has_next, cols[:-1] < HISTORY_LEN - 1)
    assert torch.equal(rows[1:][losses.has_next], rows[:-1][losses.has_next])
    assert torch.equal(cols[1:][losses.has_next], cols[:-1][losses.has_next] + 1)

    # V(s') by hand from every position's Q-values (PAD's column dropped): DQN's target max, or DDQN's target at the online argmax
    q_online = model.online.sequence_scores(history)[0][..., 1:][rows, cols]
    q_target = model.target.sequence_scores(history)[0][..., 1:][rows, cols]
    if double:
        next_value = q_target[1:].gather(1, q_online[1:].argmax(1, keepdim=True)).squeeze(1)
    else:
        next_value = q_target[1:].max(1).values
    computed = model.next_values(model.target, history, losses.where, losses.targets, losses.columns)
    assert torch.allclose(computed[losses.has_next], next_value[losses.has_next], atol=1e-5)
    assert not torch.allclose(next_value, q_online[1:].max(1).values, atol=1e-3)  # the target network's values
    # the TD loss (td_actions 0, SQN): the logged item's reward 1 + gamma V(s'), over the positions with a next state
    logged = targets[rows, cols] - 1
    q_logged = q_online[:-1].gather(1, logged[:-1, None]).squeeze(1)
    td = (q_logged - 1.0 - 0.5 * next_value).pow(2)[losses.has_next].mean()
    assert losses.td.item() == pytest.approx(td.item(), rel=1e-5)
    none = torch.zeros(0, dtype=torch.long)
    assert td.item() == pytest.approx(replay_td_loss(q_online[:-1], logged[:-1], torch.tensor(True), next_value, 0.5, "mse", none)[losses.has_next].mean().item(), rel=1e-6)


def test_loss_is_ce_weight_ce_plus_td_weight_td_over_the_positions_with_an_item() -> None:
    batch = windows()
    model = module(ce_weight=0.7, td_weight=0.3)
    model.log_step = model.log_window_ctr = lambda *a, **k: None  # no trainer here
    losses = model.q_losses(batch["history"], batch["item"])
    assert losses.states.shape == (6 * HISTORY_LEN - 2, 16)  # row 0's padded prefixes are not trained, but the one before its first item
    assert losses.ce.item() == pytest.approx(cross_entropy(losses.columns).mean().item())
    # the CE is the full-catalogue softmax of the logged item after each prefix
    q_all = model.online.sequence_scores(batch["history"])[0][..., 1:]
    targets, mask = window_targets(batch["history"], batch["item"])
    ce = torch.nn.functional.cross_entropy(q_all[mask], targets[mask] - 1)
    assert losses.ce.item() == pytest.approx(ce.item(), rel=1e-5)
    loss = model.training_step(batch, 0)
    assert loss.item() == pytest.approx(0.7 * losses.ce.item() + 0.3 * losses.td.item(), rel=1e-5)
    # the gradients reach the online network only
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert model.online.encoder.item_embedding.weight.grad.abs().sum() > 0
    assert model.target_pairs() == [(model.online, model.target)]
    with pytest.raises(ValueError, match="gamma"):
        module(gamma=1.0)
    with pytest.raises(ValueError, match="weights"):
        module(ce_weight=0.0, td_weight=0.0)


def test_sampled_softmax_scores_the_logged_item_and_a_shared_sample() -> None:
    model = module(softmax="sampled", sampled_negatives=8)
    model.training_softmax.fit(torch.ones(NUM_ITEMS + 1, dtype=torch.long))
    batch = windows()
    losses = model.q_losses(batch["history"], batch["item"])
    columns = losses.columns
    assert columns.scores.shape == (6 * HISTORY_LEN - 2, 1 + 8) and columns.negatives.shape == (8,)
    assert torch.equal(columns.target, torch.zeros(6 * HISTORY_LEN - 2, dtype=torch.long))
    assert torch.isfinite(losses.ce) and torch.isfinite(losses.td)


@pytest.mark.slow
def test_dqn_beats_popularity_on_synthetic_data(tmp_path: Path) -> None:
    # batches of 64 windows: 26 steps an epoch
    model = fit("dqn", tmp_path, "--trainer.max_epochs=4", "--data.batch_size=64", *callbacks(checkpoint={"dirpath": str(tmp_path / "ckpt"), "save_last": True}),
                *hard_target_every(100))
    metrics = model.last_metrics
    assert metrics["val/ctr@10"] > metrics["val/pop_ctr@10"] + 0.01, metrics
    assert metrics["val/ctr@100"] > metrics["val/pop_ctr@100"], metrics
    logged = model.trainer.callback_metrics
    assert {"train/loss", "train/loss_td", "train/loss_ce", "train/ctr", "train/episodes"} <= set(logged)
    assert model.trainer.global_step == 4 * len(model.trainer.datamodule.train_dataloader())
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_ddqn_fits_and_its_target_network_follows_with_no_callback_attached(tmp_path: Path, softmax: str) -> None:
    model = fit(
        "ddqn", tmp_path, "--trainer.max_steps=4", "--trainer.limit_val_batches=1", "--trainer.enable_checkpointing=false",
        *callbacks(), *hard_target_every(3), f"--model.init_args.softmax={softmax}", "--model.init_args.sampled_negatives=50",
    )
    assert not any(type(c).__module__.startswith("callbacks") for c in model.trainer.callbacks)
    assert model.double and model.trainer.global_step == 4
    assert torch.isfinite(model.trainer.callback_metrics["train/loss"])
    initial = DQN(num_items=model.num_items, num_users=model.num_users, history_len=model.history_len, encoder=EncoderConfig(dim=32), seed=0).online.state_dict()
    online, target = model.online.state_dict(), model.target.state_dict()
    # the target network was copied at step 3 and then kept: it differs from both the start and the online one
    assert not all(torch.equal(v, initial[k]) for k, v in target.items())
    assert not all(torch.equal(v, online[k]) for k, v in target.items())
    assert not any(p.requires_grad for p in model.target.parameters())


def _parameters(model: DQN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize("config", ["dqn", "ddqn"])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, config: str) -> None:
    # batches of 64 windows: 26 steps an epoch, 2 epochs; checkpoints every 10 steps; the target network is copied
    # every 5 steps, so also at a checkpoint's step (the checkpoint holds the copied target). Deterministic: with several CPU threads some kernels (embedding backward) add in a varying
    # order, so even two uninterrupted runs would differ in the last bits.
    common = ["--trainer.max_epochs=2", "--trainer.deterministic=true", "--data.batch_size=64", "--model.init_args.encoder.dropout=0.1"]
    every_10 = {"every_n_train_steps": 10, "save_top_k": -1, "filename": "{step}"}
    whole = fit(config, tmp_path / "whole", *common, *callbacks({**every_10, "dirpath": str(tmp_path / "whole_ckpt")}), *hard_target_every(5))
    checkpoint = tmp_path / "whole_ckpt" / "step=10.ckpt"
    assert checkpoint.exists()
    resumed = fit(
        config, tmp_path / "resumed", *common, *callbacks({**every_10, "dirpath": str(tmp_path / "resumed_ckpt")}), *hard_target_every(5),
        f"--ckpt_path={checkpoint}",
    )
    assert resumed.trainer.global_step == whole.trainer.global_step == 2 * 26
    assert resumed.last_metrics == whole.last_metrics
    a, b = _parameters(whole), _parameters(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the checkpoint alone rebuilds the module (strict=False: RecModule.setup adds the popularity scorer's buffer)
    restored = DQN.load_from_checkpoint(checkpoint, strict=False)
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(v, saved[f"online.{k}"]) for k, v in restored.online.state_dict().items())
    assert restored.double == (config == "ddqn") and restored.history_len == whole.history_len
