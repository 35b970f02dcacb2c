"""LoadBalancer: binds a service's endpoints, a strategy, and endpoint health and gate state.

How a pick is made (the common path takes no lock and does O(1) work):

1. ``update(endpoints)`` (a discovery watch calls it) builds an immutable *snapshot*: the
   eligible endpoints (passing or warning, weight above zero), their weights with slow
   start applied, their shared :class:`~lake_mesh_consul._core.loadstats.EndpointStats`,
   the panic decision, and the strategy's prepared picker (a ring, a Maglev table, a
   schedule). It then swaps the snapshot in by reference, so a pick never waits for an
   update and never sees half of one.
2. ``pick()`` calls the snapshot's picker. With gates (breakers, outlier ejection) it asks
   them about the picked endpoint only; on the first refusal it takes a *census* of every
   eligible endpoint (O(N), at most once per ``gate_refresh`` while endpoints are refused),
   prepares the strategy over the admitted ones and uses that until the census expires.
3. ``pick(exclude=tried)`` (a retry) asks the strategy's *walker* instead: its choice among
   the endpoints that are not excluded and that the gates admit. Round robin goes on to the
   next accepted turn, random and P2C draw among them, ``nearest_first`` fails over down
   the list, ``ring_hash`` and ``maglev`` walk to the key's next distinct owner. Panic mode
   and slow start apply as for a plain pick; when the excluded endpoints are all that is
   left the pick fails with reason ``"all tried"``. An empty ``exclude`` costs nothing.
4. ``request()`` picks and counts the request as outstanding; leaving the ``with`` block
   folds its latency into the endpoint's peak EWMA and reports the outcome to the
   recorders, unless ``record=False``. A balancer owned by a route
   (:meth:`LoadBalancer.admit_through`) sends ``request()`` through the route's admission
   instead: pick and breaker permit in one step, one recording path.

Eligibility rules, as a table (first match wins)::

    endpoint                                  eligible   reason shown by stats()
    ----------------------------------------  ---------  --------------------------------
    health maintenance                        never      "maintenance" (not even in panic)
    health critical                           no         "critical"
    weight 0 (Consul Weights or override)     no         "warning weight 0" / "weight 0"
    a gate refuses it (breaker open, ejected) no         "refused by <GateType>"
    otherwise                                 yes        None

Panic threshold (Envoy's ``healthy_panic_threshold``, default 50%): when the eligible
endpoints are fewer than ``panic_threshold`` of the routable ones (all but maintenance),
the balancer stops trusting health and balances over all routable endpoints, rather than
pile the whole load on the few that look healthy and take them down too. When *no*
endpoint is eligible at all, the balancer's own pick fails with
:class:`~lake_mesh_consul.errors.NoEndpointsAvailable` (saying why); the
:class:`~lake_mesh_consul._core.route.Route` that owns it then sends to the best candidate
(Envoy's panic, Finagle's "pick among all when all are marked dead"), failing fast only for
instances in maintenance, disabled or drained. ``panic_threshold=0`` disables panic mode.

Slow start (Envoy's formula): an endpoint that becomes eligible after the first snapshot
(new, or back from critical) weighs
``weight * max(min_weight, (max(age, 1) / window) ** (1 / aggression))`` until ``age``
reaches ``window`` seconds. Hash strategies ignore it (it would move keys).
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from types import TracebackType

from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.loadstats import EndpointKey, EndpointStats, StatsRegistry
from lake_mesh_consul._core.ports import EndpointGate, EndpointSource, OutcomeRecorder
from lake_mesh_consul._core.strategies import (
    BalancerStrategy,
    Key,
    PeakEwma,
    PickFunction,
    Prepared,
    StrategyLike,
    WalkFunction,
    ZoneAware,
    prepare_pair,
    resolve_strategy,
    strategy_name,
)
from lake_mesh_consul.errors import InvalidSetting, NoEndpointsAvailable

__all__ = [
    "DEFAULT_GATE_REFRESH",
    "DEFAULT_PANIC_THRESHOLD",
    "Admission",
    "BalancerStats",
    "EndpointState",
    "LoadBalancer",
    "RequestContext",
    "slow_start_factor",
]

_log = logging.getLogger(__name__)

#: Envoy's default healthy panic threshold (a share of routable endpoints).
DEFAULT_PANIC_THRESHOLD = 0.5
#: Envoy's default slow-start minimum weight (a share of the full weight).
DEFAULT_SLOW_START_MIN_WEIGHT = 0.1
#: Seconds a gate census stays valid before refused endpoints are tried again.
DEFAULT_GATE_REFRESH = 1.0
#: Slow-start weights are recomputed this many times per window (and at its end).
_SLOW_START_STEPS = 50
#: Re-picks from a fresh census before falling back to a scan (gates flapping).
_GATE_ATTEMPTS = 3
#: Prepared pickers over gate-filtered sets kept per snapshot.
_GATED_CACHE_SIZE = 8
_INF = math.inf
#: Why the gates refuse an endpoint, as stats() and NoEndpointsAvailable say it.
_GATED = "ejected or circuit open"
#: Why a pick with ``exclude`` failed: every endpoint it could choose was excluded.
_ALL_TRIED = "all tried"
#: The default ``exclude``: nothing (the empty frozenset).
_NO_EXCLUDE: frozenset[ServiceEndpoint] = frozenset()


def slow_start_factor(
    age: float, window: float, *, aggression: float = 1.0, min_weight: float = 0.1
) -> float:
    """Envoy's slow-start multiplier for an endpoint eligible for ``age`` seconds.

    ``max(min_weight, (max(age, 1) / window) ** (1 / aggression))`` while ``age < window``,
    else 1.0 (and always 1.0 when ``window`` is 0).

    Example:
        >>> slow_start_factor(30, 60)
        0.5
        >>> slow_start_factor(0, 60)  # the floor: min_weight
        0.1
        >>> round(slow_start_factor(15, 60, aggression=2.0), 3)
        0.5
    """
    if window <= 0 or age >= window:
        return 1.0
    return max(min_weight, float((max(age, 1.0) / window) ** (1.0 / aggression)))


@dataclass(frozen=True, slots=True)
class EndpointState:
    """What the balancer knows about one endpoint right now (for ``explain`` and metrics).

    Attributes:
        endpoint: the endpoint.
        eligible: whether a pick may choose it now (panic mode aside).
        reason: why not, e.g. ``"critical"``, ``"refused by CircuitBreaker"``; else None.
        outstanding: requests in flight.
        latency: the peak-EWMA latency estimate decayed to now, in seconds.
        requests: finished requests; failures: those that failed.
        base_weight: the weight before slow start (strategy's view of Consul weights).
        slow_start: the slow-start multiplier (1.0 when warmed up).
        weight: ``base_weight * slow_start`` (0 when not eligible).
    """

    endpoint: ServiceEndpoint
    eligible: bool
    reason: str | None
    outstanding: int
    latency: float
    requests: int
    failures: int
    base_weight: float
    slow_start: float
    weight: float


@dataclass(frozen=True, slots=True)
class BalancerStats:
    """A read-only view of a balancer, from :meth:`LoadBalancer.stats`.

    Attributes:
        service: the service name.
        strategy: the strategy's name.
        registered: endpoints in the current snapshot.
        eligible: endpoints a pick may choose (health and gates).
        panic: whether panic mode is on (balancing over all routable endpoints).
        reason: why a pick would fail now, or None.
        endpoints: per-endpoint state, in discovery order.
    """

    service: str
    strategy: str
    registered: int
    eligible: int
    panic: bool
    reason: str | None
    endpoints: tuple[EndpointState, ...]


class _Snapshot:
    """One immutable view of the service; swapped in whole by reference."""

    __slots__ = (
        "direct",
        "eligible",
        "endpoints",
        "failure",
        "gated",
        "panic",
        "panic_prepared",
        "picker",
        "refresh_at",
        "routable",
        "stats",
        "stats_by_key",
        "walker",
        "weights",
    )

    def __init__(
        self,
        *,
        endpoints: tuple[ServiceEndpoint, ...],
        eligible: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
        stats_by_key: dict[EndpointKey, EndpointStats],
        routable: tuple[ServiceEndpoint, ...],
        prepared: Prepared | None,
        panic: bool,
        failure: str,
        refresh_at: float,
        gated: bool,
    ) -> None:
        self.endpoints = endpoints
        self.eligible = eligible
        self.weights = weights
        self.stats = stats
        self.stats_by_key = stats_by_key
        self.routable = routable
        self.picker: PickFunction | None = prepared[0] if prepared is not None else None
        self.walker: WalkFunction | None = prepared[1] if prepared is not None else None
        self.panic = panic
        self.failure = failure
        self.refresh_at = refresh_at
        #: The picker a plain pick may call at once: no gates to ask (or panic mode, which
        #: ignores them) and no slow-start refresh due; else None (the full path decides).
        self.direct: PickFunction | None = (
            self.picker if refresh_at == _INF and (panic or not gated) else None
        )
        #: Picker and walker over gate-filtered subsets, keyed by the refused endpoint keys.
        self.gated: dict[frozenset[EndpointKey], Prepared] = {}
        #: Built on first need: the picker and walker over every routable endpoint (panic).
        self.panic_prepared: Prepared | None = prepared if panic else None


class _Census:
    """What the gates said about every eligible endpoint at one moment."""

    __slots__ = ("available", "expires", "failure", "panic", "picker", "snap", "walker")

    def __init__(
        self,
        snap: _Snapshot,
        expires: float,
        prepared: Prepared | None,
        *,
        panic: bool = False,
        failure: str = "",
        available: tuple[ServiceEndpoint, ...] = (),
    ) -> None:
        self.snap = snap
        self.expires = expires
        self.picker: PickFunction | None = prepared[0] if prepared is not None else None
        self.walker: WalkFunction | None = prepared[1] if prepared is not None else None
        self.panic = panic
        self.failure = failure
        self.available = available


#: A route's admission: ``(key, exclude) -> a started request`` (see ``admit_through``).
Admission = Callable[[Key, frozenset[ServiceEndpoint]], "RequestContext"]


def _salted(key: Key, attempt: int) -> Key:
    if key is None:
        return None
    if isinstance(key, bytes):
        return key + b"\x00" + str(attempt).encode()
    return f"{key}\x00{attempt}"


#: Most endpoints changed at once that :meth:`LoadBalancer._patch` edits in place.
_PATCH_LIMIT = 64


def _position(items: list[ServiceEndpoint], target: ServiceEndpoint) -> int | None:
    """Index of ``target`` itself (by identity) in ``items``: a C-level search."""
    return next(compress(itertools.count(), map(operator.is_, items, repeat(target))), None)


def _same_endpoints(a: tuple[ServiceEndpoint, ...], b: tuple[ServiceEndpoint, ...]) -> bool:
    """Whether two snapshots are the same for picking: members, order, health, weights."""
    if a is b:  # the parser's answer when nothing moved: no pass at all
        return True
    if len(a) != len(b):
        return False
    if not any(map(operator.is_not, a, b)):  # the same objects: C-level, no field compared
        return True
    return all(x is y or x.same_as(y) for x, y in zip(a, b, strict=True))


def _covers(exclude: frozenset[ServiceEndpoint], candidates: tuple[ServiceEndpoint, ...]) -> bool:
    """Whether every candidate is excluded (O(1) unless ``exclude`` is as large)."""
    return len(exclude) >= len(candidates) and all(e in exclude for e in candidates)


def _none_eligible(counts: Counter[str]) -> str:
    if len(counts) == 1:
        return f"all {next(iter(counts))}"
    return "none eligible (" + ", ".join(f"{n} {why}" for why, n in counts.most_common()) + ")"


class RequestContext:
    """One request to one endpoint: counts it as outstanding and reports how it went.

    Returned by :meth:`LoadBalancer.request` with the endpoint already picked. Leave it
    through ``with`` (or call :meth:`finish`) exactly once; finishing is idempotent.

    Outcome rules, first match wins:

    * :meth:`succeed` or :meth:`fail` was called: that outcome (so ``fail(status=503)``
      marks a failure without raising, and ``succeed()`` before raising an application
      error keeps it from counting against the endpoint);
    * the block raised an :class:`Exception`: a failure, reported with ``error=exc``;
    * the block raised a ``BaseException`` that is not an ``Exception``
      (``KeyboardInterrupt``, ``asyncio.CancelledError``, ``GeneratorExit``): cancelled
      by the caller; the request stops counting as outstanding but nothing is recorded;
    * otherwise a success.

    The exception itself always propagates. Recorders are called after the latency has
    been folded into the endpoint's stats; a recorder that raises is logged and skipped.
    A context started with ``record=False`` tracks load and latency only: its caller
    reports the outcome to the detector and breakers itself (as the route's
    :class:`~lake_mesh_consul._core.route.RouteRequest` does, with the breaker's permit).

    Example:
        >>> lb = LoadBalancer("web", endpoints=[ServiceEndpoint.create("w1", "10.0.0.1", 80)])
        >>> with lb.request() as ctx:
        ...     target = ctx.endpoint.host_port  # send the request here
        ...     ctx.fail(status=503)             # e.g. the answer was a 503
        >>> lb.stats().endpoints[0].failures
        1

    Thread-safety: use one context from one thread at a time (the usual ``with`` shape).
    """

    __slots__ = (
        "_done",
        "_error",
        "_lb",
        "_outcome",
        "_record",
        "_stats",
        "_status",
        "ended",
        "endpoint",
        "started",
    )

    def __init__(
        self,
        lb: LoadBalancer,
        endpoint: ServiceEndpoint,
        stats: EndpointStats,
        *,
        record: bool = True,
        started: float | None = None,
    ) -> None:
        self._lb = lb
        self._stats = stats
        self._outcome: bool | None = None
        self._status: int | None = None
        self._error: BaseException | None = None
        self._done = False
        self._record = record
        #: The endpoint to send the request to.
        self.endpoint = endpoint
        stats.begin()
        #: Monotonic time the request started (``started``: the balancer clock's reading
        #: the caller has just taken, if any).
        self.started = lb.monotonic() if started is None else started
        #: Monotonic time it finished (None while in flight).
        self.ended: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the request started."""
        return self._lb.monotonic() - self.started

    def succeed(self, status: int | None = None) -> None:
        """Mark the request successful (overrides the exception rule)."""
        self._outcome = True
        self._status = status

    def fail(self, status: int | None = None, error: BaseException | None = None) -> None:
        """Mark the request failed, e.g. ``fail(status=503)`` or ``fail(error=exc)``."""
        self._outcome = False
        self._status = status
        self._error = error

    def cancel(self) -> None:
        """End the request without an outcome (picked, but never sent)."""
        if self._done:
            return
        self._done = True
        now = self.ended = self._lb.monotonic()
        self._stats.end(now, None)

    def finish(self, error: BaseException | None = None) -> None:
        """End the request now (as leaving the ``with`` block with ``error`` would)."""
        if self._done:
            return
        self._done = True
        lb = self._lb
        now = self.ended = lb.monotonic()
        duration = max(now - self.started, 0.0)
        if error is not None and not isinstance(error, Exception) and self._outcome is None:
            self._stats.end(now, None)  # cancelled by the caller: says nothing of the endpoint
            return
        success = self._outcome if self._outcome is not None else error is None
        self._stats.end(now, duration, success=success)
        if not self._record:
            return
        reported = None if success else (self._error or error)
        for recorder in lb.recorders:
            try:
                recorder.record(
                    self.endpoint,
                    success=success,
                    duration=duration,
                    error=reported,
                    status=self._status,
                )
            except Exception:
                _log.exception("outcome recorder %r failed", recorder)

    def __enter__(self) -> RequestContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)

    def __repr__(self) -> str:
        state = "done" if self._done else "in flight"
        return f"RequestContext({self.endpoint!r}, {state})"


class _SnapshotEdit:
    """A snapshot's lists being edited for a few changed endpoints (see LoadBalancer._patch).

    Each step returns False when the change is not one it can apply (then the snapshot is
    built whole). Lists are searched by identity (C-level); nothing is O(N) in Python.
    """

    def __init__(
        self,
        snap: _Snapshot,
        weight_of: Callable[[ServiceEndpoint], float] | None,
        stats_for: Callable[[ServiceEndpoint], EndpointStats],
    ) -> None:
        self.old = snap.endpoints
        self.stats_for = stats_for
        self.eligible = list(snap.eligible)
        self.weights = list(snap.weights)
        self.stats = list(snap.stats)
        #: The routable endpoints being edited; None while they are every endpoint (no
        #: maintenance): the snapshot then shares the endpoints' tuple, no copy to edit.
        self.routable: list[ServiceEndpoint] | None = (
            None if snap.routable is snap.endpoints else list(snap.routable)
        )
        self.stats_by_key = snap.stats_by_key
        self.weight_of = weight_of
        self.left: set[EndpointKey] = set()
        self.joined: set[EndpointKey] = set()
        self.gone: list[EndpointKey] = []

    def _weight(self, endpoint: ServiceEndpoint) -> float:
        if endpoint.ineligible_reason is not None:
            return 0.0
        return 1.0 if self.weight_of is None else float(self.weight_of(endpoint))

    def swap(self, endpoints: tuple[ServiceEndpoint, ...], i: int) -> bool:
        """Endpoint ``i`` changed fields in place (same identity, same routability)."""
        before, after = self.old[i], endpoints[i]
        maintenance = HealthStatus.MAINTENANCE
        if before != after or (before.health is maintenance) != (after.health is maintenance):
            return False
        total = len(endpoints)
        if before.health is not maintenance and self.routable is not None:
            at = _position_near(self.routable, before, i, total)
            if at is None:
                return False
            self.routable[at] = after
        at = _position_near(self.eligible, before, i, total)
        weight = self._weight(after)
        if at is not None:
            if weight > 0:
                self.eligible[at], self.weights[at] = after, weight
            else:
                del self.eligible[at], self.weights[at], self.stats[at]
                self.left.add(after.key)
        elif weight > 0:
            # Placed before the next endpoint as the lists hold it now: later positions
            # still hold the old objects (changes are applied in ascending order).
            self._insert(after, weight, self.stats_by_key[after.key], self.old, i)
        return True

    def leave(self, endpoints: tuple[ServiceEndpoint, ...]) -> bool:
        """Some endpoints left; every other one is the same object, in the same order."""
        staying = set(map(id, endpoints))
        kept = list(map(staying.__contains__, map(id, self.old)))
        if list(compress(self.old, kept)) != list(endpoints):  # identity: C-level compare
            return False
        total = len(self.old)
        self.stats_by_key = dict(self.stats_by_key)
        for i in compress(itertools.count(), map(operator.not_, kept)):
            endpoint = self.old[i]
            key = endpoint.key
            at = _position_near(self.eligible, endpoint, i, total)
            if at is not None:
                del self.eligible[at], self.weights[at], self.stats[at]
                self.left.add(key)
            routable = self.routable
            at = None if routable is None else _position_near(routable, endpoint, i, total)
            if routable is not None and at is not None:
                del routable[at]
            del self.stats_by_key[key]
            self.gone.append(key)
        return True

    def join(self, endpoints: tuple[ServiceEndpoint, ...]) -> bool:
        """Some endpoints joined; every old one is the same object, in the same order."""
        known = set(map(id, self.old))
        mask = list(map(known.__contains__, map(id, endpoints)))
        if list(compress(endpoints, mask)) != list(self.old):
            return False
        self.stats_by_key = dict(self.stats_by_key)
        joined = list(compress(range(len(endpoints)), map(operator.not_, mask)))
        maintenance = HealthStatus.MAINTENANCE
        if self.routable is None and any(endpoints[i].health is maintenance for i in joined):
            self.routable = list(self.old)  # no longer every endpoint: edit a copy
        for i in joined:
            endpoint = endpoints[i]
            key = endpoint.key
            if key in self.stats_by_key:
                return False  # a duplicate identity: the full build's dedupe decides
            stats = self.stats_by_key[key] = self.stats_for(endpoint)
            routable = self.routable
            if endpoint.health is not maintenance and routable is not None:
                routable.insert(_insertion_point(routable, endpoints, i), endpoint)
            weight = self._weight(endpoint)
            if weight > 0:
                self._insert(endpoint, weight, stats, endpoints, i)
        return True

    def _insert(
        self,
        endpoint: ServiceEndpoint,
        weight: float,
        stats: EndpointStats,
        endpoints: tuple[ServiceEndpoint, ...],
        i: int,
    ) -> None:
        at = _insertion_point(self.eligible, endpoints, i)
        self.eligible.insert(at, endpoint)
        self.weights.insert(at, weight)
        self.stats.insert(at, stats)
        self.joined.add(endpoint.key)


def _position_near(
    items: list[ServiceEndpoint], target: ServiceEndpoint, i: int, total: int
) -> int | None:
    """Index of ``target`` in ``items``, found near where it can be: O(total - len(items)).

    ``items`` keeps a subsequence of ``total`` endpoints in their order (the eligible or
    the routable ones) and ``target`` is the ``i``-th of them: if it is in ``items``, it
    sits at ``i`` less the endpoints left out before it, so within ``[i - left out, i]``.
    A health flip among 10,000 with a few endpoints out of rotation searches a few slots.
    """
    lo = max(0, i - (total - len(items)))
    at = _position(items[lo : i + 1], target)
    return None if at is None else lo + at


def _insertion_point(
    items: list[ServiceEndpoint], endpoints: tuple[ServiceEndpoint, ...], i: int
) -> int:
    """Where endpoint ``i`` goes in ``items`` to keep discovery's order.

    Before the first later endpoint that is in ``items``: one of the next ``total -
    len(items)`` endpoints is, or none is (the end); each is looked for near its place.
    """
    total = len(endpoints)
    stop = min(total, i + 2 + total - len(items))
    for j in range(i + 1, stop):
        at = _position_near(items, endpoints[j], j, total)
        if at is not None:
            return at
    if stop == total:
        return len(items)
    members = set(map(id, items))  # not a subsequence as expected: search it all
    for later in itertools.islice(endpoints, i + 1, None):
        if id(later) in members:
            at = _position(items, later)
            return len(items) if at is None else at
    return len(items)


class LoadBalancer:
    """Client-side load balancing for one service: pick an endpoint, track the request.

    Args:
        service: the service name (used in errors and stats).
        strategy: a built-in's name (see :data:`~lake_mesh_consul._core.strategies.STRATEGIES`),
            a :class:`~lake_mesh_consul._core.strategies.BalancerStrategy` or a function
            ``fn(candidates, key) -> endpoint``.
        endpoints: the initial snapshot (no slow start for these).
        gates: asked whether a picked endpoint may be used (breakers, outlier ejection).
        recorders: told the outcome of every request (failure detector, breakers).
        panic_threshold: Envoy's healthy panic threshold in [0, 1]; 0 disables panic mode.
        slow_start_window: seconds over which a newly eligible endpoint ramps up; 0 is off.
        slow_start_aggression: Envoy's aggression (1.0 is linear).
        slow_start_min_weight: the floor of the slow-start multiplier (Envoy: 10%).
        local_zone: prefer endpoints in this zone (wraps the strategy in ``ZoneAware``).
        clock: time source (monotonic) for latency, slow start and peak EWMA.
        rng: randomness for named strategies (seed it in tests).
        gate_refresh: seconds a gate census is trusted before refused endpoints are retried.

    Raises:
        InvalidSetting: a parameter is out of range or the strategy name is unknown.

    Thread-safety: every method may be called from any thread. ``pick`` and ``request``
    take no lock on the common path and never wait for ``update`` or ``set_strategy``,
    which serialise among themselves and swap an immutable snapshot by reference.
    Outstanding counts and latency estimates live in a registry keyed by endpoint identity,
    so they survive snapshots and strategy swaps.

    Example:
        >>> lb = LoadBalancer("web", "round_robin", endpoints=[
        ...     ServiceEndpoint.create("w1", "10.0.0.1", 80),
        ...     ServiceEndpoint.create("w2", "10.0.0.2", 80),
        ... ])
        >>> [lb.pick().id for _ in range(3)]
        ['w1', 'w2', 'w1']
    """

    def __init__(
        self,
        service: str,
        strategy: StrategyLike = "round_robin",
        *,
        endpoints: Iterable[ServiceEndpoint] = (),
        gates: Sequence[EndpointGate] = (),
        recorders: Sequence[OutcomeRecorder] = (),
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start_window: float = 0.0,
        slow_start_aggression: float = 1.0,
        slow_start_min_weight: float = DEFAULT_SLOW_START_MIN_WEIGHT,
        local_zone: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        gate_refresh: float = DEFAULT_GATE_REFRESH,
    ) -> None:
        if not 0.0 <= panic_threshold <= 1.0:
            raise InvalidSetting("panic_threshold", f"must be in [0, 1], got {panic_threshold}")
        if not slow_start_window >= 0.0:
            raise InvalidSetting("slow_start_window", f"must be >= 0, got {slow_start_window}")
        if not slow_start_aggression > 0.0:
            raise InvalidSetting(
                "slow_start_aggression", f"must be > 0, got {slow_start_aggression}"
            )
        if not 0.0 < slow_start_min_weight <= 1.0:
            raise InvalidSetting(
                "slow_start_min_weight", f"must be in (0, 1], got {slow_start_min_weight}"
            )
        if not gate_refresh > 0.0:
            raise InvalidSetting("gate_refresh", f"must be > 0, got {gate_refresh}")
        self.service = service
        self.clock = clock
        # time.monotonic itself for the real clock: skips a Python-level wrapper per read.
        #: The clock's monotonic reading (``time.monotonic`` itself for the system clock).
        self.monotonic: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        )
        #: Set by the owning route (:meth:`admit_through`): ``request()`` goes through it.
        self._admission: Admission | None = None
        self._gates: tuple[EndpointGate, ...] = tuple(gates)
        self.recorders: tuple[OutcomeRecorder, ...] = tuple(recorders)
        self.panic_threshold = panic_threshold
        self.slow_start_window = slow_start_window
        self.slow_start_aggression = slow_start_aggression
        self.slow_start_min_weight = slow_start_min_weight
        self.local_zone = local_zone
        self.gate_refresh = gate_refresh
        self._rng = rng or random.Random()
        self._registry = StatsRegistry(clock)
        self._update_lock = threading.Lock()
        self._warm_since: dict[EndpointKey, float] = {}
        self._was_eligible: set[EndpointKey] = set()
        self._initialised = False
        self._version = itertools.count()
        self._census: _Census | None = None
        self._strategy = self._resolve(strategy)
        self._snap = self._build(self._dedupe(endpoints), clock.monotonic())

    # --- configuration ----------------------------------------------------------------------

    def _resolve(self, spec: StrategyLike) -> BalancerStrategy:
        strategy = resolve_strategy(spec, clock=self.clock, rng=self._rng)
        if self.local_zone is not None and not isinstance(strategy, ZoneAware):
            strategy = ZoneAware(strategy, self.local_zone, rng=self._rng, clock=self.clock)
        inner = strategy.inner if isinstance(strategy, ZoneAware) else strategy
        if isinstance(inner, PeakEwma):
            self._registry.configure(default_rtt=inner.default_rtt, decay=inner.decay)
        return strategy

    @property
    def strategy(self) -> BalancerStrategy:
        """The current strategy."""
        return self._strategy

    @property
    def gates(self) -> tuple[EndpointGate, ...]:
        """The gates asked about picked endpoints (assigning rebuilds the snapshot)."""
        return self._gates

    @gates.setter
    def gates(self, gates: Sequence[EndpointGate]) -> None:
        with self._update_lock:
            self._gates = tuple(gates)
            current = self._snap
            self._snap = self._build(current.endpoints, self.clock.monotonic(), rebuild=True)

    def set_strategy(self, strategy: StrategyLike) -> None:
        """Swap the strategy (configuration reload); outstanding and latency state stay.

        Picks in flight finish on the old strategy's snapshot; the next ones use the new.

        Raises:
            InvalidSetting: unknown strategy name.
        """
        with self._update_lock:
            self._strategy = self._resolve(strategy)
            current = self._snap
            self._snap = self._build(current.endpoints, self.clock.monotonic(), rebuild=True)

    # --- snapshots --------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[ServiceEndpoint, ...]:
        """Every endpoint of the current snapshot, in discovery order."""
        return self._snap.endpoints

    @staticmethod
    def _dedupe(endpoints: Iterable[ServiceEndpoint]) -> tuple[ServiceEndpoint, ...]:
        endpoints = tuple(endpoints)
        if len(set(endpoints)) == len(endpoints):  # the usual case: C-level, no key tuples
            return endpoints
        seen: dict[EndpointKey, ServiceEndpoint] = {}
        for endpoint in endpoints:
            seen.setdefault(endpoint.key, endpoint)  # keep discovery's order, first wins
        return tuple(seen.values())

    def update(
        self, endpoints: Iterable[ServiceEndpoint], changes: EndpointChanges | None = None
    ) -> None:
        """Replace the snapshot (a discovery watch calls this with each new answer).

        Builds the new snapshot (the strategy's ring, table or schedule included) and swaps
        it in atomically; picks keep using the previous one until then. Stats of endpoints
        that left are forgotten; endpoints that became eligible enter slow start.

        ``changes`` (optional) says what changed since the snapshot this balancer holds
        (:class:`~lake_mesh_consul._core.changes.EndpointChanges`, from discovery's
        parser): when it applies to that snapshot, only the positions it names are looked
        at, and a one-instance health flip among 10,000 costs O(1) Python work and a few
        C-level list copies. Otherwise both snapshots are compared.
        """
        frozen = tuple(endpoints)
        with self._update_lock:
            current = self._snap
            known = changes is not None and changes.applies_to(current.endpoints, frozen)
            if current.refresh_at == _INF and (
                (known and not changes)
                or (not known and _same_endpoints(current.endpoints, frozen))
            ):
                return  # nothing a pick depends on changed: keep the prepared snapshot
            changed = changes.changed if known and changes and changes.in_place else None
            patched = self._patch(current, frozen, changed)
            if patched is None:
                patched = self._build(self._dedupe(frozen), self.clock.monotonic())
            self._snap = patched

    def follow(self, source: EndpointSource) -> Callable[[], None]:
        """Take ``source``'s snapshot now and every change after; return the unsubscriber."""
        self.update(source.snapshot())
        return source.subscribe(self.update)

    def _patch(
        self,
        snap: _Snapshot,
        endpoints: tuple[ServiceEndpoint, ...],
        changed: Sequence[int] | None = None,
    ) -> _Snapshot | None:
        """The snapshot after a few endpoints changed, joined or left, or None (build it whole).

        For a few changes (at most ``_PATCH_LIMIT``) of one kind: fields changed in place
        (same members, same order), or endpoints only left, or only joined (the others in
        the same order). No slow start, no panic before or after, no maintenance change in
        place. The eligible and routable lists are edited where the endpoints sit (C-level
        searches), stats are reused, and only the strategy prepares again: a one-instance
        health flip or departure costs the strategy's preparation, not a rebuild.
        ``changed``: the positions that changed in place, when the caller knows them.
        """
        old = snap.endpoints
        if snap.panic or not snap.eligible or self.slow_start_window > 0 or self._warm_since:
            return None
        if abs(len(old) - len(endpoints)) > _PATCH_LIMIT:
            return None
        weight_of = getattr(self._strategy, "endpoint_weight", None)
        edit = _SnapshotEdit(snap, weight_of, self._registry.get)
        if len(old) == len(endpoints):
            if changed is None:
                changed = list(compress(range(len(old)), map(operator.is_not, old, endpoints)))
            if len(changed) > _PATCH_LIMIT or not all(edit.swap(endpoints, i) for i in changed):
                return None
        elif not (edit.leave(endpoints) if len(endpoints) < len(old) else edit.join(endpoints)):
            return None
        routable = endpoints if edit.routable is None else tuple(edit.routable)
        if not edit.eligible or len(edit.eligible) < self.panic_threshold * len(routable):
            return None  # nothing eligible, or panic: the whole build decides
        if edit.gone:
            self._registry.forget(edit.gone)
        self._was_eligible -= edit.left  # in place: O(changes), not a copy of N keys
        self._was_eligible |= edit.joined
        self._census = None
        eligible, weights, stats = tuple(edit.eligible), tuple(edit.weights), tuple(edit.stats)
        return _Snapshot(
            endpoints=endpoints,
            eligible=eligible,
            weights=weights,
            stats=stats,
            stats_by_key=edit.stats_by_key,
            routable=routable,
            prepared=prepare_pair(self._strategy, eligible, weights, stats),
            panic=False,
            failure="",
            refresh_at=_INF,
            gated=bool(self._gates),
        )

    def _base_weight(self, endpoint: ServiceEndpoint) -> float:
        fn = getattr(self._strategy, "endpoint_weight", None)
        return 1.0 if fn is None else float(fn(endpoint))

    def _build(
        self, endpoints: tuple[ServiceEndpoint, ...], now: float, *, rebuild: bool = False
    ) -> _Snapshot:
        """Build a snapshot (caller holds ``_update_lock``)."""
        strategy = self._strategy
        weight_of = getattr(strategy, "endpoint_weight", None)
        all_keys = [e.key for e in endpoints]  # each key once: the property builds a tuple
        eligible: list[ServiceEndpoint] = []
        eligible_keys: list[EndpointKey] = []
        base: list[float] = []
        why_not: Counter[str] = Counter()
        for endpoint, key in zip(endpoints, all_keys, strict=True):
            reason = endpoint.ineligible_reason
            weight = 0.0
            if reason is None:
                weight = 1.0 if weight_of is None else float(weight_of(endpoint))
                if weight <= 0:
                    reason = "weight 0"
            if reason is None:
                eligible.append(endpoint)
                eligible_keys.append(key)
                base.append(weight)
            else:
                why_not[reason] += 1
        self._track_slow_start(frozenset(eligible_keys), now, rebuild=rebuild)
        registry = self._registry
        registry.retain(all_keys)
        stats_by_key = dict(zip(all_keys, registry.get_many(endpoints, all_keys), strict=True))
        maintenance = HealthStatus.MAINTENANCE
        routable = tuple(e for e in endpoints if e.health is not maintenance)
        if len(routable) == len(endpoints):
            routable = endpoints  # the same tuple: a patch then has no copy of it to edit

        factors = [1.0] * len(eligible)
        refresh_at = _INF
        window = self.slow_start_window
        if window > 0 and self._warm_since:
            step = window / _SLOW_START_STEPS
            for i, key in enumerate(eligible_keys):
                since = self._warm_since.get(key)
                if since is None:
                    continue
                factors[i] = self._factor(now - since)
                refresh_at = min(refresh_at, now + step, since + window)
        applies = bool(getattr(strategy, "slow_start", True))
        if applies and refresh_at != _INF:
            weights = tuple(b * f for b, f in zip(base, factors, strict=True))
        else:  # no factor: the strategy's own weight objects (a uniform check is C identity)
            weights = tuple(base)
            refresh_at = _INF

        frozen_eligible = tuple(eligible)
        stats = tuple(map(stats_by_key.__getitem__, eligible_keys))
        panic = bool(eligible) and len(eligible) < self.panic_threshold * len(routable)
        failure = ""
        prepared: Prepared | None = None
        if not endpoints:
            failure = "none registered"
        elif not eligible:
            failure = _none_eligible(why_not)
        elif panic:
            prepared = self._prepare_all(routable, stats_by_key)
        else:
            prepared = prepare_pair(strategy, frozen_eligible, weights, stats)
        self._census = None
        return _Snapshot(
            endpoints=endpoints,
            eligible=frozen_eligible,
            weights=weights,
            stats=stats,
            stats_by_key=stats_by_key,
            routable=routable,
            prepared=prepared,
            panic=panic,
            failure=failure,
            refresh_at=refresh_at,
            gated=bool(self._gates),
        )

    def _prepare_all(
        self,
        routable: tuple[ServiceEndpoint, ...],
        stats_by_key: dict[EndpointKey, EndpointStats],
    ) -> Prepared:
        """The panic-mode picker and walker over every routable endpoint (health ignored)."""
        weights = []
        for endpoint in routable:
            weight = self._base_weight(endpoint)
            weights.append(weight if weight > 0 else float(max(endpoint.weights.passing, 1)))
        return prepare_pair(
            self._strategy,
            routable,
            tuple(weights),
            tuple(stats_by_key[e.key] for e in routable),
        )

    def _factor(self, age: float) -> float:
        return slow_start_factor(
            age,
            self.slow_start_window,
            aggression=self.slow_start_aggression,
            min_weight=self.slow_start_min_weight,
        )

    def _track_slow_start(self, keys: frozenset[EndpointKey], now: float, *, rebuild: bool) -> None:
        """Start the clock of endpoints that just became eligible; forget finished ones."""
        warm = self._warm_since
        window = self.slow_start_window
        if self._initialised and window > 0 and not rebuild:
            for key in keys - self._was_eligible:
                warm[key] = now
        for key in [k for k, since in warm.items() if k not in keys or now - since >= window]:
            del warm[key]
        self._was_eligible = set(keys)
        self._initialised = self._initialised or bool(keys)

    def _refresh(self, snap: _Snapshot) -> _Snapshot:
        """Recompute slow-start weights; never blocks (another thread may be at it)."""
        if not self._update_lock.acquire(blocking=False):
            return snap
        try:
            if self._snap is snap:
                self._snap = self._build(snap.endpoints, self.clock.monotonic(), rebuild=True)
            return self._snap
        finally:
            self._update_lock.release()

    # --- picking ----------------------------------------------------------------------------

    def pick(
        self, key: Key = None, *, exclude: frozenset[ServiceEndpoint] = _NO_EXCLUDE
    ) -> ServiceEndpoint:
        """Pick an endpoint for one request.

        ``key`` (``bytes`` or ``str``) is hashed by ``ring_hash`` and ``maglev`` and ignored
        by the others. ``exclude`` (a retry's endpoints already tried) are not picked: the
        strategy makes its choice among the others (hashing strategies: the key's next
        distinct owner), with gates, panic mode and slow start as for any pick. Does not
        count the request; use :meth:`request` for that.

        Raises:
            NoEndpointsAvailable: with ``reason`` ``"none registered"``, ``"all critical"``,
                ``"all maintenance"``, ``"all ejected or circuit open"`` or
                ``"none eligible (...)"`` with counts; ``"all tried"`` when ``exclude``
                covers every endpoint the pick could choose.

        Thread-safe; no lock and no allocation when ``exclude`` is empty.
        """
        direct = self._snap.direct
        if direct is not None and not exclude:
            return direct(key)
        return self._pick(key, exclude)

    def _pick(self, key: Key, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        snap = self._snap
        if snap.refresh_at != _INF and self.clock.monotonic() >= snap.refresh_at:
            snap = self._refresh(snap)
        picker = snap.picker
        if picker is None:
            raise NoEndpointsAvailable(self.service, snap.failure)
        if exclude:
            return self._pick_excluding(snap, key, exclude)
        if not self._gates or snap.panic:
            return picker(key)
        if self._census is None:  # nobody refused lately: ask the gates about this one
            endpoint = picker(key)
            for gate in self._gates:
                if not gate.is_available(endpoint):
                    break
            else:
                return endpoint
        return self._pick_gated(snap, picker, key)

    def _admits(self, endpoint: ServiceEndpoint) -> bool:
        for gate in self._gates:  # noqa: SIM110 - all(<genexpr>) costs more on the hot path
            if not gate.is_available(endpoint):
                return False
        return True

    def _pick_excluding(
        self, snap: _Snapshot, key: Key, exclude: frozenset[ServiceEndpoint]
    ) -> ServiceEndpoint:
        """A pick that avoids ``exclude`` (a retry): the strategy's walker decides."""

        def untried(endpoint: ServiceEndpoint) -> bool:
            return endpoint not in exclude

        gates = self._gates
        if not gates or snap.panic:
            # Panic mode balances over every routable endpoint whatever the gates say.
            candidates = snap.routable if snap.panic else snap.eligible
            return self._walk(snap.walker, key, untried, candidates, exclude)
        census = self._census
        if census is not None and (
            census.snap is not snap or self.clock.monotonic() >= census.expires
        ):
            census = None  # stale: a refusal below takes a fresh one
        if census is not None:
            if census.walker is None:
                raise NoEndpointsAvailable(self.service, census.failure)
            if census.panic:
                return self._walk(census.walker, key, untried, snap.routable, exclude)
        refused: list[ServiceEndpoint] = []

        def accept(endpoint: ServiceEndpoint) -> bool:
            if endpoint in exclude:
                return False
            for gate in gates:
                if not gate.is_available(endpoint):
                    refused.append(endpoint)
                    return False
            return True

        if census is not None:
            return self._walk(census.walker, key, accept, census.available, exclude)
        if _covers(exclude, snap.eligible):
            raise NoEndpointsAvailable(self.service, _ALL_TRIED)
        endpoint = snap.walker(key, accept) if snap.walker is not None else None
        if not refused:
            if endpoint is None:
                raise NoEndpointsAvailable(self.service, _ALL_TRIED)
            return endpoint
        # A gate refused someone: decide as a plain pick does, from a census (which may
        # turn panic mode on, or say that the gates refuse everyone).
        census = self._take_census(snap)
        self._census = census
        if census.walker is None:
            raise NoEndpointsAvailable(self.service, census.failure)
        if census.panic:
            return self._walk(census.walker, key, untried, snap.routable, exclude)
        if endpoint is not None:
            return endpoint
        return self._walk(census.walker, key, accept, census.available, exclude)

    def _walk(
        self,
        walker: WalkFunction | None,
        key: Key,
        accept: Callable[[ServiceEndpoint], bool],
        candidates: tuple[ServiceEndpoint, ...],
        exclude: frozenset[ServiceEndpoint],
    ) -> ServiceEndpoint:
        if walker is None or _covers(exclude, candidates):
            raise NoEndpointsAvailable(self.service, _ALL_TRIED)
        endpoint = walker(key, accept)
        if endpoint is None:
            raise NoEndpointsAvailable(self.service, _ALL_TRIED)
        return endpoint

    def _pick_gated(self, snap: _Snapshot, picker: PickFunction, key: Key) -> ServiceEndpoint:
        census = self._census
        if census is not None and census.snap is snap:
            if self.clock.monotonic() < census.expires:
                if census.picker is None:
                    raise NoEndpointsAvailable(self.service, census.failure)
                if census.panic:
                    return census.picker(key)
                picker = census.picker
            else:
                self._census = None  # stale: try everyone again
        endpoint = picker(key)
        for gate in self._gates:
            if not gate.is_available(endpoint):
                break
        else:
            return endpoint
        census = self._take_census(snap)
        self._census = census
        if census.picker is None:
            raise NoEndpointsAvailable(self.service, census.failure)
        if census.panic:
            return census.picker(key)
        for attempt in range(_GATE_ATTEMPTS):
            endpoint = census.picker(key if attempt == 0 else _salted(key, attempt))
            if self._admits(endpoint):
                return endpoint
        for endpoint in census.available:  # gates flapping faster than censuses
            if self._admits(endpoint):
                return endpoint
        raise NoEndpointsAvailable(self.service, f"all {_GATED}")

    def _take_census(self, snap: _Snapshot) -> _Census:
        """Ask the gates about every eligible endpoint: O(N), once per refusal burst."""
        now = self.clock.monotonic()
        expires = now + self.gate_refresh
        admitted: list[int] = []
        refused: list[EndpointKey] = []
        for i, endpoint in enumerate(snap.eligible):
            if self._admits(endpoint):
                admitted.append(i)
            else:
                refused.append(endpoint.key)
        if not refused:
            prepared = None
            if snap.picker is not None and snap.walker is not None:
                prepared = (snap.picker, snap.walker)
            return _Census(snap, expires, prepared, available=snap.eligible)
        available = tuple(snap.eligible[i] for i in admitted)
        if not available:
            keys = {e.key for e in snap.eligible}
            counts = Counter(
                e.ineligible_reason or "weight 0" for e in snap.endpoints if e.key not in keys
            )
            counts[_GATED] = len(refused)
            return _Census(snap, expires, None, failure=_none_eligible(counts))
        if len(available) < self.panic_threshold * len(snap.routable):
            if snap.panic_prepared is None:
                snap.panic_prepared = self._prepare_all(snap.routable, snap.stats_by_key)
            return _Census(snap, expires, snap.panic_prepared, panic=True, available=available)
        cache_key = frozenset(refused)
        prepared = snap.gated.get(cache_key)
        if prepared is None:
            prepared = prepare_pair(
                self._strategy,
                available,
                tuple(snap.weights[i] for i in admitted),
                tuple(snap.stats[i] for i in admitted),
            )
            if len(snap.gated) >= _GATED_CACHE_SIZE:
                snap.gated.clear()
            snap.gated[cache_key] = prepared
        return _Census(snap, expires, prepared, available=available)

    def request(
        self,
        key: Key = None,
        *,
        exclude: frozenset[ServiceEndpoint] = _NO_EXCLUDE,
        record: bool = True,
    ) -> RequestContext:
        """Pick an endpoint and start a tracked request to it.

        Use it as a context manager: ``with lb.request() as ctx: send(ctx.endpoint)``.
        See :class:`RequestContext` for how the outcome is decided and reported.
        ``exclude`` is as for :meth:`pick`; ``record=False`` tracks load and latency but
        leaves reporting the outcome to the recorders (detector, breakers) to the caller.

        When the balancer belongs to a route (:meth:`admit_through`), a recorded request
        goes through the route's admission: the endpoint's breaker permit is taken with
        the pick (a half-open breaker admits its probe here too), and the outcome reaches
        the detector and the breaker once. ``record=False`` bypasses it.

        Raises:
            NoEndpointsAvailable: as :meth:`pick`.
        """
        admission = self._admission
        if admission is not None and record:
            return admission(key, exclude)
        snap = self._snap
        direct = snap.direct
        if exclude:
            endpoint = self._pick(key, exclude)
        elif direct is not None:
            endpoint = direct(key)
        elif (
            self._census is None
            and snap.refresh_at == _INF
            and not snap.panic
            and snap.picker is not None
        ):
            # _pick's common gated case, inlined: nobody refused lately, so ask the gates
            # about this pick only; a refusal goes the full way, as in _pick.
            picker = snap.picker
            endpoint = picker(key)
            for gate in self._gates:
                if not gate.is_available(endpoint):
                    endpoint = self._pick_gated(snap, picker, key)
                    break
        else:
            endpoint = self._pick(key, exclude)
        key_ = endpoint.key
        stats = self._snap.stats_by_key.get(key_) or self._registry.peek(key_)
        if stats is None:  # the endpoint left between the pick and now: track it detached
            stats = EndpointStats(key_, now=self.clock.monotonic())
        return RequestContext(self, endpoint, stats, record=record)

    def admit_through(self, admission: Admission | None) -> None:
        """Send every recorded :meth:`request` through ``admission`` (a route's), or stop."""
        self._admission = admission

    def stats_of(self, endpoint: ServiceEndpoint) -> EndpointStats:
        """The load figures of ``endpoint`` (detached ones if it left the snapshot)."""
        key = endpoint.key
        stats = self._snap.stats_by_key.get(key) or self._registry.peek(key)
        if stats is None:  # the endpoint left between the pick and now: track it detached
            stats = EndpointStats(key, now=self.monotonic())
        return stats

    # --- introspection ----------------------------------------------------------------------

    def stats(self) -> BalancerStats:
        """A read-only view of every endpoint's state (asks the gates about each: O(N)).

        Thread-safe; takes no lock; the figures are a consistent-enough moment's view.
        """
        snap = self._snap
        now = self.clock.monotonic()
        eligible_keys = {e.key: i for i, e in enumerate(snap.eligible)}
        states: list[EndpointState] = []
        admitted = 0
        for endpoint in snap.endpoints:
            st = snap.stats_by_key.get(endpoint.key) or EndpointStats(endpoint.key, now=now)
            reason = endpoint.ineligible_reason
            base = self._base_weight(endpoint) if reason is None else 0.0
            if reason is None and base <= 0:
                reason = "weight 0"
            if reason is None:
                for gate in self._gates:
                    if not gate.is_available(endpoint):
                        reason = f"refused by {type(gate).__name__}"
                        break
            since = self._warm_since.get(endpoint.key)
            factor = self._factor(now - since) if since is not None else 1.0
            if not getattr(self._strategy, "slow_start", True):
                factor = 1.0
            if reason is None:
                admitted += 1
            states.append(
                EndpointState(
                    endpoint=endpoint,
                    eligible=reason is None,
                    reason=reason,
                    outstanding=st.outstanding,
                    latency=st.latency(now),
                    requests=st.requests,
                    failures=st.failures,
                    base_weight=base,
                    slow_start=factor,
                    weight=base * factor if endpoint.key in eligible_keys else 0.0,
                )
            )
        panic = snap.panic or (
            0 < admitted < self.panic_threshold * len(snap.routable) and bool(self._gates)
        )
        failure: str | None = snap.failure or None
        if failure is None and admitted == 0:
            failure = f"all {_GATED}"
        return BalancerStats(
            service=self.service,
            strategy=strategy_name(self._strategy),
            registered=len(snap.endpoints),
            eligible=admitted,
            panic=panic,
            reason=failure,
            endpoints=tuple(states),
        )

    def __repr__(self) -> str:
        snap = self._snap
        return (
            f"LoadBalancer({self.service!r}, {strategy_name(self._strategy)}, "
            f"{len(snap.eligible)}/{len(snap.endpoints)} eligible"
            f"{', panic' if snap.panic else ''})"
        )
