"""Instruments: the one narrow interface the request path and the mesh report events to.

The route, its detector and breakers, the retry loop and the mesh's configuration store
report *events* here; metrics exporters (:mod:`lake_mesh_consul.observability`) and the log
lines of :class:`LogInstruments` are implementations. The core does no I/O and imports no
exporter: an :class:`Instruments` is a plain object with one method per event, each a no-op
in the base class. Subclass it and override what you listen to.

What each event means (``service`` is the called service's name):

======================== ==================================================================
method                   reported when
======================== ==================================================================
request_finished         an admitted attempt ended with an outcome (its kind and seconds)
retry                    the retry loop decided after a retriable failure: ``stop`` is
                         ``None`` for a retry attempted, else why not (``"retry budget
                         exhausted"``, ``"attempts exhausted"``, ``"deadline"``...)
breaker_transition       an endpoint's breaker changed state (the breaker's table)
ejection                 an endpoint was ejected, returned, or its ejection refused by the
                         cap (``overflow``)
panic                    nothing was eligible: the request went to the best candidate
no_endpoint              nothing routable: the request failed with NoEndpointsAvailable
config_event             the configuration store applied, rejected, deleted a key, or KV
                         became unavailable / recovered
======================== ==================================================================

Gauges (snapshot age and staleness, breakers open, ejections active, registrations) are
read when scraped, not reported: :meth:`Instruments.attach` hands an exporter a function
returning :class:`Readings`.

No cost when nothing listens: a :class:`~lake_mesh_consul._core.route.Route` asks
:func:`listens` whether ``request_finished`` or ``retry`` is overridden and installs no hook
on the success path otherwise (the default, :data:`NO_INSTRUMENTS`, overrides nothing).

Thread-safety: methods are called on the thread that noticed the event (a request thread,
a watch thread), sometimes under a breaker's lock: implementations must be quick and
thread-safe. An exception is logged and dropped (:func:`call_safely`): a faulty listener
never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lake_mesh_consul._core.breaker import BreakerState, BreakerTransition
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.detector import EjectionEvent
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.outcome import Outcome

__all__ = [
    "NO_INSTRUMENTS",
    "Instruments",
    "LogInstruments",
    "MultiInstruments",
    "Readings",
    "ServiceReadings",
    "call_safely",
    "combine",
    "endpoint_name",
    "listener_failed",
    "listens",
    "stop_category",
]

#: The logger of :class:`LogInstruments` (ejections, breakers, retry budget, configuration).
LOGGER_NAME = "lake_mesh_consul.events"

#: The stop reason :func:`~lake_mesh_consul._core.retry.run_call` gives for a budget refusal.
BUDGET_EXHAUSTED = "retry budget exhausted"


@dataclass(frozen=True, slots=True)
class ServiceReadings:
    """One called service's gauges at the moment of a scrape.

    Attributes:
        service: the service name.
        endpoints: endpoints discovery reported.
        eligible: endpoints a pick may choose now.
        panic: whether requests go to every routable endpoint (nothing, or too little,
            eligible).
        breakers: endpoints per breaker state (``{"open": 1, "closed": 2}``).
        ejected: endpoints currently ejected.
        snapshot_age: seconds since discovery's last good answer (``None``: never).
        snapshot_stale: whether discovery failed since its last good answer.
        watch_failures: consecutive failed queries of discovery's watch (0 while fresh;
            the watch backs off further with each).
    """

    service: str
    endpoints: int
    eligible: int
    panic: bool
    breakers: Mapping[str, int] = field(default_factory=dict)
    ejected: int = 0
    snapshot_age: float | None = None
    snapshot_stale: bool = False
    watch_failures: int = 0


@dataclass(frozen=True, slots=True)
class Readings:
    """The mesh's gauges at the moment of a scrape (see :meth:`Instruments.attach`).

    Attributes:
        services: one entry per called service.
        config_stale: whether the KV configuration could not be read lately.
        registered: this process's registered instances.
        reregistrations: times the agent forgot an instance and it was registered again.
        heartbeat_failures: consecutive failed TTL pushes, by service id.
        heartbeats_sent: TTL updates the agent accepted, in total, by service id.
        heartbeats_failed: TTL updates that failed, in total, by service id.
    """

    services: tuple[ServiceReadings, ...] = ()
    config_stale: bool = False
    registered: int = 0
    reregistrations: int = 0
    heartbeat_failures: Mapping[str, int] = field(default_factory=dict)
    heartbeats_sent: Mapping[str, int] = field(default_factory=dict)
    heartbeats_failed: Mapping[str, int] = field(default_factory=dict)


#: A function an exporter calls at scrape time.
ReadingsSource = Callable[[], Readings]


class Instruments:
    """The events of the request path and the mesh; every method here does nothing.

    Subclass and override the events you want. Implementations must be thread-safe, quick
    and must not raise (see the module docstring).

    Example:
        >>> class Count(Instruments):
        ...     def __init__(self) -> None:
        ...         self.failures = 0
        ...     def request_finished(self, service, endpoint, outcome, duration):
        ...         self.failures += outcome.failure
    """

    __slots__ = ()

    def request_finished(
        self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
    ) -> None:
        """An admitted attempt ended with ``outcome`` after ``duration`` seconds."""

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        """The retry loop decided after failed ``attempt`` (1-based): retry, or ``stop``."""

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        """An endpoint's breaker (``transition.name``: the endpoint's id) changed state."""

    def ejection(self, service: str, event: EjectionEvent) -> None:
        """An endpoint was ejected, returned, or its ejection refused (``overflow``)."""

    def panic(self, service: str, reason: str | None) -> None:
        """Nothing was eligible; the request went to the best candidate (``reason``: why)."""

    def no_endpoint(self, service: str, reason: str) -> None:
        """Nothing routable: the request failed (``reason``: ``"all drained"``...)."""

    def config_event(self, kind: str, key: str | None, field: str | None, reason: str) -> None:
        """The configuration store applied/rejected/deleted ``key``, or KV went away/back.

        ``kind`` is the store's event kind (``"applied"``, ``"rejected"``, ``"deleted"``,
        ``"unavailable"``, ``"recovered"``, ``"reset"``, ``"ignored"``).
        """

    def attach(self, readings: ReadingsSource) -> None:
        """Take the function that returns the mesh's gauges at scrape time (Mesh calls it)."""

    def close(self) -> None:
        """Release what the instruments registered (collectors, callbacks). Idempotent."""


#: Instruments that listen to nothing: the default of a bare Route.
NO_INSTRUMENTS = Instruments()


def stop_category(stop: str) -> str:
    """A retry loop's stop reason as a bounded label value.

    ``"budget"`` (refused by the retry budget), ``"attempts"``, ``"deadline"``,
    ``"not_idempotent"``, ``"retry_after"``, ``"not_retried"`` or ``"other"``.
    """
    if stop == BUDGET_EXHAUSTED:
        return "budget"
    if stop == "attempts exhausted":
        return "attempts"
    if stop == "deadline":
        return "deadline"
    if stop == "not idempotent":
        return "not_idempotent"
    if stop.startswith("Retry-After"):
        return "retry_after"
    if stop.endswith("is not retried"):
        return "not_retried"
    return "other"


def endpoint_name(endpoint: ServiceEndpoint) -> str:
    """The name events give an endpoint: its Consul service id (its breaker's name)."""
    return endpoint.id or endpoint.host_port


def listens(instruments: Instruments, event: str) -> bool:
    """Whether ``instruments`` overrides ``event`` (a method name of :class:`Instruments`).

    A :class:`MultiInstruments` listens if any of its members does.
    """
    if isinstance(instruments, MultiInstruments):
        return any(listens(m, event) for m in instruments.members)
    return getattr(type(instruments), event) is not getattr(Instruments, event)


class MultiInstruments(Instruments):
    """Several instruments as one: each event goes to every member, in order.

    A member that raises is logged and the others still run.
    """

    __slots__ = ("_by_event", "members")

    def __init__(self, members: Iterable[Instruments]) -> None:
        self.members = tuple(members)
        # Only the members that listen to an event are called for it.
        self._by_event = {
            name: tuple(m for m in self.members if listens(m, name))
            for name in (
                "request_finished",
                "retry",
                "breaker_transition",
                "ejection",
                "panic",
                "no_endpoint",
                "config_event",
            )
        }

    def _each(self, event: str) -> tuple[Instruments, ...]:
        return self._by_event[event]

    def request_finished(
        self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
    ) -> None:
        """Every member's ``request_finished``."""
        for m in self._each("request_finished"):
            _safely(m.request_finished, service, endpoint, outcome, duration)

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        """Every member's ``retry``."""
        for m in self._each("retry"):
            _safely(m.retry, service, attempt, stop)

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        """Every member's ``breaker_transition``."""
        for m in self._each("breaker_transition"):
            _safely(m.breaker_transition, service, transition)

    def ejection(self, service: str, event: EjectionEvent) -> None:
        """Every member's ``ejection``."""
        for m in self._each("ejection"):
            _safely(m.ejection, service, event)

    def panic(self, service: str, reason: str | None) -> None:
        """Every member's ``panic``."""
        for m in self._each("panic"):
            _safely(m.panic, service, reason)

    def no_endpoint(self, service: str, reason: str) -> None:
        """Every member's ``no_endpoint``."""
        for m in self._each("no_endpoint"):
            _safely(m.no_endpoint, service, reason)

    def config_event(self, kind: str, key: str | None, field: str | None, reason: str) -> None:
        """Every member's ``config_event``."""
        for m in self._each("config_event"):
            _safely(m.config_event, kind, key, field, reason)

    def attach(self, readings: ReadingsSource) -> None:
        """Every member's ``attach``."""
        for m in self.members:
            m.attach(readings)

    def close(self) -> None:
        """Every member's ``close``."""
        for m in self.members:
            _safely(m.close)

    def __repr__(self) -> str:
        return f"MultiInstruments({list(self.members)!r})"


def combine(*instruments: Instruments | None) -> Instruments:
    """One :class:`Instruments` for several (``None`` and :data:`NO_INSTRUMENTS` dropped)."""
    members: list[Instruments] = []
    for ins in instruments:
        if ins is None or ins is NO_INSTRUMENTS:
            continue
        members.extend(ins.members if isinstance(ins, MultiInstruments) else (ins,))
    if not members:
        return NO_INSTRUMENTS
    if len(members) == 1:
        return members[0]
    return MultiInstruments(members)


_log = logging.getLogger(__name__)


def call_safely(fn: Callable[..., None], *args: object) -> None:
    """Call the event method ``fn(*args)``; an exception is logged, never raised.

    The route reports every event through it (or an equivalent ``try``), so a faulty
    listener cannot fail a request.
    """
    try:
        fn(*args)
    except Exception:
        _log.exception("instruments: %r failed", fn)


_safely = call_safely


def listener_failed(event: str) -> None:
    """Log the exception being handled as ``event``'s listener failing (call in ``except``)."""
    _log.exception("instruments: %s failed", event)


# --- logs ------------------------------------------------------------------------------------

#: Breaker states whose entry is logged at WARNING (the endpoint is out of rotation).
_BREAKER_WARN = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})


class LogInstruments(Instruments):
    """Log lines for the events an operator wants to see; nothing on the success path.

    Logger ``lake_mesh_consul.events``. Every record carries structured ``extra`` fields
    (``event``, ``service``, and the event's own: ``endpoint``, ``reason``, ``old_state``,
    ``new_state``, ``ejections``, ``ejected_for``...). Levels:

    * WARNING: an ejection (or one refused by the cap); a breaker opening; a retry refused
      by the budget; nothing routable.
    * INFO: an ejection's end; a breaker going half-open or closed; panic mode; KV readable
      again. (The configuration store logs a rejected key and KV outages itself, with
      ``extra`` fields too.)

    Panic, budget refusals and no-endpoint failures can happen on every request: each is
    logged at most once per ``repeat_after`` seconds per service (default 60).

    Args:
        logger: where to log (default: the ``lake_mesh_consul.events`` logger).
        clock: time for the repeat limit.
        repeat_after: seconds before a per-request condition is logged again.

    Thread-safety: safe from any thread (the logging module locks; the repeat limit may
    let a racing second line through, never fewer than one).
    """

    __slots__ = ("_clock", "_last", "_logger", "_repeat_after")

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        repeat_after: float = 60.0,
    ) -> None:
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._clock = clock
        self._repeat_after = repeat_after
        #: When each (event, service) was last logged.
        self._last: dict[tuple[str, str], float] = {}

    def _due(self, event: str, service: str) -> bool:
        now = self._clock.monotonic()
        last = self._last.get((event, service))
        if last is not None and now - last < self._repeat_after:
            return False
        self._last[(event, service)] = now
        return True

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        """WARNING when the retry budget refuses a retry (rate-limited per service)."""
        if stop == BUDGET_EXHAUSTED and self._due("retry_budget_exhausted", service):
            self._logger.warning(
                "service %s: retry budget exhausted; retries refused",
                service,
                extra={"event": "retry_budget_exhausted", "service": service, "attempt": attempt},
            )

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        """WARNING when a breaker opens, INFO for half-open and closed."""
        new = transition.new
        level = logging.WARNING if new in _BREAKER_WARN else logging.INFO
        self._logger.log(
            level,
            "service %s: breaker of %s %s -> %s (%s)",
            service,
            transition.name,
            transition.old.value,
            new.value,
            transition.reason or transition.event.value,
            extra={
                "event": "breaker_transition",
                "service": service,
                "endpoint": transition.name,
                "old_state": transition.old.value,
                "new_state": new.value,
                "reason": transition.reason or transition.event.value,
            },
        )

    def ejection(self, service: str, event: EjectionEvent) -> None:
        """WARNING for an ejection or one refused by the cap, INFO for a return."""
        ep = event.endpoint
        extra = {
            "event": f"endpoint_{event.kind}",
            "service": service,
            "endpoint": endpoint_name(ep),
            "address": ep.host_port,
            "reason": event.reason,
            "ejections": event.ejections,
        }
        if event.kind == "ejected":
            seconds = max((event.until or event.at) - event.at, 0.0)
            extra["ejected_for"] = seconds
            self._logger.warning(
                "service %s: ejected %s (%s) for %.1fs (%s, ejection #%d)",
                service,
                endpoint_name(ep),
                ep.host_port,
                seconds,
                event.reason,
                event.ejections,
                extra=extra,
            )
        elif event.kind == "returned":
            self._logger.info(
                "service %s: %s returned to rotation", service, endpoint_name(ep), extra=extra
            )
        else:
            self._logger.warning(
                "service %s: not ejecting %s (%s): the ejection cap is reached",
                service,
                endpoint_name(ep),
                event.reason,
                extra=extra,
            )

    def panic(self, service: str, reason: str | None) -> None:
        """INFO: requests go to the best candidate (rate-limited per service)."""
        if self._due("panic", service):
            self._logger.info(
                "service %s: nothing eligible (%s); panic mode, sending to the best candidate",
                service,
                reason or "all out of rotation",
                extra={"event": "panic", "service": service, "reason": reason},
            )

    def no_endpoint(self, service: str, reason: str) -> None:
        """WARNING: nothing routable (rate-limited per service)."""
        if self._due("no_endpoint", service):
            self._logger.warning(
                "service %s: no endpoint available (%s)",
                service,
                reason,
                extra={"event": "no_endpoint", "service": service, "reason": reason},
            )

    def config_event(self, kind: str, key: str | None, field: str | None, reason: str) -> None:
        """INFO for KV readable again (the store logs rejections and outages itself)."""
        if kind == "recovered":
            self._logger.info(
                "configuration: KV readable again",
                extra={"event": "config_recovered", "reason": reason},
            )

    def __repr__(self) -> str:
        return f"LogInstruments({self._logger.name!r})"
