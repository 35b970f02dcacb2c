"""FakeClock: virtual time for tests of timeouts, TTLs, backoff, ejection and breakers.

``advance(seconds)`` moves time forward and wakes every thread parked in ``sleep`` or
``wait`` whose deadline has passed, so a background loop driven by this clock runs one
iteration per ``advance`` without any real waiting (after trio's ``MockClock``).
"""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~lake_mesh_consul._core.clock.Clock` whose time moves only when told.

    Args:
        start: the initial monotonic time.
        wall: the initial wall-clock time (``time()``); moves with ``monotonic``.
        autojump: if true, ``sleep(s)`` advances the clock by ``s`` instead of blocking
            (handy for code that sleeps on the caller's thread, such as retries).

    Thread-safe.
    """

    def __init__(
        self, start: float = 1000.0, *, wall: float = 1_700_000_000.0, autojump: bool = False
    ) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._cond = threading.Condition()
        self.autojump = autojump
        #: Every duration passed to sleep(), in order (for asserting backoff schedules).
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The virtual monotonic time."""
        with self._cond:
            return self._now

    def time(self) -> float:
        """The virtual wall-clock time."""
        with self._cond:
            return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake whoever's deadline passed."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Block until the clock has advanced by ``seconds`` (or jump, with ``autojump``)."""
        with self._cond:
            self.sleeps.append(seconds)
            if self.autojump:
                self._now += max(seconds, 0.0)
                self._cond.notify_all()
                return
            deadline = self._now + seconds
            while self._now < deadline:
                self._cond.wait(0.05)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set or virtual ``timeout`` passes."""
        with self._cond:
            deadline = None if timeout is None else self._now + timeout
            while not event.is_set():
                if deadline is not None and self._now >= deadline:
                    return False
                if self.autojump and deadline is not None:
                    self._now = deadline
                    self._cond.notify_all()
                    return event.is_set()
                # Real-time poll so that an event set from another thread is noticed.
                self._cond.wait(0.01)
            return True

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now:g})"
