"""Arrival models: which clients report at each server step, and which download the new version after it.

Every model keeps `now`, the simulated time of its last server step: simulated seconds of the
device clock (`lit_rec.federated.clock.DeviceClock`) for `ClockArrivals` and for `SynchronousArrivals`
given a clock; the older models' own units otherwise (`sessions`, `exponential`: their mean delays;
`poisson`, and `synchronous` without a clock: one per round). Every model is vectorised over clients,
draws from its own seeded generator (in its `state_dict`, with `now` and the clock), and gives the
same cohorts on every rank, so clients can be sharded across ranks by position.
Clients with no train events never report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import heapq

import torch
from torch import Tensor

from lit_rec.federated.clock import DeviceClock
from lit_rec.sampling import SeededGenerator

ARRIVALS = ("sessions", "exponential", "synchronous", "poisson", "clock")


@dataclass
class Cohort:
    """Clients reporting at this server step, clients downloading the version it produces, and clients that
    started while its buffer filled (`downloading_before`: they download the version before it, first)."""

    reporting: Tensor
    downloading: Tensor
    downloading_before: Tensor | None = None


def weighted_sample_without_replacement(log_weights: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """`k` distinct indices drawn with probability proportional to `exp(log_weights)` (Gumbel top-k); -inf is never drawn."""
    uniform = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1.0)
    keys = log_weights.double().cpu() - torch.log(-torch.log(uniform))
    k = min(k, int(torch.isfinite(log_weights).sum()))
    return keys.topk(k).indices.to(log_weights.device)


class ArrivalModel:
    """Base class: `step()` returns the next `Cohort`; `synchronous` models compute on the latest version."""

    synchronous = False
    clock: DeviceClock | None = None  # the device clock timing the model, if any

    @property
    def in_seconds(self) -> bool:
        """Whether `now` counts simulated seconds of a device clock (else the model's own time units)."""
        return self.clock is not None

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
        self.now = 0.0  # simulated time of the last server step

    def step(self) -> Cohort:
        """The clients reporting now and those downloading the next version (and `now` moves on)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Generator state and the simulated time (subclasses add their devices' state)."""
        return {"rng": self.rng.state_dict(), "now": self.now}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned (a checkpoint from before the clock starts at time 0)."""
        self.rng.load_state_dict(state["rng"])
        self.now = float(state.get("now", 0.0))


class SynchronousArrivals(ArrivalModel):
    """Synchronous rounds: a cohort drawn in proportion to activity downloads the latest version and reports.

    With a device clock a round lasts as long as its slowest member (`DeviceClock.duration` of its
    `work`); with a `deadline` the members slower than it are dropped (their updates never reach the
    server) and the round lasts the deadline. The clock has its own generator: the cohorts are
    those of the clock-less rounds, whatever the clock.
    """

    synchronous = True

    def __init__(
        self, events_per_client: Tensor, cohort_size: int, seed: int,
        clock: DeviceClock | None = None, work: Tensor | None = None, deadline: float | None = None,
    ) -> None:
        """Settings (each a config key).

        Args:
            clock: the devices' speeds and delays (None: a round lasts one time unit).
            work: events each client replays per round `(U,)` (with a clock).
            deadline: simulated seconds after which a round's late members are dropped (None: wait for all).
        """
        super().__init__(events_per_client, cohort_size, seed)
        if clock is not None and work is None:
            raise ValueError("SynchronousArrivals: a clock needs each client's work per round")
        if deadline is not None and (clock is None or deadline <= 0):
            raise ValueError(f"SynchronousArrivals: a deadline needs a clock and must be > 0, got {deadline}")
        self.clock, self.deadline = clock, deadline
        self.work = None if work is None else work.double().cpu()

    def step(self) -> Cohort:
        """A fresh cohort; it computes on the latest version (Δ = 0); members past the deadline drop out."""
        cohort = weighted_sample_without_replacement(self.log_activity, self.cohort_size, self.rng.generator)
        if self.clock is None or self.work is None:
            self.now += 1.0
            return Cohort(reporting=cohort, downloading=cohort)
        seconds = self.clock.duration(cohort, self.work[cohort.cpu()])
        on_time = seconds <= self.deadline if self.deadline is not None else torch.ones_like(seconds, dtype=torch.bool)
        self.now += float(self.deadline) if not bool(on_time.all()) else float(seconds.max())
        reporting = cohort[on_time.to(cohort.device)]
        return Cohort(reporting=reporting, downloading=reporting)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, simulated time and the clock."""
        state = super().state_dict()
        if self.clock is not None:
            state["clock"] = self.clock.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        if self.clock is not None and "clock" in state:
            self.clock.load_state_dict(state["clock"])


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
        self.now = float(times.max())
        self.next_session[cohort] = self.now + self._gaps(cohort)
        return Cohort(reporting=cohort, downloading=cohort)

    def state_dict(self) -> dict[str, Any]:
        """Generator state and each client's next session time."""
        return {**super().state_dict(), "next_session": self.next_session.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.next_session.copy_(state["next_session"])


class BufferedArrivals(ArrivalModel):
    """FedBuff-style: `concurrency` devices train at once; each server step applies the `cohort_size` earliest reports.

    A device starts on the version current when it starts and reports `_durations` later. When the
    K-th report of a buffer (K = `cohort_size`) arrives, the server steps (`now` = its arrival) and
    as many idle devices, drawn in proportion to activity, download the new version and start in the
    freed slots (a device that just reported may start again). Δ then comes from the clock: the
    versions published while a device trained. K = 1: every update is applied when it arrives.
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int, concurrency: int = 0) -> None:
        """Settings (each a config key).

        Args:
            concurrency: devices training at once (0: 2 x cohort_size); at least cohort_size, at most the active clients.
        """
        super().__init__(events_per_client, cohort_size, seed)
        active = int((self.activity > 0).sum())
        self.concurrency = max(self.cohort_size, min(concurrency or 2 * self.cohort_size, active))
        self.slot_client = torch.zeros(0, dtype=torch.long)
        self.slot_done = torch.zeros(0, dtype=torch.float64)

    def idle_log_weights(self, busy: Tensor) -> Tensor:
        """Log activity with the `busy` devices at -inf: the weights an idle device is drawn with."""
        mask = torch.zeros(self.activity.numel(), dtype=torch.bool)
        mask[busy] = True
        return self.log_activity.masked_fill(mask, -torch.inf)

    def _durations(self, clients: Tensor) -> Tensor:
        """How long the updates of `clients (n,)` starting now take `(n,)`."""
        raise NotImplementedError

    def _start(self) -> None:
        """The first `concurrency` devices, drawn in proportion to activity, start at time 0."""
        self.slot_client = weighted_sample_without_replacement(self.log_activity, self.concurrency, self.rng.generator)
        self.slot_done = self.now + self._durations(self.slot_client)

    def step(self) -> Cohort:
        """The earliest `cohort_size` running devices report; idle devices start in their slots."""
        times, slots = self.slot_done.topk(self.cohort_size, largest=False)
        self.now = float(times.max())
        reporting = self.slot_client[slots].clone()
        busy = self.slot_client[~torch.isin(self.slot_client, reporting)]  # a device that just reported may start again
        log_weights = self.idle_log_weights(busy)
        starting = weighted_sample_without_replacement(log_weights, self.cohort_size, self.rng.generator)
        self.slot_client[slots] = starting
        self.slot_done[slots] = self.now + self._durations(starting)
        return Cohort(reporting=reporting, downloading=starting)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, simulated time, and the running devices with their report times."""
        return {**super().state_dict(), "slot_client": self.slot_client.clone(), "slot_done": self.slot_done.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.slot_client, self.slot_done = state["slot_client"].clone(), state["slot_done"].clone()


class ExponentialArrivals(BufferedArrivals):
    """Buffered arrivals whose devices report after an exponential delay (its own mean), in abstract time units.

    Devices have mean delays drawn once from a log-normal with spread `delay_spread` (slow and
    fast phones). Δ then has mean about `concurrency / cohort_size`, with a tail set by the slow
    devices. In distribution it is `ClockArrivals` with `lognormal` speeds (sigma = delay_spread),
    every update one unit of work at median speed 1, no network delay and `exponential` jitter.
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int, concurrency: int = 0, delay_spread: float = 1.0) -> None:
        """Settings (each a config key).

        Args:
            concurrency: devices training at once (0: 2 x cohort_size); at most the active clients.
            delay_spread: standard deviation of the log of the devices' mean delays.
        """
        super().__init__(events_per_client, cohort_size, seed, concurrency)
        g = self.rng.generator
        self.mean_delay = torch.exp(delay_spread * torch.randn(self.activity.numel(), generator=g, dtype=torch.float64))
        self._start()

    def _durations(self, clients: Tensor) -> Tensor:
        """Exponential delays with each device's own mean."""
        exponential = torch.empty(clients.numel(), dtype=torch.float64).exponential_(generator=self.rng.generator)
        return exponential * self.mean_delay[clients]

    def state_dict(self) -> dict[str, Any]:
        """Buffered state plus the devices' mean delays."""
        return {**super().state_dict(), "mean_delay": self.mean_delay.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.mean_delay = state["mean_delay"].clone()


class ClockArrivals(BufferedArrivals):
    """Buffered arrivals on the device clock: an update takes `clock.duration(device, work)` simulated seconds.

    FedBuff's event loop: a slot freed by a report while the buffer fills is refilled at once by an idle
    device (drawn in proportion to activity; not one that reported in this buffer), which starts on the
    version the server holds then (`Cohort.downloading_before`) and may itself report before the step.
    Slots that found no idle device, and the slot of the K-th report, are refilled after the step, on the
    new version; the buffer's reporters are idle again from then on.

    `work (U,)`: events a client replays per update. The clock has its own generator (seeded alike
    for every method, so DADRL and A2C-D simulate the same devices).
    """

    def __init__(self, events_per_client: Tensor, cohort_size: int, seed: int, clock: DeviceClock, work: Tensor, concurrency: int = 0) -> None:
        """Settings (each a config key).

        Args:
            clock: the devices' speeds, delays and jitter.
            work: events each client replays per update `(U,)`.
            concurrency: devices training at once (0: 2 x cohort_size).
        """
        super().__init__(events_per_client, cohort_size, seed, concurrency)
        self.clock, self.work = clock, work.double().cpu()
        self._start()

    def _durations(self, clients: Tensor) -> Tensor:
        """Simulated seconds of the clients' updates on their devices."""
        return self.clock.duration(clients, self.work[clients])

    def step(self) -> Cohort:
        """The next `cohort_size` reports in time order, refilling freed slots as they arrive (an event loop over K)."""
        idle_order = weighted_sample_without_replacement(self.idle_log_weights(self.slot_client),
                                                         self.cohort_size - 1, self.rng.generator)  # the draw order
        idle_durations = self._durations(idle_order).tolist()
        events = list(zip(self.slot_done.tolist(), range(self.slot_done.numel())))
        heapq.heapify(events)
        reporting, waiting = [], []
        for arrival in range(self.cohort_size):
            self.now, slot = heapq.heappop(events)
            reporting.append(int(self.slot_client[slot]))
            started = arrival - len(waiting)  # idle devices started so far
            if arrival < self.cohort_size - 1 and started < idle_order.numel():
                self.slot_client[slot] = idle_order[started]
                self.slot_done[slot] = self.now + idle_durations[started]
                heapq.heappush(events, (float(self.slot_done[slot]), slot))
            else:
                waiting.append(slot)
        started_early = idle_order[: self.cohort_size - len(waiting)]
        slots = torch.tensor(waiting, dtype=torch.long)
        running = torch.ones(self.slot_client.numel(), dtype=torch.bool)
        running[slots] = False
        starting = weighted_sample_without_replacement(self.idle_log_weights(self.slot_client[running]), slots.numel(),
                                                       self.rng.generator)
        self.slot_client[slots] = starting
        self.slot_done[slots] = self.now + self._durations(starting)
        return Cohort(reporting=torch.tensor(reporting, dtype=torch.long), downloading=starting, downloading_before=started_early)

    def state_dict(self) -> dict[str, Any]:
        """Buffered state plus the clock."""
        return {**super().state_dict(), "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.clock.load_state_dict(state["clock"])


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
        self.now += 1.0
        cohort = torch.nonzero((draws < self.sample_rate) & self.active).squeeze(1)
        return Cohort(reporting=cohort, downloading=cohort)


def make_arrivals(
    kind: str, events_per_client: Tensor, cohort_size: int, seed: int, concurrency: int = 0, delay_spread: float = 1.0,
    clock: DeviceClock | None = None, work: Tensor | None = None, deadline: float | None = None,
) -> ArrivalModel:
    """Builds one of `ARRIVALS`; `clock` and `work` time `clock` (needed) and `synchronous` rounds (with the optional `deadline`)."""
    if kind == "sessions":
        return SessionArrivals(events_per_client, cohort_size, seed)
    if kind == "exponential":
        return ExponentialArrivals(events_per_client, cohort_size, seed, concurrency, delay_spread)
    if kind == "synchronous":
        return SynchronousArrivals(events_per_client, cohort_size, seed, clock, work, deadline)
    if kind == "poisson":
        return PoissonArrivals(events_per_client, cohort_size, seed)
    if kind == "clock":
        if clock is None or work is None:
            raise ValueError("arrival: clock needs a DeviceClock and each client's work per update")
        return ClockArrivals(events_per_client, cohort_size, seed, clock, work, concurrency)
    raise ValueError(f"arrival must be one of {ARRIVALS}, got {kind!r}")
