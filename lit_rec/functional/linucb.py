"""LinUCB math: upper-confidence scores and the batched Sherman-Morrison (Woodbury) update."""

from __future__ import annotations

import torch
from torch import Tensor


def ucb_scores(features: Tensor, theta: Tensor, a_inv: Tensor, alpha: float) -> Tensor:
    """`theta·x + alpha * sqrt(x^T A^-1 x)` for features `(B, C, d)`; returns `(B, C)`."""
    mean = features @ theta
    if alpha == 0:
        return mean
    width = torch.einsum("bcd,de,bce->bc", features, a_inv, features).clamp_min(0).sqrt()
    return mean + alpha * width


def sherman_morrison_update(a_inv: Tensor, x: Tensor) -> Tensor:
    """`(A + X^T X)^-1` from `A^-1` for a batch of rank-one updates `x (B, d)` (Woodbury identity).

    With B = 1 this is Sherman-Morrison: A^-1 - A^-1 x x^T A^-1 / (1 + x^T A^-1 x).
    """
    ax = x @ a_inv  # (B, d) = X A^-1 (A^-1 is symmetric)
    inner = torch.eye(x.shape[0], dtype=x.dtype, device=x.device) + ax @ x.T
    return a_inv - ax.T @ torch.linalg.solve(inner, ax)


def linucb_features(state: Tensor, items: Tensor, item_bias: Tensor) -> Tensor:
    """Joint features `[state*item, item, bias, 1]` of states `(B, r)` and items `(B, C, r)`; `(B, C, 2r+2)`."""
    interaction = state.unsqueeze(1) * items
    ones = torch.ones_like(item_bias)
    return torch.cat([interaction, items, item_bias.unsqueeze(-1), ones.unsqueeze(-1)], dim=-1)
