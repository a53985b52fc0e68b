"""A2C math on hand numbers: n-step returns, the loss and its parts, Gumbel-max sampling, clipping, the window (SAC-style) loss."""

import math

import pytest
import torch

from lit_rec.functional.a2c import (
    a2c_loss,
    clip_rows,
    expected_a2c_loss,
    gumbel_actions,
    masked_mean,
    nstep_returns,
    standard_gumbel,
    window_a2c_loss,
)


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


def test_a2c_loss_on_hand_numbers():
    logits = torch.zeros(1, 1, 2)  # pi = (1/2, 1/2)
    actions = torch.tensor([[0]])
    values = torch.tensor([[0.5]])
    returns = torch.tensor([[1.0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, parts = a2c_loss(logits, actions, values, returns, mask, value_coef=0.5, entropy_coef=0.01)
    # advantage 0.5: policy = -log(1/2) * 0.5, value = 0.5 * 0.25, entropy = log 2
    assert math.isclose(parts["policy"].item(), math.log(2) * 0.5, rel_tol=1e-6)
    assert math.isclose(parts["value"].item(), 0.125, rel_tol=1e-6)
    assert math.isclose(parts["entropy"].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(loss.item(), math.log(2) * 0.5 + 0.5 * 0.125 - 0.01 * math.log(2), rel_tol=1e-6)


def test_policy_term_does_not_move_the_critic_and_invalid_steps_do_not_count():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    values = torch.randn(2, 3, requires_grad=True)
    returns = torch.randn(2, 3)
    actions = torch.randint(0, 4, (2, 3))
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, _ = a2c_loss(logits, actions, values, returns, mask, value_coef=1.0, entropy_coef=0.0)
    loss.sum().backward()
    # only the value loss reaches the critic: d/dV 0.5 (R - V)^2 averaged over valid steps
    expected = (values - returns).detach() / mask.sum(1, keepdim=True) * mask
    assert torch.allclose(values.grad, expected, atol=1e-6)
    assert torch.equal(logits.grad[1, 1:], torch.zeros(2, 4))


def test_masked_mean_of_a_row_without_valid_steps_is_zero():
    assert torch.equal(masked_mean(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)), torch.zeros(2))


def test_gumbel_max_samples_from_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(20000, 3)
    actions = gumbel_actions(logits, standard_gumbel((20000, 3), g))
    freq = torch.bincount(actions, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.02)


def test_clip_rows_scales_only_rows_above_the_norm():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clipped, norms = clip_rows(rows, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]), atol=1e-6)


def test_expected_policy_gradient_is_the_mean_of_the_sampled_one_over_actions():
    """Summed over candidates with their known rewards, the policy term's gradient equals Σ_a π(a) ∇(sampled term for a)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 4, requires_grad=True)
    values = torch.tensor([[0.3]])
    rewards = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    bootstrap = torch.tensor([0.7])
    loss, _ = expected_a2c_loss(logits, rewards, values, bootstrap, mask, gamma=0.5, value_coef=0.0, entropy_coef=0.0)
    (expected_grad,) = torch.autograd.grad(loss.sum(), logits)
    probs = logits.detach().softmax(-1)
    mean_grad = torch.zeros_like(logits)
    for a in range(4):
        returns = rewards[..., a] + 0.5 * bootstrap  # Q(s, a): the next state is the same whatever is chosen
        sampled, _ = a2c_loss(logits, torch.tensor([[a]]), values, returns, mask, value_coef=0.0, entropy_coef=0.0)
        (g,) = torch.autograd.grad(sampled.sum(), logits)
        mean_grad += probs[0, 0, a] * g
    assert torch.allclose(expected_grad, mean_grad, atol=1e-6)
    # and it raises the positive's probability
    assert expected_grad[0, 0, 0] < 0 and (expected_grad[0, 0, 1:] > 0).all()


def test_expected_a2c_critic_regresses_on_returns_of_expected_rewards():
    logits = torch.zeros(1, 2, 2)  # pi = 1/2 each: expected reward 1/2 per step
    rewards = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    values = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, parts = expected_a2c_loss(logits, rewards, values, torch.tensor([1.0]), mask, gamma=0.5, value_coef=1.0, entropy_coef=0.0)
    # G1 = 0.5 + 0.5 * 1 = 1, G0 = 0.5 + 0.5 * 1 = 1: value = 0.5 * mean(1, 1) = 0.5
    assert math.isclose(parts["value"].item(), 0.5, rel_tol=1e-6)


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
