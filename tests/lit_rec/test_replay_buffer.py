"""ReplayBuffer: ring wrap-around, uniform sampling of filled rows, exact state round-trip."""

import pytest
import torch

from lit_rec.replay_buffer import FIELDS, ReplayBuffer


def _batch(ids: list[int], history_len: int = 3, num_candidates: int = 4) -> dict[str, torch.Tensor]:
    """Transitions whose every field encodes the transition id, so rows can be traced."""
    x = torch.tensor(ids)
    return {
        "history": x[:, None].repeat(1, history_len),
        "candidates": x[:, None].repeat(1, num_candidates),
        "action": x % num_candidates,
        "reward": x.float(),
        "next_history": (x + 100)[:, None].repeat(1, history_len),
        "next_candidates": (x + 100)[:, None].repeat(1, num_candidates),
        "done": x % 2 == 0,
    }


def test_wrap_around_overwrites_oldest_rows():
    buffer = ReplayBuffer(capacity=5, history_len=3, num_candidates=4)
    buffer.add(_batch([1, 2, 3]))
    assert len(buffer) == 3 and buffer.position == 3
    buffer.add(_batch([4, 5, 6, 7]))  # 6 and 7 overwrite rows 0 and 1
    assert len(buffer) == 5 and buffer.position == 2
    assert buffer.storage["reward"].tolist() == [6.0, 7.0, 3.0, 4.0, 5.0]
    assert buffer.storage["next_history"][:, 0].tolist() == [106, 107, 103, 104, 105]
    assert buffer.storage["done"].tolist() == [True, False, False, True, False]


def test_batch_larger_than_capacity_keeps_the_newest():
    buffer = ReplayBuffer(capacity=4, history_len=3, num_candidates=4)
    buffer.add(_batch([1]))
    buffer.add(_batch(list(range(10, 20))))  # 10 rows into 4 slots: 16..19 survive
    assert len(buffer) == 4
    assert sorted(buffer.storage["reward"].tolist()) == [16.0, 17.0, 18.0, 19.0]
    buffer.add(_batch([20]))  # the oldest (16) goes next
    assert sorted(buffer.storage["reward"].tolist()) == [17.0, 18.0, 19.0, 20.0]


def test_sample_draws_only_filled_rows_and_is_seeded():
    buffer = ReplayBuffer(capacity=100, history_len=3, num_candidates=4)
    buffer.add(_batch([1, 2, 3]))
    a = buffer.sample(64, torch.Generator().manual_seed(0))
    b = buffer.sample(64, torch.Generator().manual_seed(0))
    assert set(a) == set(FIELDS)
    assert set(a["reward"].tolist()) == {1.0, 2.0, 3.0}
    for name in FIELDS:
        assert torch.equal(a[name], b[name])
    # fields of one sample belong to the same transition
    assert torch.equal(a["history"][:, 0].float(), a["reward"])
    assert torch.equal(a["next_candidates"][:, 0] - 100, a["history"][:, 0])
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(2, 3, 4).sample(1, torch.Generator())


def test_state_dict_round_trip_continues_identically():
    buffer = ReplayBuffer(capacity=5, history_len=3, num_candidates=4)
    buffer.add(_batch([1, 2, 3, 4, 5, 6]))
    restored = ReplayBuffer(capacity=5, history_len=3, num_candidates=4)
    restored.load_state_dict(buffer.state_dict())
    for b in (buffer, restored):
        b.add(_batch([7]))
    for name in FIELDS:
        assert torch.equal(buffer.storage[name], restored.storage[name])
    assert (restored.position, restored.size) == (buffer.position, buffer.size)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=6, history_len=3, num_candidates=4).load_state_dict(buffer.state_dict())
