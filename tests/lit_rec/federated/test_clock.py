"""The device clock (`lit_rec.federated.clock`) and the arrival models it times: hand-computed arrival times."""

import math

import pytest
import torch

from lit_rec.federated import ClockArrivals, DeviceClock, DeviceClockConfig, ExponentialArrivals, SynchronousArrivals, make_arrivals


def _clock(speed: list[float], delay: list[float], **config) -> DeviceClock:
    """A clock whose devices have the given speeds and delays."""
    clock = DeviceClock(DeviceClockConfig(**config), len(speed), seed=0)
    clock.speed, clock.delay = torch.tensor(speed, dtype=torch.float64), torch.tensor(delay, dtype=torch.float64)
    return clock


def _replay(arrivals, steps: int) -> list[tuple[float, list[int], list[int]]]:
    """`(now, reporting clients, their staleness)` per server step, the versions tracked as the module does."""
    version = torch.zeros(arrivals.activity.numel(), dtype=torch.long)
    out = []
    for step in range(steps):  # the server holds version `step` before this step
        cohort = arrivals.step()
        if cohort.downloading_before is not None:  # started while the buffer filled: on the version before the step
            version[cohort.downloading_before] = step
        order = cohort.reporting.argsort()  # within a buffer, report by client id
        reporting = cohort.reporting[order]
        out.append((arrivals.now, reporting.tolist(), (step - version[reporting]).tolist()))
        version[cohort.downloading] = step + 1
    return out


# three devices of 10 events each: 10 / speed + delay = 2, 3.5 and 5 simulated seconds an update
SPEEDS, DELAYS, WORK = [10.0, 4.0, 2.5], [1.0, 1.0, 1.0], torch.tensor([10, 10, 10])


def test_an_update_takes_its_events_over_the_device_speed_plus_its_delay():
    clock = _clock(SPEEDS, DELAYS)
    assert clock.duration(torch.tensor([2, 0, 1]), torch.tensor([10, 10, 20])).tolist() == [5.0, 2.0, 6.0]


def test_with_a_buffer_of_one_every_update_is_applied_when_it_arrives():
    # all three devices train at once; each restarts on the new version when it reports:
    # device 0 at 2, 4, 6, 8; device 1 at 3.5, 7; device 2 at 5
    arrivals = ClockArrivals(WORK, cohort_size=1, seed=0, clock=_clock(SPEEDS, DELAYS), work=WORK, concurrency=3)
    assert _replay(arrivals, 7) == [
        (2.0, [0], [0]),  # v0 -> v1
        (3.5, [1], [1]),  # started on v0, the server is at v1
        (4.0, [0], [1]),  # started on v1 at 2, v2 published at 3.5
        (5.0, [2], [3]),  # started on v0: v1, v2, v3 published since
        (6.0, [0], [1]),
        (7.0, [1], [3]),  # started on v2 at 3.5
        (8.0, [0], [1]),
    ]


def test_a_buffer_of_two_steps_when_its_second_update_arrives():
    # step 1 at 3.5 (devices 0 and 1, both restart on v1: done at 5.5 and 7); step 2 at 5.5 (device 2 from v0,
    # device 0 from v1; restart on v2: done at 10.5 and 7.5); step 3 at 7.5 (device 1 from v1, device 0 from v2)
    arrivals = ClockArrivals(WORK, cohort_size=2, seed=0, clock=_clock(SPEEDS, DELAYS), work=WORK, concurrency=3)
    assert _replay(arrivals, 3) == [(3.5, [0, 1], [0, 0]), (5.5, [0, 2], [0, 1]), (7.5, [0, 1], [0, 1])]


def test_a_synchronous_round_lasts_as_long_as_its_slowest_member_and_a_deadline_drops_the_late():
    rounds = SynchronousArrivals(WORK, cohort_size=3, seed=0, clock=_clock(SPEEDS, DELAYS), work=WORK)
    assert sorted(rounds.step().reporting.tolist()) == [0, 1, 2] and rounds.now == 5.0
    rounds.step()
    assert rounds.now == 10.0
    late = SynchronousArrivals(WORK, cohort_size=3, seed=0, clock=_clock(SPEEDS, DELAYS), work=WORK, deadline=4.0)
    cohort = late.step()
    assert sorted(cohort.reporting.tolist()) == [0, 1] and torch.equal(cohort.reporting, cohort.downloading)
    assert late.now == 4.0  # the server waited until the deadline
    on_time = SynchronousArrivals(WORK, cohort_size=2, seed=1, clock=_clock([10.0, 10.0, 10.0], DELAYS), work=WORK, deadline=4.0)
    on_time.step()
    assert on_time.now == 2.0  # nobody late: the round ends with its slowest member


def test_synchronous_cohorts_do_not_depend_on_the_clock():
    activity = torch.tensor([1, 0, 50, 5, 20, 2, 8, 1, 3, 30])
    plain = SynchronousArrivals(activity, cohort_size=3, seed=4)
    timed = SynchronousArrivals(activity, 3, 4, DeviceClock(DeviceClockConfig(kind="lognormal", jitter="exponential"), 10, 7), activity)
    for _ in range(20):
        assert torch.equal(plain.step().reporting, timed.step().reporting)
    assert plain.now == 20.0 and timed.now > 0


@pytest.mark.parametrize("kind", ["clock", "synchronous"])
def test_a_restored_state_continues_identically(kind):
    activity = torch.tensor([1, 0, 50, 5, 20, 2, 8, 1, 3, 30])
    config = DeviceClockConfig(kind="lognormal", sigma=1.5, jitter="lognormal", delay_sigma=0.5)

    def build():
        return make_arrivals(kind, activity, 2, seed=3, concurrency=4, clock=DeviceClock(config, 10, 5), work=activity.clamp_max(8))

    arrivals = build()
    for _ in range(7):
        arrivals.step()
    state = arrivals.state_dict()
    expected = [(arrivals.step(), arrivals.now) for _ in range(10)]
    restored = build()
    restored.load_state_dict(state)
    for cohort, now in expected:
        again = restored.step()
        assert torch.equal(again.reporting, cohort.reporting) and torch.equal(again.downloading, cohort.downloading)
        assert restored.now == now


def test_speed_distributions():
    n = 20000
    constant = DeviceClock(DeviceClockConfig(kind="constant", speed=40.0, delay=2.0), n, 0)
    assert bool((constant.speed == 40.0).all()) and bool((constant.delay == 2.0).all())
    lognormal = DeviceClock(DeviceClockConfig(kind="lognormal", speed=40.0, sigma=1.5), n, 0)
    assert lognormal.median_speed == pytest.approx(40.0, rel=0.05)
    assert float((1 / lognormal.speed).max()) > 50 / 40.0  # a heavy tail of slow devices
    stragglers = DeviceClock(DeviceClockConfig(kind="stragglers", speed=40.0, straggler_fraction=0.2, straggler_slowdown=8.0), n, 0)
    assert set(stragglers.speed.unique().tolist()) == {5.0, 40.0}
    assert float((stragglers.speed == 5.0).double().mean()) == pytest.approx(0.2, abs=0.02)
    exponential = DeviceClock(DeviceClockConfig(kind="exponential", speed=40.0), n, 0)
    assert float((1 / exponential.speed).mean()) == pytest.approx(1 / 40.0, rel=0.05)
    spread = DeviceClock(DeviceClockConfig(delay=2.0, delay_sigma=0.5), n, 0)
    assert float(spread.delay.median()) == pytest.approx(2.0, rel=0.05) and float(spread.delay.std()) > 0.5


@pytest.mark.parametrize("jitter", ["exponential", "lognormal"])
def test_per_update_jitter_has_mean_one(jitter):
    clock = DeviceClock(DeviceClockConfig(speed=10.0, delay=0.0, jitter=jitter, jitter_sigma=0.5), 4, 0)
    seconds = clock.duration(torch.zeros(50000, dtype=torch.long), torch.full((50000,), 10))
    assert float(seconds.mean()) == pytest.approx(1.0, rel=0.03) and float(seconds.std()) > 0.3


def test_a_datacenter_runs_at_the_median_device_speed_without_delay():
    clock = DeviceClock(DeviceClockConfig(kind="lognormal", sigma=2.0, delay=3.0, jitter="exponential"), 101, 0)
    datacenter = clock.centralised()
    assert bool((datacenter.speed == clock.median_speed).all()) and bool((datacenter.delay == 0).all())
    assert datacenter.duration(torch.tensor([0, 5]), torch.tensor([10, 20])).tolist() == [10 / clock.median_speed, 20 / clock.median_speed]


def test_exponential_arrivals_are_the_clock_with_lognormal_speeds_and_exponential_jitter_for_a_buffer_of_one():
    # same staleness distribution: lognormal devices of spread sigma, unit work at median speed 1, no delay; with
    # K > 1 `exponential` refills its slots only at the step, the clock as each report arrives (more in flight)
    activity = torch.randint(1, 50, (2000,), generator=torch.Generator().manual_seed(0))
    sigma, steps = 1.0, 3000
    clock = DeviceClock(DeviceClockConfig(kind="lognormal", speed=1.0, sigma=sigma, delay=0.0, jitter="exponential"), 2000, 1)
    models = {"exponential": ExponentialArrivals(activity, 1, 0, concurrency=4, delay_spread=sigma),
              "clock": ClockArrivals(activity, 1, 0, clock, torch.ones(2000), concurrency=4)}
    mean_staleness, step_time = {}, {}
    for name, arrivals in models.items():
        staleness = [s for _, _, stale in _replay(arrivals, steps) for s in stale]
        mean_staleness[name] = sum(staleness) / len(staleness)
        step_time[name] = arrivals.now / steps
    assert mean_staleness["clock"] == pytest.approx(mean_staleness["exponential"], rel=0.1)
    assert step_time["clock"] == pytest.approx(step_time["exponential"], rel=0.2)  # per-seed spread of the slow devices: ~15%


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="clock.kind"):
        DeviceClockConfig(kind="pareto")
    with pytest.raises(ValueError, match="clock.jitter"):
        DeviceClockConfig(jitter="uniform")
    with pytest.raises(ValueError, match="arrival: clock needs"):
        make_arrivals("clock", torch.tensor([1, 2]), 1, 0)
    assert DeviceClockConfig.of({"kind": "lognormal", "sigma": 2.0}) == DeviceClockConfig(kind="lognormal", sigma=2.0)
    assert not math.isnan(DeviceClockConfig().speed)


def test_a_slot_freed_while_the_buffer_fills_is_refilled_at_once_by_an_idle_device():
    # devices 0-2 as above train; device 3 (idle, 10 / 10 + 1 = 2 s an update) starts when device 0 reports at 2,
    # on v0, and reports at 4, before device 2 (5): the buffer of three is 0 (2), 1 (3.5), 3 (4); step at 4
    work = torch.tensor([10, 10, 10, 10])
    clock = _clock([10.0, 4.0, 2.5, 10.0], [1.0, 1.0, 1.0, 1.0])
    arrivals = ClockArrivals(work, cohort_size=3, seed=0, clock=clock, work=work, concurrency=3)
    arrivals.slot_client, arrivals.slot_done = torch.tensor([0, 1, 2]), torch.tensor([2.0, 3.5, 5.0], dtype=torch.float64)
    cohort = arrivals.step()
    assert cohort.reporting.tolist() == [0, 1, 3] and arrivals.now == 4.0
    assert cohort.downloading_before.tolist() == [3]  # started at 2 on the version before the step
    assert 2 in arrivals.slot_client.tolist() and float(arrivals.slot_done[arrivals.slot_client == 2]) == 5.0
    assert sorted(cohort.downloading.tolist()) == sorted(set(arrivals.slot_client.tolist()) - {2})
    assert bool((arrivals.slot_done[arrivals.slot_client != 2] > 4.0).all())  # the refills start after the step
