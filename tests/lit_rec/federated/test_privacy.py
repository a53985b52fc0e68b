"""Differential privacy: Poisson-sampled cohorts, Gaussian noise on the server's sum, and the epsilon spent."""


import pytest
import torch

pytest.importorskip("opacus", reason="differential privacy needs the optional extra opacus")
from opacus.accountants import RDPAccountant  # noqa: E402

from lit_rec.federated import GaussianMechanism, PoissonArrivals, Server, make_arrivals  # noqa: E402
from lit_rec.federated.gradients import write_flat_gradient  # noqa: E402


def test_noise_has_the_calibrated_scale_and_the_mean_a_fixed_denominator():
    mechanism = GaussianMechanism(noise_multiplier=2.0, clip_norm=0.5, sample_rate=0.1, expected_clients=4.0)
    total = torch.full((40_000,), 8.0)
    noisy = mechanism.privatise(total)
    # (8 + N(0, (2 * 0.5)^2)) / 4: mean 2, std 1/4
    assert noisy.mean().item() == pytest.approx(2.0, abs=0.01)
    assert noisy.std().item() == pytest.approx(0.25, rel=0.03)


def test_epsilon_is_opacus_rdp_for_the_rounds_taken_and_grows_with_them():
    mechanism = GaussianMechanism(noise_multiplier=1.1, clip_norm=1.0, sample_rate=0.02, expected_clients=10.0, delta=1e-5)
    assert mechanism.epsilon == 0.0
    for _ in range(50):
        mechanism.privatise(torch.zeros(3))
    reference = RDPAccountant()
    for _ in range(50):
        reference.step(noise_multiplier=1.1, sample_rate=0.02)
    first = mechanism.epsilon
    assert first == pytest.approx(reference.get_epsilon(1e-5))
    for _ in range(50):
        mechanism.privatise(torch.zeros(3))
    assert mechanism.epsilon > first > 0


def test_mechanism_resumes_with_the_same_noise_and_budget():
    mechanism = GaussianMechanism(1.0, 1.0, 0.1, 5.0, seed=3)
    mechanism.privatise(torch.zeros(4))
    other = GaussianMechanism(1.0, 1.0, 0.1, 5.0, seed=99)
    other.load_state_dict(mechanism.state_dict())
    assert other.epsilon == mechanism.epsilon
    assert torch.equal(other.privatise(torch.zeros(4)), mechanism.privatise(torch.zeros(4)))


def test_a_private_server_steps_every_round_with_noise_even_for_an_empty_cohort():
    params = [torch.nn.Parameter(torch.zeros(3))]
    scales = []

    def apply_step() -> None:
        step = server.step()
        scales.append(step.lr_scale)
        write_flat_gradient(params, step.gradient)
        with torch.no_grad():
            params[0] -= params[0].grad
        server.publish()

    mechanism = GaussianMechanism(1.0, 1.0, 0.5, 2.0, seed=0)
    server = Server(params, max_staleness=2, privacy=mechanism)
    server.start()
    apply_step()  # nobody reported: still a noisy step and a new version
    assert server.version == 1 and scales == [1.0] and params[0].abs().sum() > 0
    assert mechanism.accountant.history[-1][-1] == 1
    replay = GaussianMechanism(1.0, 1.0, 0.5, 2.0, seed=0)
    before = params[0].detach().clone()
    server.receive(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1]))
    replay.privatise(torch.zeros(3))  # bring the copy to the same noise draw
    expected = replay.privatise(torch.tensor([2.0, 0.0, 0.0]))  # fixed denominator 2, not the count 1
    apply_step()
    assert torch.allclose(before - params[0].detach(), expected)
    assert "privacy" in server.state_dict()


def test_poisson_arrivals_sample_each_active_client_independently():
    events = torch.tensor([5, 0, 3, 1] * 50)  # 150 active clients, 50 without events
    arrivals = make_arrivals("poisson", events, cohort_size=15, seed=0)
    assert isinstance(arrivals, PoissonArrivals) and arrivals.sample_rate == pytest.approx(0.1)
    sizes, inactive = [], 0
    for _ in range(400):
        cohort = arrivals.step()
        sizes.append(cohort.reporting.numel())
        inactive += int((events[cohort.reporting] == 0).sum())
        assert torch.equal(cohort.reporting, cohort.downloading)
    assert inactive == 0
    assert sum(sizes) / len(sizes) == pytest.approx(15, rel=0.05)
    assert len(set(sizes)) > 5  # the cohort size varies: independent draws, not a fixed-size sample
