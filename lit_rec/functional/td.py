"""Temporal-difference math of DQN and Double DQN: targets, loss and the epsilon schedule."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def dqn_target(reward: Tensor, next_q_target: Tensor, done: Tensor, gamma: float) -> Tensor:
    """`r + gamma * (1 - done) * max_a' Q_target(s', a')`; rewards `(B,)`, next Q-values `(B, C)` -> `(B,)`."""
    assert next_q_target.dim() == 2 and next_q_target.shape[0] == reward.shape[0], f"next_q_target {tuple(next_q_target.shape)} is not (B, C)"
    bootstrap = next_q_target.max(dim=1).values
    return reward + gamma * (1.0 - done.to(reward.dtype)) * bootstrap


def double_dqn_target(reward: Tensor, next_q_online: Tensor, next_q_target: Tensor, done: Tensor, gamma: float) -> Tensor:
    """`r + gamma * (1 - done) * Q_target(s', argmax_a' Q_online(s', a'))` (van Hasselt et al. 2016) -> `(B,)`."""
    assert next_q_online.shape == next_q_target.shape, f"online {tuple(next_q_online.shape)} != target {tuple(next_q_target.shape)}"
    best = next_q_online.argmax(dim=1, keepdim=True)
    bootstrap = next_q_target.gather(1, best).squeeze(1)
    return reward + gamma * (1.0 - done.to(reward.dtype)) * bootstrap


def td_loss(q_taken: Tensor, target: Tensor, kind: Literal["huber", "mse"] = "huber") -> Tensor:
    """Mean TD loss between `Q(s, a)` `(B,)` and the (detached) target `(B,)`: Huber (delta 1) or squared error."""
    target = target.detach()
    if kind == "huber":
        return torch.nn.functional.smooth_l1_loss(q_taken, target, beta=1.0)
    if kind == "mse":
        return torch.nn.functional.mse_loss(q_taken, target)
    raise ValueError(f"td_loss kind must be 'huber' or 'mse', got {kind!r}")


def epsilon_at(step: int, start: float, end: float, decay_steps: int) -> float:
    """Linear epsilon schedule: `start` at step 0, `end` from `decay_steps` on."""
    if decay_steps <= 0:
        return end
    fraction = min(max(step, 0) / decay_steps, 1.0)
    return start + fraction * (end - start)


def next_state_values(next_q_target: Tensor, next_q_online: Tensor | None = None) -> Tensor:
    """V(s') `(...)` from Q-values `(..., C)` of the next states: `max Q_target` (DQN), or `Q_target` at `argmax Q_online` (Double DQN)."""
    if next_q_online is None:
        return next_q_target.max(dim=-1).values
    assert next_q_online.shape == next_q_target.shape, f"online {tuple(next_q_online.shape)} != target {tuple(next_q_target.shape)}"
    return next_q_target.gather(-1, next_q_online.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _elementwise_loss(error: Tensor, kind: str) -> Tensor:
    """Huber (delta 1) or squared loss of each TD error."""
    if kind == "huber":
        magnitude = error.abs()
        return torch.where(magnitude < 1.0, 0.5 * error * error, magnitude - 0.5)
    if kind == "mse":
        return error * error
    raise ValueError(f"td loss kind must be 'huber' or 'mse', got {kind!r}")


def replay_td_loss(
    q: Tensor,
    logged: Tensor,
    competing: Tensor,
    next_value: Tensor,
    gamma: float,
    kind: Literal["huber", "mse"] = "huber",
    others: Tensor | None = None,
) -> Tensor:
    """TD loss per state `(...)` for every action at once, in replay: `Q*(s, a) = 1[a = logged] + gamma V(s')`.

    In offline replay the reward of every action is known (1 for the logged item, 0 otherwise) and the
    next state does not depend on the action, so each competing column has a target. `q (..., C)` finite
    scores, `logged (...)` the logged column, `competing` bool broadcastable to `q` (the logged column
    competes), `next_value (...)` (detached here). The loss is the logged action's TD error (Huber or
    squared) plus the mean over the other competing actions: over every column, or estimated on the
    columns `others (K,)` (an unbiased estimate when they are drawn uniformly; a draw of the logged
    column is left out).
    """
    bootstrap = gamma * next_value.detach()
    logged_q = q.gather(-1, logged.unsqueeze(-1)).squeeze(-1)
    columns = torch.arange(q.shape[-1], device=q.device) if others is None else others
    other_q = q if others is None else q[..., others]
    counted = columns != logged.unsqueeze(-1)
    if competing.dim() > 0:
        counted = counted & (competing if others is None else competing[..., others])
    per_action = _elementwise_loss(other_q - bootstrap.unsqueeze(-1), kind) * counted
    mean_other = per_action.sum(-1) / counted.sum(-1).clamp_min(1)
    return _elementwise_loss(logged_q - 1.0 - bootstrap, kind) + mean_other


@torch.no_grad()
def update_target(online: torch.nn.Module, target: torch.nn.Module, tau: float) -> None:
    """`target <- (1 - tau) * target + tau * online` for parameters and float buffers (tau = 1: copy)."""
    pairs = [*zip(target.parameters(), online.parameters(), strict=True), *zip(target.buffers(), online.buffers(), strict=True)]
    for t, o in pairs:
        if tau < 1 and t.is_floating_point():
            t.lerp_(o, tau)
        else:
            t.copy_(o)
