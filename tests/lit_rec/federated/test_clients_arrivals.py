"""Clients (own events, versions, private vectors) and the arrival models."""

import torch

from lit_rec.federated import Clients, ExponentialArrivals, SessionArrivals, SynchronousArrivals, make_arrivals

OFFSETS = torch.tensor([0, 3, 3, 10, 12])  # client 1 has no events


def test_clients_replay_their_own_events_and_start_over_after_the_end():
    clients = Clients(OFFSETS)
    index, valid = clients.events(torch.tensor([0, 3]), 4)
    assert valid.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert index[valid].tolist() == [0, 1, 2, 10, 11]
    clients.advance(torch.tensor([0, 2]), 2)
    assert clients.cursor.tolist() == [2, 0, 2, 0]
    clients.advance(torch.tensor([0, 2]), 2)
    assert clients.cursor.tolist() == [0, 0, 4, 0]  # client 0 reached its end and starts over


def test_private_vectors_take_local_sgd_steps_and_round_trip():
    clients = Clients(OFFSETS, private_dim=2, private_lr=0.5)
    clients.update_private(torch.tensor([2]), torch.tensor([[1.0, -2.0]]))
    assert clients.private[2].tolist() == [-0.5, 1.0] and clients.private[0].abs().sum() == 0
    clients.download(torch.tensor([1, 2]), 7)
    other = Clients(OFFSETS, private_dim=2)
    other.load_state_dict(clients.state_dict())
    assert torch.equal(other.private, clients.private) and other.version.tolist() == [0, 7, 7, 0]


def _activity() -> torch.Tensor:
    return torch.tensor([1, 0, 50, 5, 20, 2, 8, 1, 3, 30])


def test_session_arrivals_favour_active_users_and_their_staleness_is_heavy_tailed():
    arrivals = SessionArrivals(_activity(), cohort_size=2, seed=0)
    counts = torch.zeros(10, dtype=torch.long)
    last_report = torch.zeros(10, dtype=torch.long)
    gaps = []
    for step in range(1, 2001):
        cohort = arrivals.step()
        assert torch.equal(cohort.reporting, cohort.downloading) and cohort.reporting.unique().numel() == 2
        counts[cohort.reporting] += 1
        gaps += (step - last_report[cohort.reporting]).tolist()
        last_report[cohort.reporting] = step
    assert counts[1] == 0  # no events: never reports
    assert counts[2] > 5 * counts[3] > 0  # report rate proportional to activity
    gaps = torch.tensor(gaps, dtype=torch.float)
    assert gaps.max() > 10 * gaps.median()  # rare users come back after many server updates


def test_exponential_arrivals_keep_concurrency_devices_busy():
    arrivals = ExponentialArrivals(_activity(), cohort_size=2, seed=0, concurrency=5)
    for _ in range(50):
        cohort = arrivals.step()
        assert cohort.reporting.numel() == 2 and cohort.downloading.numel() == 2
        assert arrivals.slot_client.unique().numel() == 5
        assert not (arrivals.slot_client == 1).any()


def test_synchronous_arrivals_draw_distinct_active_clients():
    arrivals = SynchronousArrivals(_activity(), cohort_size=4, seed=0)
    assert arrivals.synchronous
    cohort = arrivals.step().reporting
    assert cohort.unique().numel() == 4 and not (cohort == 1).any()


def test_arrival_models_resume_exactly_from_their_state():
    for kind in ("sessions", "exponential", "synchronous"):
        a = make_arrivals(kind, _activity(), 3, seed=1)
        for _ in range(5):
            a.step()
        b = make_arrivals(kind, _activity(), 3, seed=99)
        b.load_state_dict(a.state_dict())
        for _ in range(5):
            x, y = a.step(), b.step()
            assert torch.equal(x.reporting, y.reporting) and torch.equal(x.downloading, y.downloading), kind
