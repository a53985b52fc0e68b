"""Actor-critic recommenders in one code path: DADRL (asynchronous federated A2C), A2C-F and A2C-D.

One `training_step` is one server step (the train DataLoader only paces the loop; its batches
are ignored, so an epoch has as many server steps as the data has train batches):
1. the arrival model names the clients reporting now (the cohort); each computes with the
   version it downloaded earlier: Δ = server version - its version. A version that has left
   the ring buffer (Δ > max_staleness) is dropped, clamped to the oldest or refreshed;
2. each client replays the next `t_max` events of its own episode (the logged positive plus
   the data's `train_negatives` items outside its train items; reward 1 for choosing the logged one), with
   its stale copy: `functional_call` on the stored flat version, one batched call per distinct
   version (vmapped over the clients that hold it), no loop over clients or events;
3. the A2C loss (n-step returns, advantage, value loss, entropy bonus; `lit_rec.functional.a2c`)
   gives each client's gradient, clipped to `clip_norm`; private user vectors take a local step;
4. the server (`lit_rec.federated.Server`) gets only `(gradients, base_version)`, weights them by
   s(Δ) (relative weights, and their mean multiplies the step size), and steps the optimiser
   through the Lightning optimizer, so `global_step` advances even when every update was dropped;
5. clients that the arrival model says download the new version do so.

Modes (the same steps with different settings):
- `dadrl`: per-client gradients, `sessions` or `exponential` arrivals, staleness weights,
  private user vectors (added to the actor's logits) on by default.
- `a2c_f`: centralised synchronous A2C: a cohort on the latest version, one pooled gradient
  (mean of the clients' losses) clipped as a whole; no private parameters.
- `a2c_d`: synchronous FedAvg: each client starts from the global model, takes `local_steps`
  local SGD steps (`client_lr`) on its own consecutive `t_max`-event chunks, and sends its model
  change; the server averages them (server `sgd` with lr 1 gives plain FedAvg).

DDP: cohorts are drawn identically on every rank (replicated, seeded simulation state); rank r
computes the gradients of cohort positions r, r + world, ...; the server all-reduces the sums, so
every rank takes the same step. The clients' private-vector changes are all-reduced too, so the
replicated client table stays identical (it is the simulator's memory, never the server's).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_rec.envs import ExcludedItemSampler
from lit_rec.federated import ArrivalModel, Clients, GaussianMechanism, Server, make_arrivals
from lit_rec.functional.a2c import a2c_loss, clip_rows, expected_a2c_loss, clip_scale, gumbel_actions, nstep_returns, standard_gumbel
from lit_rec.functional.staleness import resolve_stale_versions, staleness_weight
from lit_rec.modules.base import RecModule
from lit_rec.networks import ActorCritic, ActorHead, CriticHead, SeqEncoder
from lit_rec.sampling import SeededGenerator

MODES = ("dadrl", "a2c_f", "a2c_d")
EMBEDDING = "net.encoder.item_embedding.weight"  # name of the item table inside `PolicyValue`


class PolicyValue(nn.Module):
    """`ActorCritic` plus an optional private user vector whose dot product with each item vector is added to the logits."""

    def __init__(self, net: ActorCritic) -> None:
        super().__init__()
        self.net = net

    def forward(self, history: Tensor, candidates: Tensor, user_vector: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`history (n, T+1, L)`, `candidates (n, T, C)`, `user_vector (n, d)` -> `(logits (n, T, C), values (n, T+1))`."""
        n, t1, length = history.shape
        t, c = candidates.shape[1:]
        assert t1 == t + 1, f"history needs T+1 = {t + 1} states (the last one bootstraps), got {t1}"
        state = self.net.encoder(history.reshape(n * t1, length)).view(n, t1, -1)
        items = self.net.encoder.item_vectors(candidates.reshape(n * t, c)).view(n, t, c, -1)
        logits = self.net.actor(state[:, :t].reshape(n * t, -1), items.view(n * t, c, -1)).view(n, t, c)
        if user_vector is not None:
            logits = logits + torch.einsum("ntcd,nd->ntc", items, user_vector)
        return logits, self.net.critic(state.reshape(n * t1, -1)).view(n, t1)

    def score(self, history: Tensor, candidates: Tensor, user_vector: Tensor | None = None) -> Tensor:
        """Actor logits `(B, C)` of `history (B, L)` and `candidates (B, C)`."""
        logits = self.net.score(history, candidates)
        if user_vector is not None:
            logits = logits + torch.einsum("bcd,bd->bc", self.net.encoder.item_vectors(candidates), user_vector)
        return logits

    def score_all(self, history: Tensor, item_vectors: Tensor, user_vector: Tensor | None = None) -> Tensor:
        """Actor logits of every item id `(B, num_items + 1)`, given every item's vector `(num_items + 1, H)`."""
        logits = self.net.actor.score_all(self.net.encoder(history), item_vectors)
        if user_vector is not None:
            logits = logits + user_vector @ item_vectors.T
        return logits


def _batch_hidden_like_input(module: nn.Module, args: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """GRUCell pre-hook: gives the hidden state the input's batch dims so the encoder runs under `vmap`."""
    x, h = args
    return x, h + torch.zeros_like(x[..., :1])


class ActorCriticRec(RecModule):
    """DADRL (Shi et al. RecSys 2021, our reading: DESIGN.md section 8), A2C-F and A2C-D on the shared encoder."""

    def __init__(
        self,
        mode: Literal["dadrl", "a2c_f", "a2c_d"] = "dadrl",
        t_max: int = 5,
        gamma: float = 0.9,
        policy_gradient: Literal["sampled", "expected"] = "sampled",
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        clip_norm: float = 5.0,
        lr: float = 1e-3,
        server_optimizer: Literal["adam", "sgd"] = "adam",
        cohort_size: int | None = None,
        personalization: bool | None = None,
        private_lr: float = 0.1,
        arrival: Literal["sessions", "exponential", "synchronous", "poisson"] | None = None,
        concurrency: int = 0,
        delay_spread: float = 1.0,
        weighting: Literal["constant", "polynomial", "hinge", "fedbuff"] = "polynomial",
        weight_a: float = 0.5,
        weight_b: float = 4.0,
        max_staleness: int = 32,
        stale_policy: Literal["drop", "clamp", "refresh"] = "clamp",
        local_steps: int = 1,
        client_lr: float = 0.05,
        client_chunk: int = 64,
        dp_noise_multiplier: float = 0.0,
        dp_delta: float = 1e-5,
        history_len: int = 10,
        dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 2,
        hint_dim: int = 32,
        dropout: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Args:
        mode: `dadrl` (asynchronous, staleness-weighted), `a2c_f` (centralised) or `a2c_d` (FedAvg).
        t_max: events a client replays per rollout (n-step horizon).
        gamma: discount factor.
        policy_gradient: `sampled`: the classic A2C term on the action the client sampled;
            `expected`: summed over every candidate with its known replay reward (Mean
            Actor-Critic; the same expectation without the sampling noise).
        value_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus.
        clip_norm: clip each client's gradient (a2c_f: the pooled gradient) to this L2 norm.
        lr: server learning rate (before the staleness multiplier).
        server_optimizer: `adam`, or `sgd` (with lr 1 and a2c_d: plain FedAvg).
        cohort_size: clients per server step; None: the data's batch size / (t_max * local_steps),
            so an epoch is about one pass over the train events.
        personalization: private user vectors on the clients; None: on for dadrl, off otherwise.
        private_lr: step size of the clients' local SGD on their private vectors.
        arrival: `sessions`, `exponential`, `synchronous` or `poisson` (each client independently
            with probability cohort_size / clients: what differential privacy needs); None: sessions for dadrl
            (a2c_f and a2c_d are synchronous).
        concurrency: devices training at once with exponential arrivals (0: 4 x cohort_size).
        delay_spread: log-normal spread of the devices' mean delays (exponential arrivals).
        weighting: staleness weight s(Δ): constant, polynomial (1+Δ)^-a, hinge, fedbuff 1/sqrt(1+Δ).
        weight_a: a of the polynomial and hinge weights.
        weight_b: b of the hinge weight.
        max_staleness: versions kept by the server (ring buffer of max_staleness + 1).
        stale_policy: a client whose version left the buffer is `drop`ped, `clamp`ed to the oldest
            stored version, or `refresh`ed to the latest.
        local_steps: local steps per client and round (a2c_d only; others use 1).
        client_lr: local SGD step size (a2c_d).
        client_chunk: clients whose gradients are held at once (bounds memory to chunk x model).
        dp_noise_multiplier: > 0 turns on user-level differential privacy (dadrl with `poisson`
            arrivals): each client's update is clipped to `clip_norm`, the server adds Gaussian
            noise of std `dp_noise_multiplier * clip_norm` to their sum, and opacus's RDP
            accountant logs `privacy/epsilon` at `dp_delta`.
        dp_delta: the δ at which epsilon is reported.
        history_len: items in a state; must equal the data's `history_len`.
        dim: width of the encoder's embeddings, Transformer and GRU.
        num_layers: causal Transformer blocks.
        num_heads: attention heads (must divide dim).
        hint_dim: width of the state, item vectors and private user vectors.
        dropout: encoder dropout (0 keeps every rank and resume bit-exact).
        seed: seed of the initialisation, the arrival model, candidates and action sampling.
        """
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        personalization = (mode == "dadrl") if personalization is None else personalization
        arrival = ("sessions" if mode == "dadrl" else "synchronous") if arrival is None else arrival
        if mode != "dadrl" and (personalization or arrival != "synchronous"):
            raise ValueError(f"mode {mode} is synchronous without private parameters: got personalization={personalization}, arrival={arrival}")
        if dp_noise_multiplier < 0:
            raise ValueError(f"dp_noise_multiplier must be >= 0, got {dp_noise_multiplier}")
        if dp_noise_multiplier > 0 and (mode != "dadrl" or arrival != "poisson"):
            raise ValueError(
                "differential privacy needs mode dadrl with arrival: poisson (the accountant assumes Poisson-sampled cohorts), "
                f"got mode={mode}, arrival={arrival}"
            )
        if mode != "a2c_d" and local_steps != 1:
            raise ValueError(f"local_steps applies to a2c_d only (FedAvg), got {local_steps} with mode {mode}")
        self.save_hyperparameters(ignore=["num_items", "num_users", "eval_ks", "full_ranking", "eval_chunk_size"])
        self.automatic_optimization = False
        self.mode, self.personalization, self.arrival_kind = mode, personalization, arrival
        if policy_gradient not in ("sampled", "expected"):
            raise ValueError(f"policy_gradient must be 'sampled' or 'expected', got {policy_gradient!r}")
        self.policy_gradient = policy_gradient
        self.t_max, self.gamma, self.value_coef, self.entropy_coef, self.clip_norm = t_max, gamma, value_coef, entropy_coef, clip_norm
        self.lr, self.server_optimizer, self.cohort_size = lr, server_optimizer, cohort_size
        self.private_lr, self.concurrency, self.delay_spread = private_lr, concurrency, delay_spread
        self.weighting, self.weight_a, self.weight_b = weighting, weight_a, weight_b
        self.max_staleness, self.stale_policy = max_staleness, stale_policy
        self.local_steps, self.client_lr, self.client_chunk = local_steps, client_lr, client_chunk
        self.history_len, self.hint_dim, self.seed = history_len, hint_dim, seed
        self.dp_noise_multiplier, self.dp_delta = dp_noise_multiplier, dp_delta
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on `seed` only
            torch.manual_seed(seed)
            encoder = SeqEncoder(self.num_items, dim, history_len, num_layers, num_heads, hint_dim, dropout)
            self.policy = PolicyValue(ActorCritic(encoder, ActorHead(hint_dim), CriticHead(hint_dim)))
        encoder.gru.register_forward_pre_hook(_batch_hidden_like_input)
        named = list(self.policy.named_parameters())
        start = sum(p.numel() for _, p in named[: [n for n, _ in named].index(EMBEDDING)])
        self._embedding_shape = encoder.item_embedding.weight.shape
        self._embedding_span = (start, start + encoder.item_embedding.weight.numel())
        self._other_names = [n for n, _ in named if n != EMBEDDING]
        self._other_shapes = [p.shape for n, p in named if n != EMBEDDING]
        self.rng = SeededGenerator(seed + 1)
        self.clients: Clients | None = None
        self.arrivals: ArrivalModel | None = None
        self.server: Server | None = None
        self.negatives: ExcludedItemSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self.federated_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The server's optimiser over the global actor-critic."""
        if self.server_optimizer == "sgd":
            return torch.optim.SGD(self.policy.parameters(), lr=self.lr)
        return torch.optim.Adam(self.policy.parameters(), lr=self.lr)

    def _build_federation(self) -> None:
        """Clients, arrival model, server and candidate sampler on the module's device (once; restores a pending checkpoint)."""
        if self.clients is not None:
            return
        tensors, device = self.tensors, self.device
        offsets, sequence = tensors.train_offsets.to(device), tensors.train_sequence.to(device)
        self.clients = Clients(offsets, self.hint_dim if self.personalization else 0, self.private_lr)
        self.negatives = ExcludedItemSampler(offsets, sequence, self.num_items).to(device)
        self.train_negatives = int(getattr(self.trainer.datamodule, "train_negatives", 10))  # RecDataModule's contract
        self._train_history, self._train_item = tensors.train.history.to(device), tensors.train.item.to(device)
        cohort = self.cohort_size
        if cohort is None:
            batch = getattr(self.trainer.datamodule, "batch_size", 256)
            cohort = max(1, batch // (self.t_max * self.local_steps))
        self.arrivals = make_arrivals(self.arrival_kind, self.clients.lengths, cohort, self.seed + 2, self.concurrency, self.delay_spread)
        privacy = None
        if self.dp_noise_multiplier > 0:
            rate = self.arrivals.sample_rate  # PoissonArrivals (checked in __init__)
            expected = rate * int((self.clients.lengths > 0).sum())
            privacy = GaussianMechanism(self.dp_noise_multiplier, self.clip_norm, rate, expected, self.dp_delta, self.seed + 3)
        self.server = Server(
            list(self.policy.parameters()), self._apply_server_step, self.max_staleness, self.weighting, self.weight_a, self.weight_b, privacy
        )
        if self._pending_state is not None:
            self.clients.load_state_dict(self._pending_state["clients"])
            self.arrivals.load_state_dict(self._pending_state["arrivals"])
            self.server.load_state_dict(self._pending_state["server"])
            self._pending_state = None
        self.server.start()

    def on_fit_start(self) -> None:
        """Builds the federation after the model reached its device (and DDP synced its parameters)."""
        self._build_federation()

    def on_validation_start(self) -> None:
        """Private vectors are needed to score."""
        self._build_federation()

    def on_test_start(self) -> None:
        """Private vectors are needed to score."""
        self._build_federation()

    def on_predict_start(self) -> None:
        """Private vectors are needed to score."""
        self._build_federation()

    # ------------------------------------------------------------------ flat parameters
    def _split(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """A flat version `(..., P)` as (every parameter but the item embedding `(..., P_o)`, the embedding `(..., V+1, D)`)."""
        start, stop = self._embedding_span
        other = torch.cat([flat[..., :start], flat[..., stop:]], dim=-1)
        return other, flat[..., start:stop].unflatten(-1, self._embedding_shape)

    def _join(self, other: Tensor, embedding: Tensor) -> Tensor:
        """Inverse of `_split`: `(n, P_o)` and `(n, V+1, D)` -> `(n, P)`."""
        start, _ = self._embedding_span
        return torch.cat([other[:, :start], embedding.flatten(1), other[:, start:]], dim=1)

    def _params(self, other: Tensor, table: Tensor) -> dict[str, Tensor]:
        """Named parameters for `functional_call`: views of `other (P_o,)` and an item table `(R, D)` as the embedding."""
        chunks = torch.split(other, [s.numel() for s in self._other_shapes])
        named = {name: chunk.view(shape) for name, chunk, shape in zip(self._other_names, chunks, self._other_shapes)}
        return {**named, EMBEDDING: table}

    @staticmethod
    def _localise(data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Each client's distinct items `(n, R)` (PAD first) and its data with item ids made local to that list.

        A client's gradient touches only the embedding rows of its own items, so per-client
        gradients are taken with respect to these small tables instead of the whole catalogue.
        """
        history, candidates = data["history"], data["candidates"]
        n = history.shape[0]
        ids = torch.cat([torch.zeros(n, 1, dtype=history.dtype, device=history.device), history.flatten(1), candidates.flatten(1)], 1)
        ordered, order = ids.sort(dim=1)
        is_new = torch.ones_like(ordered, dtype=torch.bool)
        is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        local_sorted = is_new.long().cumsum(1) - 1
        items = torch.zeros(n, int(local_sorted.max()) + 1, dtype=ids.dtype, device=ids.device)
        items.scatter_(1, local_sorted, ordered)  # unused slots stay PAD: never referenced, zero gradient
        local = torch.empty_like(ids).scatter_(1, order, local_sorted)
        split = 1 + history[0].numel()
        local_data = {**data, "history": local[:, 1:split].view_as(history), "candidates": local[:, split:].view_as(candidates)}
        return items, local_data

    def _rollout_loss(self, other: Tensor, table: Tensor, user_vector: Tensor | None, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """A2C loss `(n,)` of each client's rollout with parameters (`other`, item `table`); aux: rewards `(n, T)`, steps, loss parts."""
        logits, values = functional_call(self.policy, self._params(other, table), (data["history"], data["candidates"], user_vector))
        actions = gumbel_actions(logits, data["gumbel"])
        rewards = (actions == 0).float()  # the logged positive is column 0; the policy scores columns independently
        t = logits.shape[1]
        mask = data["valid"][:, :t]
        bootstrap = values[:, t].detach() * data["valid"][:, t]  # 0 after the user's last event: terminal
        if self.policy_gradient == "expected":
            candidate_rewards = (torch.arange(logits.shape[-1], device=logits.device) == 0).to(logits.dtype).expand_as(logits)
            loss, parts = expected_a2c_loss(logits, candidate_rewards, values[:, :t], bootstrap, mask, self.gamma, self.value_coef, self.entropy_coef)
        else:
            returns = nstep_returns(rewards, bootstrap, mask, self.gamma)
            loss, parts = a2c_loss(logits, actions, values[:, :t], returns, mask, self.value_coef, self.entropy_coef)
        return loss, {"loss": loss, "rewards": rewards * mask, "steps": mask.float().sum(-1), **parts}

    def _per_client_gradients(
        self, other: Tensor, tables: Tensor, private: Tensor | None, data: dict[str, Tensor], batched_params: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """Each client's gradient w.r.t. `other` `(n, P_o)`, its item table `(n, R, D)` and its private vector, one vmapped call."""

        def one_client(o: Tensor, table: Tensor, u: Tensor | None, d: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            loss, aux = self._rollout_loss(o, table, None if u is None else u.unsqueeze(0), {k: v.unsqueeze(0) for k, v in d.items()})
            return loss.squeeze(0), {k: v.squeeze(0) for k, v in aux.items()}

        argnums = (0, 1, 2) if private is not None else (0, 1)
        in_dims = (0 if batched_params else None, 0, None if private is None else 0, 0)
        grads, aux = vmap(grad(one_client, argnums=argnums, has_aux=True), in_dims=in_dims)(other, tables, private, data)
        return grads[0], grads[1], grads[2] if private is not None else None, aux

    def _scatter_tables(self, other: Tensor, tables: Tensor, items: Tensor) -> Tensor:
        """Full flat vectors `(n, P)` from per-client `other (n, P_o)` and item-table rows `(n, R, D)` of `items (n, R)`."""
        embedding = tables.new_zeros(tables.shape[0], *self._embedding_shape)
        embedding.scatter_add_(1, items.unsqueeze(-1).expand_as(tables), tables)
        return self._join(other, embedding)

    # ------------------------------------------------------------------ rollouts
    def _rollout_data(self, cohort: Tensor) -> dict[str, Tensor]:
        """Every cohort client's next `local_steps * t_max` events (+1 bootstrap state), candidates and Gumbel noise."""
        assert self.clients is not None and self.negatives is not None
        n, steps, g = cohort.numel(), self.local_steps * self.t_max, self.rng.generator
        index, valid = self.clients.events(cohort, steps + 1)
        negatives = self.negatives.sample(cohort.repeat_interleave(steps), self.train_negatives, g).view(n, steps, -1)
        candidates = torch.cat([self._train_item[index[:, :steps]].unsqueeze(-1), negatives], dim=-1)
        gumbel = standard_gumbel(tuple(candidates.shape), g).to(self.device)
        return {"history": self._train_history[index], "candidates": candidates, "gumbel": gumbel, "valid": valid}

    @staticmethod
    def _chunk(data: dict[str, Tensor], step: int, t_max: int) -> dict[str, Tensor]:
        """Local step `step`'s slice of rollout data: T states + the bootstrap state."""
        start = step * t_max
        return {
            "history": data["history"][:, start : start + t_max + 1],
            "candidates": data["candidates"][:, start : start + t_max],
            "gumbel": data["gumbel"][:, start : start + t_max],
            "valid": data["valid"][:, start : start + t_max + 1],
        }

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One server step: the cohort's stale rollouts, their A2C gradients, one staleness-weighted update."""
        assert self.clients is not None and self.arrivals is not None and self.server is not None
        cohort_info = self.arrivals.step()
        cohort = cohort_info.reporting.to(self.device)
        latest = self.server.version
        if self.arrivals.synchronous:
            self.clients.download(cohort, latest)
        version, keep = resolve_stale_versions(self.clients.version[cohort], latest, self.max_staleness, self.stale_policy)
        data = self._rollout_data(cohort) if cohort.numel() > 0 else {}
        rank, world = self.global_rank, self.trainer.world_size
        mine = torch.nonzero(keep).squeeze(1)[rank::world]  # this rank's share of the cohort, by position

        # the math kernel has vmap rules (results match the pooled path); the clients' gradients are fp32 under any
        # `precision`: under bf16 autocast on CUDA, vmap(grad) fails in softmax's backward, and a bf16 gradient
        # would change what the server applies (docs/ARCHITECTURE.md, GPU)
        with sdpa_kernel(SDPBackend.MATH), torch.autocast(self.device.type, enabled=False):
            losses, rewards, steps, private_grad = self._client_updates(cohort, version, mine, data)
        update = self.server.step()

        if private_grad is not None:  # local steps on the devices; ranks share the simulator's client table
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(private_grad)
            self.clients.update_private(cohort, private_grad)
        self.clients.advance(cohort[keep], self.local_steps * self.t_max)
        self.clients.download(cohort_info.downloading.to(self.device), self.server.version)

        staleness = latest - version[keep]
        self.federated_stats = {
            "staleness": staleness,
            "weights": staleness_weight(staleness, self.weighting, self.weight_a, self.weight_b),
            "reporting": cohort.numel(),
            "dropped": int((~keep).sum()),
            "updates": update.updates,
            "lr_scale": update.lr_scale,
        }
        if self.server.privacy is not None:
            self.federated_stats["epsilon"] = self.server.privacy.epsilon
        events = int(steps.sum())
        if events > 0:
            self.log("train/loss", losses.mean(), on_step=True, on_epoch=False, prog_bar=True)
            self.log_train_ctr(rewards.sum() / steps.sum(), events)

    def _client_gradients(self, flat: Tensor, private: Tensor | None, data: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Each client's (unclipped) gradient `(n, P)` on its version, and of its private vector `(n, d)`.

        `flat` is one version `(P,)` shared by every client, or each client's own `(n, P)`.
        """
        other, embedding = self._split(flat)
        items, local = self._localise(data)
        batched = flat.dim() == 2
        tables = embedding[torch.arange(items.shape[0], device=items.device).unsqueeze(1), items] if batched else embedding[items]
        g_other, g_tables, g_private, aux = self._per_client_gradients(other, tables, private, local, batched_params=batched)
        return self._scatter_tables(g_other, g_tables, items), g_private, aux

    def _client_updates(self, cohort: Tensor, version: Tensor, mine: Tensor, data: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Computes this rank's clients' updates and hands them to the server; returns losses, rewards, steps, private gradients."""
        assert self.clients is not None and self.server is not None
        private = self.clients.private
        private_grad = torch.zeros(cohort.numel(), self.hint_dim, device=self.device) if private is not None else None
        losses, rewards, steps = [], [], []
        if self.mode == "a2c_f":  # centralised: one gradient of the pooled loss, clipped as a whole
            part = {k: v[mine] for k, v in self._chunk(data, 0, self.t_max).items()}
            if mine.numel() > 0:
                other, embedding = self._split(self.server.parameters_at(self.server.version))
                pooled = grad(lambda o, e: _mean_loss(self._rollout_loss(o, e, None, part)), argnums=(0, 1), has_aux=True)
                (g_other, g_embedding), aux = pooled(other, embedding)
                gradient = self._join(g_other.unsqueeze(0), g_embedding.unsqueeze(0))
                self.server.receive(clip_rows(gradient, self.clip_norm)[0], version[mine[:1]])
                losses, rewards, steps = [aux["loss"]], [aux["rewards"].sum(-1)], [aux["steps"]]
        else:
            versions = torch.unique(version[mine])
            # dadrl: one vmapped call per chunk of clients, each on its own stale copy, so the cost
            # of a step does not depend on how many distinct versions the cohort holds (as fast as
            # a shared version); a2c_d: its synchronous cohort shares the latest version
            per_client = self.mode == "dadrl"
            groups = [mine] if per_client else [mine[version[mine] == v] for v in versions.tolist()]
            for group in groups:
                for chunk in torch.split(group, self.client_chunk):
                    part = {k: t[chunk] for k, t in data.items()}
                    flat = self.server.parameters_at(version[chunk] if per_client else int(version[chunk[0]]))
                    if self.mode == "a2c_d":
                        update, aux = self._local_training(flat, part)
                    else:
                        user_vector = private[cohort[chunk]] if private is not None else None
                        gradient, g_private, aux = self._client_gradients(flat, user_vector, part)
                        update = clip_rows(gradient, self.clip_norm)[0]
                        if private_grad is not None and g_private is not None:
                            private_grad[chunk] = g_private
                    self.server.receive(update, version[chunk])
                    losses.append(aux["loss"])
                    rewards.append(aux["rewards"].sum(-1))
                    steps.append(aux["steps"])
        if not losses:
            empty = torch.zeros(0, device=self.device)
            return empty, empty, empty, private_grad
        return torch.cat([x.reshape(-1) for x in losses]), torch.cat(rewards), torch.cat(steps), private_grad

    def _local_training(self, flat: Tensor, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """FedAvg clients: `local_steps` clipped SGD steps each from `flat`; returns their model changes `(n, P)`."""
        other, embedding = self._split(flat)
        items, local = self._localise(data)
        n = items.shape[0]
        start_other, start_tables = other.expand(n, -1), embedding[items]
        params, tables = start_other.clone(), start_tables.clone()  # rows a client never touches stay unchanged
        losses, rewards, steps = [], [], []
        for step in range(self.local_steps):
            g_other, g_tables, _, aux = self._per_client_gradients(params, tables, None, self._chunk(local, step, self.t_max), batched_params=True)
            norms = (g_other.pow(2).sum(1) + g_tables.pow(2).sum((1, 2))).sqrt()
            scale = self.client_lr * clip_scale(norms, self.clip_norm)
            params = params - scale.unsqueeze(1) * g_other
            tables = tables - scale.view(-1, 1, 1) * g_tables
            losses.append(aux["loss"])
            rewards.append(aux["rewards"])
            steps.append(aux["steps"])
        aux = {"loss": torch.stack(losses).mean(0), "rewards": torch.cat(rewards, dim=1), "steps": torch.stack(steps).sum(0)}
        return self._scatter_tables(start_other - params, start_tables - tables, items), aux

    def _apply_server_step(self, lr_scale: float) -> None:
        """Steps the Lightning optimizer with its learning rate multiplied by `lr_scale` (global_step advances)."""
        optimizer = self.optimizers()
        groups = optimizer.optimizer.param_groups
        for group in groups:
            group["lr"] = self.lr * lr_scale
        optimizer.step()
        for group in groups:
            group["lr"] = self.lr
        optimizer.zero_grad(set_to_none=True)

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
            checkpoint["federated"] = {
                "clients": self.clients.state_dict(),
                "arrivals": self.arrivals.state_dict(),
                "server": self.server.state_dict(),
            }
        elif self._pending_state is not None:
            checkpoint["federated"] = self._pending_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores random state now and the simulation when it is built (on the module's device)."""
        super().on_load_checkpoint(checkpoint)
        self._pending_state = checkpoint.get("federated")
        self.clients = self.arrivals = self.server = None


def _mean_loss(result: tuple[Tensor, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    """(mean of the per-client losses, aux with the per-client losses under `loss`) for `grad(..., has_aux=True)`."""
    loss, aux = result
    return loss.mean(), {**aux, "loss": loss}
