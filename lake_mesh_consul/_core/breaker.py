"""Circuit breakers: :class:`BreakerState`, :class:`CircuitBreaker` and the windows they use.

The state machine, as a table (:data:`TRANSITIONS`; ``-`` = no transition)::

    state / event  TRIP  TIMEOUT    PROBE_FAILED  PROBES_OK FORCE_OPEN/DISABLE/METRICS_ONLY/RESET
    closed         open  -          -             -         forced_open/disabled/metrics_only/closed
    open           -     half_open  -             -         (same for every state)
    half_open      -     -          open          closed    (same)
    forced_open    -     -          -             -         (same)
    disabled       -     -          -             -         (same)
    metrics_only   -     -          -             -         (same)

Rules (after Resilience4j's ``CircuitBreakerStateMachine`` and pybreaker):

* ``-`` means "no transition": the event is ignored in that state. A self-loop (e.g.
  ``force_open()`` while forced open) changes nothing and notifies nobody.
* TRIP happens only while closed: ``consecutive_failures`` failures in a row (pybreaker's
  ``fail_max``), or, once ``minimum_calls`` outcomes are in the window, a failure rate or a
  slow-call rate at or above its threshold (Resilience4j's sliding window).
* TIMEOUT is noticed lazily by the first :meth:`CircuitBreaker.acquire` after
  ``reset_timeout`` seconds of the injected clock; it is the only way out of ``open``
  besides the operator commands.
* half_open admits at most ``half_open_max_calls`` concurrent probes; the rest fail fast
  with :class:`~lake_mesh_consul.errors.CircuitOpen`. A probe failure reopens (PROBE_FAILED);
  ``half_open_successes`` probe successes close (PROBES_OK). Only probes decide half_open.
* forced_open refuses everything, disabled admits everything and records nothing,
  metrics_only admits everything and records everything but never transitions. They are
  left only by another operator command; RESET always goes to a fresh closed.
* Every transition bumps an epoch. An outcome whose permit was issued in an earlier epoch
  is stale and ignored: a slow call admitted before a trip cannot close the breaker later.
* A new policy (:meth:`CircuitBreaker.set_policy`, e.g. a configuration reload) is no event:
  the state, the consecutive-failure count and a window of the same shape are kept, and the
  new thresholds decide from the next outcome on.

pybreaker does the classic part: its ``CircuitBreaker`` holds the closed/open/half-open
state, the consecutive-failure and half-open success counters (``fail_max``,
``success_threshold``) and notifies its listeners, which we relay into the table above.
Its storage hook (:class:`_ClockStorage`) is where our clock goes in: pybreaker reads
``datetime.now`` itself, so the storage reports ``opened_at`` shifted by the injected
clock's elapsed time. What we never do is run the caller's work inside
``pybreaker.CircuitBreaker.call``: it holds the breaker's lock for the whole call, which
serialises every caller (pybreaker issues #3 and #55). Outcomes are fed to pybreaker
afterwards, with a no-op function, so its lock is held for microseconds.

pybreaker is imported only in this module.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeVar

import pybreaker

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from lake_mesh_consul.errors import CircuitOpen, InvalidSetting

__all__ = [
    "TRANSITIONS",
    "BreakerEvent",
    "BreakerListener",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "Permit",
    "SlidingWindow",
    "WindowPolicy",
    "monotonic_of",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Resilience4j's default failure-rate threshold, in percent.
DEFAULT_FAILURE_RATE_THRESHOLD = 50.0
#: Resilience4j's default sliding-window size (calls, or seconds for a time window).
DEFAULT_WINDOW_SIZE = 100
#: Resilience4j's default minimum number of calls before a rate is evaluated.
DEFAULT_MINIMUM_CALLS = 100
#: Resilience4j's default slow-call duration threshold, in seconds.
DEFAULT_SLOW_CALL_DURATION = 60.0
#: Resilience4j's default slow-call rate threshold, in percent (100: only if all are slow).
DEFAULT_SLOW_CALL_RATE_THRESHOLD = 100.0
#: pybreaker's default ``fail_max``: consecutive failures that trip a closed breaker.
DEFAULT_CONSECUTIVE_FAILURES = 5
#: Seconds a breaker stays open before a probe is admitted. pybreaker and Resilience4j use
#: 60 s; we use Envoy's base ejection time so that breakers and ejections return together.
DEFAULT_RESET_TIMEOUT = 30.0
#: Concurrent probes admitted while half-open (K).
DEFAULT_HALF_OPEN_MAX_CALLS = 1
#: Probe successes needed to close a half-open breaker (pybreaker's ``success_threshold``).
DEFAULT_HALF_OPEN_SUCCESSES = 1


class BreakerState(str, enum.Enum):
    """The states of a :class:`CircuitBreaker` (Resilience4j's six).

    ``admits`` says whether the state lets calls through at all (half_open only up to K).
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"

    @property
    def admits(self) -> bool:
        """Whether calls may pass in this state (half_open: only up to K probes)."""
        return self not in (BreakerState.OPEN, BreakerState.FORCED_OPEN)

    def __str__(self) -> str:
        return self.value


class BreakerEvent(str, enum.Enum):
    """What can happen to a breaker; the columns of :data:`TRANSITIONS`."""

    TRIP = "trip"
    TIMEOUT_ELAPSED = "timeout_elapsed"
    PROBE_FAILED = "probe_failed"
    PROBES_SUCCEEDED = "probes_succeeded"
    FORCE_OPEN = "force_open"
    DISABLE = "disable"
    METRICS_ONLY = "metrics_only"
    RESET = "reset"


def _build_transitions() -> dict[tuple[BreakerState, BreakerEvent], BreakerState]:
    s, e = BreakerState, BreakerEvent
    table = {
        (s.CLOSED, e.TRIP): s.OPEN,
        (s.OPEN, e.TIMEOUT_ELAPSED): s.HALF_OPEN,
        (s.HALF_OPEN, e.PROBE_FAILED): s.OPEN,
        (s.HALF_OPEN, e.PROBES_SUCCEEDED): s.CLOSED,
    }
    for state in BreakerState:
        table[(state, e.FORCE_OPEN)] = s.FORCED_OPEN
        table[(state, e.DISABLE)] = s.DISABLED
        table[(state, e.METRICS_ONLY)] = s.METRICS_ONLY
        table[(state, e.RESET)] = s.CLOSED
    return table


#: The state machine as data: ``(state, event) -> new state``; a missing key is "ignored".
TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = _build_transitions()

# pybreaker's three states, as ours map onto them.
_PB_STATE = {
    BreakerState.CLOSED: pybreaker.STATE_CLOSED,
    BreakerState.OPEN: pybreaker.STATE_OPEN,
    BreakerState.HALF_OPEN: pybreaker.STATE_HALF_OPEN,
    BreakerState.FORCED_OPEN: pybreaker.STATE_OPEN,
    BreakerState.DISABLED: pybreaker.STATE_CLOSED,
    BreakerState.METRICS_ONLY: pybreaker.STATE_CLOSED,
}


def monotonic_of(clock: Clock) -> Callable[[], float]:
    """``clock.monotonic``, or :func:`time.monotonic` itself for the system clock.

    The hot paths read the clock several times per call; skipping SystemClock's Python
    wrapper saves about 80 ns per read.
    """
    if isinstance(clock, SystemClock):
        return time.monotonic
    return clock.monotonic


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidSetting(name, f"must be > 0, got {value!r}")


def _percent(name: str, value: float | None) -> None:
    if value is not None and not 0 < value <= 100:
        raise InvalidSetting(name, f"must be a percentage in (0, 100], got {value!r}")


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """A Resilience4j-style sliding window of outcomes and the rates that trip on it.

    Attributes:
        kind: ``"count"`` (the last ``size`` calls) or ``"time"`` (the last ``size``
            seconds, in one-second buckets).
        size: calls or seconds.
        minimum_calls: no rate is evaluated before this many calls are in the window (for
            a count window, at most ``size``).
        failure_rate_threshold: percent of failures that trips; ``None`` disables.
        slow_call_duration: seconds above which a call is slow.
        slow_call_rate_threshold: percent of slow calls that trips; ``None`` disables.

    Change with :func:`dataclasses.replace`; validated on construction
    (:class:`~lake_mesh_consul.errors.InvalidSetting`).
    """

    kind: Literal["count", "time"] = "count"
    size: int = DEFAULT_WINDOW_SIZE
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    failure_rate_threshold: float | None = DEFAULT_FAILURE_RATE_THRESHOLD
    slow_call_duration: float = DEFAULT_SLOW_CALL_DURATION
    slow_call_rate_threshold: float | None = DEFAULT_SLOW_CALL_RATE_THRESHOLD

    def __post_init__(self) -> None:
        if self.kind not in ("count", "time"):
            raise InvalidSetting("window.kind", f"must be 'count' or 'time', got {self.kind!r}")
        if self.size < 1:
            raise InvalidSetting("window.size", f"must be >= 1, got {self.size!r}")
        if self.minimum_calls < 1:
            raise InvalidSetting("window.minimum_calls", "must be >= 1")
        _positive("window.slow_call_duration", self.slow_call_duration)
        _percent("window.failure_rate_threshold", self.failure_rate_threshold)
        _percent("window.slow_call_rate_threshold", self.slow_call_rate_threshold)


class SlidingWindow:
    """Counts of calls, failures and slow calls over a count- or time-based window.

    Recording and reading are O(1) amortised (a ring of outcomes, or of one-second
    buckets). Not thread-safe: its owner (a breaker, the detector) holds a lock.
    """

    __slots__ = (
        "_b_calls",
        "_b_fail",
        "_b_slow",
        "_calls",
        "_count_based",
        "_failures",
        "_head",
        "_min",
        "_policy",
        "_pos",
        "_ring",
        "_size",
        "_slow",
        "quiet",
    )

    def __init__(self, policy: WindowPolicy) -> None:
        self._policy = policy
        self._size = policy.size
        self._count_based = policy.kind == "count"
        self._min = (
            min(policy.minimum_calls, policy.size) if self._count_based else (policy.minimum_calls)
        )
        self.reset()

    @property
    def policy(self) -> WindowPolicy:
        """The window's policy."""
        return self._policy

    def set_policy(self, policy: WindowPolicy) -> None:
        """Adopt new thresholds; the outcomes stay when the shape (kind and size) is the same.

        A window of another kind or size starts empty: outcomes counted over a different
        span would not mean the same rate.
        """
        same_shape = policy.kind == self._policy.kind and policy.size == self._size
        self._policy = policy
        self._count_based = policy.kind == "count"
        self._min = (
            min(policy.minimum_calls, policy.size) if self._count_based else (policy.minimum_calls)
        )
        if not same_shape:
            self._size = policy.size
            self.reset()

    def reset(self) -> None:
        """Forget every outcome."""
        #: Whether the outcome recorded last cannot have raised a rate past what an earlier
        #: evaluation saw (a fast success that did not bring the calls up to the minimum):
        #: then no threshold needs checking. See :meth:`exceeded_after`.
        self.quiet = False
        self._calls = self._failures = self._slow = 0
        self._pos = 0
        self._head = -1
        self._ring = bytearray(self._size) if self._count_based else bytearray()
        self._b_calls = [] if self._count_based else [0] * self._size
        self._b_fail = [] if self._count_based else [0] * self._size
        self._b_slow = [] if self._count_based else [0] * self._size

    def _advance(self, now: float) -> None:
        sec = int(now)
        head = self._head
        if sec <= head:
            return
        if head < 0 or sec - head >= self._size:
            n = self._size
            self._b_calls, self._b_fail, self._b_slow = [0] * n, [0] * n, [0] * n
            self._calls = self._failures = self._slow = 0
        else:
            for s in range(head + 1, sec + 1):
                i = s % self._size
                self._calls -= self._b_calls[i]
                self._failures -= self._b_fail[i]
                self._slow -= self._b_slow[i]
                self._b_calls[i] = self._b_fail[i] = self._b_slow[i] = 0
        self._head = sec

    def record(self, failure: bool, slow: bool, now: float) -> None:
        """Add one outcome observed at monotonic time ``now``."""
        if self._count_based:
            ring, pos = self._ring, self._pos
            if self._calls == self._size:
                old = ring[pos]
                self._failures -= old & 1
                self._slow -= old >> 1
                # Full: the calls did not grow, so with a fast success the rates can only
                # stay or fall from the last evaluation (made when the window held as many).
                self.quiet = not (failure or slow) and self._calls >= self._min
            else:
                self._calls += 1
                self.quiet = not (failure or slow) and self._calls > self._min
            ring[pos] = failure | (slow << 1)
            self._pos = (pos + 1) % self._size
        else:
            self._advance(now)
            i = self._head % self._size
            self._b_calls[i] += 1
            self._calls += 1
            if failure:
                self._b_fail[i] += 1
            if slow:
                self._b_slow[i] += 1
            self.quiet = not (failure or slow) and self._calls > self._min
        self._failures += failure
        self._slow += slow

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window at ``now``."""
        if not self._count_based:
            self._advance(now)
        return self._calls, self._failures, self._slow

    def rates(self, now: float) -> tuple[float | None, float | None]:
        """``(failure %, slow %)``, or ``(None, None)`` below ``minimum_calls``."""
        calls, failures, slow = self.counts(now)
        if calls < self._min or calls == 0:
            return None, None
        return 100.0 * failures / calls, 100.0 * slow / calls

    def exceeded_after(self, failure: bool, slow: bool, now: float) -> str | None:
        """:meth:`exceeded`, skipped when the outcome just recorded cannot have changed it.

        A fast, non-failed call does not raise either rate, so once the rates have been
        evaluated (the window held the minimum number of calls at an earlier outcome) it
        cannot trip anything: the success path skips the check (:attr:`quiet`).
        """
        if failure or slow or not self.quiet:
            return self.exceeded(now)
        return None

    def exceeded(self, now: float) -> str | None:
        """The name of the first threshold reached (``"failure_rate"``/``"slow_call_rate"``)."""
        calls, failures, slow = self.counts(now)
        if calls < self._min or calls == 0:
            return None
        p = self._policy
        if p.failure_rate_threshold is not None and failures * 100 >= (
            p.failure_rate_threshold * calls
        ):
            return "failure_rate"
        if p.slow_call_rate_threshold is not None and slow * 100 >= (
            p.slow_call_rate_threshold * calls
        ):
            return "slow_call_rate"
        return None


def _always_failure(exc: BaseException) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How a :class:`CircuitBreaker` trips and recovers.

    Attributes:
        consecutive_failures: failures in a row that trip (pybreaker's ``fail_max``);
            ``None`` disables this trigger.
        reset_timeout: seconds open before the next acquire becomes a half-open probe.
        half_open_max_calls: concurrent probes admitted while half-open (K).
        half_open_successes: probe successes that close the breaker.
        window: the failure-rate and slow-call window (Resilience4j); ``None`` disables.
        ignore_exceptions: exceptions that are neither success nor failure (business
            errors); the permit is released without an outcome.
        is_failure: a predicate for the remaining exceptions (default: all are failures).
    """

    consecutive_failures: int | None = DEFAULT_CONSECUTIVE_FAILURES
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS
    half_open_successes: int = DEFAULT_HALF_OPEN_SUCCESSES
    window: WindowPolicy | None = field(default_factory=WindowPolicy)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    is_failure: Callable[[BaseException], bool] = _always_failure

    def __post_init__(self) -> None:
        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise InvalidSetting("breaker.consecutive_failures", "must be >= 1 or None")
        _positive("breaker.reset_timeout", self.reset_timeout)
        if self.half_open_max_calls < 1:
            raise InvalidSetting("breaker.half_open_max_calls", "must be >= 1")
        if self.half_open_successes < 1:
            raise InvalidSetting("breaker.half_open_successes", "must be >= 1")


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, as listeners see it.

    Attributes:
        name: the breaker's name.
        old: the state left.
        new: the state entered.
        event: what caused it.
        at: the injected clock's monotonic time.
        reason: detail, e.g. ``"failure_rate"`` or ``"consecutive_failures"`` for a trip.
    """

    name: str
    old: BreakerState
    new: BreakerState
    event: BreakerEvent
    at: float
    reason: str = ""


#: Called with every transition, in order, under the breaker's lock: keep it quick. It may
#: read the breaker (the lock is re-entrant) but should not drive it.
BreakerListener = Callable[[BreakerTransition], None]


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A read-only view of a breaker for ``explain`` and metrics.

    Attributes:
        name: the breaker's name.
        state: its state.
        consecutive_failures: failures in a row (pybreaker's counter).
        calls: outcomes in the window.
        failure_rate: percent, or ``None`` below the window's minimum calls.
        slow_call_rate: percent, or ``None`` below the window's minimum calls.
        retry_after: seconds until a probe is admitted, while open.
        probes_in_flight: admitted half-open probes not yet finished.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    retry_after: float | None
    probes_in_flight: int


class _ClockStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, with ``opened_at`` measured on the injected clock.

    pybreaker compares ``datetime.now(UTC)`` with ``opened_at + reset_timeout``; reporting
    ``opened_at`` as "now minus the elapsed time on our clock" makes that comparison follow
    the injected clock (a FakeClock in tests).
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_mono: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self.opened_mono is None:
            return None
        elapsed = self._clock.monotonic() - self.opened_mono
        return datetime.now(timezone.utc) - timedelta(seconds=elapsed)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self.opened_mono = self._clock.monotonic()

    def open_elapsed(self) -> float:
        """Seconds on the injected clock since the breaker last opened."""
        if self.opened_mono is None:
            return float("inf")
        return self._clock.monotonic() - self.opened_mono


class _Relay(pybreaker.CircuitBreakerListener):
    """Collects pybreaker's state changes so the breaker can map them onto its table."""

    def __init__(self) -> None:
        self.changes: list[str] = []

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.changes.append(new_state.name)


def _noop() -> None:
    return None


def _raise(exc: BaseException) -> NoReturn:
    raise exc


class Permit:
    """Permission for one call through a :class:`CircuitBreaker`; report how it went once.

    Use :meth:`success`, :meth:`failure` or :meth:`release` (no outcome), or use the permit
    as a context manager: a normal exit is a success, an exception a failure (unless the
    policy ignores it). Reporting twice is a no-op. A permit belongs to one call; it is
    safe to report from another thread than the one that acquired it.
    """

    __slots__ = ("breaker", "done", "epoch", "probe", "started")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool, started: float) -> None:
        #: The breaker that issued this permit (an attribute, not a property: the detector
        #: reads it on every recorded outcome).
        self.breaker = breaker
        self.epoch = epoch
        self.probe = probe
        self.started = started
        self.done = False

    def success(self, duration: float | None = None) -> None:
        """Report a success (``duration`` defaults to the time since acquire)."""
        self.breaker.record_success(self, duration=duration)

    def failure(self, error: BaseException | None = None, duration: float | None = None) -> None:
        """Report a failure (``duration`` defaults to the time since acquire)."""
        self.breaker.record_failure(self, error, duration=duration)

    def release(self) -> None:
        """Give the permit back without an outcome (frees a half-open probe slot)."""
        self.breaker.release(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.success()
        else:
            self.breaker.record_exception(self, exc)


class CircuitBreaker:
    """A circuit breaker that never holds a lock while the caller's work runs.

    ``acquire()`` decides admission (raising :class:`~lake_mesh_consul.errors.CircuitOpen`
    with ``retry_after`` when refused), the caller runs its work with no lock held, then
    reports the outcome on the :class:`Permit`. :meth:`call` and ``with breaker.acquire():``
    are built that way. See the module docstring for the transition table.

    Args:
        name: shown in errors, transitions and snapshots (usually the endpoint id).
        policy: thresholds and timings (:class:`BreakerPolicy`).
        clock: the time source for the reset timeout, windows and durations.
        listeners: called with every :class:`BreakerTransition`.
        may_trip: asked before each trip, under the breaker's lock; False keeps the breaker
            closed (its consecutive count starts again). The failure detector passes its
            shared cap: breakers and ejections together take at most
            ``max_ejection_percent`` of a service's endpoints out of rotation.

    Thread-safe: decisions and records take a short re-entrant lock; in closed, disabled
    and metrics_only states, acquire takes no lock at all.

    Example::

        breaker = CircuitBreaker("web-1")
        with breaker.acquire():
            send_request()
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[BreakerListener, ...] | list[BreakerListener] = (),
        may_trip: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self._may_trip = may_trip
        self._policy = policy = policy or BreakerPolicy()
        self._clock = clock
        self._now = monotonic_of(clock)
        self._lock = threading.RLock()
        self._listeners: list[BreakerListener] = list(listeners)
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._probes = 0
        #: Whether pybreaker's consecutive-failure counter may be above zero (a success
        #: then resets it); saves reading pybreaker's storage on every success.
        self._counting = False
        self._window = SlidingWindow(policy.window) if policy.window else None
        self._slow_after = policy.window.slow_call_duration if policy.window else float("inf")
        self._storage = _ClockStorage(clock)
        self._relay = _Relay()
        self._pb = pybreaker.CircuitBreaker(
            fail_max=policy.consecutive_failures or 2**62,
            reset_timeout=policy.reset_timeout,
            success_threshold=policy.half_open_successes,
            listeners=[self._relay],
            state_storage=self._storage,
            name=name,
            throw_new_error_on_trip=True,
        )

    # --- policy --------------------------------------------------------------------------

    @property
    def policy(self) -> BreakerPolicy:
        """The policy in force (assigning it is :meth:`set_policy`)."""
        return self._policy

    @policy.setter
    def policy(self, policy: BreakerPolicy) -> None:
        self.set_policy(policy)

    def set_policy(self, policy: BreakerPolicy) -> None:
        """Adopt ``policy`` now, keeping the state and what has been counted.

        For a live configuration reload: the breaker of an endpoint keeps its identity,
        listeners and state, and the new thresholds decide from the next outcome on:

        * closed: the consecutive-failure count stays (a count already at or past a lowered
          ``consecutive_failures`` trips on the next failure); the window keeps its outcomes
          when its kind and size are unchanged, else starts empty (``None`` removes it);
        * open: the new ``reset_timeout`` is measured from when the breaker opened;
        * half-open: probes in flight finish; ``half_open_max_calls`` and
          ``half_open_successes`` apply to the next acquire and the next probe outcome;
        * forced_open, disabled, metrics_only: unchanged until an operator command.

        No transition happens and no listener is called. Thread-safe.
        """
        with self._lock:
            self._policy = policy
            pb = self._pb
            pb.fail_max = policy.consecutive_failures or 2**62
            pb.reset_timeout = policy.reset_timeout
            pb.success_threshold = policy.half_open_successes
            if policy.window is None:
                self._window = None
            elif self._window is None:
                self._window = SlidingWindow(policy.window)
            else:
                self._window.set_policy(policy.window)
            self._slow_after = policy.window.slow_call_duration if policy.window else float("inf")

    # --- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (lock-free read; a due open->half_open shows on acquire)."""
        return self._state

    def allows(self) -> bool:
        """Whether :meth:`acquire` would admit a call now, without taking a permit.

        Lock-free and advisory (another thread may take the last probe slot first).
        """
        state = self._state
        if state is BreakerState.OPEN:
            return self._storage.open_elapsed() >= self._policy.reset_timeout
        if state is BreakerState.HALF_OPEN:
            return self._probes < self._policy.half_open_max_calls
        return state is not BreakerState.FORCED_OPEN

    def snapshot(self) -> BreakerSnapshot:
        """A consistent read-only view (takes the lock briefly)."""
        with self._lock:
            now = self._now()
            calls = 0
            rates: tuple[float | None, float | None] = (None, None)
            if self._window is not None:
                calls = self._window.counts(now)[0]
                rates = self._window.rates(now)
            retry_after = None
            if self._state is BreakerState.OPEN:
                retry_after = max(0.0, self._policy.reset_timeout - self._storage.open_elapsed())
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                consecutive_failures=self._storage.counter,
                calls=calls,
                failure_rate=rates[0],
                slow_call_rate=rates[1],
                retry_after=retry_after,
                probes_in_flight=self._probes,
            )

    # --- listeners -----------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener) -> None:
        """Register ``listener`` for every future transition."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: BreakerListener) -> None:
        """Unregister ``listener`` (no-op if absent)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # --- admission -----------------------------------------------------------------------

    def acquire(self, now: float | None = None) -> Permit:
        """Ask to make one call; returns a :class:`Permit` to report the outcome on.

        ``now`` is this breaker's clock reading, when the caller has just read it (the
        permit's start; saves a clock read on the request path).

        Raises:
            CircuitOpen: open (``retry_after`` = seconds until a probe is admitted), forced
                open (``retry_after`` None), or half-open with all K probe slots taken
                (``retry_after`` = the reset timeout, an upper bound).
        """
        state = self._state
        if (
            state is BreakerState.CLOSED
            or state is BreakerState.METRICS_ONLY
            or (state is BreakerState.DISABLED)
        ):
            return Permit(self, self._epoch, False, self._now() if now is None else now)
        with self._lock:
            state = self._state
            if state is BreakerState.OPEN:
                elapsed = self._storage.open_elapsed()
                timeout = self._policy.reset_timeout
                if elapsed < timeout:
                    raise CircuitOpen(self.name, retry_after=timeout - elapsed)
                self._apply(BreakerEvent.TIMEOUT_ELAPSED, "reset timeout elapsed")
                state = self._state
            if state is BreakerState.HALF_OPEN:
                if self._probes >= self._policy.half_open_max_calls:
                    raise CircuitOpen(self.name, retry_after=self._policy.reset_timeout)
                self._probes += 1
                return Permit(self, self._epoch, True, self._now() if now is None else now)
            if state is BreakerState.FORCED_OPEN:
                raise CircuitOpen(self.name, retry_after=None)
            return Permit(self, self._epoch, False, self._now())

    def calling(self) -> Permit:
        """``with breaker.calling():`` (pybreaker's spelling of :meth:`acquire`)."""
        return self.acquire()

    def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` through the breaker, with no lock held while it runs.

        Returns what ``fn`` returns; re-raises what it raises (recorded per the policy).

        Raises:
            CircuitOpen: the breaker refused the call; ``fn`` did not run.
        """
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_exception(permit, exc)
            raise
        self.record_success(permit)
        return result

    # --- outcomes ------------------------------------------------------------------------

    def record_success(self, permit: Permit, *, duration: float | None = None) -> None:
        """Report that ``permit``'s call succeeded (slow if ``duration`` is over threshold)."""
        self.report(permit, failure=False, duration=duration)

    def record_failure(
        self, permit: Permit, error: BaseException | None = None, *, duration: float | None = None
    ) -> None:
        """Report that ``permit``'s call failed (``error`` is for pybreaker's listeners)."""
        self.report(permit, failure=True, duration=duration, error=error)

    def observe(
        self, *, success: bool, duration: float = 0.0, error: BaseException | None = None
    ) -> None:
        """Record the outcome of a call made without a permit (e.g. by a balancer).

        Counted while closed or metrics_only (it can trip the breaker); ignored while open or
        half_open, where only admitted probes decide.
        """
        permit = Permit(self, self._epoch, False, 0.0)
        self.report(permit, failure=not success, duration=duration, error=error)

    def record_exception(self, permit: Permit, exc: BaseException) -> None:
        """Classify ``exc`` with the policy: failure, or release for ignored/non-Exception."""
        p = self._policy
        if not isinstance(exc, Exception) or isinstance(exc, p.ignore_exceptions):
            self.release(permit)
        elif p.is_failure(exc):
            self.report(permit, failure=True, error=exc)
        else:
            self.report(permit, failure=False)

    def release(self, permit: Permit) -> None:
        """Return ``permit`` without an outcome (e.g. the call was never sent)."""
        with self._lock:
            if permit.done:
                return
            permit.done = True
            if permit.probe and permit.epoch == self._epoch:
                self._probes -= 1

    def report(
        self,
        permit: Permit,
        *,
        failure: bool,
        duration: float | None = None,
        error: BaseException | None = None,
        now: float | None = None,
    ) -> None:
        """Report ``permit``'s outcome in one call (the request path's recorder uses it).

        ``now`` is this breaker's clock reading when the call ended, if the caller has one
        (saves a clock read); ``duration`` defaults to the time since acquire. A permit
        already reported, or admitted before the breaker's last transition, counts nowhere.
        """
        if now is None:
            now = self._now()
        if duration is None:
            duration = now - permit.started
        slow = duration > self._slow_after
        with self._lock:
            if permit.done:
                return
            permit.done = True
            if permit.epoch != self._epoch:
                return  # stale: admitted before the last transition
            state = self._state
            if state is BreakerState.CLOSED:
                window = self._window
                if window is not None:
                    window.record(failure, slow, now)
                if failure:
                    self._counting = True
                    if self._feed_pybreaker(error or _Failure()):
                        if self._trip_allowed():
                            self._apply(BreakerEvent.TRIP, "consecutive_failures", synced=True)
                        else:
                            self._pb.close()  # refused by the cap: pybreaker starts again
                            self._relay.changes.clear()
                            self._counting = False
                        return
                elif self._counting:
                    self._counting = False
                    self._feed_pybreaker(None)
                # A fast success after the rates were evaluated cannot raise them: skip
                # the check (SlidingWindow.exceeded_after's rule, inlined).
                if window is not None and not window.quiet:
                    reason = window.exceeded(now)
                    if reason is not None and self._trip_allowed():
                        self._apply(BreakerEvent.TRIP, reason)
            elif state is BreakerState.HALF_OPEN:
                if not permit.probe:
                    return
                self._probes -= 1
                if failure:
                    self._feed_pybreaker(error or _Failure())
                    self._apply(BreakerEvent.PROBE_FAILED, "probe failed", synced=True)
                elif self._feed_pybreaker(None):
                    self._apply(BreakerEvent.PROBES_SUCCEEDED, "probes succeeded", synced=True)
            elif state is BreakerState.METRICS_ONLY:
                if self._window is not None:
                    self._window.record(failure, slow, now)
                if failure:
                    self._counting = True
                    self._storage.increment_counter()
                else:
                    self._storage.reset_counter()

    def _trip_allowed(self) -> bool:
        guard = self._may_trip
        return guard is None or guard()

    def _feed_pybreaker(self, error: BaseException | None) -> bool:
        """Let pybreaker count one outcome (no-op call: its lock is held for microseconds).

        Returns whether pybreaker changed state (tripped, reopened or closed).
        """
        relay = self._relay
        relay.changes.clear()
        try:
            if error is None:
                self._pb.call(_noop)
            else:
                self._pb.call(_raise, error)
        except BaseException:  # noqa: S110 - pybreaker re-raises the outcome we fed it
            pass
        changed = bool(relay.changes)
        relay.changes.clear()
        return changed

    @property
    def clock(self) -> Clock:
        """The breaker's clock (reset timeout, windows, durations)."""
        return self._clock

    def probe_now(self, reason: str = "probe requested") -> bool:
        """An open breaker goes half-open now: the next acquire is a probe.

        For an endpoint known to be healthy again (Consul reports it passing after it was
        critical). Returns whether the breaker was open. Thread-safe.
        """
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return False
            self._apply(BreakerEvent.TIMEOUT_ELAPSED, reason)
            return True

    # --- operator commands ---------------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` (or another command)."""
        with self._lock:
            self._apply(BreakerEvent.FORCE_OPEN, "forced open")

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset`."""
        with self._lock:
            self._apply(BreakerEvent.DISABLE, "disabled")

    def metrics_only(self) -> None:
        """Admit every call and record outcomes, but never transition, until :meth:`reset`."""
        with self._lock:
            self._apply(BreakerEvent.METRICS_ONLY, "metrics only")

    def reset(self) -> None:
        """Go to a fresh closed state: counters and window cleared."""
        with self._lock:
            self._apply(BreakerEvent.RESET, "reset")

    # --- the table -----------------------------------------------------------------------

    def _apply(self, event: BreakerEvent, reason: str, *, synced: bool = False) -> None:
        """Apply ``event`` per :data:`TRANSITIONS` (lock held); sync pybreaker; notify."""
        old = self._state
        new = TRANSITIONS.get((old, event))
        if new is None:
            return
        if event is BreakerEvent.RESET:
            self._storage.reset_counter()
            if self._window is not None:
                self._window.reset()
        if new is old:
            return
        if not synced and self._pb.current_state != _PB_STATE[new]:
            self._relay.changes.clear()
            target = _PB_STATE[new]
            if target == pybreaker.STATE_OPEN:
                self._pb.open()
            elif target == pybreaker.STATE_HALF_OPEN:
                self._pb.half_open()
            else:
                self._pb.close()
            self._relay.changes.clear()
        self._state = new
        self._epoch += 1
        self._probes = 0
        if new is BreakerState.CLOSED and self._window is not None:
            self._window.reset()
        transition = BreakerTransition(self.name, old, new, event, self._now(), reason)
        for listener in tuple(self._listeners):
            try:
                listener(transition)
            except Exception:
                _log.exception("breaker listener failed on %s", transition)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"


class _Failure(Exception):
    """Stands in for a failure reported without an exception (e.g. an HTTP 503)."""

    def __init__(self) -> None:
        super().__init__("failure")
