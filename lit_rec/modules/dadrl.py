"""DADRL: asynchronous federated actor-critic (Shi et al. RecSys 2021; our reading in DESIGN.md section 8).

One `training_step` is one server step (the train DataLoader only paces the loop; its batches are
ignored, so an epoch has as many server steps as the data has train batches):
1. the arrival model names the clients reporting now (the cohort); each computes with the version
   it downloaded earlier, Δ = server version - its version; a version that left the server's ring
   buffer (Δ > `Server.max_staleness`) is dropped, clamped to the oldest or refreshed (`stale_policy`);
2. each client replays its next `t_max` logged events as one window (`ActorCriticBase.rollout`);
3. its loss (`ActorCriticBase.window_loss`: `lit_rec.functional.a2c.window_a2c_loss` on its stale
   copy) gives its gradient, sent to the server as `(gradients, base_version)`:
   - `clip_norm: C`: per-client gradients, one `vmap(grad(...))` per chunk of clients, each on its own
     stored version, clipped to C (`lit_rec.federated.gradients.per_client_gradients`);
   - `clip_norm: null` (shipped): nothing happens to a gradient between the client and the server's
     sum, so the clients of one stored version are summed in one backward pass
     (`lit_rec.federated.gradients.send_per_version`): the same server step, about 2x faster;
4. the server weights the updates by s(Δ) and returns a `ServerStep` (the weighted mean and the
   mean weight as the step-size multiplier), which the module applies with its optimiser;
5. the private user vectors (added to the actor's query, never sent) take a local SGD step, and the
   clients the arrival model names download the new version.

DDP: cohorts are drawn identically on every rank (replicated, seeded simulation state); rank r
computes the clients at cohort positions r, r + world, ...; the server all-reduces its sums, so every
rank takes the same step. The private-vector changes are all-reduced too, so the replicated client
table stays identical (it is the simulator's memory, never the server's).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from lit_rec.federated import ArrivalModel, Clients, FederatedStats, GaussianMechanism, Server, Windows
from lit_rec.federated.gradients import client_rows, client_shares, clipped, per_client_gradients, send_per_version
from lit_rec.functional.staleness import resolve_stale_versions
from lit_rec.modules.actor_critic import ActorCriticBase


class DADRL(ActorCriticBase):
    """Asynchronous federated A2C: stale clients, staleness-weighted server steps, private user vectors."""

    def __init__(
        self,
        aggregation: Literal["events", "clients"] = "events",
        personalization: bool = True,
        private_lr: float = 0.1,
        arrival: Literal["sessions", "exponential", "synchronous", "poisson", "clock"] = "sessions",
        concurrency: int = 0,
        delay_spread: float = 1.0,
        weighting: Literal["constant", "polynomial", "hinge", "fedbuff"] = "polynomial",
        weight_a: float = 0.5,
        weight_b: float = 4.0,
        max_staleness: int = 32,
        stale_policy: Literal["drop", "clamp", "refresh"] = "clamp",
        client_chunk: int = 64,
        dp_noise_multiplier: float = 0.0,
        dp_delta: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            aggregation: how the server averages the client updates: weighted by the events each trained
                (FedAvg's n_k; every event counts once, as in a pooled gradient) or one vote per `clients`.
            personalization: private user vectors on the clients.
            private_lr: step size of the clients' local SGD on their private vectors.
            arrival: `clock` (FedBuff on the device clock `clock`: each buffer of cohort_size reports is
                applied when its last arrives), `sessions`, `exponential`, `synchronous` or `poisson` (each
                client independently with probability cohort_size / clients: what differential privacy needs).
            concurrency: devices training at once with `clock` and `exponential` arrivals (0: 2 x cohort_size).
            delay_spread: log-normal spread of the devices' mean delays (exponential arrivals).
            weighting: staleness weight s(Δ): constant, polynomial (1+Δ)^-a, hinge, fedbuff 1/sqrt(1+Δ).
            weight_a: a of the polynomial and hinge weights.
            weight_b: b of the hinge weight.
            max_staleness: versions kept by the server (ring buffer of max_staleness + 1).
            stale_policy: a client whose version left the buffer is `drop`ped, `clamp`ed to the oldest
                stored version, or `refresh`ed to the latest.
            client_chunk: clients whose gradients are held at once with `clip_norm` set (bounds memory to chunk x model).
            dp_noise_multiplier: > 0 turns on user-level differential privacy (`poisson` arrivals): each
                client's update is clipped to `clip_norm`, the server adds Gaussian noise of std
                `dp_noise_multiplier * clip_norm` to their sum, and opacus's RDP accountant logs
                `privacy/epsilon` at `dp_delta`.
            dp_delta: the δ at which epsilon is reported.
        """
        super().__init__(**kwargs)
        if aggregation not in ("events", "clients"):
            raise ValueError(f"aggregation must be 'events' or 'clients', got {aggregation!r}")
        if dp_noise_multiplier < 0:
            raise ValueError(f"dp_noise_multiplier must be >= 0, got {dp_noise_multiplier}")
        if dp_noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError("differential privacy bounds each client's update: set clip_norm (got None)")
        if dp_noise_multiplier > 0 and aggregation != "clients":
            raise ValueError("differential privacy bounds each client's weight in the sum: set aggregation: clients")
        if dp_noise_multiplier > 0 and arrival != "poisson":
            raise ValueError(f"differential privacy needs arrival: poisson (the accountant assumes Poisson-sampled cohorts), got arrival={arrival}")
        self.aggregation, self.personalization, self.private_lr = aggregation, personalization, private_lr
        self.arrival_kind, self.concurrency, self.delay_spread = arrival, concurrency, delay_spread
        self.stale_policy, self.client_chunk = stale_policy, client_chunk

    def make_server(self, arrivals: ArrivalModel, clients: Clients) -> Server:
        """The staleness-weighted server with a ring of `max_staleness + 1` versions (and its privacy mechanism)."""
        hp, privacy = self.hparams, None
        if hp.dp_noise_multiplier > 0:
            rate = arrivals.sample_rate  # PoissonArrivals (checked in __init__)
            expected = rate * int((clients.lengths > 0).sum())
            privacy = GaussianMechanism(hp.dp_noise_multiplier, self.clip_norm, rate, expected, hp.dp_delta, self.seed + 3)
        return Server(list(self.policy.parameters()), hp.max_staleness, hp.weighting, hp.weight_a, hp.weight_b, privacy)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One server step: the cohort's stale rollouts, their gradients, one staleness-weighted update."""
        assert self.clients is not None and self.arrivals is not None and self.server is not None
        cohort_info = self.arrivals.step()
        cohort = cohort_info.reporting.to(self.device)
        latest = self.server.version
        if cohort_info.downloading_before is not None:  # devices that started while the buffer filled
            self.clients.download(cohort_info.downloading_before.to(self.device), latest)
        if self.arrivals.synchronous:
            self.clients.download(cohort, latest)
        version, keep = resolve_stale_versions(self.clients.version[cohort], latest, self.server.max_staleness, self.stale_policy)
        data = client_rows(self.rollout(cohort), slice(None), 0) if cohort.numel() > 0 else {}
        mine = torch.nonzero(keep).squeeze(1)[self.global_rank :: self.trainer.world_size]  # this rank's share of the cohort
        user_vectors = self.clients.private[cohort] if self.clients.private is not None else None

        with self.client_math():
            if self.clip_norm is None:  # one backward pass per stored version in the cohort
                sent = send_per_version(self.server, self.window_loss, version, mine, data, user_vectors, self.aggregation)
            else:
                sent = self.send_per_client(version, mine, data, user_vectors)
        step = self.server.step()
        self.apply_server_step(step)

        if user_vectors is not None:  # local steps on the devices; ranks share the simulator's client table
            private_grad = torch.zeros_like(user_vectors)
            for group, _, g_private in sent:
                private_grad[group] = g_private
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(private_grad)
            self.clients.update_private(cohort, private_grad)
        staleness = latest - version[keep]
        epsilon = self.server.privacy.epsilon if self.server.privacy is not None else None
        stats = FederatedStats(staleness, self.server.weights(staleness), cohort.numel(), int((~keep).sum()), step.updates, step.lr_scale,
                               epsilon, self.arrivals.now)
        self.end_round(cohort, keep, cohort_info.downloading, stats, [aux for _, aux, _ in sent])

    def send_per_client(self, version: Tensor, mine: Tensor, data: Windows, user_vectors: Tensor | None) -> list[tuple[Tensor, dict[str, Tensor], Tensor | None]]:
        """Hands the server each client's clipped gradient, one vmapped call per chunk of clients on their own versions."""
        assert self.server is not None
        sent = []
        for chunk in torch.split(mine, self.client_chunk):
            user_vector = user_vectors[chunk] if user_vectors is not None else None
            flat = self.server.parameters_at(version[chunk])
            gradient, g_private, aux = per_client_gradients(self.vmappable_window_loss, flat, user_vector, client_rows(data, chunk), self.vmap_randomness)
            self.server.receive(clipped(gradient, self.clip_norm), version[chunk], shares=client_shares(aux["count"], self.aggregation))
            sent.append((chunk, aux, g_private))
        return sent
