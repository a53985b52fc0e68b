"""DQN / Double-DQN targets, the TD loss and the epsilon schedule on hand numbers."""

import pytest
import torch

from lit_rec.functional.td import double_dqn_target, dqn_target, epsilon_at, td_loss


def test_dqn_target_bootstraps_from_the_target_max_and_stops_at_done():
    reward = torch.tensor([1.0, 0.0, 1.0])
    next_q_target = torch.tensor([[0.2, 0.5, -1.0], [2.0, 1.0, 0.0], [3.0, 3.0, 3.0]])
    done = torch.tensor([False, False, True])
    # 1 + 0.9*0.5, 0 + 0.9*2.0, terminal: 1
    assert torch.allclose(dqn_target(reward, next_q_target, done, 0.9), torch.tensor([1.45, 1.8, 1.0]))


def test_double_dqn_picks_by_online_values_by_target_and_differs_from_dqn():
    reward = torch.tensor([0.0, 1.0])
    next_q_online = torch.tensor([[1.0, 0.0, 0.5], [0.0, 3.0, 1.0]])
    next_q_target = torch.tensor([[0.1, 2.0, 0.3], [0.5, 0.4, 0.6]])
    done = torch.tensor([0.0, 0.0])
    # online argmax: column 0 (target 0.1) and column 1 (target 0.4)
    ddqn = double_dqn_target(reward, next_q_online, next_q_target, done, 0.5)
    assert torch.allclose(ddqn, torch.tensor([0.05, 1.2]))
    # DQN's max over the target overestimates: max is 2.0 and 0.6
    dqn = dqn_target(reward, next_q_target, done, 0.5)
    assert torch.allclose(dqn, torch.tensor([1.0, 1.3]))
    assert (dqn > ddqn).all()


def test_double_dqn_equals_dqn_when_online_and_target_agree():
    reward = torch.tensor([0.5, 0.0])
    q = torch.tensor([[1.0, 2.0], [4.0, 3.0]])
    done = torch.tensor([0.0, 1.0])
    assert torch.allclose(double_dqn_target(reward, q, q, done, 0.9), dqn_target(reward, q, done, 0.9))


def test_td_loss_huber_and_mse_on_hand_numbers():
    q = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    target = torch.tensor([0.5, 1.0, 0.0])
    # Huber: 0.5*0.25 = 0.125, 0, |3|-0.5 = 2.5 -> mean 0.875
    assert td_loss(q, target, "huber").item() == pytest.approx(0.875)
    # MSE: (0.25 + 0 + 9) / 3
    loss = td_loss(q, target, "mse")
    assert loss.item() == pytest.approx(9.25 / 3)
    loss.backward()
    assert torch.allclose(q.grad, 2 * (q.detach() - target) / 3)
    with pytest.raises(ValueError, match="huber"):
        td_loss(q, target, "l1")  # type: ignore[arg-type]


def test_td_loss_does_not_backpropagate_into_the_target():
    q = torch.tensor([1.0], requires_grad=True)
    target = q * 2
    td_loss(q, target, "mse").backward()
    # d/dq (q - stopgrad(2q))^2 = 2 (q - 2q) = -2
    assert q.grad.item() == pytest.approx(-2.0)


def test_epsilon_schedule_is_linear_then_flat():
    assert epsilon_at(0, 1.0, 0.1, 100) == pytest.approx(1.0)
    assert epsilon_at(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert epsilon_at(100, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon_at(10_000, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon_at(5, 1.0, 0.1, 0) == pytest.approx(0.1)
