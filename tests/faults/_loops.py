"""Bounded load loops for the fault scenarios: each stops by itself (count and time)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul.errors import ConsulStatusError, ConsulUnavailable

#: pytest's ``record_property`` fixture.
RecordProperty = Callable[[str, object], None]

#: Attempts per read in a ReadLoop: a caller that retries transport-level failures twice.
READ_ATTEMPTS = 3


@dataclass
class ReadStats:
    """What a read loop saw. Times are seconds since the loop started."""

    ok: int = 0
    #: failures of single attempts (what a caller without retries would have seen)
    raw_errors: list[tuple[float, str]] = field(default_factory=list)
    #: failures after READ_ATTEMPTS attempts (what a caller with retries sees)
    errors: list[tuple[float, str]] = field(default_factory=list)
    #: answers that were 404 for a key that exists (a stale server gone back in time)
    missing: list[float] = field(default_factory=list)
    known_leader: Counter[bool | None] = field(default_factory=Counter)
    max_last_contact: float = 0.0
    started: float = field(default_factory=time.monotonic)
    stopped: float = 0.0

    def summary(self) -> str:
        took = (self.stopped or time.monotonic()) - self.started
        raw = ""
        if self.raw_errors:
            raw = (
                f" (single-attempt failures: {len(self.raw_errors)} between "
                f"t={self.raw_errors[0][0]:.2f}s and t={self.raw_errors[-1][0]:.2f}s)"
            )
        return (
            f"{self.ok} ok / {len(self.errors)} caller-visible errors{raw} / "
            f"{len(self.missing)} 404s in {took:.1f}s; KnownLeader={dict(self.known_leader)}, "
            f"max LastContact={self.max_last_contact:.2f}s"
        )


class ReadLoop:
    """Reads in a background thread until stopped, ``max_reads`` or ``max_seconds``.

    Each read is tried up to ``attempts`` times on ConsulUnavailable and 5xx answers, 50 ms
    apart; single-attempt failures and final failures are both recorded.
    """

    def __init__(
        self,
        read: Callable[[], ConsulResponse],
        *,
        attempts: int = READ_ATTEMPTS,
        interval: float = 0.02,
        max_reads: int = 5000,
        max_seconds: float = 60.0,
    ) -> None:
        self.stats = ReadStats()
        self._read = read
        self._attempts = attempts
        self._interval = interval
        self._max_reads = max_reads
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-read-loop", daemon=True)

    def now(self) -> float:
        """Seconds since the loop started (to line events up with the stats)."""
        return time.monotonic() - self.stats.started

    def _one(self) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                answer = self._read()
            except (ConsulUnavailable, ConsulStatusError) as exc:
                retriable = isinstance(exc, ConsulUnavailable) or exc.code >= 500
                message = f"{type(exc).__name__}: {exc}"
                self.stats.raw_errors.append((self.now(), message))
                if not retriable or attempt == self._attempts:
                    self.stats.errors.append((self.now(), message))
                    return
                time.sleep(0.05)
            except Exception as exc:  # anything else is a bug in the client: count it
                self.stats.errors.append((self.now(), f"{type(exc).__name__}: {exc}"))
                return
            else:
                if answer.status == 404:
                    self.stats.missing.append(self.now())
                else:
                    self.stats.ok += 1
                self.stats.known_leader[answer.known_leader] += 1
                if answer.last_contact is not None:
                    self.stats.max_last_contact = max(
                        self.stats.max_last_contact, answer.last_contact
                    )
                return

    def _run(self) -> None:
        deadline = time.monotonic() + self._max_seconds
        for _ in range(self._max_reads):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            self._one()
            self._stop.wait(self._interval)
        self.stats.stopped = time.monotonic()

    def __enter__(self) -> ReadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "read loop did not stop"


def stale_kv_read(client: ConsulClient, key: str) -> Callable[[], ConsulResponse]:
    """A stale read of one key (any server answers, leader or not); 404 is returned."""

    def read() -> ConsulResponse:
        return client.request(
            "GET",
            f"/v1/kv/{key}",
            params={"stale": ""},
            operation=f"stale read {key!r}",
            allow_404=True,
        )

    return read


def until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Poll ``predicate`` until true; the seconds it took, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:  # the system is recovering; errors mean "not yet"
            pass
        time.sleep(interval)
    return None
