"""ReplayEnv and UserModelEnv on a 3-user toy log: candidates, rewards, transitions, epochs, resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_rec.envs import ExcludedItemSampler, ReplayEnv, UserModelEnv

NUM_ITEMS = 12
# user 0 clicked 1, 2, 3; user 1 clicked 4, 5; user 2 clicked 6 (chronological train positives)
SEQUENCES = [[1, 2, 3], [4, 5], [6]]


class _Events(SimpleNamespace):
    """Train events `user`, `history`, `item` (like `EventTensors`)."""

    def __len__(self) -> int:
        return self.user.numel()


def _tensors(history_len: int = 2) -> SimpleNamespace:
    """The fields of `RecTensors` the environments read, for the toy log."""
    users, items, histories = [], [], []
    for user, sequence in enumerate(SEQUENCES):
        for t, item in enumerate(sequence):
            previous = [0] * history_len + sequence[:t]
            users.append(user)
            items.append(item)
            histories.append(previous[-history_len:])
    lengths = torch.tensor([len(s) for s in SEQUENCES])
    return SimpleNamespace(
        num_users=len(SEQUENCES),
        num_items=NUM_ITEMS,
        history_len=history_len,
        train=_Events(user=torch.tensor(users), item=torch.tensor(items), history=torch.tensor(histories)),
        train_offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        train_sequence=torch.tensor(items),
    )


def _logged_column(env: ReplayEnv) -> torch.Tensor:
    """Where the logged item sits (negatives are never a train item of the user, so it is unique)."""
    hits = env.observe()["candidates"] == env.logged_item()[:, None]
    assert (hits.sum(1) == 1).all()
    return hits.float().argmax(1)


def test_sampler_is_uniform_outside_each_users_items():
    offsets = torch.tensor([0, 3, 3, 6])
    items = torch.tensor([5, 1, 5, 2, 3, 4])  # user 0: {1, 5} (a repeat); user 1: none; user 2: {2, 3, 4}
    sampler = ExcludedItemSampler(offsets, items, num_items=6)
    users = torch.tensor([0, 1, 2]).repeat_interleave(4000)
    draws = sampler.sample(users, 3, torch.Generator().manual_seed(0))
    assert draws.shape == (12000, 3)
    for user, allowed in ((0, {2, 3, 4, 6}), (1, {1, 2, 3, 4, 5, 6}), (2, {1, 5, 6})):
        mine = draws[users == user].flatten()
        assert set(mine.tolist()) == allowed
        frequency = torch.bincount(mine, minlength=7)[sorted(allowed)].float() / mine.numel()
        assert torch.allclose(frequency, torch.full_like(frequency, 1 / len(allowed)), atol=0.02)


def test_replay_rewards_the_logged_column_and_appends_the_logged_item():
    env = ReplayEnv(_tensors(), num_envs=3, train_negatives=4, seed=0)
    obs = env.observe()
    assert sorted(obs["user"].tolist()) == [0, 1, 2]  # the first permutation fills the slots
    assert obs["candidates"].shape == (3, 5)
    assert (obs["history"] == 0).all()  # episodes start before the first click
    for user, row in zip(obs["user"].tolist(), obs["candidates"].tolist()):
        assert SEQUENCES[user][0] in row
        assert not set(row) & (set(SEQUENCES[user]) - {SEQUENCES[user][0]})  # negatives avoid train items
    right = _logged_column(env)
    wrong = (right + 1) % 5
    # users 0 and 1 get it right, user 2 wrong
    action = torch.where(obs["user"] == 2, wrong, right)
    reward, done = env.step(action)
    assert reward.tolist() == (obs["user"] != 2).float().tolist()
    assert done.tolist() == (obs["user"] == 2).tolist()  # user 2 has one event
    after = env.observe()
    for slot, user in enumerate(obs["user"].tolist()):
        if user != 2:
            assert after["user"][slot] == user
            assert after["history"][slot].tolist() == [0, SEQUENCES[user][0]]
    # the slot of user 2 starts the next user from a fresh permutation, at the beginning
    assert env.epoch == 2


def test_logged_column_is_random_and_hidden():
    env = ReplayEnv(_tensors(), num_envs=3, train_negatives=4, seed=1)
    columns = []
    for _ in range(200):
        columns.append(_logged_column(env))
        env.step(torch.zeros(3, dtype=torch.long))
    counts = torch.bincount(torch.cat(columns), minlength=5)
    assert (counts > 60).all()  # 600 draws over 5 columns
    assert set(env.observe()) == {"user", "history", "candidates"}


def test_one_slot_walks_every_user_once_per_epoch():
    env = ReplayEnv(_tensors(), num_envs=1, train_negatives=2, seed=3)
    visited, histories = [], []
    for _ in range(6):  # 6 train events = one epoch over users
        obs = env.observe()
        visited.append(int(obs["user"]))
        histories.append(obs["history"][0].tolist())
        env.step(torch.zeros(1, dtype=torch.long))
    # each user appears as one contiguous episode of its train length
    episodes = [visited[0]] + [u for prev, u in zip(visited, visited[1:]) if u != prev]
    assert sorted(episodes) == [0, 1, 2]
    assert sorted(visited) == [0, 0, 0, 1, 1, 2]
    expected = {0: [[0, 0], [0, 1], [1, 2]], 1: [[0, 0], [0, 4]], 2: [[0, 0]]}
    assert [h for u, h in zip(visited, histories) if u == 0] == expected[0]
    assert [h for u, h in zip(visited, histories) if u == 1] == expected[1]


def _run(env: ReplayEnv, policy: str, steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    histories, rewards = [], []
    for _ in range(steps):
        obs = env.observe()
        histories.append(obs["history"].clone())
        action = _logged_column(env) if policy == "logged" else torch.zeros(env.num_envs, dtype=torch.long)
        reward, _ = env.step(action)
        rewards.append(reward)
    return histories, rewards


def test_policies_change_states_in_user_model_env_but_not_in_replay():
    replay_a, replay_b = (_run(ReplayEnv(_tensors(), 3, 4, seed=0), p, 12)[0] for p in ("logged", "first"))
    assert all(torch.equal(a, b) for a, b in zip(replay_a, replay_b))
    model_a, model_b = (_run(UserModelEnv(_tensors(), 3, 4, seed=0), p, 12)[0] for p in ("logged", "first"))
    assert any(not torch.equal(a, b) for a, b in zip(model_a, model_b))


def test_user_model_appends_only_clicked_items():
    env = UserModelEnv(_tensors(), num_envs=3, train_negatives=4, seed=0)
    for _ in range(20):
        before = env.observe()
        action = torch.randint(0, 5, (3,), generator=torch.Generator().manual_seed(_))
        chosen = before["candidates"].gather(1, action[:, None]).squeeze(1)
        reward, done = env.step(action)
        after = env.observe()["history"]
        for slot in range(3):
            if done[slot]:
                assert (after[slot] == 0).all()  # a new episode starts empty
            elif reward[slot] == 1:
                assert after[slot].tolist() == before["history"][slot, 1:].tolist() + [int(chosen[slot])]
            else:
                assert torch.equal(after[slot], before["history"][slot])


def test_click_model_prefers_logged_items():
    env = UserModelEnv(_tensors(), num_envs=3, train_negatives=4, seed=0, click_epochs=200)
    tensors = _tensors()
    others = torch.tensor([[7, 8, 9, 10, 11, 12]]).repeat(len(tensors.train), 1)
    p_logged = env.click_probability(tensors.train.user, tensors.train.history[:], tensors.train.item[:, None])
    p_other = env.click_probability(tensors.train.user, tensors.train.history[:], others)
    assert p_logged.mean() > p_other.mean() + 0.3
    # fitted deterministically from the seed
    again = UserModelEnv(_tensors(), num_envs=3, train_negatives=4, seed=0, click_epochs=200)
    assert all(torch.equal(a, b) for a, b in zip(env.click_model.parameters(), again.click_model.parameters()))


@pytest.mark.parametrize("env_class", [ReplayEnv, UserModelEnv])
def test_state_dict_resumes_exactly(env_class):
    env = env_class(_tensors(), num_envs=2, train_negatives=3, seed=5)
    _run(env, "first", 7)
    restored = env_class(_tensors(), num_envs=2, train_negatives=3, seed=99)
    restored.load_state_dict(env.state_dict())
    for _ in range(15):
        a, b = env.observe(), restored.observe()
        assert all(torch.equal(a[k], b[k]) for k in a)
        action = torch.ones(2, dtype=torch.long)
        assert all(torch.equal(x, y) for x, y in zip(env.step(action), restored.step(action)))
    with pytest.raises(ValueError, match="slots"):
        env_class(_tensors(), num_envs=3, train_negatives=3, seed=5).load_state_dict(env.state_dict())
