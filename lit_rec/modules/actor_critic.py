"""The shared base of DADRL, A2C-F and A2C-D: the actor-critic network, one client's window loss, rollouts, scoring, checkpoints.

Each method's own file (`dadrl.py`, `a2c.py`) holds its `training_step`: who reports, which version
each client computes with, how the clients' gradients reach the server. This base gives them:
- `PolicyValue`, the global actor-critic (plus an optional private user vector on the actor's query);
- `window_loss`, one client's loss on a flat parameter version (`functional_call`), the math in
  `lit_rec.functional.a2c.window_a2c_loss`;
- `rollout`, each cohort client's next windows of `t_max` logged events (`lit_rec.envs.replay_windows`);
- the federation (`lit_rec.federated`: clients, arrival model, versioned server), built on the module's
  device, and `apply_server_step`, which applies the server's `ServerStep` with the Lightning optimizer;
- scoring for evaluation and the simulation's checkpoint state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_rec.envs import replay_windows
from lit_rec.federated import ArrivalModel, Clients, DeviceClock, DeviceClockConfig, FederatedStats, FlatParameters, Server, ServerStep, Windows, make_arrivals
from lit_rec.federated.gradients import write_flat_gradient
from lit_rec.functional.a2c import window_a2c_loss
from lit_rec.functional.next_item import TrainingSoftmax, cross_entropy, full_catalogue, greedy_hits, sampled_catalogue
from lit_rec.modules.base import RecModule
from lit_rec.networks import ActorCritic, ActorHead, CriticHead, EncoderConfig
from lit_rec.sampling import SeededGenerator


class PolicyValue(nn.Module):
    """`ActorCritic` plus an optional private user vector added to the actor's query (a per-user score of every item)."""

    def __init__(self, net: ActorCritic) -> None:
        super().__init__()
        self.net = net

    def forward(self, history: Tensor, user_vector: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`history (n, L)` windows, `user_vector (n, D)` -> `(actor queries after every prefix (n, L, D), values (n, L))`."""
        states = self.net.encoder.sequence(history)
        query = self.net.actor.query(states)
        if user_vector is not None:
            query = query + user_vector.unsqueeze(1)
        return query, self.net.critic(states)

    def score(self, history: Tensor, candidates: Tensor, user_vector: Tensor | None = None) -> Tensor:
        """Actor logits `(B, C)` of `history (B, L)` and `candidates (B, C)`."""
        logits = self.net.score(history, candidates)
        if user_vector is not None:
            logits = logits + torch.einsum("bcd,bd->bc", self.net.encoder.item_vectors(candidates), user_vector)
        return logits

    def score_all(self, history: Tensor, item_vectors: Tensor, user_vector: Tensor | None = None) -> Tensor:
        """Actor logits of every item id `(B, num_items + 1)`, given every item's vector `(num_items + 1, D)`."""
        logits = self.net.actor.score_all(self.net.encoder(history), item_vectors)
        if user_vector is not None:
            logits = logits + user_vector @ item_vectors.T
        return logits


class ActorCriticBase(RecModule):
    """Federated actor-critic on the shared encoder: one `training_step` is one server step (the method's file says which)."""

    # what the synchronous methods fix and a subclass's arguments may set (A2C-D: local_steps; DADRL: the rest)
    local_steps = 1  # windows each client trains per round
    personalization, private_lr = False, 0.0  # private user vectors on the clients, and their local step size
    arrival_kind, concurrency, delay_spread = "synchronous", 0, 1.0  # the arrival model (`make_arrivals`)
    deadline: float | None = None  # synchronous rounds drop members slower than this (simulated seconds; A2C-D)

    def __init__(
        self,
        t_max: int | None = None,
        gamma: float = 0.5,
        ce_weight: float = 1.0,
        pg_weight: float = 1.0,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        clip_norm: float | None = 5.0,
        lr: float = 1e-3,
        server_optimizer: Literal["adam", "sgd"] = "adam",
        adam_betas: tuple[float, float] = (0.9, 0.999),
        cohort_size: int | None = None,
        encoder: EncoderConfig = EncoderConfig(),
        clock: DeviceClockConfig = DeviceClockConfig(),
        softmax: Literal["full", "sampled"] = "full",
        sampled_negatives: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            t_max: events a client replays per rollout, trained as one window (None: `history_len`, at most that).
            gamma: discount factor of the critic's returns.
            ce_weight: weight of the actor's plain cross-entropy of the logged item (the supervised signal).
            pg_weight: weight of the advantage in the actor's cross-entropy weight (0: supervised actor only).
            value_coef: weight of the value loss.
            entropy_coef: weight of the entropy bonus.
            clip_norm: L2 bound of each client's gradient (A2C-F: of the pooled gradient); None: no clipping.
            lr: server learning rate (DADRL: before the staleness multiplier).
            server_optimizer: `adam`, or `sgd` (with lr 1 and A2C-D: plain FedAvg).
            adam_betas: the server's Adam betas.
            cohort_size: clients per server step; None: the data's batch size / local_steps, so an
                epoch is about one pass over the train events.
            encoder: the SASRec encoder's shape (`lit_rec.networks.EncoderConfig`).
            clock: the simulated devices' speeds and network delays (`lit_rec.federated.DeviceClockConfig`):
                how long each update takes in simulated seconds (`federated/sim_time`, `val/sim_time`).
            softmax: the actor's columns: the `full` catalogue, or a `sampled` logQ-corrected softmax (one sample per server step).
            sampled_negatives: items per server step of the sampled softmax.
            seed: seed of the initialisation, the arrival model and the samplers.
        """
        super().__init__(**kwargs)
        encoder = EncoderConfig.of(encoder)
        self.clock_config = DeviceClockConfig.of(clock)
        t_max = self.history_len if t_max is None else t_max
        if not 1 <= t_max <= self.history_len:
            raise ValueError(f"t_max must be in 1..history_len={self.history_len} (one window per rollout), got {t_max}")
        self.save_hyperparameters(ignore=["num_items", "num_users", "eval_ks", "full_ranking", "eval_chunk_size"], logger=False)
        self.automatic_optimization = False
        self.t_max, self.gamma, self.ce_weight, self.pg_weight = t_max, gamma, ce_weight, pg_weight
        self.value_coef, self.entropy_coef, self.clip_norm = value_coef, entropy_coef, clip_norm
        self.lr, self.server_optimizer, self.adam_betas, self.cohort_size = lr, server_optimizer, tuple(adam_betas), cohort_size
        self.encoder_config, self.seed = encoder, seed
        self.training_softmax = TrainingSoftmax(softmax, sampled_negatives)
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on `seed` only
            torch.manual_seed(seed)
            network = ActorCritic(encoder.build(self.num_items, self.history_len), ActorHead(encoder.dim), CriticHead(encoder.dim))
            self.policy = PolicyValue(network)
        self.flat = FlatParameters(self.policy)
        self.rng = SeededGenerator(seed + 1)
        self.clients: Clients | None = None
        self.arrivals: ArrivalModel | None = None
        self.server: Server | None = None
        self._pending_state: dict[str, Any] | None = None
        self._log_q: Tensor | None = None  # the sampled softmax's correction on the module's device
        self.federated_stats: FederatedStats | None = None

    # ------------------------------------------------------------------ the federation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The server's optimiser over the global actor-critic."""
        if self.server_optimizer == "sgd":
            return torch.optim.SGD(self.policy.parameters(), lr=self.lr)
        return torch.optim.Adam(self.policy.parameters(), lr=self.lr, betas=self.adam_betas)

    def make_server(self, arrivals: ArrivalModel, clients: Clients) -> Server:
        """The versioned server of a synchronous method: every client computes on the latest version."""
        return Server(list(self.policy.parameters()), max_staleness=0)

    def make_clock(self, num_clients: int) -> DeviceClock:
        """The simulated devices (every method draws the same ones from the same seed)."""
        return DeviceClock(self.clock_config, num_clients, self.seed + 4)

    def _build_federation(self) -> None:
        """Clients, arrival model and server on the module's device (once; restores a pending checkpoint)."""
        if self.clients is not None:
            return
        tensors, device = self.tensors, self.device
        self.clients = Clients(tensors.train_offsets.to(device), self.encoder_config.dim if self.personalization else 0, self.private_lr)
        self._train_history, self._train_item = tensors.train.history.to(device), tensors.train.item.to(device)
        self.training_softmax.fit(tensors.item_popularity)
        self._log_q = self.training_softmax.log_q(device)
        cohort = self.cohort_size
        if cohort is None:
            batch = getattr(self.trainer.datamodule, "batch_size", 256)
            cohort = max(1, batch // self.local_steps)
        lengths = self.clients.lengths.cpu()
        work = lengths.clamp_max(self.local_steps * self.t_max)  # events a client replays per update
        self.arrivals = make_arrivals(self.arrival_kind, lengths, cohort, self.seed + 2, self.concurrency, self.delay_spread,
                                      self.make_clock(lengths.numel()), work, self.deadline)
        self.server = self.make_server(self.arrivals, self.clients)
        if self._pending_state is not None:
            self.clients.load_state_dict(self._pending_state["clients"])
            self.arrivals.load_state_dict(self._pending_state["arrivals"])
            self.server.load_state_dict(self._pending_state["server"])
            self._pending_state = None
        self.server.start()

    def on_fit_start(self) -> None:
        """Builds the federation after the model reached its device (and DDP synced its parameters); scoring needs its private vectors."""
        self._build_federation()

    on_validation_start = on_test_start = on_predict_start = on_fit_start

    # ------------------------------------------------------------------ rollouts and one client's loss
    def rollout(self, cohort: Tensor) -> Windows:
        """Every cohort client's next `local_steps` windows of `t_max` new events each: `(n, local_steps, ...)`."""
        assert self.clients is not None
        n, g = cohort.numel(), self.rng.generator
        index, valid = self.clients.events(cohort, self.local_steps * self.t_max)
        shape = (n, self.local_steps, self.t_max)
        history, targets, mask = replay_windows(self._train_history, self._train_item, index.view(shape), valid.view(shape))
        data = {"history": history, "targets": targets, "mask": mask}
        rivals = torch.randint(0, self.num_items, (*history.shape, max(1, self.train_negatives)), generator=g, device=g.device)
        data["rivals"] = rivals.to(self.device)
        if self.training_softmax.softmax == "sampled":
            data["negatives"] = self.training_softmax.negatives(g).to(self.device)
            data["rivals"] = torch.randint(0, self.training_softmax.sampled_negatives + 1, data["rivals"].shape, generator=g, device=g.device).to(self.device)
        else:
            data["negatives"] = torch.zeros(0, dtype=torch.long, device=self.device)
        return data

    def window_loss(self, flat: Tensor, user_vector: Tensor | None, data: Windows) -> tuple[Tensor, dict[str, Tensor]]:
        """Summed loss over the counted positions of windows `data["history"] (n, L)` with one flat version; aux per window.

        The actor's softmax is computed only at the positions that count (`mask`): on logs of short
        sessions most of a window is padding, and the catalogue's logits are the step's cost.
        Not vmappable (the positions' number depends on the data): `vmappable_window_loss` is."""
        return self._window_loss(flat, user_vector, data, counted_only=True)

    def vmappable_window_loss(self, flat: Tensor, user_vector: Tensor | None, data: Windows) -> tuple[Tensor, dict[str, Tensor]]:
        """`window_loss` with the softmax at every position (fixed shapes, so `vmap` can batch it over clients)."""
        return self._window_loss(flat, user_vector, data, counted_only=False)

    def _window_loss(self, flat: Tensor, user_vector: Tensor | None, data: Windows, counted_only: bool) -> tuple[Tensor, dict[str, Tensor]]:
        params = self.flat.views(flat)
        query, values = functional_call(self.policy, params, (data["history"], user_vector))
        item_table = params["net.encoder.item_embedding.weight"]
        mask, targets, rivals = data["mask"], data["targets"], data["rivals"]
        if counted_only:  # (P, D) states that count, P <= n * L
            query, targets, rivals = query[mask], targets[mask], rivals[mask]
        if self.training_softmax.softmax == "full":
            columns = full_catalogue(query, item_table, targets)
        else:
            assert self._log_q is not None
            columns = sampled_catalogue(query, item_table, targets, data["negatives"], self._log_q)
        logged = -cross_entropy(columns)  # the fused log-softmax: no (n, L, C) log-probability tensor kept
        entropy = None
        if self.entropy_coef > 0:
            log_probs = F.log_softmax(columns.logits(), dim=-1)
            entropy = -(log_probs.exp() * log_probs.masked_fill(log_probs == float("-inf"), 0.0)).sum(-1)
        with torch.no_grad():
            hits = greedy_hits(columns.masked_scores(), columns.target, rivals)
        if counted_only:  # back to (n, L); the positions that do not count are selected out by the loss
            logged, hits = _at_positions(logged, mask), _at_positions(hits, mask)
            entropy = _at_positions(entropy, mask) if entropy is not None else None
        loss, parts = window_a2c_loss(
            logged, values, mask, self.gamma, self.ce_weight, self.pg_weight, self.value_coef, self.entropy_coef, entropy
        )
        return loss, {**parts, "loss": loss, "hits": (hits & mask).float().sum(-1)}

    @property
    def vmap_randomness(self) -> Literal["different", "error"]:
        """Dropout draws differ per client under `vmap` (training with dropout); otherwise randomness is an error."""
        return "different" if self.encoder_config.dropout > 0 and self.training else "error"

    @contextmanager
    def client_math(self) -> Iterator[None]:
        """Where clients compute: the MATH SDPA kernel (vmap rules) and fp32 under any `precision`.

        Under bf16 autocast on CUDA, vmap(grad) fails in softmax's backward, and a bf16 gradient would
        change what the server applies (docs/ARCHITECTURE.md, GPU).
        """
        with sdpa_kernel(SDPBackend.MATH), torch.autocast(self.device.type, enabled=False):
            yield

    # ------------------------------------------------------------------ the server step and the round's end
    def apply_server_step(self, step: ServerStep) -> None:
        """Applies the server's step with the Lightning optimizer (lr times `lr_scale`; global_step advances) and publishes it."""
        assert self.server is not None
        write_flat_gradient(list(self.policy.parameters()), step.gradient)
        optimizer = self.optimizers()
        groups = optimizer.optimizer.param_groups
        for group in groups:
            group["lr"] = self.lr * step.lr_scale
        optimizer.step()
        for group in groups:
            group["lr"] = self.lr
        optimizer.zero_grad(set_to_none=True)
        if step.gradient is not None:
            self.server.publish()

    def end_round(self, cohort: Tensor, keep: Tensor, downloading: Tensor, stats: FederatedStats, losses: list[dict[str, Tensor]]) -> None:
        """The round's bookkeeping: kept clients move on, downloads, `federated_stats`, and `train/loss`, `train/ctr`."""
        assert self.clients is not None and self.server is not None
        self.clients.advance(cohort[keep], self.local_steps * self.t_max)
        self.clients.download(downloading.to(self.device), self.server.version)
        self.federated_stats = stats
        self.log_step("federated/sim_time", stats.sim_time, mean=False)
        if not losses:
            return
        loss, hits, counts = (torch.cat([aux[key].reshape(-1) for aux in losses]) for key in ("loss", "hits", "count"))
        if int(counts.sum()) > 0:
            self.log_step("train/loss", loss.sum() / counts.sum(), prog_bar=True)
            self.log_train_ctr(hits.sum() / counts.sum(), int(counts.sum()))

    @property
    def sim_time(self) -> float:
        """Simulated seconds of federated training so far (the arrival model's clock; 0 before it exists)."""
        return self.arrivals.now if self.arrivals is not None else 0.0

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """`val/sim_time` beside every validation's `val/ctr@k` (one logged row: W&B charts one against the other),
        when the arrival model is timed by the device clock (its seconds; the older models' units are not comparable)."""
        timed = self.arrivals is not None and self.arrivals.in_seconds
        return {"val/sim_time": self.sim_time} if stage == "val" and timed else {}

    # ------------------------------------------------------------------ scoring
    def _user_vector(self, batch: dict[str, Tensor]) -> Tensor | None:
        if self.clients is None or self.clients.private is None:
            return None
        return self.clients.private[batch["user"].to(self.clients.private.device)]

    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """The global actor's logits plus the user's private score (personalised evaluation on the device)."""
        return self.policy.score(batch["history"], candidates, self._user_vector(batch))

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits of every item `(B, num_items + 1)` in one matrix product."""
        vectors = self.item_vectors_of(self.policy.net.encoder)
        return self.policy.score_all(batch["history"], vectors, self._user_vector(batch))

    def score_candidates_and_all(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the candidates `(B, C)` and of every item `(B, num_items + 1)`, the states encoded once."""
        return self.scores_from_all_items(batch, candidates)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random state (super) plus the simulation: clients, arrival model, version ring buffer."""
        super().on_save_checkpoint(checkpoint)
        if self.clients is not None and self.arrivals is not None and self.server is not None:
            checkpoint["federated"] = {"clients": self.clients.state_dict(), "arrivals": self.arrivals.state_dict(), "server": self.server.state_dict()}
        elif self._pending_state is not None:
            checkpoint["federated"] = self._pending_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores random state now and the simulation when it is built (on the module's device)."""
        super().on_load_checkpoint(checkpoint)
        self._pending_state = checkpoint.get("federated")
        self.clients = self.arrivals = self.server = None


def _at_positions(values: Tensor, mask: Tensor) -> Tensor:
    """`values (P,)` of the positions where `mask (n, L)` holds, as `(n, L)` with zeros (False) elsewhere."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)
