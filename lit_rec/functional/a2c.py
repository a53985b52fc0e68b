"""Actor-critic math on training windows: n-step returns, the advantage-weighted loss, per-row gradient clipping."""

from __future__ import annotations

import torch
from torch import Tensor


def nstep_returns(rewards: Tensor, bootstrap: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Bootstrapped returns `R_t = r_t + γ R_{t+1}`, `R_T = bootstrap`, over valid steps `(..., T)`.

    `mask (..., T)` marks valid steps (a prefix of each row); past the last valid step the return
    stays the bootstrap value, so a row that ended early bootstraps from where it ended (pass 0 there
    for a terminal state).
    """
    returns = []
    running = bootstrap
    for t in reversed(range(rewards.shape[-1])):
        running = torch.where(mask[..., t], rewards[..., t] + gamma * running, running)
        returns.append(running)
    return torch.stack(returns[::-1], dim=-1)


def clip_scale(norms: Tensor, max_norm: float) -> Tensor:
    """Factors `min(1, max_norm / norm)` that bring gradients of L2 norms `norms` to at most `max_norm`."""
    return (max_norm / (norms + 1e-6)).clamp(max=1.0)


def clip_rows(rows: Tensor, max_norm: float) -> tuple[Tensor, Tensor]:
    """Scales each row of `(n, P)` to L2 norm at most `max_norm`; returns the clipped rows and the norms `(n,)`."""
    norms = rows.norm(dim=1)
    return rows * clip_scale(norms, max_norm).unsqueeze(1), norms


def window_a2c_loss(
    logged: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    ce_weight: float = 1.0,
    pg_weight: float = 1.0,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Actor-critic loss summed over the valid positions of each window `(B,)`, beside the supervised term (SAC, Xin et al. 2020).

    Shapes: `logged (B, L)` the policy's log-probability of the logged item after every prefix,
    `values (B, L)` the critic's V(s_t), `mask (B, L)` the positions that count (a suffix of each
    window), `entropy (B, L)` the policy's entropies (needed when `entropy_coef > 0`). In replay the
    reward of every action is known (1 for the logged item) and actions do not change states, so the
    policy's expected reward at t is `p_t = pi(logged | s_t)`, its return `G_t = p_t + gamma G_{t+1}`
    (bootstrapped from V at the window's last position), and the logged action's advantage
    `A_t = Q(s_t, logged) - V(s_t) = 1 - p_t + G_t - V(s_t)`. The actor's cross-entropy of the logged
    item is weighted by `ce_weight + pg_weight * A_t` (detached, at least 0): the supervised signal plus
    the advantage-weighted policy gradient on the logged action. The critic regresses V(s_t) on G_t
    (positions with a next state in the window). Returns the summed loss and
    `{"policy", "value", "entropy", "advantage"}` summed the same way, and `count` the positions per window.
    """
    if entropy_coef > 0 and entropy is None:
        raise ValueError("window_a2c_loss: entropy_coef > 0 needs the policy's entropies")
    expected_reward = torch.where(mask, logged.detach(), float("-inf")).exp()
    bootstrap = values[:, -1].detach()
    returns = torch.cat([nstep_returns(expected_reward[:, :-1], bootstrap, mask[:, :-1], gamma), bootstrap.unsqueeze(1)], dim=1)
    advantage = (1.0 - expected_reward + returns - values).detach()
    weight = (ce_weight + pg_weight * advantage).clamp_min(0.0)
    m = mask.to(values.dtype)
    has_next = m.clone()
    has_next[:, -1] = 0.0
    policy = torch.where(mask, -logged * weight, 0.0).sum(-1)  # a PAD target's log-prob may be -inf: selected out, not times 0
    value = (0.5 * (returns - values).pow(2) * has_next).sum(-1)
    entropy_sum = torch.where(mask, entropy, 0.0).sum(-1) if entropy is not None else torch.zeros_like(policy)
    loss = policy + value_coef * value - entropy_coef * entropy_sum
    return loss, {"policy": policy, "value": value, "entropy": entropy_sum, "advantage": (advantage * m).sum(-1), "count": m.sum(-1)}
