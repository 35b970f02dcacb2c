"""Injectable time: every timeout, TTL, backoff, ejection and breaker reset reads a Clock.

Production code uses :data:`SYSTEM_CLOCK`; tests pass a
:class:`lake_mesh_consul.testing.FakeClock` and advance it, so a 100-second scenario runs
instantly and no unit test sleeps (after trio's ``MockClock``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, wall time and a way to wait.

    ``monotonic()`` measures durations; ``time()`` is the wall clock for timestamps shown
    to people; ``sleep(s)`` waits; ``wait(event, timeout)`` waits on an event with a
    timeout (so a fake clock can make a background loop's pause instantaneous).
    """

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (wall clock)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set or ``timeout`` passes; return whether it was set."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`time.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds on :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Seconds on :func:`time.time`."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (no-op for zero or negative)."""
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """``event.wait(timeout)``."""
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The process-wide real clock.
SYSTEM_CLOCK: Clock = SystemClock()
