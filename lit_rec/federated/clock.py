"""DeviceClock: each simulated device's persistent compute speed and network delay, in simulated seconds (as FLSim).

A device's update of `events` replayed events takes `events / speed * jitter + delay` simulated
seconds. Speeds (events per simulated second) and delays are drawn once per device from a seeded
distribution (`DeviceClockConfig.kind`); the optional per-update jitter is drawn at every update.
Everything is vectorised over devices and kept in `state_dict`, so a resumed run draws the same times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lit_rec.sampling import SeededGenerator

CLOCK_KINDS = ("constant", "exponential", "lognormal", "stragglers")
JITTERS = ("none", "exponential", "lognormal")


@dataclass(frozen=True)
class DeviceClockConfig:
    """The devices' speed distribution: one nested argument of the actor-critic methods (`--model.init_args.clock.kind=lognormal`).

    Args:
        kind: how device speeds are drawn: `constant` (all `speed`), `exponential` (seconds per event
            exponential with mean 1 / `speed`), `lognormal` (median `speed`, log spread `sigma`: a heavy
            tail of slow devices), `stragglers` (a `straggler_fraction` of devices `straggler_slowdown`
            times slower than `speed`, persistently).
        speed: the typical device's events per simulated second (the median for `lognormal`).
        sigma: standard deviation of log speed (`lognormal`).
        straggler_fraction: share of persistently slow devices (`stragglers`).
        straggler_slowdown: how many times slower a straggler is (`stragglers`).
        delay: each device's network delay per update (download and upload), simulated seconds.
        delay_sigma: log spread of the devices' delays around `delay` (0: every device `delay`).
        jitter: per-update factor on the compute time: `none`, `exponential` (mean 1), `lognormal` (mean 1).
        jitter_sigma: log spread of the `lognormal` jitter.
    """

    kind: str = "constant"
    speed: float = 50.0
    sigma: float = 1.0
    straggler_fraction: float = 0.1
    straggler_slowdown: float = 10.0
    delay: float = 1.0
    delay_sigma: float = 0.0
    jitter: str = "none"
    jitter_sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in CLOCK_KINDS:
            raise ValueError(f"clock.kind must be one of {CLOCK_KINDS}, got {self.kind!r}")
        if self.jitter not in JITTERS:
            raise ValueError(f"clock.jitter must be one of {JITTERS}, got {self.jitter!r}")
        if self.speed <= 0 or self.sigma < 0 or self.delay < 0 or self.delay_sigma < 0 or self.jitter_sigma < 0:
            raise ValueError(f"clock needs speed > 0 and sigma, delay, delay_sigma, jitter_sigma >= 0, got {self}")
        if not 0 <= self.straggler_fraction <= 1 or self.straggler_slowdown < 1:
            raise ValueError(f"clock needs 0 <= straggler_fraction <= 1 and straggler_slowdown >= 1, got {self}")

    @classmethod
    def of(cls, value: DeviceClockConfig | Mapping[str, Any]) -> DeviceClockConfig:
        """The config itself, or one from its fields (what a checkpoint written by the CLI holds in its hyper-parameters)."""
        return value if isinstance(value, cls) else cls(**value)


class DeviceClock:
    """Every device's speed `(U,)` and delay `(U,)`, drawn once; `duration(devices, events)` in simulated seconds."""

    def __init__(self, config: DeviceClockConfig, num_devices: int, seed: int) -> None:
        """Settings (each a config key).

        Args:
            config: the speed, delay and jitter distributions.
            num_devices: devices (clients) to draw.
            seed: seed of the clock's generator (the same seed gives the same devices to every method).
        """
        self.config = config
        self.rng = SeededGenerator(seed)
        self.speed = self._speeds(num_devices)
        self.delay = self._delays(num_devices)

    def _speeds(self, n: int) -> Tensor:
        """Events per simulated second of `n` devices, by `config.kind`."""
        c, g = self.config, self.rng.generator
        if c.kind == "constant":
            return torch.full((n,), c.speed, dtype=torch.float64)
        if c.kind == "exponential":
            seconds_per_event = torch.empty(n, dtype=torch.float64).exponential_(generator=g) / c.speed
            return 1.0 / seconds_per_event.clamp_min(1e-12)
        if c.kind == "lognormal":
            return c.speed * torch.exp(-c.sigma * torch.randn(n, generator=g, dtype=torch.float64))
        slow = torch.rand(n, generator=g, dtype=torch.float64) < c.straggler_fraction
        return torch.where(slow, c.speed / c.straggler_slowdown, c.speed).double()

    def _delays(self, n: int) -> Tensor:
        """Network delay per update of `n` devices."""
        c = self.config
        if c.delay_sigma == 0:
            return torch.full((n,), c.delay, dtype=torch.float64)
        return c.delay * torch.exp(c.delay_sigma * torch.randn(n, generator=self.rng.generator, dtype=torch.float64))

    @property
    def median_speed(self) -> float:
        """The devices' median speed (events per simulated second)."""
        return float(self.speed.median())

    def centralised(self) -> DeviceClock:
        """A datacenter's clock (A2C-F): identical workers at this population's median speed, no delay, no jitter."""
        config = replace(self.config, kind="constant", speed=self.median_speed, delay=0.0, delay_sigma=0.0, jitter="none")
        return DeviceClock(config, self.speed.numel(), seed=0)

    def duration(self, devices: Tensor, events: Tensor) -> Tensor:
        """Simulated seconds `(n,)` the updates of `devices (n,)` replaying `events (n,)` take: events / speed x jitter + delay."""
        devices = devices.cpu()
        compute = events.cpu().double() / self.speed[devices]
        c, g = self.config, self.rng.generator
        if c.jitter == "exponential":
            compute = compute * torch.empty(devices.numel(), dtype=torch.float64).exponential_(generator=g)
        elif c.jitter == "lognormal":
            noise = torch.randn(devices.numel(), generator=g, dtype=torch.float64)
            compute = compute * torch.exp(c.jitter_sigma * noise - c.jitter_sigma**2 / 2)
        return compute + self.delay[devices]

    def state_dict(self) -> dict[str, Any]:
        """Generator state and the devices' speeds and delays."""
        return {"rng": self.rng.state_dict(), "speed": self.speed.clone(), "delay": self.delay.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        if state["speed"].shape != self.speed.shape:
            raise ValueError(f"DeviceClock: checkpoint has {state['speed'].numel()} devices, the data {self.speed.numel()}")
        self.rng.load_state_dict(state["rng"])
        self.speed, self.delay = state["speed"].clone(), state["delay"].clone()
