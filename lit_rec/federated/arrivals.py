"""Arrival models: which clients report at each server step, and which download the new version after it.

Time is simulated in abstract units; only the order of events matters. Every model is
vectorised over clients, draws from its own seeded generator (in its `state_dict`), and gives
the same cohorts on every rank, so clients can be sharded across ranks by position.
Clients with no train events never report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_rec.sampling import SeededGenerator

ARRIVALS = ("sessions", "exponential", "synchronous", "poisson")


@dataclass
class Cohort:
    """Clients reporting at this server step, and clients downloading the version it produces."""

    reporting: Tensor
    downloading: Tensor


def weighted_sample_without_replacement(log_weights: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """`k` distinct indices drawn with probability proportional to `exp(log_weights)` (Gumbel top-k); -inf is never drawn."""
    uniform = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1.0)
    keys = log_weights.double().cpu() - torch.log(-torch.log(uniform))
    k = min(k, int(torch.isfinite(log_weights).sum()))
    return keys.topk(k).indices.to(log_weights.device)


class ArrivalModel:
    """Base class: `step()` returns the next `Cohort`; `synchronous` models compute on the latest version."""

    synchronous = False

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int) -> None:
        """Settings (each a config key).

        Args:
            events_per_client: train events of each client `(U,)`; activity sets how often a client reports.
            cohort_size: clients reporting per server step.
            seed: seed of the model's generator.
        """
        if int((events_per_client > 0).sum()) == 0:
            raise ValueError(f"{type(self).__name__}: no client has a train event")
        self.cohort_size = min(cohort_size, int((events_per_client > 0).sum()))
        self.activity = events_per_client.double().cpu()
        self.log_activity = torch.where(self.activity > 0, self.activity.log(), torch.full_like(self.activity, -torch.inf))
        self.rng = SeededGenerator(seed)

    def step(self) -> Cohort:
        """The clients reporting now and those downloading the next version."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Generator state (subclasses add their clocks)."""
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.rng.load_state_dict(state["rng"])


class SynchronousArrivals(ArrivalModel):
    """Synchronous rounds: a cohort drawn in proportion to activity downloads the latest version and reports."""

    synchronous = True

    def step(self) -> Cohort:
        """A fresh cohort; it computes on the latest version (Δ = 0)."""
        cohort = weighted_sample_without_replacement(self.log_activity, self.cohort_size, self.rng.generator)
        return Cohort(reporting=cohort, downloading=cohort)


class SessionArrivals(ArrivalModel):
    """A device keeps its copy until its user's next session (DADRL's description).

    Each user starts sessions as a Poisson process whose rate is proportional to their number
    of train events; the cohort of a server step is the next `cohort_size` sessions. A client
    reports a gradient computed on the copy it downloaded at the end of its previous session,
    so Δ is the number of server updates between two sessions of that user: heavy-tailed,
    because activity is.
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int) -> None:
        super().__init__(events_per_client, cohort_size, seed)
        self.rate = self.activity / self.activity[self.activity > 0].mean()
        self.next_session = self._gaps(torch.arange(self.activity.numel()))

    def _gaps(self, clients: Tensor) -> Tensor:
        """Exponential waiting times of rate `rate[clients]` (infinite for inactive clients)."""
        exponential = torch.empty(clients.numel(), dtype=torch.float64).exponential_(generator=self.rng.generator)
        return exponential / self.rate[clients]

    def step(self) -> Cohort:
        """The next `cohort_size` sessions report; the same devices download the new version."""
        times, cohort = self.next_session.topk(self.cohort_size, largest=False)
        now = float(times.max())
        self.next_session[cohort] = now + self._gaps(cohort)
        return Cohort(reporting=cohort, downloading=cohort)

    def state_dict(self) -> dict[str, Any]:
        """Generator state and each client's next session time."""
        return {**super().state_dict(), "next_session": self.next_session.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.next_session.copy_(state["next_session"])


class ExponentialArrivals(ArrivalModel):
    """`concurrency` devices train at once; each reports after an exponential delay (its own mean).

    Devices have mean delays drawn once from a log-normal with spread `delay_spread` (slow and
    fast phones). When a cohort of the earliest `cohort_size` devices has reported, as many idle
    devices (drawn in proportion to activity) download the new version and start. Δ then has
    mean about `concurrency / cohort_size`, with a tail set by the slow devices.
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int, concurrency: int = 0, delay_spread: float = 1.0) -> None:
        """Settings (each a config key).

        Args:
            concurrency: devices training at once (0: 2 x cohort_size); at most the active clients.
            delay_spread: standard deviation of the log of the devices' mean delays.
        """
        super().__init__(events_per_client, cohort_size, seed)
        active = int((self.activity > 0).sum())
        self.concurrency = max(self.cohort_size, min(concurrency or 2 * self.cohort_size, active))
        g = self.rng.generator
        self.mean_delay = torch.exp(delay_spread * torch.randn(self.activity.numel(), generator=g, dtype=torch.float64))
        self.slot_client = weighted_sample_without_replacement(self.log_activity, self.concurrency, g)
        self.slot_done = self._delays(self.slot_client)

    def _delays(self, clients: Tensor) -> Tensor:
        exponential = torch.empty(clients.numel(), dtype=torch.float64).exponential_(generator=self.rng.generator)
        return exponential * self.mean_delay[clients]

    def step(self) -> Cohort:
        """The earliest `cohort_size` running devices report; idle devices start in their slots."""
        times, slots = self.slot_done.topk(self.cohort_size, largest=False)
        now = float(times.max())
        reporting = self.slot_client[slots].clone()
        busy = torch.zeros(self.activity.numel(), dtype=torch.bool)
        busy[self.slot_client] = True
        busy[reporting] = False  # a device that just reported may start again
        log_weights = self.log_activity.masked_fill(busy, -torch.inf)
        starting = weighted_sample_without_replacement(log_weights, self.cohort_size, self.rng.generator)
        self.slot_client[slots] = starting
        self.slot_done[slots] = now + self._delays(starting)
        return Cohort(reporting=reporting, downloading=starting)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, devices' mean delays, and the running devices with their report times."""
        return {
            **super().state_dict(),
            "mean_delay": self.mean_delay.clone(),
            "slot_client": self.slot_client.clone(),
            "slot_done": self.slot_done.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.mean_delay, self.slot_client, self.slot_done = (state[k].clone() for k in ("mean_delay", "slot_client", "slot_done"))


class PoissonArrivals(ArrivalModel):
    """Poisson-sampled cohorts: every active client reports independently with probability `sample_rate`.

    The sampling that differential privacy's accountant assumes. `cohort_size` is the expected
    cohort (sample_rate = cohort_size / active clients). A reporting client downloads the new
    version, so its next Δ is the number of server steps until it is sampled again (geometric,
    mean 1 / sample_rate).
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int) -> None:
        super().__init__(events_per_client, cohort_size, seed)
        self.active = self.activity > 0
        self.sample_rate = self.cohort_size / int(self.active.sum())

    def step(self) -> Cohort:
        """Clients drawn independently; the cohort may be empty (the server step still happens)."""
        draws = torch.rand(self.activity.numel(), generator=self.rng.generator, dtype=torch.float64)
        cohort = torch.nonzero((draws < self.sample_rate) & self.active).squeeze(1)
        return Cohort(reporting=cohort, downloading=cohort)


def make_arrivals(kind: str, events_per_client: Tensor, cohort_size: int, seed: int, concurrency: int = 0, delay_spread: float = 1.0) -> ArrivalModel:
    """Builds one of `ARRIVALS`."""
    if kind == "sessions":
        return SessionArrivals(events_per_client, cohort_size, seed)
    if kind == "exponential":
        return ExponentialArrivals(events_per_client, cohort_size, seed, concurrency, delay_spread)
    if kind == "synchronous":
        return SynchronousArrivals(events_per_client, cohort_size, seed)
    if kind == "poisson":
        return PoissonArrivals(events_per_client, cohort_size, seed)
    raise ValueError(f"arrival must be one of {ARRIVALS}, got {kind!r}")
