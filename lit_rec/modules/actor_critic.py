"""Actor-critic recommenders in one code path: DADRL (asynchronous federated A2C), A2C-F and A2C-D.

One `training_step` is one server step (the train DataLoader only paces the loop; its batches
are ignored, so an epoch has as many server steps as the data has train batches):
1. the arrival model names the clients reporting now (the cohort); each computes with the
   version it downloaded earlier: Δ = server version - its version. A version that has left
   the ring buffer (Δ > max_staleness) is dropped, clamped to the oldest or refreshed;
2. each client replays its next `t_max` events (at most `history_len`) as one training window:
   its last `history_len` items, encoded in one causal pass (every prefix's state), the actor
   scoring the whole catalogue and the critic valuing each state, with its stale copy
   (`functional_call` on its stored flat version, vmapped over the clients: no loop over clients
   or events);
3. the loss (`lit_rec.functional.a2c.window_a2c_loss`, SAC-style: the actor's cross-entropy of the
   logged item weighted by 1 + the critic's advantage, the critic's regression on the policy's
   returns, an optional entropy bonus) over the client's new positions gives each client's
   gradient, clipped to `clip_norm`; private user vectors take a local step;
4. the server (`lit_rec.federated.Server`) gets only `(gradients, base_version)`, weights them by
   s(Δ) (relative weights, and their mean multiplies the step size), and steps the optimiser
   through the Lightning optimizer, so `global_step` advances even when every update was dropped;
5. clients that the arrival model says download the new version do so.

Modes (the same steps with different settings):
- `dadrl`: per-client gradients, `sessions` or `exponential` arrivals, staleness weights,
  private user vectors (added to the actor's query) on by default.
- `a2c_f`: centralised synchronous A2C: a cohort on the latest version, one pooled gradient
  (over all the cohort's positions) clipped as a whole; no private parameters.
- `a2c_d`: synchronous FedAvg: each client starts from the global model, takes `local_steps`
  local SGD steps (`client_lr`) on its own consecutive `t_max`-event windows, and sends its model
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_rec.federated import ArrivalModel, Clients, GaussianMechanism, Server, make_arrivals
from lit_rec.functional.a2c import clip_rows, window_a2c_loss
from lit_rec.functional.next_item import TrainingSoftmax, cross_entropy, full_catalogue, greedy_hits, sampled_catalogue
from lit_rec.functional.staleness import resolve_stale_versions, staleness_weight
from lit_rec.modules.base import RecModule
from lit_rec.networks import ActorCritic, ActorHead, CriticHead, SeqEncoder
from lit_rec.sampling import SeededGenerator

MODES = ("dadrl", "a2c_f", "a2c_d")


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


class ActorCriticRec(RecModule):
    """DADRL (Shi et al. RecSys 2021, our reading: DESIGN.md section 8), A2C-F and A2C-D on the shared encoder."""

    def __init__(
        self,
        mode: Literal["dadrl", "a2c_f", "a2c_d"] = "dadrl",
        t_max: int | None = None,
        gamma: float = 0.5,
        ce_weight: float = 1.0,
        pg_weight: float = 1.0,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        clip_norm: float | None = 5.0,
        aggregation: Literal["events", "clients"] = "events",
        lr: float = 1e-3,
        server_optimizer: Literal["adam", "sgd"] = "adam",
        adam_betas: tuple[float, float] = (0.9, 0.999),
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
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        item_init_std: float = 0.02,
        softmax: Literal["full", "sampled"] = "full",
        sampled_negatives: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Args:
        mode: `dadrl` (asynchronous, staleness-weighted), `a2c_f` (centralised) or `a2c_d` (FedAvg).
        t_max: events a client replays per rollout, trained as one window (None: `history_len`, at most that).
        gamma: discount factor of the critic's returns.
        ce_weight: weight of the actor's plain cross-entropy of the logged item (the supervised signal).
        pg_weight: weight of the advantage in the actor's cross-entropy weight (0: supervised actor only).
        value_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus.
        clip_norm: clip each client's gradient (a2c_f: the pooled gradient) to this L2 norm; None: no
            clipping, and dadrl sums its clients' gradients with one backward pass per stale version in the
            cohort instead of materialising each client's gradient (the same server step, about 2x faster).
        aggregation: how the server averages the client updates: weighted by the events each trained
            (FedAvg's n_k; every event counts once, as in a pooled gradient) or one vote per `clients`
            (a client's few new events then weigh as much as another's full window).
        lr: server learning rate (before the staleness multiplier).
        server_optimizer: `adam`, or `sgd` (with lr 1 and a2c_d: plain FedAvg).
        adam_betas: the server's Adam betas; asynchrony acts as extra momentum (Mitliagkas et al. 2016),
            so stale clients want a smaller beta1.
        cohort_size: clients per server step; None: the data's batch size / local_steps, so an
            epoch is about one pass over the train events.
        personalization: private user vectors on the clients; None: on for dadrl, off otherwise.
        private_lr: step size of the clients' local SGD on their private vectors.
        arrival: `sessions`, `exponential`, `synchronous` or `poisson` (each client independently
            with probability cohort_size / clients: what differential privacy needs); None: sessions for dadrl
            (a2c_f and a2c_d are synchronous).
        concurrency: devices training at once with exponential arrivals (0: 2 x cohort_size).
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
        dim: width of the encoder's embeddings, Transformer, state and private user vectors.
        num_layers: causal Transformer blocks.
        num_heads: attention heads (must divide dim).
        dropout: encoder dropout during training.
        item_init_std: standard deviation of the item embeddings at initialisation.
        softmax: the actor's columns: the `full` catalogue, or a `sampled` logQ-corrected softmax (one sample per server step).
        sampled_negatives: items per server step of the sampled softmax.
        seed: seed of the initialisation, the arrival model and the samplers.
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
        if dp_noise_multiplier > 0 and clip_norm is None:
            raise ValueError("differential privacy bounds each client's update: set clip_norm (got None)")
        if dp_noise_multiplier > 0 and aggregation != "clients":
            raise ValueError("differential privacy bounds each client's weight in the sum: set aggregation: clients")
        if aggregation not in ("events", "clients"):
            raise ValueError(f"aggregation must be 'events' or 'clients', got {aggregation!r}")
        if dp_noise_multiplier > 0 and (mode != "dadrl" or arrival != "poisson"):
            raise ValueError(
                "differential privacy needs mode dadrl with arrival: poisson (the accountant assumes Poisson-sampled cohorts), "
                f"got mode={mode}, arrival={arrival}"
            )
        if mode != "a2c_d" and local_steps != 1:
            raise ValueError(f"local_steps applies to a2c_d only (FedAvg), got {local_steps} with mode {mode}")
        t_max = self.history_len if t_max is None else t_max
        if not 1 <= t_max <= self.history_len:
            raise ValueError(f"t_max must be in 1..history_len={self.history_len} (one window per rollout), got {t_max}")
        self.save_hyperparameters(ignore=["num_items", "num_users", "eval_ks", "full_ranking", "eval_chunk_size"])
        self.automatic_optimization = False
        self.mode, self.personalization, self.arrival_kind = mode, personalization, arrival
        self.t_max, self.gamma, self.ce_weight, self.pg_weight = t_max, gamma, ce_weight, pg_weight
        self.value_coef, self.entropy_coef, self.clip_norm, self.aggregation = value_coef, entropy_coef, clip_norm, aggregation
        self.lr, self.server_optimizer, self.adam_betas, self.cohort_size = lr, server_optimizer, tuple(adam_betas), cohort_size
        self.private_lr, self.concurrency, self.delay_spread = private_lr, concurrency, delay_spread
        self.weighting, self.weight_a, self.weight_b = weighting, weight_a, weight_b
        self.max_staleness, self.stale_policy = max_staleness, stale_policy
        self.local_steps, self.client_lr, self.client_chunk = local_steps, client_lr, client_chunk
        self.dim, self.dropout, self.seed = dim, dropout, seed
        self.training_softmax = TrainingSoftmax(softmax, sampled_negatives)
        self.dp_noise_multiplier, self.dp_delta = dp_noise_multiplier, dp_delta
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on `seed` only
            torch.manual_seed(seed)
            encoder = SeqEncoder(self.num_items, dim, self.history_len, num_layers, num_heads, dropout, item_init_std)
            self.policy = PolicyValue(ActorCritic(encoder, ActorHead(dim), CriticHead(dim)))
        named = list(self.policy.named_parameters())
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self.rng = SeededGenerator(seed + 1)
        self.clients: Clients | None = None
        self.arrivals: ArrivalModel | None = None
        self.server: Server | None = None
        self._pending_state: dict[str, Any] | None = None
        self._log_q: Tensor | None = None  # the sampled softmax's correction on the module's device
        self.federated_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The server's optimiser over the global actor-critic."""
        if self.server_optimizer == "sgd":
            return torch.optim.SGD(self.policy.parameters(), lr=self.lr)
        return torch.optim.Adam(self.policy.parameters(), lr=self.lr, betas=self.adam_betas)

    def _build_federation(self) -> None:
        """Clients, arrival model and server on the module's device (once; restores a pending checkpoint)."""
        if self.clients is not None:
            return
        tensors, device = self.tensors, self.device
        self.clients = Clients(tensors.train_offsets.to(device), self.dim if self.personalization else 0, self.private_lr)
        self._train_history, self._train_item = tensors.train.history.to(device), tensors.train.item.to(device)
        self.training_softmax.fit(tensors.item_popularity)
        self._log_q = self.training_softmax.log_q(device)
        cohort = self.cohort_size
        if cohort is None:
            batch = getattr(self.trainer.datamodule, "batch_size", 256)
            cohort = max(1, batch // self.local_steps)
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

    # ------------------------------------------------------------------ one client's loss
    def _params(self, flat: Tensor) -> dict[str, Tensor]:
        """Named parameters for `functional_call`: views of one flat version `(P,)`."""
        chunks = torch.split(flat, [s.numel() for s in self._shapes])
        return {name: chunk.view(shape) for name, chunk, shape in zip(self._names, chunks, self._shapes)}

    def _window_loss(self, flat: Tensor, user_vector: Tensor | None, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Summed loss over the counted positions of windows `data["history"] (n, L)` with one flat version; aux per window."""
        params = self._params(flat)
        query, values = functional_call(self.policy, params, (data["history"], user_vector))
        item_table = params["net.encoder.item_embedding.weight"]
        if self.training_softmax.softmax == "full":
            columns = full_catalogue(query, item_table, data["targets"])
        else:
            assert self._log_q is not None
            columns = sampled_catalogue(query, item_table, data["targets"], data["negatives"], self._log_q)
        mask = data["mask"]
        logged = -cross_entropy(columns)  # the fused log-softmax: no (n, L, C) log-probability tensor kept
        entropy = None
        if self.entropy_coef > 0:
            log_probs = F.log_softmax(columns.logits(), dim=-1)
            entropy = -(log_probs.exp() * log_probs.masked_fill(log_probs == float("-inf"), 0.0)).sum(-1)
        loss, parts = window_a2c_loss(
            logged, values, mask, self.gamma, self.ce_weight, self.pg_weight, self.value_coef, self.entropy_coef, entropy
        )
        with torch.no_grad():
            hits = greedy_hits(columns.masked_scores(), columns.target, data["rivals"]) & mask
        return loss, {**parts, "loss": loss, "hits": hits.float().sum(-1)}

    def _per_client_gradients(
        self, flat: Tensor, private: Tensor | None, data: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Each client's gradient `(n, P)` of its mean loss on its version (`flat (P,)` shared or `(n, P)` its own), and of its private vector."""

        def one_client(f: Tensor, u: Tensor | None, d: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            batch = {k: v.unsqueeze(0) for k, v in d.items() if k != "negatives"}
            batch["negatives"] = d["negatives"]
            loss, aux = self._window_loss(f, None if u is None else u.unsqueeze(0), batch)
            count = aux["count"].clamp_min(1.0)
            return (loss / count).squeeze(0), {k: v.squeeze(0) for k, v in aux.items()}

        argnums = (0, 1) if private is not None else 0
        per_client = {k: v for k, v in data.items() if k != "negatives"}
        in_dims = (0 if flat.dim() == 2 else None, None if private is None else 0, {**{k: 0 for k in per_client}, "negatives": None})
        randomness = "different" if self.dropout > 0 and self.training else "error"
        grads, aux = vmap(grad(one_client, argnums=argnums, has_aux=True), in_dims=in_dims, randomness=randomness)(flat, private, data)
        if private is not None:
            return grads[0], grads[1], aux
        return grads, None, aux

    # ------------------------------------------------------------------ rollouts
    def _rollout_data(self, cohort: Tensor) -> dict[str, Tensor]:
        """Every cohort client's next `local_steps` windows of `t_max` new events each: `(n, local_steps, ...)`."""
        assert self.clients is not None
        n, steps, length, g = cohort.numel(), self.local_steps * self.t_max, self.history_len, self.rng.generator
        index, valid = self.clients.events(cohort, steps)
        index, valid = index.view(n, self.local_steps, self.t_max), valid.view(n, self.local_steps, self.t_max)
        new = valid.sum(-1)  # events of each window that exist (the episode may end inside it)
        last = index.gather(-1, (new - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
        history = self._train_history[last]  # (n, S, L): the L items before the window's last event
        targets = torch.cat([history[..., 1:], self._train_item[last].unsqueeze(-1)], dim=-1)
        counted = torch.arange(length, device=self.device) >= (length - new).unsqueeze(-1)
        data = {"history": history, "targets": targets, "mask": counted & (targets > 0)}  # the first item's empty prefix counts
        rivals = torch.randint(0, self.num_items, (n, self.local_steps, length, max(1, self.num_rivals)), generator=g, device=g.device)
        data["rivals"] = rivals.to(self.device)
        if self.training_softmax.softmax == "sampled":
            data["negatives"] = self.training_softmax.negatives(g).to(self.device)
            data["rivals"] = torch.randint(0, self.training_softmax.sampled_negatives + 1, data["rivals"].shape, generator=g, device=g.device).to(self.device)
        else:
            data["negatives"] = torch.zeros(0, dtype=torch.long, device=self.device)
        return data

    @staticmethod
    def _local_step(data: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Local step `step`'s window of each client's rollout data."""
        return {k: v if k == "negatives" else v[:, step] for k, v in data.items()}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One server step: the cohort's stale rollouts, their gradients, one staleness-weighted update."""
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
            losses, hits, counts, private_grad = self._client_updates(cohort, version, mine, data)
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
        events = int(counts.sum())
        if events > 0:
            self.log_step("train/loss", losses.sum() / counts.sum(), prog_bar=True)
            self.log_train_ctr(hits.sum() / counts.sum(), events)

    def _client_updates(self, cohort: Tensor, version: Tensor, mine: Tensor, data: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Computes this rank's clients' updates and hands them to the server; returns summed losses, hits and counted positions."""
        assert self.clients is not None and self.server is not None
        private = self.clients.private
        private_grad = torch.zeros(cohort.numel(), self.dim, device=self.device) if private is not None else None
        losses, hits, counts = [], [], []
        if self.mode == "a2c_f":  # centralised: one gradient of the pooled loss (every position of the cohort), clipped as a whole
            if mine.numel() > 0:
                part = {k: v if k == "negatives" else v[mine, 0] for k, v in data.items()}
                gradient, _, _, aux = self._version_gradient(self.server.version, None, part, "events")  # every position counts once
                self.server.receive(self._clipped(gradient.unsqueeze(0)), version[mine[:1]])
                losses, hits, counts = [aux["loss"]], [aux["hits"]], [aux["count"]]
        elif self.mode == "dadrl" and self.clip_norm is None:  # nothing per client between gradient and sum: one pass per version
            for group, aux, g_private in self._per_version_gradients(cohort, version, mine, data):
                if private_grad is not None and g_private is not None:
                    private_grad[group] = g_private
                losses.append(aux["loss"])
                hits.append(aux["hits"])
                counts.append(aux["count"])
        else:
            # dadrl: one vmapped call per chunk of clients, each on its own stale copy; a2c_d: the synchronous cohort shares the latest version
            for chunk in torch.split(mine, self.client_chunk):
                part = {k: v if k == "negatives" else v[chunk] for k, v in data.items()}
                if self.mode == "a2c_d":
                    update, aux = self._local_training(self.server.parameters_at(int(version[chunk[0]])), part)
                else:
                    user_vector = private[cohort[chunk]] if private is not None else None
                    gradient, g_private, aux = self._per_client_gradients(self.server.parameters_at(version[chunk]), user_vector, self._local_step(part, 0))
                    update = self._clipped(gradient)
                    if private_grad is not None and g_private is not None:
                        private_grad[chunk] = g_private
                self.server.receive(update, version[chunk], shares=self._shares(aux["count"]))
                losses.append(aux["loss"])
                hits.append(aux["hits"])
                counts.append(aux["count"])
        if not losses:
            empty = torch.zeros(0, device=self.device)
            return empty, empty, empty, private_grad
        return torch.cat([x.reshape(-1) for x in losses]), torch.cat(hits), torch.cat(counts), private_grad

    def _clipped(self, rows: Tensor) -> Tensor:
        """Each row of `(n, P)` clipped to `clip_norm` (unchanged when it is None)."""
        return rows if self.clip_norm is None else clip_rows(rows, self.clip_norm)[0]

    def _per_version_gradients(self, cohort: Tensor, version: Tensor, mine: Tensor, data: dict[str, Tensor]) -> list[tuple[Tensor, dict[str, Tensor], Tensor | None]]:
        """Hands the server, per stale version in the cohort, its clients' shares-weighted mean gradient (one backward pass each).

        Returns per version: the cohort positions of its clients, their aux, and their private-vector gradients.
        """
        assert self.clients is not None and self.server is not None
        private = self.clients.private
        out = []
        for v in torch.unique(version[mine]).tolist():
            group = mine[version[mine] == v]
            part = {k: x if k == "negatives" else x[group, 0] for k, x in data.items()}
            user_vector = private[cohort[group]] if private is not None else None
            row, share, g_private, aux = self._version_gradient(int(v), user_vector, part, self.aggregation)
            self.server.receive(row.unsqueeze(0), version[group[:1]], shares=share.reshape(1), clients=torch.tensor([group.numel()]))
            out.append((group, aux, g_private))
        return out

    def _version_gradient(
        self, version: int, user_vector: Tensor | None, part: dict[str, Tensor], aggregation: str
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """One backward pass for clients that share a stored version: `(gradient (P,), share, private gradients (n, D) | None, aux)`.

        The gradient is of the shares-weighted mean of the clients' mean losses (shares: events or 1
        per client, as in `aggregation`), `share` their total; each private vector's gradient is of its
        own client's mean loss.
        """
        flat = self.server.parameters_at(version).detach().requires_grad_(True)
        user_vector = user_vector.clone().requires_grad_(True) if user_vector is not None else None
        loss, aux = self._window_loss(flat, user_vector, part)
        shares = self._shares(aux["count"], aggregation)
        inputs = [flat] if user_vector is None else [flat, user_vector]
        grads = torch.autograd.grad((loss * shares / aux["count"].clamp_min(1.0)).sum(), inputs)
        share = shares.sum()
        g_private = grads[1] / shares.clamp_min(1e-12).unsqueeze(1) if user_vector is not None else None
        return grads[0] / share.clamp_min(1e-12), share, g_private, {k: x.detach() for k, x in aux.items()}

    def _shares(self, events: Tensor, aggregation: str | None = None) -> Tensor:
        """Each client's share of the server's mean `(n,)`: its trained events (`aggregation: events`) or 1 (`clients`)."""
        by_events = (aggregation or self.aggregation) == "events"
        return events.to(torch.float32) if by_events else torch.ones_like(events, dtype=torch.float32)

    def _local_training(self, flat: Tensor, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """FedAvg clients: `local_steps` clipped SGD steps each from `flat`, one window a step; returns their model changes `(n, P)`."""
        n = data["history"].shape[0]
        start = flat.expand(n, -1)
        params = start.clone()
        losses, hits, counts = [], [], []
        for step in range(self.local_steps):
            gradient, _, aux = self._per_client_gradients(params, None, self._local_step(data, step))
            params = params - self.client_lr * self._clipped(gradient)
            losses.append(aux["loss"])
            hits.append(aux["hits"])
            counts.append(aux["count"])
        aux = {"loss": torch.stack(losses).sum(0), "hits": torch.stack(hits).sum(0), "count": torch.stack(counts).sum(0)}
        return start - params, aux

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
