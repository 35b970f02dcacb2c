"""FailureDetector: failure accrual, Envoy-style outlier ejection, per-endpoint breakers.

Every finished request arrives classified (an :class:`~lake_mesh_consul._core.outcome.Outcome`
through :meth:`FailureDetector.record_outcome`; classification itself lives in
:mod:`lake_mesh_consul._core.outcome`) and is fed to per-endpoint accrual. An endpoint is
*ejected* (unavailable for picks) when, while not ejected:

* ``consecutive_failures`` failures in a row (Envoy ``consecutive_5xx``, default 5), or
  ``consecutive_gateway_failures`` gateway errors in a row (502/503/504 only; Envoy's
  ``consecutive_gateway_failure``, off by default as Envoy enforces it at 0%);
* the failure rate or the slow-call rate over a sliding window reaches its threshold, once
  the window holds ``minimum_calls`` outcomes (Resilience4j: 50%, 100 calls, 100 minimum);
* optionally, every ``interval`` (10 s), its success rate falls below
  ``mean - 1.9 * stdev`` of its peers' (Envoy success-rate outlier detection: only hosts with
  at least 100 requests in the interval count, and only when at least 5 such hosts exist).

An ejection lasts ``base_ejection_time * n`` (n = times ejected; 30 s base), capped at
``max_ejection_time`` (300 s), plus up to ``ejection_jitter`` seconds. Like Envoy, n goes
down by one for each full ``interval`` the endpoint spends un-ejected. Failure accrual takes
at most ``max_ejection_percent`` (10%) of a service's endpoints out of rotation at once,
*ejections and open breakers counted together*, but always at least one (Envoy's rule): an
ejection refused by that cap is an ``overflow`` event, and a breaker's trip refused by it
leaves the breaker closed. So a blip across every endpoint cannot take them all out.
Returns are noticed lazily (on ``is_available``, ``record``, ``state`` or ``sweep``): no
thread; :meth:`FailureDetector.restore` ends an ejection at once (Consul says passing again).

The detector implements the ports :class:`~lake_mesh_consul._core.ports.EndpointGate` and
:class:`~lake_mesh_consul._core.ports.OutcomeRecorder`. With a ``breaker`` policy it also owns
one :class:`~lake_mesh_consul._core.breaker.CircuitBreaker` per endpoint (keyed by identity):
an open breaker makes its endpoint unavailable too.

:meth:`FailureDetector.set_policy` (a configuration reload) applies new thresholds at once to
the detector's own accrual and ejection and to every breaker it already owns (through
:meth:`~lake_mesh_consul._core.breaker.CircuitBreaker.set_policy`), keeping their state.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import compress
from typing import Literal

from lake_mesh_consul._core.breaker import (
    BreakerListener,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
    SlidingWindow,
    WindowPolicy,
    monotonic_of,
)
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.outcome import (
    ClassificationPolicy,
    Classifier,
    Outcome,
    OutcomeKind,
    classify,
)
from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "ClassificationPolicy",
    "DetectorPolicy",
    "DetectorState",
    "EjectionEvent",
    "EjectionListener",
    "EjectionPolicy",
    "FailureDetector",
    "OutcomeKind",
    "OutlierPolicy",
    "classify",
]

_log = logging.getLogger(__name__)

#: Envoy's ``consecutive_5xx`` default.
DEFAULT_CONSECUTIVE_FAILURES = 5
#: Envoy's ``consecutive_gateway_failure`` default (enforced only when set here).
DEFAULT_CONSECUTIVE_GATEWAY_FAILURES = 5
#: Envoy's outlier-detection ``interval``: success-rate sweeps and multiplier decay.
DEFAULT_INTERVAL = 10.0
#: Envoy's ``base_ejection_time``.
DEFAULT_BASE_EJECTION_TIME = 30.0
#: Envoy's ``max_ejection_time``.
DEFAULT_MAX_EJECTION_TIME = 300.0
#: Envoy's ``max_ejection_percent`` (at least one endpoint may always be ejected).
DEFAULT_MAX_EJECTION_PERCENT = 10.0
#: Envoy's ``max_ejection_time_jitter`` default (0: no jitter unless configured).
DEFAULT_EJECTION_JITTER = 0.0
#: Envoy's ``success_rate_minimum_hosts``.
DEFAULT_SUCCESS_RATE_MINIMUM_HOSTS = 5
#: Envoy's ``success_rate_request_volume`` (per interval).
DEFAULT_SUCCESS_RATE_REQUEST_VOLUME = 100
#: Envoy's ``success_rate_stdev_factor`` (1900 / 1000).
DEFAULT_SUCCESS_RATE_STDEV_FACTOR = 1.9


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """How long and how many endpoints are ejected (Envoy's outlier-detection knobs).

    Attributes:
        base_ejection_time: seconds, multiplied by the number of ejections.
        max_ejection_time: cap on one ejection (before jitter).
        max_ejection_percent: at most this share of a service's endpoints ejected at once
            (at least one endpoint may always be ejected).
        ejection_jitter: up to this many random seconds added to each ejection.
    """

    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT
    ejection_jitter: float = DEFAULT_EJECTION_JITTER

    def __post_init__(self) -> None:
        if not self.base_ejection_time > 0:
            raise InvalidSetting("ejection.base_ejection_time", "must be > 0")
        if self.max_ejection_time < self.base_ejection_time:
            raise InvalidSetting("ejection.max_ejection_time", "must be >= base_ejection_time")
        if not 0 <= self.max_ejection_percent <= 100:
            raise InvalidSetting("ejection.max_ejection_percent", "must be within [0, 100]")
        if self.ejection_jitter < 0:
            raise InvalidSetting("ejection.ejection_jitter", "must be >= 0")


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """Envoy's success-rate outlier detection against peers (off by default).

    Attributes:
        enabled: run the per-interval sweep.
        minimum_hosts: endpoints with enough volume needed before anyone is judged.
        request_volume: requests an endpoint needs in the interval to be judged.
        stdev_factor: eject below ``mean - stdev_factor * stdev``.
    """

    enabled: bool = False
    minimum_hosts: int = DEFAULT_SUCCESS_RATE_MINIMUM_HOSTS
    request_volume: int = DEFAULT_SUCCESS_RATE_REQUEST_VOLUME
    stdev_factor: float = DEFAULT_SUCCESS_RATE_STDEV_FACTOR


def _default_window() -> WindowPolicy:
    return WindowPolicy()


@dataclass(frozen=True, slots=True)
class DetectorPolicy:
    """Everything a :class:`FailureDetector` decides by. Change with ``dataclasses.replace``.

    Attributes:
        consecutive_failures: failures in a row that eject; ``None`` disables.
        consecutive_gateway_failures: gateway errors in a row that eject; ``None`` (the
            default, as Envoy enforces it at 0%) disables.
        window: failure-rate and slow-call window; ``None`` disables.
        interval: seconds between success-rate sweeps and ejection-multiplier decrements.
        ejection: durations and the ejection cap.
        outlier: success-rate outlier detection.
        classification: which outcomes are failures.
        breaker: if set, one circuit breaker per endpoint with this policy.
    """

    consecutive_failures: int | None = DEFAULT_CONSECUTIVE_FAILURES
    consecutive_gateway_failures: int | None = None
    window: WindowPolicy | None = field(default_factory=_default_window)
    interval: float = DEFAULT_INTERVAL
    ejection: EjectionPolicy = field(default_factory=EjectionPolicy)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    classification: ClassificationPolicy = field(default_factory=ClassificationPolicy)
    breaker: BreakerPolicy | None = None

    def __post_init__(self) -> None:
        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise InvalidSetting("detector.consecutive_failures", "must be >= 1 or None")
        if self.consecutive_gateway_failures is not None and self.consecutive_gateway_failures < 1:
            raise InvalidSetting("detector.consecutive_gateway_failures", "must be >= 1 or None")
        if not self.interval > 0:
            raise InvalidSetting("detector.interval", "must be > 0")


@dataclass(frozen=True, slots=True)
class EjectionEvent:
    """An ejection, a return, or an ejection refused by the cap (``overflow``).

    Attributes:
        kind: ``"ejected"``, ``"returned"`` or ``"overflow"``.
        endpoint: the endpoint.
        reason: the trigger (``consecutive_failures``, ``consecutive_gateway_failures``,
            ``failure_rate``, ``slow_call_rate``, ``success_rate``).
        at: monotonic time the detector noticed it.
        until: monotonic time the ejection ends (ejected only).
        ejections: times ejected so far (the multiplier).
    """

    kind: Literal["ejected", "returned", "overflow"]
    endpoint: ServiceEndpoint
    reason: str
    at: float
    until: float | None = None
    ejections: int = 0


#: Called with every :class:`EjectionEvent`, outside the detector's lock, on the thread
#: that noticed it.
EjectionListener = Callable[[EjectionEvent], None]


@dataclass(frozen=True, slots=True)
class DetectorState:
    """A read-only view of one endpoint for ``explain``.

    Attributes:
        endpoint: the endpoint.
        available: what :meth:`FailureDetector.is_available` answers now.
        ejected_until: monotonic end of the current ejection, or ``None``.
        ejected_for: seconds of ejection left (0 when not ejected).
        ejection_reason: the trigger of the current (or last) ejection.
        ejections: the ejection multiplier.
        consecutive_failures: failures in a row.
        consecutive_gateway_failures: gateway errors in a row.
        requests: outcomes recorded in total.
        failures: failures recorded in total.
        window_calls: outcomes in the sliding window.
        failure_rate: percent over the window (``None`` below the minimum).
        slow_call_rate: percent over the window (``None`` below the minimum).
        breaker: the endpoint's breaker, if the detector owns breakers.
    """

    endpoint: ServiceEndpoint
    available: bool
    ejected_until: float | None
    ejected_for: float
    ejection_reason: str | None
    ejections: int
    consecutive_failures: int
    consecutive_gateway_failures: int
    requests: int
    failures: int
    window_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    breaker: BreakerSnapshot | None


class _Stats:
    __slots__ = (
        "breaker",
        "consecutive",
        "consecutive_gateway",
        "ejected_until",
        "ejections",
        "endpoint",
        "failures",
        "interval_requests",
        "interval_successes",
        "reason",
        "requests",
        "returned_at",
        "window",
    )

    def __init__(self, endpoint: ServiceEndpoint, window: WindowPolicy | None) -> None:
        self.endpoint = endpoint
        self.consecutive = 0
        self.consecutive_gateway = 0
        self.requests = 0
        self.failures = 0
        self.interval_requests = 0
        self.interval_successes = 0
        self.ejected_until: float | None = None
        self.ejections = 0
        self.returned_at: float | None = None
        self.reason: str | None = None
        self.window = SlidingWindow(window) if window is not None else None
        #: The endpoint's breaker once created (also in FailureDetector._breakers).
        self.breaker: CircuitBreaker | None = None


#: Breaker states that take an endpoint out of rotation (for the shared accrual cap).
_OUT_STATES = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.FORCED_OPEN})


def _is_out(st: _Stats) -> bool:
    br = st.breaker
    return st.ejected_until is not None or (br is not None and br.state in _OUT_STATES)


class FailureDetector:
    """Per-endpoint failure accrual, outlier ejection and (optionally) circuit breakers.

    Implements :class:`~lake_mesh_consul._core.ports.EndpointGate` (:meth:`is_available`)
    and :class:`~lake_mesh_consul._core.ports.OutcomeRecorder` (:meth:`record`).

    Args:
        policy: thresholds (:class:`DetectorPolicy`).
        clock: time for windows, ejections and breakers.
        rng: randomness for the ejection jitter.
        listeners: called with every :class:`EjectionEvent`.
        breaker_listeners: attached to every breaker the detector creates.

    Thread-safe: one short lock around the counters; :meth:`is_available` takes no lock
    unless an ejection just ended. Listeners run outside the lock.

    Example::

        detector = FailureDetector(DetectorPolicy(breaker=BreakerPolicy()))
        detector.record(endpoint, success=False, duration=0.2, status=503)
        detector.is_available(endpoint)
    """

    def __init__(
        self,
        policy: DetectorPolicy | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        listeners: Iterable[EjectionListener] = (),
        breaker_listeners: Iterable[BreakerListener] = (),
    ) -> None:
        self._policy = policy = policy or DetectorPolicy()
        self._clock = clock
        self._now = monotonic_of(clock)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._listeners: list[EjectionListener] = list(listeners)
        self._breaker_listeners = tuple(breaker_listeners)
        self._stats: dict[ServiceEndpoint, _Stats] = {}
        self._members: dict[str, dict[ServiceEndpoint, _Stats]] = {}
        self._breakers: dict[ServiceEndpoint, CircuitBreaker] = {}
        self._classifier = Classifier(policy.classification)
        self._slow_after = policy.window.slow_call_duration if policy.window else math.inf
        self._next_sweep = self._now() + policy.interval

    # --- policy --------------------------------------------------------------------------

    @property
    def policy(self) -> DetectorPolicy:
        """The policy in force (assigning it is :meth:`set_policy`)."""
        return self._policy

    @policy.setter
    def policy(self, policy: DetectorPolicy) -> None:
        self.set_policy(policy)

    def set_policy(self, policy: DetectorPolicy) -> None:
        """Adopt ``policy`` now: for accrual, ejection, classification and every breaker.

        What has been counted stays: consecutive failures, ejections in force and their
        multipliers, windows of the same kind and size (another shape starts empty). A new
        ``interval`` applies from the next sweep (sooner if it is shorter). Breakers the
        detector already owns take the new ``breaker`` policy through
        :meth:`CircuitBreaker.set_policy` (state and counts kept); ``breaker=None`` drops
        them, and breakers created later use the new policy.

        Thread-safe. Breakers are updated after the detector's lock is released.
        """
        with self._lock:
            old = self._policy
            self._policy = policy
            if policy.classification != old.classification:
                self._classifier = Classifier(policy.classification)
            self._slow_after = policy.window.slow_call_duration if policy.window else math.inf
            if policy.window != old.window:
                for st in self._stats.values():
                    if policy.window is None:
                        st.window = None
                    elif st.window is None:
                        st.window = SlidingWindow(policy.window)
                    else:
                        st.window.set_policy(policy.window)
            if policy.interval != old.interval:
                self._next_sweep = min(self._next_sweep, self._now() + policy.interval)
            breakers = list(self._breakers.values())
            if policy.breaker is None:
                self._breakers.clear()
                for st in self._stats.values():
                    st.breaker = None
        if policy.breaker is not None and policy.breaker != old.breaker:
            for br in breakers:
                br.set_policy(policy.breaker)

    # --- listeners -----------------------------------------------------------------------

    def add_listener(self, listener: EjectionListener) -> None:
        """Register ``listener`` for every future ejection event."""
        with self._lock:
            self._listeners.append(listener)

    def _emit(self, events: list[EjectionEvent]) -> None:
        for event in events:
            for listener in tuple(self._listeners):
                try:
                    listener(event)
                except Exception:
                    _log.exception("ejection listener failed on %s", event)

    # --- membership ----------------------------------------------------------------------

    def update_endpoints(self, service: str, endpoints: Iterable[ServiceEndpoint]) -> None:
        """Tell the detector a service's current endpoints (for the ejection cap).

        Endpoints no longer listed are forgotten (state, ejection and breaker). Usable as an
        :class:`~lake_mesh_consul._core.ports.EndpointSource` listener with
        ``functools.partial(detector.update_endpoints, "web")``.
        """
        with self._lock:
            current = self._members.setdefault(service, {})
            wanted = dict.fromkeys(endpoints)  # ordered, deduplicated
            # Set differences run in C: a change costs what changed, not a pass in Python.
            for ep in current.keys() - wanted.keys():
                del current[ep]
                self._stats.pop(ep, None)
                self._breakers.pop(ep, None)
            added = wanted.keys() - current.keys()
            for ep in compress(wanted, map(added.__contains__, wanted)) if added else ():
                st = self._stats.get(ep)
                if st is None:
                    st = self._stats[ep] = _Stats(ep, self._policy.window)
                    st.breaker = self._breakers.get(ep)
                current[ep] = st

    def change_members(
        self,
        service: str,
        *,
        joined: Iterable[ServiceEndpoint],
        left: Iterable[ServiceEndpoint],
    ) -> None:
        """:meth:`update_endpoints` for a few endpoints that joined or left.

        An endpoint whose fields changed is in both lists and keeps its state. Costs what
        changed, not the service's size. Thread-safe.
        """
        joined = list(joined)
        with self._lock:
            current = self._members.setdefault(service, {})
            staying = set(joined)
            for ep in left:
                if ep not in staying and current.pop(ep, None) is not None:
                    self._stats.pop(ep, None)
                    self._breakers.pop(ep, None)
            for ep in joined:
                if ep not in current:
                    st = self._stats.get(ep)
                    if st is None:
                        st = self._stats[ep] = _Stats(ep, self._policy.window)
                        st.breaker = self._breakers.get(ep)
                    current[ep] = st

    def _stats_for(self, endpoint: ServiceEndpoint) -> _Stats:
        st = self._stats.get(endpoint)
        if st is None:
            st = self._stats[endpoint] = _Stats(endpoint, self._policy.window)
            st.breaker = self._breakers.get(endpoint)
            self._members.setdefault(endpoint.service, {})[endpoint] = st
        return st

    # --- breakers ------------------------------------------------------------------------

    def breaker(self, endpoint: ServiceEndpoint) -> CircuitBreaker | None:
        """The endpoint's circuit breaker, created on first use; ``None`` without a policy."""
        br = self._breakers.get(endpoint)
        if br is None:
            with self._lock:
                policy = self._policy.breaker  # read under the lock: set_policy races
                if policy is None:
                    return None
                br = self._breakers.get(endpoint)
                if br is None:
                    br = CircuitBreaker(
                        endpoint.id or endpoint.host_port,
                        policy,
                        clock=self._clock,
                        listeners=self._breaker_listeners,
                        may_trip=functools.partial(self._breaker_may_trip, endpoint),
                    )
                    self._breakers[endpoint] = br
                    st = self._stats.get(endpoint)
                    if st is not None:
                        st.breaker = br
        return br

    # --- the ports -----------------------------------------------------------------------

    def is_available(self, endpoint: ServiceEndpoint) -> bool:
        """False while ``endpoint`` is ejected or its breaker refuses calls.

        Lock-free unless an ejection has just ended (then the return is recorded and
        announced). Advisory: a half-open breaker may still refuse the actual acquire.
        """
        st = self._stats.get(endpoint)
        if st is None:
            br = self._breakers.get(endpoint)
            return br is None or br.allows()
        if st.ejected_until is not None:
            if self._now() < st.ejected_until:
                return False
            events: list[EjectionEvent] = []
            with self._lock:
                self._return_if_due(st, self._now(), events)
            self._emit(events)
        br = st.breaker
        return br is None or br.allows()

    @property
    def classifier(self) -> Classifier:
        """The :class:`~lake_mesh_consul._core.outcome.Classifier` of the current policy."""
        return self._classifier

    @property
    def clock(self) -> Clock:
        """The clock of windows, ejections and the breakers the detector creates."""
        return self._clock

    def classify(
        self, *, error: BaseException | None = None, status: int | None = None
    ) -> OutcomeKind:
        """:func:`classify` with this detector's classification policy."""
        return classify(error=error, status=status, policy=self._classifier.policy)

    def is_failure(self, kind: OutcomeKind) -> bool:
        """Whether ``kind`` counts as a failure under this detector's policy."""
        return self._classifier.is_failure(kind)

    def is_failure_status(self, status: int) -> bool:
        """Whether an HTTP ``status`` counts as a failure (classified once per status)."""
        return self._classifier.of_status(status).failure

    def status_outcome(self, status: int) -> tuple[OutcomeKind, bool]:
        """``(kind, is_failure)`` of an HTTP ``status`` under this detector's policy (cached)."""
        outcome = self._classifier.of_status(status)
        return outcome.kind, outcome.failure

    def record(
        self,
        endpoint: ServiceEndpoint,
        *,
        success: bool,
        duration: float,
        error: BaseException | None = None,
        status: int | None = None,
        permit: Permit | None = None,
        now: float | None = None,
    ) -> None:
        """Record one finished request to ``endpoint`` (``duration`` in seconds).

        With ``error`` or ``status`` the outcome is classified (:func:`classify`) and
        ``success`` is only a fallback; without them, ``success`` decides. ``IGNORED``
        outcomes count nowhere. If the detector owns breakers, the outcome goes to the
        endpoint's breaker too: through ``permit`` when the call was admitted with one
        (``breaker(endpoint).acquire()``), otherwise as an observation.

        ``now`` is the detector clock's monotonic time the request ended, when the caller
        has just read it (saves a clock read); by default the clock is read here.

        Thread-safe; ejection listeners run after the lock is released.
        """
        outcome = self._classifier.of(success=success, error=error, status=status)
        self.record_outcome(endpoint, outcome, duration, permit=permit, now=now)

    def record_outcome(
        self,
        endpoint: ServiceEndpoint,
        outcome: Outcome,
        duration: float,
        *,
        permit: Permit | None = None,
        now: float | None = None,
    ) -> None:
        """Record one finished request already classified into ``outcome``.

        The request path classifies each result once (:class:`Classifier`) and reports
        the value here. ``IGNORED`` outcomes count nowhere (the permit is released). The
        outcome reaches the endpoint's breaker through ``permit`` when the call was
        admitted with one, otherwise as an observation. ``now`` is as for :meth:`record`.

        Thread-safe; ejection listeners run after the lock is released.
        """
        if now is None:
            now = self._now()
        if outcome.kind is OutcomeKind.IGNORED:
            if permit is not None:
                permit.release()
            return
        failure = outcome.failure
        kind = outcome.kind
        error = outcome.error if failure else None
        if permit is not None:
            pbr = permit.breaker
            # Our clock's reading is the breaker's too when it runs on the same clock.
            pbr.report(
                permit,
                failure=failure,
                duration=duration,
                error=error,
                now=now if pbr.clock is self._clock else None,
            )
        elif self._policy.breaker is not None:
            br = self.breaker(endpoint)
            if br is not None:
                br.observe(success=not failure, duration=duration, error=error)
        events: list[EjectionEvent] = []
        with self._lock:
            st = self._stats.get(endpoint) or self._stats_for(endpoint)
            if now >= self._next_sweep:
                self._sweep(now, events)
            st.requests += 1
            st.interval_requests += 1
            if failure:
                st.failures += 1
                st.consecutive += 1
                if kind is OutcomeKind.GATEWAY_ERROR:
                    st.consecutive_gateway += 1
                else:
                    st.consecutive_gateway = 0
            else:
                st.interval_successes += 1
                st.consecutive = 0
                st.consecutive_gateway = 0
            slow = duration > self._slow_after
            window = st.window
            if window is not None:
                window.record(failure, slow, now)
            if st.ejected_until is not None:
                self._return_if_due(st, now, events)
            # A fast success cannot trigger anything once the window's rates have been
            # evaluated (SlidingWindow.quiet): the success path skips _trigger.
            if st.ejected_until is None and (
                failure or slow or (window is not None and not window.quiet)
            ):
                reason = self._trigger(st, failure, slow, now)
                if reason is not None:
                    self._eject(st, reason, now, events)
        if events:
            self._emit(events)

    # --- decisions (lock held) -----------------------------------------------------------

    def _trigger(self, st: _Stats, failure: bool, slow: bool, now: float) -> str | None:
        if st.window is not None and not failure:
            return st.window.exceeded_after(failure, slow, now)
        p = self._policy
        if p.consecutive_failures is not None and st.consecutive >= p.consecutive_failures:
            return "consecutive_failures"
        if (
            p.consecutive_gateway_failures is not None
            and st.consecutive_gateway >= p.consecutive_gateway_failures
        ):
            return "consecutive_gateway_failures"
        if st.window is not None:
            return st.window.exceeded_after(failure, slow, now)
        return None

    def _return_if_due(self, st: _Stats, now: float, events: list[EjectionEvent]) -> None:
        until = st.ejected_until
        if until is not None and now >= until:
            st.ejected_until = None
            st.returned_at = until
            events.append(
                EjectionEvent("returned", st.endpoint, st.reason or "", now, None, st.ejections)
            )

    def _eject(self, st: _Stats, reason: str, now: float, events: list[EjectionEvent]) -> bool:
        e = self._policy.ejection
        members = self._members.get(st.endpoint.service, {})
        for other in members.values():
            if other.ejected_until is not None:
                self._return_if_due(other, now, events)
        if not self._may_take_out(st, members):
            events.append(EjectionEvent("overflow", st.endpoint, reason, now, None, st.ejections))
            return False
        if st.returned_at is not None and st.ejections:
            healthy_intervals = int((now - st.returned_at) // self._policy.interval)
            st.ejections = max(0, st.ejections - healthy_intervals)
        st.ejections += 1
        duration = min(e.base_ejection_time * st.ejections, e.max_ejection_time)
        if e.ejection_jitter:
            duration += self._rng.uniform(0.0, e.ejection_jitter)
        st.ejected_until = now + duration
        st.returned_at = None
        st.reason = reason
        st.consecutive = st.consecutive_gateway = 0
        if st.window is not None:
            st.window.reset()
        events.append(
            EjectionEvent("ejected", st.endpoint, reason, now, st.ejected_until, st.ejections)
        )
        return True

    def _may_take_out(self, st: _Stats, members: dict[ServiceEndpoint, _Stats]) -> bool:
        """Whether failure accrual may take ``st`` out of rotation (lock held).

        Breakers and ejections count together: at most ``max_ejection_percent`` of the
        service's endpoints are out at once (ejected, or breaker open, half-open or forced
        open), but always at least one (Envoy's rule). An endpoint already out may be
        taken out by the other mechanism too.
        """
        if _is_out(st):
            return True
        out = sum(1 for other in members.values() if other is not st and _is_out(other))
        total = max(len(members), 1)
        return out == 0 or 100.0 * (out + 1) <= self._policy.ejection.max_ejection_percent * total

    def _breaker_may_trip(self, endpoint: ServiceEndpoint) -> bool:
        """The guard of the endpoint's breaker: a trip is one more endpoint out of rotation."""
        with self._lock:
            st = self._stats.get(endpoint)
            if st is None:
                return True
            members = self._members.get(endpoint.service, {})
            return self._may_take_out(st, members)

    def restore(self, endpoint: ServiceEndpoint, reason: str = "passing again") -> bool:
        """Return ``endpoint`` to rotation now: end its ejection, half-open its breaker.

        For an instance Consul reports passing again after it was critical (Envoy
        un-ejects on a successful active health check): the next request to it is a
        half-open probe, which closes the breaker or opens it again. Returns whether
        anything changed. Thread-safe.
        """
        events: list[EjectionEvent] = []
        now = self._now()
        with self._lock:
            st = self._stats.get(endpoint)
            if st is not None and st.ejected_until is not None:
                st.ejected_until = now
                self._return_if_due(st, now, events)
            br = self._breakers.get(endpoint)
        self._emit(events)
        probed = br is not None and br.probe_now(reason)
        return bool(events) or probed

    def _sweep(self, now: float, events: list[EjectionEvent]) -> None:
        """Per-interval work: returns, success-rate outliers, fresh interval counters."""
        self._next_sweep = now + self._policy.interval
        for st in self._stats.values():
            if st.ejected_until is not None:
                self._return_if_due(st, now, events)
        o = self._policy.outlier
        if o.enabled:
            for members in self._members.values():
                judged = [
                    (st, st.interval_successes / st.interval_requests)
                    for st in members.values()
                    if st.interval_requests >= o.request_volume and st.ejected_until is None
                ]
                if len(judged) < o.minimum_hosts:
                    continue
                rates = [rate for _, rate in judged]
                mean = sum(rates) / len(rates)
                stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
                threshold = mean - o.stdev_factor * stdev
                for st, rate in sorted(judged, key=lambda pair: pair[1]):
                    if rate < threshold:
                        self._eject(st, "success_rate", now, events)
        for st in self._stats.values():
            st.interval_requests = st.interval_successes = 0

    def sweep(self) -> None:
        """Run the per-interval work now (returns, success-rate outliers) if it is due.

        ``record`` does this lazily; call it from a timer if traffic can stop entirely.
        """
        events: list[EjectionEvent] = []
        now = self._now()
        with self._lock:
            for st in self._stats.values():
                if st.ejected_until is not None:
                    self._return_if_due(st, now, events)
            if now >= self._next_sweep:
                self._sweep(now, events)
        self._emit(events)

    # --- reading -------------------------------------------------------------------------

    def state(self, endpoint: ServiceEndpoint) -> DetectorState:
        """The read-only state of ``endpoint`` (for ``explain``); zeros if never seen."""
        events: list[EjectionEvent] = []
        now = self._now()
        with self._lock:
            st = self._stats.get(endpoint) or _Stats(endpoint, self._policy.window)
            self._return_if_due(st, now, events)
            calls = 0
            rates: tuple[float | None, float | None] = (None, None)
            if st.window is not None:
                calls = st.window.counts(now)[0]
                rates = st.window.rates(now)
            until = st.ejected_until
            snapshot = DetectorState(
                endpoint=endpoint,
                available=False,
                ejected_until=until,
                ejected_for=max(0.0, until - now) if until is not None else 0.0,
                ejection_reason=st.reason,
                ejections=st.ejections,
                consecutive_failures=st.consecutive,
                consecutive_gateway_failures=st.consecutive_gateway,
                requests=st.requests,
                failures=st.failures,
                window_calls=calls,
                failure_rate=rates[0],
                slow_call_rate=rates[1],
                breaker=None,
            )
        self._emit(events)
        br = self._breakers.get(endpoint)
        return replace(
            snapshot,
            available=self.is_available(endpoint),
            breaker=br.snapshot() if br is not None else None,
        )

    def states(self, service: str | None = None) -> list[DetectorState]:
        """:meth:`state` of every known endpoint (of ``service``, if given)."""
        with self._lock:
            if service is None:
                endpoints = list(self._stats)
            else:
                endpoints = list(self._members.get(service, {}))
        return [self.state(ep) for ep in endpoints]

    def ejected(self, service: str | None = None) -> list[ServiceEndpoint]:
        """Endpoints currently ejected (of ``service``, if given)."""
        return [s.endpoint for s in self.states(service) if s.ejected_until is not None]

    def __repr__(self) -> str:
        return f"FailureDetector(endpoints={len(self._stats)})"
