"""DQN / Double-DQN targets, the TD losses (one action, and every action in replay) and the epsilon schedule on hand numbers."""

import pytest
import torch

from lit_rec.functional.td import double_dqn_target, dqn_target, epsilon_at, next_state_values, replay_td_loss, td_loss, update_target


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


def test_next_state_values_dqn_takes_the_target_max_ddqn_the_target_at_the_online_argmax():
    next_q_target = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    next_q_online = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    assert next_state_values(next_q_target).tolist() == [5.0, 3.0]
    assert next_state_values(next_q_target, next_q_online).tolist() == [1.0, -1.0]
    # any leading shape: (B, L - 1, C) -> (B, L - 1)
    assert next_state_values(next_q_target.expand(4, 2, 3)).shape == (4, 2)
    with pytest.raises(AssertionError, match="online"):
        next_state_values(next_q_target, next_q_online[:, :2])


def test_replay_td_loss_gives_every_competing_action_its_known_reward():
    # columns: one that does not compete (an accidental hit of a sample), the logged item, two others; gamma V(s') = 0.5 * 2 = 1
    q = torch.tensor([[9.0, 0.9, 5.0, 7.0]], requires_grad=True)
    logged = torch.tensor([1])
    competing = torch.tensor([False, True, True, True])
    next_value = torch.tensor([2.0], requires_grad=True)
    # targets: logged 1 + 1 = 2, others 0 + 1 = 1. MSE: (0.9 - 2)^2 + mean((5 - 1)^2, (7 - 1)^2) = 1.21 + 26
    mse = replay_td_loss(q, logged, competing, next_value, 0.5, "mse")
    assert mse.shape == (1,) and mse.item() == pytest.approx(27.21)
    # Huber (beta 1): 1.1 - 0.5 + mean(4 - 0.5, 6 - 0.5)
    huber = replay_td_loss(q, logged, competing, next_value, 0.5, "huber")
    assert huber.item() == pytest.approx(0.6 + 4.5)
    huber.sum().backward()
    assert q.grad[0, 0] == 0  # the column that does not compete adds nothing
    assert next_value.grad is None  # the bootstrap is a fixed target
    # the full catalogue: every column competes (a scalar True)
    everything = replay_td_loss(q[:, 1:], torch.tensor([0]), torch.tensor(True), next_value, 0.5, "mse")
    assert everything.item() == pytest.approx(27.21)
    with pytest.raises(ValueError, match="huber"):
        replay_td_loss(q, logged, competing, next_value, 0.5, "l1")  # type: ignore[arg-type]


def test_replay_td_loss_double_dqn_bootstrap_is_lower_than_dqn_when_online_and_target_disagree():
    q = torch.tensor([[0.0, 1.0, 0.5]])
    logged, competing = torch.tensor([1]), torch.tensor([True, True, True])
    next_q_target = torch.tensor([[0.2, 2.0, 0.1]])
    next_q_online = torch.tensor([[1.0, 0.0, 0.0]])  # picks column 0: value 0.2, DQN's max is 2.0
    dqn = replay_td_loss(q, logged, competing, next_state_values(next_q_target), 0.5, "mse")
    ddqn = replay_td_loss(q, logged, competing, next_state_values(next_q_target, next_q_online), 0.5, "mse")
    # DQN: targets (1, 2, 1): (1-2)^2 + mean((0-1)^2, (0.5-1)^2); DDQN: targets (0.1, 1.1, 0.1)
    assert dqn.item() == pytest.approx(1.0 + (1.0 + 0.25) / 2)
    assert ddqn.item() == pytest.approx(0.01 + (0.01 + 0.16) / 2)


def test_replay_td_loss_estimates_the_other_actions_on_sampled_columns():
    q = torch.tensor([[0.2, 0.9, 5.0, 7.0]])
    logged, everything, next_value = torch.tensor([1]), torch.tensor(True), torch.tensor([2.0])
    # targets: logged 2, others 1. Columns {1, 2}: the logged column's draw is left out, so the others' mean is (5 - 1)^2
    sampled = replay_td_loss(q, logged, everything, next_value, 0.5, "mse", others=torch.tensor([1, 2]))
    assert sampled.item() == pytest.approx(1.21 + 16.0)
    # every other column drawn: the exact mean over (0.2 - 1)^2, (5 - 1)^2, (7 - 1)^2
    exact = replay_td_loss(q, logged, everything, next_value, 0.5, "mse")
    assert exact.item() == pytest.approx(1.21 + (0.64 + 16.0 + 36.0) / 3)
    assert replay_td_loss(q, logged, everything, next_value, 0.5, "mse", others=torch.tensor([0, 2, 3])).item() == pytest.approx(exact.item())


def _online_and_target() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A linear layer and a BatchNorm (float and integer buffers): online filled with 0 (7 batches tracked), target with 4."""
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    target = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).requires_grad_(False)
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(0.0)
        online[1].num_batches_tracked.fill_(7)
        for p in target.parameters():
            p.fill_(4.0)
    return online, target


def test_update_target_blends_floats_and_copies_integer_buffers():
    online, target = _online_and_target()
    update_target(online, target, 0.25)
    assert target[0].weight.flatten().tolist() == [3.0] * 4  # 0.75 * 4 + 0.25 * 0
    assert int(target[1].num_batches_tracked) == 7


def test_update_target_with_tau_one_is_a_copy():
    online, target = _online_and_target()
    update_target(online, target, 1.0)
    flat = [torch.cat([t.detach().flatten().float() for t in [*m.parameters(), *m.buffers()]]) for m in (online, target)]
    assert torch.equal(*flat)
