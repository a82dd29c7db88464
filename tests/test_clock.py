"""PeriodicClock: drift-free ticks, overruns counted and the schedule restarted (no catch-up burst)."""

import threading
import time

import pytest

from robot_servers.clock import PeriodicClock


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_ticks_stay_on_the_grid_despite_uneven_work():
    fake = FakeTime()
    clock = PeriodicClock(0.1, fake)
    for work in (0.02, 0.07, 0.0, 0.09):
        fake.now += work
        clock.wait(fake.sleep)
        clock.tick()
    assert fake.now == pytest.approx(100.4)  # four periods, not four periods plus the work
    assert clock.overruns == 0


def test_overrun_restarts_the_schedule_instead_of_bursting():
    fake = FakeTime()
    clock = PeriodicClock(0.1, fake)
    fake.now += 0.35  # a stall of three and a half periods
    assert clock.time_to_tick() == 0.0 and clock.overruns == 1
    assert clock.tick() == pytest.approx(0.25)  # the period error of this late tick
    fake.now += 0.01
    assert clock.time_to_tick() == pytest.approx(0.09)  # one period after the late tick, not a catch-up
    assert clock.overruns == 1


def test_wait_can_be_interrupted_by_an_event():
    stop = threading.Event()
    clock = PeriodicClock(5.0)
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    clock.wait(stop.wait)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("period", [0.0, -0.1, float("nan")])
def test_rejects_a_period_that_is_not_positive(period):
    with pytest.raises(ValueError, match="period"):
        PeriodicClock(period)
