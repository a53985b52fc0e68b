"""DADRL / A2C-F / A2C-D (`lit_rec.modules.{dadrl,a2c}`, on `actor_critic.ActorCriticBase`): a fresh cohort reproduces synchronous A2C, privacy of the user vectors, fits, resume, DDP."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_rec.networks import EncoderConfig
from lit_rec.cli import make_cli, method_config
from lit_rec.federated import ClockArrivals, FederatedStats, Server, ServerStep
from lit_rec.federated.gradients import client_rows, client_shares, per_client_gradients, send_per_version, write_flat_gradient
from lit_rec.functional.a2c import window_a2c_loss
from lit_rec.functional.next_item import full_catalogue
from lit_rec.modules.a2c import A2CD, A2CF
from lit_rec.modules.dadrl import DADRL

ROOT = Path(__file__).resolve().parents[3]
TINY_DATA = [
    "--data.synthetic_users=60", "--data.synthetic_items=60", "--data.synthetic_events_per_user=12", "--data.batch_size=16",
    "--data.history_len=5", "--data.eval_ks=[1,10,20]",
]
TINY_MODEL = ["--model.init_args.encoder.dim=16"]
CLOCK = ["--model.init_args.arrival=clock", "--model.init_args.clock.kind=lognormal", "--model.init_args.clock.sigma=1.5",
         "--model.init_args.clock.jitter=exponential"]
TINY_SERVER = {"dadrl": ["--model.init_args.max_staleness=6"]}  # the synchronous methods keep the latest version only


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads only oversubscribe (PITFALLS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(tmp_path: Path, name: str, every_n_train_steps: int = 100) -> Path:
    """A copy of a shipped config whose periodic checkpoints go to `tmp_path/ckpt` every `every_n_train_steps` steps."""
    config = method_config(ROOT / "configs" / f"{name}.yaml")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint") and "monitor" not in callback["init_args"]:
            callback["init_args"].update(every_n_train_steps=every_n_train_steps, dirpath=str(tmp_path / "ckpt"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(tmp_path: Path, *extra: str, name: str = "dadrl", every_n_train_steps: int = 100, run: bool = True):
    """Fits a tiny model in-process with no logger; returns the CLI."""
    args = [
        "--config", str(_config(tmp_path, name, every_n_train_steps)), "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--data.cache_dir={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path}", *TINY_DATA, *TINY_MODEL, *TINY_SERVER.get(name, []), *extra,
    ]
    return make_cli(["fit", *args] if run else args, run=run)


# ---------------------------------------------------------------------- the update rule
def _windows(n: int = 6, length: int = 5, num_items: int = 30) -> dict[str, torch.Tensor]:
    """One training window per client: histories (client 0's left-padded), targets, counted positions, rivals."""
    g = torch.Generator().manual_seed(0)
    history = torch.randint(1, num_items + 1, (n, length), generator=g)
    history[0, :3] = 0  # client 0: a user's first items (padding)
    targets = torch.cat([history[:, 1:], torch.randint(1, num_items + 1, (n, 1), generator=g)], dim=1)
    counted = torch.ones(n, length, dtype=torch.bool)
    counted[1, :3] = False  # client 1 replays only its last two events (the rest were trained before)
    return {
        "history": history,
        "targets": targets,
        "mask": counted & (history > 0),
        "rivals": torch.randint(0, num_items, (n, length, 3), generator=g),
        "negatives": torch.zeros(0, dtype=torch.long),
    }


def _module(**overrides) -> DADRL:
    args = dict(num_items=30, num_users=6, history_len=5, encoder=EncoderConfig(dim=16, dropout=0.0))
    return DADRL(**{**args, **overrides})


def _apply(server: Server, parameters: list, optimizer: torch.optim.Optimizer | None = None) -> tuple[ServerStep, list]:
    """The module's side of a server step: the step's gradient into `.grad`, an optimiser step (if given), publish."""
    step = server.step()
    write_flat_gradient(parameters, step.gradient)
    grads = [p.grad.clone() for p in parameters]
    if optimizer is not None:
        optimizer.step()
    if step.gradient is not None:
        server.publish()
    return step, grads


@pytest.mark.parametrize("aggregation", ["events", "clients"])
def test_a_fresh_cohort_with_constant_weights_reproduces_a_synchronous_a2c_update(aggregation):
    """events: the pooled mean over every trained position; clients: the mean of the clients' mean losses."""
    module = _module(weighting="constant", personalization=False, clip_norm=1e9, aggregation=aggregation)
    module.double()  # float64: the two paths agree to rounding, and SGD shows the update itself
    reference = copy.deepcopy(module.policy)
    data = _windows()
    with sdpa_kernel(SDPBackend.MATH):
        # synchronous A2C: the mean of the clients' (per-position mean) losses, one backward pass, one optimiser step
        ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
        query, values = reference(data["history"])
        columns = full_catalogue(query, reference.net.encoder.item_embedding.weight, data["targets"])
        log_probs = F.log_softmax(columns.logits(), dim=-1)
        loss, parts = window_a2c_loss(log_probs.gather(-1, columns.target.unsqueeze(-1)).squeeze(-1), values, data["mask"], module.gamma, module.ce_weight,
                                      module.pg_weight, module.value_coef, module.entropy_coef)
        assert parts["count"].tolist() == [2, 2, 5, 5, 5, 5]
        reference_loss = loss.sum() / parts["count"].sum() if aggregation == "events" else (loss / parts["count"]).mean()
        reference_loss.backward()
        ref_optimizer.step()

        # DADRL's path: per-client gradients on the stored version, staleness 0, through the server
        optimizer = torch.optim.SGD(module.policy.parameters(), lr=0.5)
        server = Server(list(module.policy.parameters()), max_staleness=3, weighting="constant")
        server.start()
        grads, _, aux = per_client_gradients(module.vmappable_window_loss, server.parameters_at(0), None, data, module.vmap_randomness)
        server.receive(grads, torch.zeros(6, dtype=torch.long), shares=client_shares(aux["count"], aggregation))
        assert _apply(server, list(module.policy.parameters()), optimizer)[0].lr_scale == 1.0
    for (name, p), q in zip(module.policy.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name
    assert torch.equal(server.parameters_at(1), server.flat_parameters())


@pytest.mark.parametrize("entropy_coef", [0.0, 0.1])
def test_the_softmax_at_counted_positions_only_gives_the_loss_and_gradients_of_every_position(entropy_coef):
    """window_loss scores the catalogue only where a window counts (short sessions: mostly padding); nothing changes."""
    module = _module(entropy_coef=entropy_coef)
    module.double()
    data, private = _windows(), torch.randn(6, 16, dtype=torch.float64)
    flat = torch.cat([p.detach().reshape(-1) for p in module.policy.parameters()])
    results = []
    with sdpa_kernel(SDPBackend.MATH):
        for loss_of in (module.window_loss, module.vmappable_window_loss):
            leaf, user = flat.clone().requires_grad_(True), private.clone().requires_grad_(True)
            loss, aux = loss_of(leaf, user, data)
            results.append((loss.detach(), aux, torch.autograd.grad(loss.sum(), [leaf, user])))
    (loss_a, aux_a, grads_a), (loss_b, aux_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-12, atol=1e-12)
    assert aux_a.keys() == aux_b.keys() and all(torch.allclose(aux_a[k].detach(), aux_b[k].detach(), rtol=1e-12, atol=1e-12) for k in aux_a)
    assert aux_a["count"].tolist() == [2, 2, 5, 5, 5, 5] and aux_a["hits"].sum() > 0
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_clients_on_different_stale_versions_get_the_gradients_of_their_own_copies():
    """One vmapped call over each client's own version equals computing each version's group apart."""
    module = _module()
    module.double()
    data = _windows()
    flat = torch.cat([p.detach().reshape(-1) for p in module.policy.parameters()])
    versions = torch.stack([flat, flat + 0.01 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(1), dtype=flat.dtype)])
    owner = torch.tensor([0, 1, 1, 0, 1, 0])
    private = torch.randn(6, 16, dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        together, private_together, _ = per_client_gradients(module.vmappable_window_loss, versions[owner], private, data, module.vmap_randomness)
        for v in (0, 1):
            rows = torch.nonzero(owner == v).squeeze(1)
            part = {k: t if k == "negatives" else t[rows] for k, t in data.items()}
            apart, private_apart, _ = per_client_gradients(module.vmappable_window_loss, versions[v], private[rows], part, module.vmap_randomness)
            assert torch.allclose(together[rows], apart, rtol=1e-9, atol=1e-12)
            assert torch.allclose(private_together[rows], private_apart, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(together[owner == 0][0], together[owner == 1][0])


@pytest.mark.parametrize("aggregation", ["events", "clients"])
def test_without_clipping_one_pass_per_stale_version_gives_the_server_step_of_per_client_gradients(aggregation):
    """clip_norm None: summing each version's clients in one backward pass changes nothing the server applies."""
    module = _module(clip_norm=None, weighting="polynomial", aggregation=aggregation)
    module.double()
    data = {k: v if k == "negatives" else v.unsqueeze(1) for k, v in _windows().items()}  # (n, local_steps=1, ...)
    version = torch.tensor([2, 1, 1, 2, 0, 2])
    private = torch.randn(6, 16, dtype=torch.float64)

    def server_after_three_steps() -> Server:
        server = Server(list(module.policy.parameters()), max_staleness=3, weighting="polynomial")
        flat = server.flat_parameters()
        for shift in (0.0, 0.01, 0.02):  # versions 0, 1, 2: distinct copies
            server.buffer.push(flat + shift * torch.randn(flat.shape, generator=torch.Generator().manual_seed(int(shift * 100)), dtype=flat.dtype))
        return server

    mine = torch.arange(6)
    parameters = list(module.policy.parameters())
    with sdpa_kernel(SDPBackend.MATH):
        grouped = server_after_three_steps()
        windows = client_rows(data, slice(None), 0)
        groups = send_per_version(grouped, module.window_loss, version, mine, windows, private, aggregation)
        step_a, grads_a = _apply(grouped, parameters)
        per_client = server_after_three_steps()
        grads, private_grads, aux = per_client_gradients(module.vmappable_window_loss, per_client.parameters_at(version), private, windows, module.vmap_randomness)
        per_client.receive(grads, version, shares=client_shares(aux["count"], aggregation))
        step_b, grads_b = _apply(per_client, parameters)
    assert len(groups) == 3  # one backward pass per distinct version
    scale_a, scale_b = step_a.lr_scale, step_b.lr_scale
    assert scale_a == pytest.approx(scale_b, rel=1e-12) and scale_a < 1.0  # staleness weights reach the step size
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for group, _, g_private in groups:
        assert torch.allclose(g_private, private_grads[group], rtol=1e-9, atol=1e-12)


def test_differential_privacy_needs_a_clip_norm_and_one_vote_per_client():
    with pytest.raises(ValueError, match="clip_norm"):
        _module(clip_norm=None, dp_noise_multiplier=1.0, arrival="poisson", aggregation="clients")
    with pytest.raises(ValueError, match="aggregation: clients"):
        _module(clip_norm=5.0, dp_noise_multiplier=1.0, arrival="poisson", aggregation="events")


class OnData(DADRL):
    """A DADRL module that reads the given data's tensors without a trainer."""

    def __init__(self, dm, **kwargs) -> None:
        super().__init__(num_items=dm.num_items, num_users=dm.num_users, history_len=dm.history_len, **kwargs)
        self._data = dm

    @property
    def tensors(self):
        return self._data.tensors


def test_each_client_replays_one_window_of_its_next_t_max_events(tmp_path):
    from datamodules import RecDataModule

    dm = RecDataModule(synthetic_users=20, synthetic_items=60, synthetic_events_per_user=12, history_len=5, eval_ks=[1, 5],
                       cache_dir=str(tmp_path / "cache"))
    module = OnData(dm, t_max=3, cohort_size=4, encoder=EncoderConfig(dim=16))
    module._build_federation()
    train, clients = dm.tensors.train, module.clients
    cohort = torch.tensor([0, 1, 2, 3])
    lengths = clients.lengths[cohort]
    clients.cursor[cohort] = torch.stack([torch.tensor(0), torch.tensor(1), lengths[2] - 2, lengths[3] - 3])
    data = client_rows(module.rollout(cohort), slice(None), 0)
    assert data["history"].shape == data["targets"].shape == data["mask"].shape == (4, 5)
    for row, client in enumerate(cohort.tolist()):
        start = int(clients.offsets[client] + clients.cursor[client])
        events = list(range(start, min(start + 3, int(clients.offsets[client] + lengths[row]))))  # at most t_max, within the episode
        last = events[-1]
        # the window ends at the last new event: its history then its item, the new events' items are the counted targets
        assert torch.equal(data["history"][row], train.history[last])
        assert torch.equal(data["targets"][row], torch.cat([train.history[last][1:], train.item[last : last + 1]]))
        # a user's first event is learned from the empty prefix (the state a user with no history gets)
        assert data["targets"][row][data["mask"][row]].tolist() == train.item[events].tolist()


# ---------------------------------------------------------------------- end to end
def _spy_on_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    sent: list[tuple] = []
    receive = Server.receive

    def spy(self: Server, *args, **kwargs):
        sent.append((args, kwargs))
        return receive(self, *args, **kwargs)

    monkeypatch.setattr(Server, "receive", spy)
    return sent


def test_dadrl_fits_on_synthetic_data_with_stale_clients_and_private_vectors_stay_on_the_clients(tmp_path, monkeypatch):
    sent = _spy_on_server(monkeypatch)
    cli = fit(tmp_path, "--trainer.max_epochs=2")
    model, trainer = cli.model, cli.trainer
    assert trainer.global_step == 2 * trainer.num_training_batches
    metrics = model.last_metrics
    assert 0.0 <= metrics["val/ctr@10"] <= 1.0 and metrics["val/ctr@1"] >= metrics["val/ctr@20"]
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/ctr", "staleness/mean", "staleness/max", "staleness/weight_mean",
                "staleness/dropped_frac", "federated/updates", "federated/clients"):
        assert key in logged, key
    assert model.server.version == trainer.global_step  # no step was empty
    # what clients send: gradients of the global parameters, a base version and counts (their events), nothing else
    num_global = sum(p.numel() for p in model.policy.parameters())
    assert sent and all(len(args) == 2 and set(kwargs) <= {"shares", "clients"} for args, kwargs in sent)
    assert all(kwargs["shares"].is_floating_point() and kwargs["shares"].shape == args[1].shape for args, kwargs in sent)
    assert all(args[0].shape[1] == num_global and args[1].dtype == torch.long for args, _ in sent)
    staleness = torch.cat([model.server.version - 1 - args[1] for args, _ in sent[-10:]])
    assert staleness.float().mean() > 0  # sessions: devices compute on old copies
    # the private vectors learned something, live in the client table only, and change the scores
    private = model.clients.private
    assert private.abs().sum() > 0
    assert not any(t.data_ptr() == private.data_ptr() for t in model.state_dict().values())
    assert not any(torch.equal(t, private) for t in model.server.state_dict()["buffer"].values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize(
    "name, extra",
    [
        ("a2c_f", []),
        ("a2c_d", []),
        ("dadrl", ["--model.init_args.arrival=exponential", "--model.init_args.stale_policy=drop",
                   "--model.init_args.max_staleness=1", "--model.init_args.weighting=hinge"]),
    ],
    ids=["a2c_f", "a2c_d", "dadrl-exponential-drop"],
)
def test_other_configurations_fit(tmp_path, name, extra):
    cli = fit(tmp_path, "--trainer.max_steps=6", "--trainer.limit_val_batches=1", *extra, name=name)
    model = cli.model
    assert cli.trainer.global_step == 6
    assert type(model) is {"a2c_f": A2CF, "a2c_d": A2CD, "dadrl": DADRL}[name.split("-")[0]]
    assert isinstance(model.federated_stats, FederatedStats)
    if name != "dadrl":
        assert model.clients.private is None
        assert float(model.federated_stats.staleness.max()) == 0
    else:
        assert cli.trainer.callback_metrics["staleness/dropped_frac"] > 0


@pytest.mark.parametrize("name", ["dadrl", "a2c_f", "a2c_d"])
def test_bf16_mixed_precision_trains_the_clients_in_fp32(tmp_path, name):
    # configs/trainer/gpu.yaml users may ask for bf16-mixed: the clients' gradients stay fp32 (on CUDA, vmap(grad)
    # under bf16 autocast fails in softmax's backward), so the parameters match a 32-bit fit exactly
    steps = ["--trainer.max_steps=3", "--trainer.limit_val_batches=0"]
    fp32 = fit(tmp_path / "fp32", *steps, name=name).model
    bf16 = fit(tmp_path / "bf16", *steps, "--trainer.precision=bf16-mixed", name=name).model
    for (key, p), q in zip(fp32.named_parameters(), bf16.parameters(), strict=True):
        assert q.dtype == torch.float32 and torch.equal(p, q), key


def test_differential_privacy_logs_the_epsilon_spent(tmp_path):
    pytest.importorskip("opacus", reason="differential privacy needs the optional extra opacus")
    cli = fit(tmp_path, "--trainer.max_steps=6", "--trainer.limit_val_batches=1", "--model.init_args.arrival=poisson",
              "--model.init_args.dp_noise_multiplier=1.0", "--model.init_args.clip_norm=5.0", "--model.init_args.aggregation=clients")
    epsilon = float(cli.trainer.callback_metrics["privacy/epsilon"])
    assert 0 < epsilon < math.inf
    assert cli.model.server.privacy.accountant.history[-1][-1] == 6  # one accounted round per server step


def test_differential_privacy_refuses_non_poisson_cohorts(tmp_path):
    with pytest.raises(ValueError, match="arrival: poisson"):
        fit(tmp_path, "--trainer.max_steps=1", "--model.init_args.dp_noise_multiplier=1.0", "--model.init_args.clip_norm=5.0",
            "--model.init_args.aggregation=clients")


@pytest.mark.parametrize("arrival", [[], CLOCK], ids=["shipped", "clock"])
def test_resume_from_a_mid_epoch_checkpoint_ends_identically(tmp_path, arrival):
    full = fit(tmp_path / "a", "--trainer.max_epochs=2", *arrival)
    steps = full.trainer.global_step
    interrupted = fit(tmp_path / "b", "--trainer.max_epochs=2", f"--trainer.max_steps={steps // 2 + 1}", *arrival,
                      every_n_train_steps=steps // 2 + 1)
    checkpoint = tmp_path / "b" / "ckpt" / "last.ckpt"
    assert checkpoint.exists() and interrupted.trainer.global_step == steps // 2 + 1
    assert 0 < interrupted.model.sim_time < full.model.sim_time
    resumed = fit(tmp_path / "c", "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}", *arrival)
    a, c = full.model, resumed.model
    assert resumed.trainer.global_step == steps
    for (name, p), q in zip(a.named_parameters(), c.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(a.clients.private, c.clients.private)
    assert torch.equal(a.clients.version, c.clients.version) and torch.equal(a.clients.cursor, c.clients.cursor)
    assert torch.equal(a.server.buffer.rows, c.server.buffer.rows) and a.server.version == c.server.version
    assert a.last_metrics == c.last_metrics
    assert a.sim_time == c.sim_time  # the same cohorts at the same simulated times
    for key, value in a.arrivals.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, c.arrivals.state_dict()[key]), key


def test_every_server_step_logs_its_simulated_time_and_every_validation_too(tmp_path):
    cli = fit(tmp_path, "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
              "--trainer.log_every_n_steps=1", *CLOCK)
    model = cli.model
    assert isinstance(model.arrivals, ClockArrivals) and model.sim_time > 0
    assert float(cli.trainer.callback_metrics["federated/sim_time"]) == pytest.approx(model.sim_time)
    assert model.federated_stats.sim_time == model.sim_time
    assert model.last_metrics["val/sim_time"] == pytest.approx(model.sim_time)  # in the row of val/ctr@k
    assert "val/ctr@10" in model.last_metrics
    shipped = fit(tmp_path / "shipped", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1").model
    assert shipped.sim_time > 0 and not shipped.arrivals.in_seconds  # exponential arrivals: their own time units
    assert "val/sim_time" not in shipped.last_metrics  # not charted against the clock's seconds


def test_a2c_d_rounds_wait_for_the_slowest_member_or_drop_it_at_the_deadline_and_a2c_f_runs_in_a_datacenter(tmp_path):
    heavy = ["--trainer.max_steps=6", "--trainer.limit_val_batches=0", "--model.init_args.clock.kind=lognormal",
             "--model.init_args.clock.sigma=2.0"]
    waiting = fit(tmp_path / "wait", *heavy, name="a2c_d").model
    late = fit(tmp_path / "late", *heavy, "--model.init_args.deadline=1.2", name="a2c_d").model
    central = fit(tmp_path / "central", *heavy, name="a2c_f").model
    assert waiting.sim_time > 6 * 1.2
    assert late.sim_time == pytest.approx(6 * 1.2)  # every round had a late member (update 1 s of delay + 0.16 s x e^(2z)): each lasted the deadline
    assert late.federated_stats.reporting < 16  # a cohort of the batch size 16, the late dropped
    work = waiting.clients.lengths.clamp_max(2 * 5).double()
    median = float(waiting.arrivals.clock.speed.median())
    assert central.sim_time <= 6 * float(work.max()) / median + 1e-9  # median speed, no delay
    assert central.sim_time < waiting.sim_time


# ---------------------------------------------------------------------- DDP
class SaveRankParameters(L.Callback):
    """Writes each rank's flat global parameters and private table at the end of training."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.policy.parameters()])
        torch.save({"flat": flat, "private": pl_module.clients.private, "step": trainer.global_step, "sim_time": pl_module.sim_time},
                   Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("arrival", [[], CLOCK], ids=["shipped", "clock"])
def test_ddp_ranks_hold_equal_parameters(tmp_path, arrival):
    cli = fit(tmp_path, "--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu",
              "--trainer.max_steps=4", "--trainer.limit_val_batches=0", *arrival, run=False)
    cli.trainer.callbacks.append(SaveRankParameters(str(tmp_path)))
    initial = torch.cat([p.detach().reshape(-1) for p in cli.model.policy.parameters()])
    # spawn pickles the trainer's tensors; the default file-descriptor sharing fails here
    # ("unable to resize file <filename not specified>") and the parent then waits forever
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["step"] == rank1["step"] == 4
    assert not torch.equal(rank0["flat"], initial)
    assert torch.equal(rank0["flat"], rank1["flat"])
    assert rank0["sim_time"] == rank1["sim_time"] > 0  # the same cohorts at the same simulated times
    assert torch.equal(rank0["private"], rank1["private"]) and rank0["private"].abs().sum() > 0
