"""Staleness weights s(Δ) of asynchronous updates, and what happens to a version that left the buffer."""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHTINGS = ("constant", "polynomial", "hinge", "fedbuff")
STALE_POLICIES = ("drop", "clamp", "refresh")


def constant_weight(staleness: Tensor) -> Tensor:
    """s(Δ) = 1."""
    return torch.ones_like(staleness, dtype=torch.float32)


def polynomial_weight(staleness: Tensor, a: float) -> Tensor:
    """s(Δ) = (1 + Δ)^-a."""
    return (1.0 + staleness.float()).pow(-a)


def hinge_weight(staleness: Tensor, a: float, b: float) -> Tensor:
    """s(Δ) = 1 if Δ <= b else 1 / (a (Δ - b) + 1)."""
    delta = staleness.float()
    return torch.where(delta <= b, torch.ones_like(delta), 1.0 / (a * (delta - b) + 1.0))


def fedbuff_weight(staleness: Tensor) -> Tensor:
    """s(Δ) = 1 / sqrt(1 + Δ) (FedBuff, Nguyen et al. 2022)."""
    return (1.0 + staleness.float()).rsqrt()


def staleness_weight(staleness: Tensor, weighting: str, a: float = 0.5, b: float = 4.0) -> Tensor:
    """s(Δ) of integer staleness `(n,)` for one of `WEIGHTINGS`; `a`, `b` as in the formulas above."""
    if weighting == "constant":
        return constant_weight(staleness)
    if weighting == "polynomial":
        return polynomial_weight(staleness, a)
    if weighting == "hinge":
        return hinge_weight(staleness, a, b)
    if weighting == "fedbuff":
        return fedbuff_weight(staleness)
    raise ValueError(f"staleness weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def resolve_stale_versions(base_version: Tensor, latest: int, max_staleness: int, policy: str) -> tuple[Tensor, Tensor]:
    """The version each client computes with and whether it takes part, `(version (n,), keep (n,) bool)`.

    A version older than `latest - max_staleness` has left the ring buffer: `drop` discards the
    client's update, `clamp` computes with the oldest stored version, `refresh` with the latest.
    """
    if policy not in STALE_POLICIES:
        raise ValueError(f"stale_policy must be one of {STALE_POLICIES}, got {policy!r}")
    oldest = max(0, latest - max_staleness)
    expired = base_version < oldest
    keep = torch.ones_like(expired) if policy != "drop" else ~expired
    if policy == "clamp":
        return base_version.clamp_min(oldest), keep
    if policy == "refresh":
        return torch.where(expired, torch.full_like(base_version, latest), base_version), keep
    return base_version, keep


def staleness_weighted_sums(rows: Tensor, weights: Tensor, shares: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(Σ s_i n_i g_i (P,), Σ s_i n_i, Σ n_i)` of updates `rows (n, P)`, staleness weights `s (n,)` and shares `n (n,)`."""
    weighted = weights * shares
    return weighted @ rows, weighted.sum(), shares.sum()


def staleness_weighted_mean(weighted_sum: Tensor, weight_total: float, share_total: float) -> tuple[Tensor, float]:
    """The server's update `Σ s n g / Σ s n (P,)` and its step-size multiplier, the mean weight `Σ s n / Σ n`.

    Adam ignores a gradient's scale, so the staleness weights reach the step through the multiplier.
    """
    return weighted_sum / weight_total, weight_total / share_total
