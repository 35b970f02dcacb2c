"""Health status and its aggregation, written as data.

Consul's precedence (``api/health.go``, ``AggregatedStatus``) is
``maintenance > critical > warning > passing``: a set of checks is as bad as its worst
member, and maintenance trumps everything. :data:`PRECEDENCE` is that rule as a table.

Also here, pure and clock-injected: :class:`CheckResult` (what a local check function said),
flap damping (:data:`DAMPING`, :func:`damp`: consecutive results needed to change the
reported status) and :class:`HealthMetrics` (per-check and per-service records, immutable
snapshots, listeners on each transition).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "DAMPING",
    "PRECEDENCE",
    "CheckMetrics",
    "CheckResult",
    "HealthMetrics",
    "HealthSnapshot",
    "HealthStatus",
    "Transition",
    "TransitionListener",
    "aggregate",
    "damp",
]

log = logging.getLogger("lake_mesh_consul.health")


class HealthStatus(str, enum.Enum):
    """The health of a check, an instance or a service, as Consul spells it.

    Compare with :meth:`worse_than`; aggregate a collection with :meth:`aggregate`.
    """

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"

    @classmethod
    def parse(cls, value: str) -> HealthStatus:
        """Parse Consul's spelling (case-insensitive); unknown values count as critical.

        Consul only ever reports the four values, so an unknown one is a corrupt answer and
        the safe reading is "not healthy".
        """
        try:
            return cls(value.strip().lower())
        except ValueError:
            return cls.CRITICAL

    @property
    def rank(self) -> int:
        """Position in :data:`PRECEDENCE` (higher is worse)."""
        return PRECEDENCE[self]

    def worse_than(self, other: HealthStatus) -> bool:
        """Whether this status takes precedence over ``other``."""
        return PRECEDENCE[self] > PRECEDENCE[other]

    @classmethod
    def aggregate(cls, statuses: Iterable[HealthStatus]) -> HealthStatus:
        """The worst of ``statuses``; passing for none (an instance with no checks is healthy)."""
        return aggregate(statuses)

    def __str__(self) -> str:
        return self.value


#: Consul's precedence as data: the higher the number, the more it dominates an aggregate.
PRECEDENCE: dict[HealthStatus, int] = {
    HealthStatus.PASSING: 0,
    HealthStatus.WARNING: 1,
    HealthStatus.CRITICAL: 2,
    HealthStatus.MAINTENANCE: 3,
}


def aggregate(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """Return the status of a set of checks: the one with the highest precedence."""
    worst = HealthStatus.PASSING
    for status in statuses:
        if PRECEDENCE[status] > PRECEDENCE[worst]:
            worst = status
    return worst


# --- local check results and flap damping ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one run of a local check function said: a status and an output text.

    Build it directly or with :meth:`of`, which accepts what a check function may return.
    Immutable and thread-safe.
    """

    status: HealthStatus
    output: str = ""

    @classmethod
    def of(cls, value: object) -> CheckResult:
        """Normalise a check function's return value.

        ``True``/``None`` -> passing, ``False`` -> critical, a :class:`HealthStatus` or its
        spelling, a ``(status, output)`` pair, or a :class:`CheckResult` as is. Anything else
        is critical, saying what came back (a check that returns nonsense is not healthy).

        Example:
            >>> CheckResult.of((HealthStatus.WARNING, "disk 91% full"))
            CheckResult(status=<HealthStatus.WARNING: 'warning'>, output='disk 91% full')
        """
        if isinstance(value, CheckResult):
            return value
        if value is None or value is True:
            return cls(HealthStatus.PASSING)
        if value is False:
            return cls(HealthStatus.CRITICAL, "check returned False")
        if isinstance(value, HealthStatus):
            return cls(value)
        if isinstance(value, str):
            return cls(HealthStatus.parse(value))
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
            return cls(cls.of(value[0]).status, value[1])
        return cls(HealthStatus.CRITICAL, f"check returned {value!r}, not a status")


#: Flap damping as data. Key: (the reported status is passing, the new result is passing).
#: Value: what decides the next reported status:
#:
#: * ``"stay"``: nothing changes (a success while passing);
#: * ``"failures"``: go to the result's status once ``failure_threshold`` consecutive
#:   non-passing results were seen (warning and critical both count as failures);
#: * ``"successes"``: go to passing once ``success_threshold`` consecutive passing results
#:   were seen;
#: * ``"follow"``: take the result's status at once (warning <-> critical while failing:
#:   the failure streak already justified leaving passing).
#:
#: With both thresholds at 1 (the default) the reported status is simply the last result.
#: This is Consul's ``success_before_passing`` / ``failures_before_critical`` rule, applied
#: locally to checks the agent does not run (TTL).
DAMPING: dict[tuple[bool, bool], str] = {
    (True, True): "stay",
    (True, False): "failures",
    (False, True): "successes",
    (False, False): "follow",
}


def damp(
    reported: HealthStatus,
    result: HealthStatus,
    *,
    consecutive_successes: int,
    consecutive_failures: int,
    success_threshold: int = 1,
    failure_threshold: int = 1,
) -> HealthStatus:
    """The status to report after ``result``, following :data:`DAMPING`.

    ``consecutive_successes`` / ``consecutive_failures`` must already count ``result``.
    Maintenance is never a result; a reported maintenance is left alone.
    """
    if reported is HealthStatus.MAINTENANCE:
        return reported
    rule = DAMPING[(reported is HealthStatus.PASSING, result is HealthStatus.PASSING)]
    if rule == "failures":
        return result if consecutive_failures >= failure_threshold else reported
    if rule == "successes":
        return result if consecutive_successes >= success_threshold else reported
    if rule == "follow":
        return result
    return reported


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckMetrics:
    """The health record of one check (or, in :attr:`HealthSnapshot.service`, of the service).

    For the service record, a "result" is any check result recorded, counted as a success
    when the service as a whole was passing after it; its TTL counters and last duration
    are those of all its checks.

    Attributes:
        check_id: the check id (the service id for the service record).
        status: the current (reported, i.e. damped) status.
        last_transition: wall-clock time of the last status change (``None``: never changed).
        consecutive_successes: passing results in a row, up to the latest.
        consecutive_failures: warning or critical results in a row, up to the latest.
        transitions: how many times the status changed.
        results: how many results were recorded.
        last_output: the output of the latest result.
        ttl_updates_sent: TTL updates the agent accepted.
        ttl_updates_failed: TTL updates that failed (agent down, check unknown...).
        last_check_duration: seconds the latest local check run took (``None``: none ran).
    """

    check_id: str
    status: HealthStatus
    last_transition: float | None = None
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    transitions: int = 0
    results: int = 0
    last_output: str = ""
    ttl_updates_sent: int = 0
    ttl_updates_failed: int = 0
    last_check_duration: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change of a check (``check_id`` set) or of the whole service (``None``)."""

    service_id: str
    check_id: str | None
    previous: HealthStatus
    current: HealthStatus
    at: float
    output: str = ""


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """An immutable copy of a service's :class:`HealthMetrics` at ``taken_at`` (wall clock)."""

    service_id: str
    service: CheckMetrics
    checks: Mapping[str, CheckMetrics]
    taken_at: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): ``service``, ``checks`` and ``taken_at``."""

        def one(m: CheckMetrics) -> dict[str, Any]:
            out = {f: getattr(m, f) for f in CheckMetrics.__slots__}
            out["status"] = m.status.value
            return out

        return {
            "service_id": self.service_id,
            "service": one(self.service),
            "checks": {k: one(v) for k, v in self.checks.items()},
            "taken_at": self.taken_at,
        }


#: Called with each Transition, after the metrics were updated, outside any lock.
TransitionListener = Callable[[Transition], None]


class HealthMetrics:
    """Per-check and per-service health records with flap damping and transition listeners.

    Feed it results (:meth:`record`), TTL update outcomes (:meth:`record_ttl_update`) and
    maintenance (:meth:`set_maintenance`); read it with :meth:`snapshot` (an immutable
    :class:`HealthSnapshot`) or :meth:`status`; get a callback on every status change with
    :meth:`subscribe`. The service's status is the aggregate (:func:`aggregate`) of its
    checks' reported statuses, or maintenance while maintenance is on.

    Results of locally run checks are damped (:func:`damp`, thresholds from the
    constructor); results observed from the agent (``damped=False``) are taken as they are,
    because the agent damps its own checks.

    Thread-safe: every method may be called from any thread. Listeners run on the thread
    that recorded the change, after the lock is released; an exception in a listener is
    logged and does not stop the others.

    Args:
        service_id: the service instance these metrics describe.
        clock: where timestamps come from (wall clock for ``last_transition``).
        success_threshold: consecutive passing results needed to become passing.
        failure_threshold: consecutive failing results needed to leave passing.

    Example:
        >>> m = HealthMetrics("web-1", failure_threshold=2)
        >>> m.add_check("app", initial=HealthStatus.PASSING)
        >>> m.record("app", CheckResult(HealthStatus.CRITICAL, "db down"))
        []
        >>> [t.current for t in m.record("app", CheckResult(HealthStatus.CRITICAL))]
        [<HealthStatus.CRITICAL: 'critical'>, <HealthStatus.CRITICAL: 'critical'>]
    """

    def __init__(
        self,
        service_id: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        success_threshold: int = 1,
        failure_threshold: int = 1,
    ) -> None:
        for name, value in (
            ("success_threshold", success_threshold),
            ("failure_threshold", failure_threshold),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSetting(name, f"must be a whole number >= 1, got {value!r}")
        self.service_id = service_id
        self.success_threshold = success_threshold
        self.failure_threshold = failure_threshold
        self._clock = clock
        self._lock = threading.Lock()
        self._checks: dict[str, CheckMetrics] = {}
        self._service = CheckMetrics(check_id=service_id, status=HealthStatus.PASSING)
        self._maintenance = False
        self._listeners: list[TransitionListener] = []

    # -- feeding ---------------------------------------------------------------------------

    def add_check(self, check_id: str, *, initial: HealthStatus = HealthStatus.CRITICAL) -> None:
        """Start tracking ``check_id`` in status ``initial`` (Consul's default: critical).

        Adding a check that is tracked already does nothing. Adding or removing a check
        re-derives the service's status without counting a transition: the service's
        health did not change, only what it is made of.
        """
        with self._lock:
            if check_id in self._checks:
                return
            self._checks[check_id] = CheckMetrics(check_id=check_id, status=initial)
            self._rederive_service_locked()

    def remove_check(self, check_id: str) -> None:
        """Stop tracking ``check_id`` (nothing happens if it is not tracked)."""
        with self._lock:
            if self._checks.pop(check_id, None) is not None:
                self._rederive_service_locked()

    def record(
        self,
        check_id: str,
        result: CheckResult,
        *,
        duration: float | None = None,
        damped: bool = True,
    ) -> list[Transition]:
        """Record one result of ``check_id``; return the transitions it caused (check first).

        Args:
            check_id: the check (tracked from now on if it was not).
            result: the status and output.
            duration: seconds the local check run took, if it ran locally.
            damped: apply the thresholds (False for statuses observed from the agent).
        """
        if result.status is HealthStatus.MAINTENANCE:
            raise InvalidSetting("result", "maintenance is not a check result")
        with self._lock:
            now = self._clock.time()
            old = self._checks.get(check_id) or CheckMetrics(
                check_id=check_id, status=HealthStatus.CRITICAL
            )
            passing = result.status is HealthStatus.PASSING
            successes = old.consecutive_successes + 1 if passing else 0
            failures = 0 if passing else old.consecutive_failures + 1
            if damped:
                status = damp(
                    old.status,
                    result.status,
                    consecutive_successes=successes,
                    consecutive_failures=failures,
                    success_threshold=self.success_threshold,
                    failure_threshold=self.failure_threshold,
                )
            else:
                status = result.status
            changed = status is not old.status
            self._checks[check_id] = dataclasses.replace(
                old,
                status=status,
                last_transition=now if changed else old.last_transition,
                consecutive_successes=successes,
                consecutive_failures=failures,
                transitions=old.transitions + int(changed),
                results=old.results + 1,
                last_output=result.output,
                last_check_duration=duration if duration is not None else old.last_check_duration,
            )
            transitions: list[Transition] = []
            if changed:
                transitions.append(
                    Transition(self.service_id, check_id, old.status, status, now, result.output)
                )
            transitions += self._update_service_locked(result.output)
            svc = self._service
            healthy = svc.status is HealthStatus.PASSING
            self._service = dataclasses.replace(
                svc,
                consecutive_successes=svc.consecutive_successes + 1 if healthy else 0,
                consecutive_failures=0 if healthy else svc.consecutive_failures + 1,
                results=svc.results + 1,
                last_output=result.output,
                last_check_duration=duration if duration is not None else svc.last_check_duration,
            )
        self._notify(transitions)
        return transitions

    def record_ttl_update(self, check_id: str, *, ok: bool) -> None:
        """Count one TTL update of ``check_id`` sent to the agent (``ok``) or failed."""
        sent, failed = (1, 0) if ok else (0, 1)
        with self._lock:
            old = self._checks.get(check_id) or CheckMetrics(
                check_id=check_id, status=HealthStatus.CRITICAL
            )
            self._checks[check_id] = dataclasses.replace(
                old,
                ttl_updates_sent=old.ttl_updates_sent + sent,
                ttl_updates_failed=old.ttl_updates_failed + failed,
            )
            svc = self._service
            self._service = dataclasses.replace(
                svc,
                ttl_updates_sent=svc.ttl_updates_sent + sent,
                ttl_updates_failed=svc.ttl_updates_failed + failed,
            )

    def set_maintenance(self, enabled: bool, reason: str = "") -> None:
        """Put the service into maintenance (status maintenance) or take it out."""
        with self._lock:
            if self._maintenance == enabled:
                return
            self._maintenance = enabled
            transitions = self._update_service_locked(reason)
        self._notify(transitions)

    # -- reading ---------------------------------------------------------------------------

    def status(self, check_id: str | None = None) -> HealthStatus:
        """The reported status of ``check_id``, or of the service when ``None``.

        Raises:
            KeyError: ``check_id`` is not tracked.
        """
        with self._lock:
            if check_id is None:
                return self._service.status
            return self._checks[check_id].status

    @property
    def check_ids(self) -> tuple[str, ...]:
        """The tracked check ids, in the order they were added."""
        with self._lock:
            return tuple(self._checks)

    def snapshot(self) -> HealthSnapshot:
        """An immutable copy of every record, taken atomically."""
        with self._lock:
            return HealthSnapshot(
                service_id=self.service_id,
                service=self._service,
                checks=MappingProxyType(dict(self._checks)),
                taken_at=self._clock.time(),
            )

    def subscribe(self, listener: TransitionListener) -> Callable[[], None]:
        """Call ``listener`` with each :class:`Transition`; return a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # -- internals -------------------------------------------------------------------------

    def _service_status_locked(self) -> HealthStatus:
        if self._maintenance:
            return HealthStatus.MAINTENANCE
        return aggregate(m.status for m in self._checks.values())

    def _rederive_service_locked(self) -> None:
        self._service = dataclasses.replace(self._service, status=self._service_status_locked())

    def _update_service_locked(self, output: str) -> list[Transition]:
        status = self._service_status_locked()
        old = self._service
        if status is old.status:
            return []
        now = self._clock.time()
        self._service = dataclasses.replace(
            old, status=status, last_transition=now, transitions=old.transitions + 1
        )
        return [Transition(self.service_id, None, old.status, status, now, output)]

    def _notify(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        with self._lock:
            listeners = list(self._listeners)
        for transition in transitions:
            for listener in listeners:
                try:
                    listener(transition)
                except Exception:
                    log.exception("health transition listener %r failed", listener)

    def __repr__(self) -> str:
        return f"HealthMetrics({self.service_id!r}, status={self.status().value})"
