"""A2C math on hand numbers: n-step returns, the loss and its parts, Gumbel-max sampling, clipping, the window (SAC-style) loss."""

import math

import pytest
import torch

from lit_rec.functional.a2c import clip_rows, nstep_returns, window_a2c_loss


def test_nstep_returns_bootstrap_from_the_last_state():
    rewards = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # R2 = 1 + 0.5*2 = 2, R1 = 0 + 0.5*2 = 1, R0 = 1 + 0.5*1 = 1.5
    returns = nstep_returns(rewards, torch.tensor([2.0]), mask, gamma=0.5)
    assert torch.allclose(returns, torch.tensor([[1.5, 1.0, 2.0]]))


def test_nstep_returns_stop_at_the_end_of_an_episode():
    rewards = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False]])  # the episode ended after two steps: terminal, bootstrap 0
    returns = nstep_returns(rewards, torch.tensor([0.0]), mask, gamma=0.5)
    assert torch.allclose(returns[:, :2], torch.tensor([[1.0, 0.0]]))


def test_clip_rows_scales_only_rows_above_the_norm():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clipped, norms = clip_rows(rows, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]), atol=1e-6)


def _window(p: list[float]) -> torch.Tensor:
    """log_probs `(1, L, 2)` whose logged column 0 has probability p_t."""
    probs = torch.tensor([[[x, 1.0 - x] for x in p]], dtype=torch.float64)
    return probs.log()


def _logged(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The log-probability `(1, L)` of each position's logged column."""
    return log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def test_window_a2c_loss_on_hand_numbers():
    # p_t = pi(logged | s_t), V = (0.3, 0.6, 1.0), gamma 0.5; the last position bootstraps: G_2 = V_2 = 1
    # G_1 = 0.25 + 0.5 * 1 = 0.75, G_0 = 0.5 + 0.5 * 0.75 = 0.875; A_t = 1 - p_t + G_t - V_t = (1.075, 0.9, 0.2)
    p = [0.5, 0.25, 0.8]
    log_probs = _window(p).requires_grad_(True)
    values = torch.tensor([[0.3, 0.6, 1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(1, 3, dtype=torch.long)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, parts = window_a2c_loss(_logged(log_probs, target), values, mask, gamma=0.5, ce_weight=1.0, pg_weight=1.0, value_coef=0.5)
    advantage = [1.075, 0.9, 0.2]
    policy = sum(-math.log(pt) * (1.0 + a) for pt, a in zip(p, advantage))
    value = 0.5 * ((0.875 - 0.3) ** 2 + (0.75 - 0.6) ** 2)  # the last position has no next state in the window: no value term
    assert parts["advantage"].item() == pytest.approx(sum(advantage))
    assert parts["policy"].item() == pytest.approx(policy)
    assert parts["value"].item() == pytest.approx(value)
    assert parts["count"].item() == 3
    assert loss.item() == pytest.approx(policy + 0.5 * value)
    loss.sum().backward()
    # the critic's gradient: -(G_t - V_t) * value_coef at the first two positions, none at the last (its V is the bootstrap)
    assert values.grad[0].tolist() == pytest.approx([-0.5 * 0.575, -0.5 * 0.15, 0.0])


def test_window_a2c_weight_is_clamped_at_zero_and_masked_positions_do_not_count():
    # V_1 = 2 makes A_1 = 1 - 0.25 + 0.75 - 2 = -0.5: with ce_weight 0 its weight would be -0.5, clamped to 0
    p = [0.5, 0.25, 0.8]
    log_probs = _window(p).requires_grad_(True)
    values = torch.tensor([[0.3, 2.0, 1.0]], dtype=torch.float64)
    target = torch.zeros(1, 3, dtype=torch.long)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, parts = window_a2c_loss(_logged(log_probs, target), values, mask, gamma=0.5, ce_weight=0.0, pg_weight=1.0)
    # G_0 = 0.5 + 0.5 * 0.75 = 0.875: A_0 = 1.075; A_2 = 0.2
    assert parts["policy"].item() == pytest.approx(-math.log(0.5) * 1.075 - math.log(0.8) * 0.2)
    parts["policy"].sum().backward()
    assert torch.equal(log_probs.grad[0, 1], torch.zeros(2, dtype=torch.float64))  # no push away from the logged item
    # a padded first position (mask False) adds nothing to the policy, the value or the count
    masked = torch.tensor([[False, True, True]])
    _, parts = window_a2c_loss(_logged(_window(p), target), values, masked, gamma=0.5, ce_weight=1.0, pg_weight=0.0)
    assert parts["policy"].item() == pytest.approx(-math.log(0.25) - math.log(0.8))
    assert parts["value"].item() == pytest.approx(0.5 * (0.75 - 2.0) ** 2)
    assert parts["count"].item() == 2


def test_window_a2c_loss_of_a_window_with_a_pad_target_is_finite():
    # position 0's logged item is PAD (log-prob -inf): masked out, not multiplied into a NaN
    log_probs = torch.log(torch.tensor([[[0.0, 1.0], [0.5, 0.5], [0.8, 0.2]]], dtype=torch.float64)).requires_grad_(True)
    values = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True, True]])
    loss, parts = window_a2c_loss(_logged(log_probs, torch.zeros(1, 3, dtype=torch.long)), values, mask, gamma=0.5)
    assert torch.isfinite(loss).all() and torch.isfinite(parts["policy"]).all()
    loss.sum().backward()
    assert torch.isfinite(log_probs.grad).all() and torch.isfinite(values.grad).all()
