"""A2C math on hand numbers: n-step returns, the loss and its parts, Gumbel-max sampling, clipping."""

import math

import torch

from lit_rec.functional.a2c import a2c_loss, clip_rows, expected_a2c_loss, gumbel_actions, masked_mean, nstep_returns, standard_gumbel


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
