"""A2C-F (centralised synchronous A2C) and A2C-D (synchronous FedAvg): DADRL's baselines, with its network, rollouts and loss.

Both are synchronous: every round's cohort downloads the latest version first (Δ = 0, no private
vectors), so a server step is
1. the cohort's next windows (`ActorCriticBase.rollout`: each client's next `t_max` logged events);
2. `send`: A2C-F hands the server one gradient of the pooled loss (every counted position of the
   cohort once), clipped as a whole; A2C-D's clients each take `local_steps` clipped SGD steps
   (`client_lr`) on their own consecutive windows from the global model and send their model change;
3. the server averages what it got and returns a `ServerStep`, applied with the module's optimiser
   (A2C-D: Adam on the averaged model change is FedAdam, Reddi et al. 2021; `sgd` with lr 1 is FedAvg).
Under DDP rank r computes the cohort positions r, r + world, ...; the server all-reduces its sums.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_rec.federated import DeviceClock, FederatedStats, Windows
from lit_rec.federated.gradients import client_rows, client_shares, clipped, per_client_gradients, version_gradient
from lit_rec.modules.actor_critic import ActorCriticBase


class SynchronousA2C(ActorCriticBase):
    """A synchronous federated round: the cohort on the latest version, `send` says what reaches the server."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One server step: the cohort downloads the latest version, replays its windows, sends, and the server steps."""
        assert self.clients is not None and self.arrivals is not None and self.server is not None
        cohort_info = self.arrivals.step()
        cohort = cohort_info.reporting.to(self.device)
        self.clients.download(cohort, self.server.version)
        version = self.clients.version[cohort]
        keep = torch.ones_like(version, dtype=torch.bool)  # nobody is stale
        data = self.rollout(cohort) if cohort.numel() > 0 else {}
        mine = torch.arange(cohort.numel(), device=self.device)[self.global_rank :: self.trainer.world_size]  # this rank's share

        with self.client_math():
            sent = self.send(version, mine, data) if mine.numel() else []  # a deadline may drop a whole cohort
        step = self.server.step()
        self.apply_server_step(step)

        staleness = torch.zeros_like(version)
        stats = FederatedStats(staleness, self.server.weights(staleness), cohort.numel(), 0, step.updates, step.lr_scale, sim_time=self.arrivals.now)
        self.end_round(cohort, keep, cohort_info.downloading, stats, sent)

    def send(self, version: Tensor, mine: Tensor, data: Windows) -> list[dict[str, Tensor]]:
        """Hands the server the updates of this rank's cohort positions `mine`; returns their aux (loss, hits, count)."""
        raise NotImplementedError


class A2CF(SynchronousA2C):
    """A2C-F: centralised synchronous A2C, one gradient of the cohort's pooled loss (every position counts once)."""

    def make_clock(self, num_clients: int) -> DeviceClock:
        """A datacenter: the cohort's windows in parallel at the devices' median speed, no network delay, no stragglers."""
        return super().make_clock(num_clients).centralised()

    def send(self, version: Tensor, mine: Tensor, data: Windows) -> list[dict[str, Tensor]]:
        """One backward pass over every counted position of this rank's clients, clipped as a whole to `clip_norm`."""
        assert self.server is not None
        if mine.numel() == 0:
            return []
        flat = self.server.parameters_at(self.server.version)
        gradient, _, _, aux = version_gradient(self.window_loss, flat, None, client_rows(data, mine, 0), "events")
        self.server.receive(clipped(gradient.unsqueeze(0), self.clip_norm), version[mine[:1]])
        return [aux]


class A2CD(SynchronousA2C):
    """A2C-D: synchronous FedAvg; clients take local SGD steps from the global model and send their model change."""

    def __init__(
        self,
        local_steps: int = 1,
        client_lr: float = 0.05,
        aggregation: Literal["events", "clients"] = "events",
        client_chunk: int = 64,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            local_steps: local SGD steps per client and round, each on the client's next window of `t_max` events.
            client_lr: local SGD step size.
            aggregation: how the server averages the model changes: weighted by the events each client
                trained (FedAvg's n_k) or one vote per `clients`.
            client_chunk: clients whose models are held at once (bounds memory to chunk x model).
            deadline: simulated seconds a round waits; members slower than it are dropped (None: the
                round waits for its slowest member, `clock`).
        """
        super().__init__(**kwargs)
        if aggregation not in ("events", "clients"):
            raise ValueError(f"aggregation must be 'events' or 'clients', got {aggregation!r}")
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline must be > 0 simulated seconds (or null), got {deadline}")
        self.local_steps, self.client_lr, self.aggregation, self.client_chunk = local_steps, client_lr, aggregation, client_chunk
        self.deadline = deadline

    def send(self, version: Tensor, mine: Tensor, data: Windows) -> list[dict[str, Tensor]]:
        """Each chunk of clients trains locally from the global model; the server gets their model changes and events."""
        assert self.server is not None
        sent = []
        for chunk in torch.split(mine, self.client_chunk):
            change, aux = self.local_training(self.server.parameters_at(int(version[chunk[0]])), client_rows(data, chunk))
            self.server.receive(change, version[chunk], shares=client_shares(aux["count"], self.aggregation))
            sent.append(aux)
        return sent

    def local_training(self, flat: Tensor, data: Windows) -> tuple[Tensor, dict[str, Tensor]]:
        """FedAvg clients: `local_steps` clipped SGD steps each from `flat (P,)`, one window a step; their model changes `(n, P)`."""
        n = data["history"].shape[0]
        start = flat.expand(n, -1)
        params = start.clone()
        auxes = []
        for step in range(self.local_steps):
            gradient, _, aux = per_client_gradients(self.vmappable_window_loss, params, None, client_rows(data, slice(None), step), self.vmap_randomness)
            params = params - self.client_lr * clipped(gradient, self.clip_norm)
            auxes.append(aux)
        return start - params, {key: torch.stack([aux[key] for aux in auxes]).sum(0) for key in ("loss", "hits", "count")}
