"""Simulated federated learning for DADRL: devices (clients), arrival models, and the versioned server."""

from lit_rec.federated.arrivals import ARRIVALS, ArrivalModel, BufferedArrivals, ClockArrivals, Cohort, ExponentialArrivals, PoissonArrivals, SessionArrivals, SynchronousArrivals, make_arrivals
from lit_rec.federated.clock import CLOCK_KINDS, DeviceClock, DeviceClockConfig
from lit_rec.federated.buffer import VersionBuffer
from lit_rec.federated.clients import Clients
from lit_rec.federated.gradients import FlatParameters, Windows, WindowLoss
from lit_rec.federated.privacy import GaussianMechanism
from lit_rec.federated.server import Server, ServerStep
from lit_rec.federated.stats import FederatedStats, ReportsFederatedStats

__all__ = [
    "ARRIVALS",
    "ArrivalModel",
    "BufferedArrivals",
    "CLOCK_KINDS",
    "ClockArrivals",
    "Clients",
    "Cohort",
    "DeviceClock",
    "DeviceClockConfig",
    "ExponentialArrivals",
    "FederatedStats",
    "FlatParameters",
    "GaussianMechanism",
    "PoissonArrivals",
    "ReportsFederatedStats",
    "Server",
    "ServerStep",
    "SessionArrivals",
    "SynchronousArrivals",
    "VersionBuffer",
    "WindowLoss",
    "Windows",
    "make_arrivals",
]
