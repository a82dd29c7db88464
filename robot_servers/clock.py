"""``PeriodicClock``: the drift-free fixed-period schedule every real-time loop here keeps.

Ticks fall at ``start + k * period``, so a slow iteration does not shift the ones after it. An
iteration that runs past its tick is an overrun: it is counted and the schedule restarts from now,
so a long stall is not followed by a burst of catch-up iterations.
"""

from __future__ import annotations

import time
from typing import Callable


class PeriodicClock:
    """Fixed-period schedule with overrun counting; ``now`` is any monotonic clock in seconds."""

    def __init__(self, period: float, now: Callable[[], float] = time.monotonic):
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        self.period = float(period)
        self.now = now
        self.overruns = 0
        self.restart()

    def restart(self) -> None:
        """Start the schedule (and the tick spacing) from now; the overrun count is kept."""
        self.next_tick = self.last_tick = self.now()

    def time_to_tick(self) -> float:
        """Schedule the next tick and return the seconds until it (0 after an overrun)."""
        self.next_tick += self.period
        now = self.now()
        if now > self.next_tick:
            self.overruns += 1
            self.next_tick = now
        return self.next_tick - now

    def wait(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Schedule the next tick and sleep until it; pass ``threading.Event.wait`` to stay interruptible."""
        delay = self.time_to_tick()
        if delay > 0:
            sleep(delay)

    def tick(self) -> float:
        """Mark a tick; return its spacing from the previous mark minus the period."""
        now = self.now()
        error = now - self.last_tick - self.period
        self.last_tick = now
        return error
