"""One injected monotonic clock for every timing path of the control loop.

``RealClock`` reads ``time.monotonic`` and paces with sleep-then-spin: it sleeps until ``spin_s`` before the
deadline and busy-waits the rest, which keeps the median lateness of a 500 Hz loop in microseconds on a
stock kernel (plain ``time.sleep`` is late by 0.1-3 ms). ``VirtualClock`` is the test double: ``sleep_until``
advances virtual time to the deadline plus an optional overshoot, so pacing, overruns, stale chunks and
timeouts are asserted exactly on any machine. Wall-clock time is never used inside the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds and absolute-deadline sleeping."""

    def now(self) -> float:
        """Monotonic time in seconds."""

    def sleep_until(self, deadline: float) -> None:
        """Return at (or as soon as possible after) ``deadline``; return at once if it has passed."""


class RealClock:
    """``time.monotonic`` with sleep-then-spin pacing."""

    def __init__(self, spin_s: float = 1e-3) -> None:
        """``spin_s``: how long before a deadline to stop sleeping and busy-wait instead."""
        self.spin_s = spin_s

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.monotonic() < deadline:
            pass


class VirtualClock:
    """Deterministic test clock: time moves only when someone sleeps or calls ``advance``.

    ``overshoot(deadline) -> seconds`` models late wake-ups (scheduler jitter, a preempted process);
    ``advance(seconds)`` models time spent computing, so a loop body can be made to overrun its period.
    """

    def __init__(self, start: float = 0.0, overshoot: Callable[[float], float] | None = None) -> None:
        self.t = float(start)
        self.overshoot = overshoot

    def now(self) -> float:
        return self.t

    def sleep_until(self, deadline: float) -> None:
        if deadline > self.t:
            self.t = deadline
        if self.overshoot is not None:
            self.t += max(0.0, float(self.overshoot(deadline)))

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (work done by the caller)."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards: advance({seconds})")
        self.t += seconds
