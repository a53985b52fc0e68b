"""FederatedStats: what one server step of a federated module reports to observers (`callbacks.staleness`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class FederatedStats:
    """One server step, as the simulation saw it (identical on every DDP rank).

    staleness: Δ `(n,)` (long) of the accepted updates of the whole cohort (every rank's).
    weights: their staleness weights s(Δ) `(n,)`, as the server weights them.
    reporting: clients that reported this step (accepted or dropped).
    dropped: reports dropped because their version had left the server's ring buffer.
    updates: client updates the server aggregated (all ranks).
    lr_scale: the step-size multiplier the server's step used.
    epsilon: differential privacy spent so far (None: privacy off).
    sim_time: simulated time of this server step (the arrival model's `now`: seconds of the device clock).
    """

    staleness: Tensor
    weights: Tensor
    reporting: int
    dropped: int
    updates: int
    lr_scale: float
    epsilon: float | None = None
    sim_time: float = 0.0


@runtime_checkable
class ReportsFederatedStats(Protocol):
    """A module that exposes its last server step's `FederatedStats` (None before the first step)."""

    federated_stats: FederatedStats | None
