"""DRL-Rec student: frozen teacher, loss terms and ablation flags, end-to-end teacher then student fit, exact resume."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from callbacks.model_stats import ModelStatsLogger
from lit_rec.networks import EncoderConfig
from lit_rec.cli import make_cli, method_config
from lit_rec.modules.dqn import DQN
from lit_rec.modules.drlrec import DRLRecStudent
from lit_rec.serving import num_parameters
from lit_rec.sampling import SeededGenerator

ROOT = Path(__file__).resolve().parents[3]
NUM_ITEMS, HISTORY_LEN = 30, 10


@pytest.fixture(autouse=True)
def _quiet_log_outside_trainer() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: these networks are tiny, and on a shared 2-core machine more threads only oversubscribe (PITFALLS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def teacher_ckpt(tmp_path: Path) -> Path:
    """A (random) wide DQN teacher saved like a Lightning checkpoint."""
    teacher = DQN(num_items=NUM_ITEMS, num_users=5, history_len=HISTORY_LEN, double=True, encoder=EncoderConfig(dim=16), seed=7)
    path = tmp_path / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, path)
    return path


def window_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of training windows (row 0 left-padded: a user's first items)."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (b, HISTORY_LEN), generator=g)
    history[0, :4] = 0
    return {"user": torch.arange(b), "history": history, "item": torch.randint(1, NUM_ITEMS + 1, (b,), generator=g)}


def student(teacher_ckpt: Path | None, **overrides) -> DRLRecStudent:
    """A tiny student (width 8 against the teacher's 16), ready for `distillation_terms` outside a trainer."""
    args = dict(teacher_ckpt=str(teacher_ckpt) if teacher_ckpt else None, num_items=NUM_ITEMS, num_users=5, history_len=HISTORY_LEN,
                encoder=EncoderConfig(dim=8, dropout=0.0), num_candidates=20, top_k=3, seed=0, teacher_encoder=EncoderConfig(dim=16))  # no dropout: terms repeat exactly
    module = DRLRecStudent(**{**args, **overrides})
    module.load_frozen_teacher()  # what setup("fit") does
    popularity = torch.arange(NUM_ITEMS + 1)
    popularity[0] = 0
    module._item_popularity = popularity
    module.log_step = module.log_window_ctr = lambda *a, **k: None  # no trainer here
    return module


def terms_of(module: DRLRecStudent, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss terms with a freshly seeded exploration generator (same explored candidates every call)."""
    module.explore_rng = SeededGenerator(123)
    return module.distillation_terms(batch)


def loss_of(module: DRLRecStudent, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`training_step`'s loss with the same exploration as `terms_of`."""
    module.explore_rng = SeededGenerator(123)
    return module.training_step(batch, 0)


def states_with_a_next_state(batch: dict[str, torch.Tensor]) -> int:
    """Trained positions (whose next item exists: an item, or the empty prefix before a first item) that are not their window's last."""
    return int((batch["history"][:, 1:] > 0).sum())


def test_frozen_teacher_gets_no_gradient_and_the_student_does(teacher_ckpt: Path) -> None:
    module = student(teacher_ckpt)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    loss_of(module, window_batch()).backward()
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.teacher_target.parameters())
    assert all(p.grad is not None for p in module.online.head.parameters())
    assert module.online.encoder.item_embedding.weight.grad.abs().sum() > 0
    assert module.hint_projection.weight.grad.abs().sum() > 0  # widths 8 -> 16: a learned projection
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not module.teacher.training  # frozen teachers never use dropout
    assert module.teacher not in [p for pair in module.target_pairs() for p in pair]


def test_co_trained_teacher_learns_only_from_its_own_loss() -> None:
    module = student(None)  # no checkpoint: the teacher is co-trained from scratch
    assert module.co_train and module.teacher.encoder.dim == 16
    terms = terms_of(module, window_batch())
    teacher_params = list(module.teacher.parameters())
    distill_grads = torch.autograd.grad(terms["kl"] + terms["hint"], teacher_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in distill_grads)
    own_grads = torch.autograd.grad(terms["teacher_rl"], teacher_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in own_grads)
    assert (module.teacher, module.teacher_target) in module.target_pairs()


def test_loss_is_the_weighted_sum_of_its_terms(teacher_ckpt: Path) -> None:
    module, batch = student(teacher_ckpt), window_batch()
    terms = terms_of(module, batch)
    loss = loss_of(module, batch)
    assert loss.item() == pytest.approx((0.4 * terms["rl"] + 0.3 * terms["kl"] + 0.3 * terms["hint"]).item(), rel=1e-6)
    assert 3 <= terms["filtered_size"].item() <= 6  # top-3 of each network, de-duplicated
    # the student's RL term is its own DQN loss on the windows
    own = module.q_losses(batch["history"], batch["item"])
    assert terms["rl"].item() == pytest.approx((module.ce_weight * own.ce + module.td_weight * own.td).item(), rel=1e-6)
    # one confidence per trained state with a next state in its window
    assert terms["confidence"].shape == (states_with_a_next_state(batch),)


def test_ablation_flags_change_the_loss_as_expected(teacher_ckpt: Path) -> None:
    batch = window_batch()
    full = terms_of(student(teacher_ckpt), batch)
    assert set(full) == {"rl", "columns", "confidence", "filtered_size", "kl", "hint"}

    alone = student(None, distill=False)
    assert alone.teacher is None and set(terms_of(alone, batch)) == {"rl", "columns"}
    assert loss_of(alone, batch).item() == pytest.approx(0.4 * terms_of(alone, batch)["rl"].item())

    no_kl = terms_of(student(teacher_ckpt, kl=False), batch)
    no_hint = terms_of(student(teacher_ckpt, hint=False), batch)
    assert "kl" not in no_kl and torch.equal(no_kl["hint"], full["hint"])
    assert "hint" not in no_hint and torch.equal(no_hint["kl"], full["kl"])

    # confidence in [0, 1] with batch-max: the worst state weighs 0, and weighting only lowers the terms
    assert full["confidence"].min().item() == pytest.approx(0.0, abs=1e-4) and full["confidence"].max() <= 1
    unweighted = terms_of(student(teacher_ckpt, confidence=False), batch)
    assert torch.equal(unweighted["confidence"], torch.ones_like(full["confidence"]))
    assert unweighted["kl"] > full["kl"] and unweighted["hint"] > full["hint"]

    logged_lessons = terms_of(student(teacher_ckpt, explore_filter=False), batch)
    assert "filtered_size" not in logged_lessons  # only the training candidates are lessons
    assert logged_lessons["kl"] < full["kl"]  # the explored lessons add a KL term per state
    for terms in (no_kl, no_hint, unweighted, logged_lessons):
        assert torch.equal(terms["rl"], full["rl"])  # the flags never touch the student's own RL loss


def test_confidence_weights_each_state_before_the_mean(teacher_ckpt: Path) -> None:
    batch = window_batch(b=2)
    module = student(teacher_ckpt, explore_filter=False)  # lessons = the training candidates
    module.confidence_weights = lambda delta: torch.zeros_like(delta)
    terms = terms_of(module, batch)
    assert terms["kl"].item() == 0.0 and terms["hint"].item() == 0.0
    # mean over the S states of c_i * loss_i: one state at a time (c = e_i) adds up to the unweighted mean
    states = states_with_a_next_state(batch)
    unweighted = terms_of(student(teacher_ckpt, explore_filter=False, confidence=False), batch)
    kl, hint = 0.0, 0.0
    for i in range(states):
        module.confidence_weights = lambda delta, i=i: torch.nn.functional.one_hot(torch.tensor(i), states).float()
        one = terms_of(module, batch)
        assert one["kl"] > 0 and one["hint"] > 0
        kl, hint = kl + one["kl"].item(), hint + one["hint"].item()
    assert kl == pytest.approx(unweighted["kl"].item(), rel=1e-5)
    assert hint == pytest.approx(unweighted["hint"].item(), rel=1e-5)


def test_batch_max_confidence_on_hand_numbers_with_clamping(teacher_ckpt: Path) -> None:
    module = student(teacher_ckpt, min_confidence=0.25)  # the shipped formula, batch_max
    c = module.confidence_weights(torch.tensor([0.0, 1.0, 4.0]))
    assert torch.allclose(c, torch.tensor([1.0, 0.75, 0.25]), atol=1e-6)  # 1 - delta / 4, the last clamped from 0
    assert torch.equal(student(teacher_ckpt, confidence=False).confidence_weights(torch.tensor([0.0, 4.0])), torch.ones(2))
    assert not any(k.startswith("confidence_") for k in module.state_dict())  # batch_max keeps no state: checkpoints as before


def test_exp_confidence_keeps_a_running_sigma2_in_the_modules_state(teacher_ckpt: Path) -> None:
    module = student(teacher_ckpt, confidence_formula="exp", confidence_momentum=0.5)
    first = module.confidence_weights(torch.tensor([0.0, 2.0]))  # sigma^2 = mean delta = 1
    assert torch.allclose(first, torch.tensor([1.0, math.exp(-2.0)]))
    second = module.confidence_weights(torch.tensor([4.0, 4.0]))  # sigma^2 = 0.5 * 1 + 0.5 * 4 = 2.5
    assert module.confidence_sigma2.item() == pytest.approx(2.5) and int(module.confidence_batches) == 2
    assert torch.allclose(second, torch.full((2,), math.exp(-4.0 / 2.5)))
    clamped = student(teacher_ckpt, confidence_formula="exp", min_confidence=0.5).confidence_weights(torch.tensor([0.0, 10.0]))
    assert clamped.tolist() == [1.0, 0.5]
    # the running state is in the state dict: a module restored from it continues alike
    restored = student(teacher_ckpt, confidence_formula="exp", confidence_momentum=0.5)
    restored.load_state_dict(module.state_dict())
    delta = torch.tensor([0.5, 5.0])
    assert torch.equal(module.confidence_weights(delta), restored.confidence_weights(delta))
    with pytest.raises(ValueError, match="confidence_formula"):
        student(teacher_ckpt, confidence_formula="softmax")


def test_distill_states_distils_at_a_fresh_random_subset_each_step(teacher_ckpt: Path) -> None:
    batch = window_batch(b=3)
    states = states_with_a_next_state(batch)
    every = terms_of(student(teacher_ckpt), batch)
    assert every["confidence"].shape == (states,)
    # a cap at or above the batch's states changes nothing
    capped = terms_of(student(teacher_ckpt, distill_states=states), batch)
    for key in ("rl", "kl", "hint", "confidence"):
        assert torch.equal(capped[key], every[key]), key
    module = student(teacher_ckpt, distill_states=4)
    first = terms_of(module, batch)
    assert first["confidence"].shape == (4,) and first["kl"] > 0 and first["hint"] > 0
    assert torch.equal(first["rl"], every["rl"])  # the student's own loss still covers every position
    second = module.distillation_terms(batch)  # the generator moved on: other states
    assert not torch.equal(first["confidence"], second["confidence"])
    with pytest.raises(ValueError, match="distill_states"):
        student(teacher_ckpt, distill_states=0)


def test_teacher_checkpoint_must_hold_a_dqn(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="no 'online"):
        student(bad)


def test_teacher_must_fit_the_catalogue_the_width_and_the_history_length(teacher_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="catalogue"):
        student(teacher_ckpt, num_items=NUM_ITEMS + 1)
    with pytest.raises(ValueError, match="teacher_encoder.dim=16"):
        student(teacher_ckpt, teacher_encoder=EncoderConfig(dim=64))
    with pytest.raises(ValueError, match="history_len"):
        student(teacher_ckpt, history_len=HISTORY_LEN - 1)


# ---------------------------------------------------------------------------- end to end through the CLI

# windows of 5 items in batches of 12: 11 steps an epoch (a checkpoint at step 7 is mid-epoch)
TINY_DATA = ["--data.synthetic_users=40", "--data.synthetic_items=60", "--data.synthetic_events_per_user=20",
             "--data.history_len=5", "--data.batch_size=12", "--data.eval_ks=[1, 10, 20]"]
TINY_RL = ["--model.init_args.full_ranking=false"]


def tiny_config(tmp_path: Path, name: str, ckpt_dir: Path | None = None, every_n_steps: int = 1000, confidence: str = "batch_max") -> Path:
    """A shipped config with its checkpoint schedule and confidence formula adjusted for a test."""
    spec = method_config(ROOT / "configs" / name)
    for callback in spec["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint") and "monitor" not in callback.get("init_args", {}):
            callback["init_args"] = {"every_n_train_steps": every_n_steps, "save_last": True, "dirpath": str(ckpt_dir or tmp_path / "ckpt")}
    spec["model"]["init_args"]["target_every_n_steps"] = 5
    if "confidence_formula" in spec["model"]["init_args"]:
        spec["model"]["init_args"]["confidence_formula"] = confidence
    path = tmp_path / f"tiny_{name}"
    path.write_text(yaml.safe_dump(spec))
    return path


def fit(tmp_path: Path, config: Path, *extra: str):
    """Fits a config in-process on tiny synthetic data with no logger; returns the CLI."""
    args = ["fit", "--config", str(config), "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--data.cache_dir={tmp_path.parent / 'cache'}",
            f"--trainer.default_root_dir={tmp_path}", *TINY_DATA, *TINY_RL, *extra]
    return make_cli(args)


def test_teacher_then_student_fit_end_to_end(tmp_path: Path) -> None:
    teacher = fit(tmp_path / "t", tiny_config(tmp_path, "drlrec_teacher.yaml", tmp_path / "tckpt"), "--trainer.max_epochs=1")
    assert isinstance(teacher.model, DQN) and teacher.model.double and teacher.model.online.encoder.dim == 64
    ckpt = tmp_path / "tckpt" / "last.ckpt"
    assert ckpt.exists()
    config = tiny_config(tmp_path, "drlrec_student.yaml")
    cli = fit(tmp_path / "s", config, "--trainer.max_epochs=1", f"--model.init_args.teacher_ckpt={ckpt}",
              "--model.init_args.num_candidates=50", "--model.init_args.top_k=5")
    model = cli.model
    assert isinstance(model, DRLRecStudent) and not model.co_train
    for name, value in model.teacher.state_dict().items():  # the frozen teacher is the checkpoint's, unchanged
        assert torch.equal(value, teacher.model.online.state_dict()[name])
    metrics = cli.trainer.callback_metrics
    for key in ("distill/kl", "distill/hint", "distill/filtered_size", "distill/confidence_mean", "train/loss_rl"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    # at most top-k of each network; fewer than k when the explored set (drawn with replacement) repeats an item
    assert 1 <= metrics["distill/filtered_size"] <= 10
    assert 0 <= metrics["distill/confidence_mean"] <= 1
    stats = next(c for c in cli.trainer.callbacks if isinstance(c, ModelStatsLogger)).stats
    assert stats["model/params"] == num_parameters(model.online) < stats["model/teacher_params"]
    assert stats["model/latency_ms"] > 0 and stats["model/param_ratio"] < 0.5
    assert 0 <= model.last_metrics["val/auc"] <= 1

    # the student's checkpoint holds no frozen teacher: testing it needs no teacher file
    student_ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert not any(k.startswith("teacher") for k in torch.load(student_ckpt, weights_only=False)["state_dict"])
    ckpt.unlink()
    tested = make_cli(["test", "--config", str(config), "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                       f"--data.cache_dir={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path / 'test'}",
                       f"--model.init_args.teacher_ckpt={ckpt}", f"--ckpt_path={student_ckpt}", *TINY_DATA, *TINY_RL])
    assert tested.model.teacher is None
    assert 0 <= tested.model.last_metrics["test/auc"] <= 1


def random_teacher_for_tiny_data(tmp_path: Path) -> Path:
    """A random DQN teacher (widths 16) sized for TINY_DATA's catalogue, saved like a Lightning checkpoint."""
    from datamodules import RecDataModule

    options = dict(arg[len("--data.") :].split("=", 1) for arg in TINY_DATA)
    data = RecDataModule(**{k: yaml.safe_load(v) for k, v in options.items()}, cache_dir=str(tmp_path / "cache"))
    teacher = DQN(num_items=data.num_items, num_users=data.num_users, history_len=data.history_len, double=True, encoder=EncoderConfig(dim=16), seed=3)
    path = tmp_path / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["frozen", "co_trained"])
def test_student_resumes_exactly_from_a_mid_epoch_checkpoint(tmp_path: Path, teacher: str) -> None:
    common = ["--trainer.max_epochs=2", "--model.init_args.num_candidates=40", "--model.init_args.top_k=4", "--model.init_args.teacher_encoder.dim=16"]
    if teacher == "frozen":
        common.append(f"--model.init_args.teacher_ckpt={random_teacher_for_tiny_data(tmp_path)}")
    for run in "abc":
        (tmp_path / run).mkdir()
    full = fit(tmp_path / "a", tiny_config(tmp_path / "a", "drlrec_student.yaml", confidence="exp"), *common)
    ckpt_dir = tmp_path / "ckpt"
    interrupted = fit(tmp_path / "b", tiny_config(tmp_path / "b", "drlrec_student.yaml", ckpt_dir, every_n_steps=7, confidence="exp"),
                      *common, "--trainer.max_steps=10")
    assert interrupted.trainer.global_step == 10
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("teacher.") for k in saved) == (teacher == "co_trained")
    resumed = fit(tmp_path / "c", tiny_config(tmp_path / "c", "drlrec_student.yaml", confidence="exp"), *common,
                  f"--ckpt_path={ckpt_dir / 'last.ckpt'}")
    assert resumed.trainer.global_step == full.trainer.global_step
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.model.last_metrics == full.model.last_metrics
    assert int(full.model.confidence_batches) == 2 * 11  # exp: the running sigma^2 (in the state dict, compared above) saw every step
