"""Differential privacy for the federated server: Gaussian noise on the sum of clipped client updates, and its accountant."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rec.sampling import SeededGenerator


def _rdp_accountant() -> Any:
    """Opacus's RDP accountant (an optional extra: `pip install 'lit_rec[privacy]'`)."""
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("differential privacy needs opacus: pip install 'lit_rec[privacy]' (or opacus)") from error
    return RDPAccountant()


class GaussianMechanism:
    """User-level DP-FedAvg-style mechanism: noise `N(0, (σ C)^2)` on the sum of per-client updates clipped to `C`.

    Each client (one user) sends one update per round, clipped to L2 norm `clip_norm` and
    weighted by a staleness weight in (0, 1], so one user changes the weighted sum by at most
    `clip_norm`. The server adds Gaussian noise of standard deviation `noise_multiplier *
    clip_norm` and divides by the *expected* cohort size (the actual count would leak who
    took part). Cohorts must be Poisson-sampled with rate `sample_rate` (`PoissonArrivals`),
    which is what the RDP accountant (opacus) assumes when it reports `epsilon` at `delta`.
    Noise comes from a seeded generator on the CPU, so every DDP rank adds the same noise.
    """

    def __init__(self, noise_multiplier: float, clip_norm: float, sample_rate: float, expected_clients: float, delta: float = 1e-5, seed: int = 0) -> None:
        """Settings (each a config key).

        Args:
            noise_multiplier: σ, the noise's standard deviation in units of `clip_norm`.
            clip_norm: C, the L2 bound of each client's update.
            sample_rate: q, each client's probability of reporting in a round.
            expected_clients: q x number of clients, the denominator of the noisy mean.
            delta: the δ at which epsilon is reported.
            seed: seed of the noise generator.
        """
        if noise_multiplier <= 0 or clip_norm <= 0:
            raise ValueError(f"noise_multiplier and clip_norm must be > 0, got {noise_multiplier} and {clip_norm}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.noise_multiplier, self.clip_norm, self.sample_rate = noise_multiplier, clip_norm, sample_rate
        self.expected_clients, self.delta = expected_clients, delta
        self.accountant = _rdp_accountant()
        self.rng = SeededGenerator(seed)

    def privatise(self, update_sum: Tensor) -> Tensor:
        """The noisy mean `(Σ s_i g_i + N(0, σ² C² I)) / expected_clients` of one round; the accountant records it."""
        noise = torch.randn(update_sum.shape, generator=self.rng.generator, dtype=update_sum.dtype)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return (update_sum + self.noise_multiplier * self.clip_norm * noise.to(update_sum.device)) / self.expected_clients

    @property
    def epsilon(self) -> float:
        """Privacy spent so far: epsilon at `delta` (0 before the first round)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(self.delta))

    def state_dict(self) -> dict[str, Any]:
        """Noise generator and the accountant's history."""
        return {"rng": self.rng.state_dict(), "accountant": dict(self.accountant.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.rng.load_state_dict(state["rng"])
        self.accountant.load_state_dict(state["accountant"])
