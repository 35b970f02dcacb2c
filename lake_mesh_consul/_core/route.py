"""Route: one service's request path, without Consul: admission, recording, retries, explain.

A :class:`Route` owns everything a request to one service goes through: the
:class:`~lake_mesh_consul._core.balancer.LoadBalancer` (strategy, panic threshold, slow
start, load figures), the :class:`~lake_mesh_consul._core.detector.FailureDetector` (outlier
ejection and one circuit breaker per endpoint), the retry policy and budget, and the
endpoint-level settings (weight, drained, disabled, per-try timeout). Its API is small:

* :meth:`Route.update` takes discovery's endpoints; :meth:`Route.configure` new settings.
* :meth:`Route.request` is *admission*: the pick and the endpoint's breaker permit in one
  step, returning a :class:`RouteRequest` to finish with an outcome (for callers that send
  themselves). ``route.balancer.request()`` comes here too.
* :meth:`Route.call` runs ``fn(endpoint, timeout)`` with retries (the loop is
  :func:`~lake_mesh_consul._core.retry.run_call`): each attempt is admitted, its result
  classified once into an :class:`~lake_mesh_consul._core.outcome.Outcome`, the attempt
  finished with it, and the immutable :class:`~lake_mesh_consul._core.retry.RetryState`
  says whether to wait and try again.
* :meth:`Route.explain` reports every endpoint with the reasons it is or is not eligible:
  the balancer's own census (health, weight, gates, panic, slow start) plus the settings.

Recording has one path: :meth:`RouteRequest.report` ends the balancer's load tracking and
hands the outcome to the detector, which feeds ejection and, through the permit, the
breaker. So half-open probing works through every entry point.

Availability rules (Finagle's "pick among all when all are marked dead", Envoy's panic):

============================== ===============================================================
nothing eligible because        what a request does
============================== ===============================================================
none registered                 fails: ``NoEndpointsAvailable("none registered")``
all maintenance / disabled      fails fast, saying so (``"all maintenance"``...)
all drained                     fails fast (``"all drained"``)
critical, ejected, breaker open goes to the best candidate (healthiest, least loaded)
============================== ===============================================================

Breakers and ejections together take at most ``max_ejection_percent`` of the endpoints out
of rotation (see :class:`~lake_mesh_consul._core.detector.FailureDetector`), and an endpoint
Consul reports passing again after it was critical returns to rotation at once (its
ejection ends; an open breaker goes half-open, so the next request is the probe).

No I/O: time, sleep and randomness are injected.
"""

from __future__ import annotations

import functools
import itertools
import operator
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from typing import ClassVar, TypeVar

from lake_mesh_consul._core.balancer import (
    DEFAULT_PANIC_THRESHOLD,
    EndpointState,
    LoadBalancer,
    RequestContext,
)
from lake_mesh_consul._core.breaker import (
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    Permit,
)
from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.detector import DetectorPolicy, FailureDetector
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights, settings_for
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.instruments import (
    NO_INSTRUMENTS,
    Instruments,
    call_safely,
    listener_failed,
    listens,
)
from lake_mesh_consul._core.outcome import SUCCESS, Outcome
from lake_mesh_consul._core.retry import (
    BudgetPolicy,
    CallOptions,
    RetryBudget,
    RetryPolicy,
    run_call,
)
from lake_mesh_consul._core.strategies import Key, StrategyLike
from lake_mesh_consul.errors import (
    CircuitOpen,
    NoEndpointsAvailable,
)

__all__ = [
    "EndpointSettings",
    "InstanceState",
    "Route",
    "RouteRequest",
    "RouteSettings",
    "RouteState",
]

_T = TypeVar("_T")

_NO_EXCLUDE: frozenset[ServiceEndpoint] = frozenset()
#: Re-picks when a breaker refuses the endpoint its gate admitted a moment ago.
_MAX_REFUSALS = 3
#: The health ranks of panic candidates: the healthiest are tried first.
_RANK = {HealthStatus.PASSING: 0, HealthStatus.WARNING: 1, HealthStatus.CRITICAL: 2}
#: Changes (joined plus left) that Route.update applies one by one; more rebuild.
_FEW_CHANGES = 64
#: Health that brings an ejected or breaker-open endpoint back when it was critical.
_BACK = frozenset({HealthStatus.PASSING, HealthStatus.WARNING})


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """Settings of one instance (configuration's endpoint level).

    Attributes:
        weight: overrides Consul's passing weight (``None``: keep Consul's).
        drained: no new requests (a fast failure when every instance is drained).
        disabled: never picked, as if in maintenance.
        per_try_timeout: caps each attempt to this instance (seconds).
    """

    weight: int | None = None
    drained: bool = False
    disabled: bool = False
    per_try_timeout: float | None = None


def _default_detector() -> DetectorPolicy:
    return DetectorPolicy(breaker=BreakerPolicy())


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """Everything a :class:`Route` decides by. Change with :func:`dataclasses.replace`.

    Attributes:
        strategy: the balancer's strategy (a built-in's name, an object, a function).
        panic_threshold: Envoy's healthy panic threshold, a fraction in [0, 1].
        slow_start_window: seconds a newly eligible endpoint ramps up over (0: off).
        keep_warning: whether warning instances stay eligible (their warning weight).
        detector: ejection, classification and (``breaker``) the per-endpoint breakers.
        retry: the retry policy of :meth:`Route.call`.
        budget: the retry budget's settings (one budget per route).
        endpoints: per-instance settings by setting name: ``<id>@<node>`` for one instance,
            ``<id>`` for every instance with that id (the qualified name wins).
    """

    strategy: StrategyLike = "round_robin"
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    slow_start_window: float = 0.0
    keep_warning: bool = True
    detector: DetectorPolicy = field(default_factory=_default_detector)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    endpoints: Mapping[str, EndpointSettings] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One endpoint of a route and why it is or is not eligible (from :meth:`Route.explain`).

    Attributes:
        endpoint: the endpoint as discovery reported it (before settings applied).
        eligible: whether a pick may choose it now (panic mode aside).
        reasons: why not, e.g. ``"critical"``, ``"drained by config"``, ``"ejected"``.
        balancer: the balancer's figures and weight (the same census a pick uses).
        ejected_for: seconds of ejection left (0 when not ejected).
        ejection_reason: the trigger of the current ejection.
        ejections: the ejection multiplier.
        breaker: the breaker's state, if the route has breakers.
        settings: the instance's endpoint-level settings.
    """

    endpoint: ServiceEndpoint
    eligible: bool
    reasons: tuple[str, ...]
    balancer: EndpointState
    ejected_for: float
    ejection_reason: str | None
    ejections: int
    breaker: BreakerSnapshot | None
    settings: EndpointSettings | None


@dataclass(frozen=True, slots=True)
class RouteState:
    """A route's whole state, from :meth:`Route.explain`.

    Attributes:
        service: the service name.
        strategy: the strategy's name.
        registered: endpoints discovery reported.
        eligible: endpoints a pick may choose now.
        panic: whether the balancer spreads over every routable endpoint.
        reason: why nothing is eligible (then requests go to the best candidate, or fail
            fast for maintenance/drained), or None.
        instances: every endpoint, in discovery order.
    """

    service: str
    strategy: str
    registered: int
    eligible: int
    panic: bool
    reason: str | None
    instances: tuple[InstanceState, ...]


class RouteRequest(RequestContext):
    """One admitted request: the endpoint, its breaker permit, its load tracking.

    Returned by :meth:`Route.request` (and by ``route.balancer.request()``). Finish it
    exactly once: :meth:`report` with an :class:`~lake_mesh_consul._core.outcome.Outcome`,
    or as a :class:`~lake_mesh_consul._core.balancer.RequestContext` (``with``,
    :meth:`succeed`/:meth:`fail`, :meth:`finish`), or :meth:`cancel` when nothing was sent.
    The outcome goes once to the balancer's figures, the detector and the breaker.

    Thread-safety: one request from one thread at a time; finishing is idempotent.
    """

    __slots__ = ("_detector", "permit")

    def __init__(
        self,
        balancer: LoadBalancer,
        detector: FailureDetector,
        endpoint: ServiceEndpoint,
        permit: Permit | None,
        started: float | None = None,
    ) -> None:
        super().__init__(
            balancer, endpoint, balancer.stats_of(endpoint), record=False, started=started
        )
        self._detector = detector
        #: The breaker permit (None: no breaker, or a panic request its breaker refused).
        self.permit = permit

    def report(self, outcome: Outcome) -> None:
        """Finish with ``outcome``: balancer figures, detector and breaker, once each.

        An ``IGNORED`` outcome (a business error) counts as a success in the balancer's
        figures and nowhere else.
        """
        if self._done:
            return
        self._done = True
        end = self.ended = self._lb.monotonic()
        duration = max(end - self.started, 0.0)
        self._stats.end(end, duration, success=not outcome.failure or outcome.ignored)
        self._detector.record_outcome(self.endpoint, outcome, duration, permit=self.permit, now=end)

    def cancel(self) -> None:
        """End without an outcome (picked, never sent): the permit is released."""
        if self._done:
            return
        super().cancel()
        if self.permit is not None:
            self.permit.release()

    def finish(self, error: BaseException | None = None) -> None:
        """End as leaving the ``with`` block with ``error`` would (see RequestContext)."""
        if self._done:
            return
        marked = self._outcome
        if marked is None and error is not None and not isinstance(error, Exception):
            self.cancel()  # KeyboardInterrupt and the like: says nothing of the endpoint
            return
        classifier = self._detector.classifier
        if marked is None:
            outcome = SUCCESS if error is None else classifier.of_error(error)
        else:
            outcome = classifier.of(
                success=marked,
                error=self._error or (None if marked else error),
                status=self._status,
            )
            if outcome.failure is marked:  # the caller's mark wins over the classification
                outcome = replace(outcome, failure=not marked)
        self.report(outcome)

    @property
    def duration(self) -> float:
        """Seconds from the start to the finish (to now while in flight)."""
        ended = self.ended
        return self.elapsed if ended is None else max(ended - self.started, 0.0)

    def __repr__(self) -> str:
        return f"RouteRequest({self.endpoint!r}, {'done' if self._done else 'in flight'})"


class _ReportedRequest(RouteRequest):
    """A RouteRequest that also tells the route's instruments (built per route, see below).

    Only a route whose instruments listen to ``request_finished`` uses it, so the success
    path of every other route is the plain :class:`RouteRequest`'s.
    """

    __slots__ = ()
    instruments: ClassVar[Instruments]
    service: ClassVar[str]

    def report(self, outcome: Outcome) -> None:
        """As :meth:`RouteRequest.report`, then ``instruments.request_finished``."""
        if self._done:
            return
        RouteRequest.report(self, outcome)  # not super(): one call fewer per request
        ended = self.ended
        duration = 0.0 if ended is None else max(ended - self.started, 0.0)
        try:  # free in CPython 3.11+ unless it raises
            self.instruments.request_finished(self.service, self.endpoint, outcome, duration)
        except Exception:  # a faulty listener never fails a request
            listener_failed("request_finished")


def _request_type(service: str, instruments: Instruments) -> type[RouteRequest]:
    """The RouteRequest class of a route: the plain one unless requests are listened to."""
    if not listens(instruments, "request_finished"):
        return RouteRequest
    attributes = {"__slots__": (), "instruments": instruments, "service": service}
    return type("RouteRequest", (_ReportedRequest,), attributes)


class Route:
    """One service's request path (see the module docstring).

    Args:
        service: the service name.
        settings: the route's settings (:class:`RouteSettings`).
        endpoints: the initial endpoints (as discovery reports them).
        clock: time for everything the route builds; also how it sleeps between retries.
        rng: randomness for the strategy, ejection jitter and backoff.
        instruments: where the route reports requests, retries, breaker transitions,
            ejections, panic and no-endpoint failures (default: nowhere, at no cost; see
            :mod:`lake_mesh_consul._core.instruments`).

    Thread-safety: every method may be called from any thread. :meth:`request` and
    :meth:`call` take no lock of the route; :meth:`update` and :meth:`configure` serialise
    among themselves.

    Example:
        >>> route = Route("web", endpoints=[ServiceEndpoint.create("w1", "10.0.0.1", 80)])
        >>> route.call(lambda endpoint, timeout: endpoint.host_port)
        '10.0.0.1:80'
        >>> with route.request() as attempt:
        ...     attempt.fail(status=503)
        >>> route.explain().instances[0].balancer.failures
        1
    """

    def __init__(
        self,
        service: str,
        settings: RouteSettings | None = None,
        *,
        endpoints: Iterable[ServiceEndpoint] = (),
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.service = service
        self.clock = clock
        self._rng = rng or random.Random()
        self._settings = settings = settings or RouteSettings()
        self._lock = threading.Lock()
        self.instruments = instruments
        self._request = _request_type(service, instruments)
        self._on_retry = (
            functools.partial(call_safely, instruments.retry, service)
            if listens(instruments, "retry")
            else None
        )
        self._detector = FailureDetector(
            settings.detector,
            clock=clock,
            rng=random.Random(self._rng.random()),
            listeners=(functools.partial(instruments.ejection, service),),
            breaker_listeners=(functools.partial(instruments.breaker_transition, service),),
        )
        self._balancer = LoadBalancer(
            service,
            settings.strategy,
            gates=(self._detector,),
            panic_threshold=settings.panic_threshold,
            slow_start_window=settings.slow_start_window,
            clock=clock,
            rng=random.Random(self._rng.random()),
        )
        self._balancer.admit_through(self._admit_recorded)
        self._budget = RetryBudget.from_policy(settings.budget, clock=clock)
        self._raw: tuple[ServiceEndpoint, ...] = ()
        self._adjusted: tuple[ServiceEndpoint, ...] = ()
        self._per_try: dict[ServiceEndpoint, float] = {}
        self._turn = itertools.count()
        self.update(endpoints)

    # --- what the route owns -----------------------------------------------------------------

    @property
    def settings(self) -> RouteSettings:
        """The settings in force."""
        return self._settings

    @property
    def balancer(self) -> LoadBalancer:
        """The load balancer (its ``request()`` goes through this route's admission)."""
        return self._balancer

    @property
    def detector(self) -> FailureDetector:
        """The failure detector: outlier ejection and the per-endpoint breakers."""
        return self._detector

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of :meth:`call`."""
        return self._settings.retry

    @property
    def budget(self) -> RetryBudget:
        """The retry budget shared by every call on this route."""
        return self._budget

    @property
    def endpoints(self) -> tuple[ServiceEndpoint, ...]:
        """The endpoints as discovery last reported them (settings not applied)."""
        return self._raw

    # --- changes -----------------------------------------------------------------------------

    def update(
        self, endpoints: Iterable[ServiceEndpoint], changes: EndpointChanges | None = None
    ) -> None:
        """Take discovery's current endpoints: apply settings, tell balancer and detector.

        An endpoint that was critical and is now passing or warning returns to rotation at
        once (:meth:`FailureDetector.restore`: its ejection ends, an open breaker goes
        half-open). ``changes`` (optional, from discovery) says which positions changed
        since the endpoints this route holds; when it applies, only those are looked at.
        Thread-safe.
        """
        new = tuple(endpoints)
        with self._lock:
            old = self._raw
            if changes is not None and changes.applies_to(old, new) and changes.in_place:
                if changes:
                    self._patch(old, new, changes.changed)
                return
            if len(old) == len(new):
                # Only what changed is applied (issue 15: a change costs what changed).
                changed = list(compress(range(len(new)), map(operator.is_not, old, new)))
                if not changed:
                    return
                if all(old[i] == new[i] for i in changed):  # same members, same order
                    self._patch(old, new, changed)
                    return
            self._reshape(old, new)

    def _reshape(self, old: tuple[ServiceEndpoint, ...], new: tuple[ServiceEndpoint, ...]) -> None:
        """Apply a membership change; only new endpoint objects get their settings applied.

        The rest are reused through C-level lookups; detector and balancer are told, and
        returns to rotation are checked for the new objects only. Lock held.
        """
        by_id = dict(zip(map(id, old), self._adjusted, strict=True))
        adjusted: list[ServiceEndpoint | None] = list(map(by_id.get, map(id, new)))
        fresh = list(compress(range(len(new)), map(operator.is_, adjusted, repeat(None))))
        new_ids = set(map(id, new))
        gone = list(compress(old, map(operator.not_, map(new_ids.__contains__, map(id, old)))))
        few = len(fresh) + len(gone) <= _FEW_CHANGES
        if few:
            keep_warning = self._settings.keep_warning
            for i in fresh:
                adjusted[i] = self._adjust(new[i], keep_warning)
        else:  # mostly new: apply everything (the per-try map is rebuilt too)
            adjusted = list(self._apply_settings(new))
        left = [by_id[id(e)] for e in gone]
        self._raw = new
        self._adjusted = tuple(adjusted)  # type: ignore[arg-type]  # no None left
        if few:
            joined = [self._adjusted[i] for i in fresh]
            self._detector.change_members(self.service, joined=joined, left=left)
        else:
            self._detector.update_endpoints(self.service, self._adjusted)
        self._balancer.update(self._adjusted)
        for i in fresh:  # only new objects can have come back from critical
            before = next((e for e in gone if e == new[i]), None) if few else None
            if before is None and not few:
                before = next((e for e in old if e == new[i]), None)
            self._restore_if_passing(None if before is None else before.health, new[i])

    def _patch(
        self,
        old: tuple[ServiceEndpoint, ...],
        new: tuple[ServiceEndpoint, ...],
        changed: Sequence[int],
    ) -> None:
        """Apply a change of a few endpoints' fields (membership unchanged). Lock held.

        The balancer is told which positions changed, so it looks at those only.
        """
        before = self._adjusted
        adjusted = list(before)
        keep_warning = self._settings.keep_warning
        for i in changed:
            adjusted[i] = self._adjust(new[i], keep_warning)
        self._raw = new
        self._adjusted = after = tuple(adjusted)
        self._balancer.update(after, EndpointChanges(before, after, changed=tuple(changed)))
        for i in changed:
            self._restore_if_passing(old[i].health, new[i])

    def _restore_if_passing(self, before: HealthStatus | None, endpoint: ServiceEndpoint) -> None:
        if before is HealthStatus.CRITICAL and endpoint.health in _BACK:
            self._detector.restore(endpoint, "passing again in Consul")

    def configure(self, settings: RouteSettings) -> None:
        """Adopt new settings in place (a configuration reload); state is kept.

        The balancer swaps its strategy only if it changed (load figures survive); the
        detector and its breakers take new thresholds keeping their state; a new budget
        policy starts a new budget; endpoint settings are re-applied. Thread-safe.

        Raises:
            InvalidSetting: the strategy is unknown (nothing else is applied then).
        """
        with self._lock:
            old = self._settings
            lb = self._balancer
            if settings.strategy != old.strategy:
                lb.set_strategy(settings.strategy)
            lb.panic_threshold = settings.panic_threshold
            lb.slow_start_window = settings.slow_start_window
            if settings.detector != old.detector:
                self._detector.set_policy(settings.detector)
            if settings.budget != old.budget:
                self._budget = RetryBudget.from_policy(settings.budget, clock=self.clock)
            self._settings = settings
            self._adjusted = self._apply_settings(self._raw)
            self._detector.update_endpoints(self.service, self._adjusted)
            lb.update(self._adjusted)

    def _settings_of(self, endpoint: ServiceEndpoint) -> EndpointSettings | None:
        settings = self._settings.endpoints
        return settings_for(endpoint, settings) if settings else None

    def _apply_settings(
        self, endpoints: tuple[ServiceEndpoint, ...]
    ) -> tuple[ServiceEndpoint, ...]:
        """Endpoints as the balancer sees them: weight, disabled, drained, keep_warning.

        Disabled and drained instances are out of rotation like maintenance (never picked,
        not even in panic); :meth:`explain` says which setting it was. Lock held.
        """
        keep_warning = self._settings.keep_warning
        self._per_try = {}
        return tuple(self._adjust(e, keep_warning) for e in endpoints)

    def _adjust(self, e: ServiceEndpoint, keep_warning: bool) -> ServiceEndpoint:
        """One endpoint as the balancer sees it; records its per-try timeout. Lock held."""
        own = self._settings_of(e)
        weights, health = e.weights, e.health
        if own is not None:
            if own.weight is not None:
                weights = Weights(int(own.weight), weights.warning)
            if own.disabled or own.drained:
                health = HealthStatus.MAINTENANCE
            if own.per_try_timeout is not None:
                self._per_try[e] = own.per_try_timeout
            else:
                self._per_try.pop(e, None)
        if not keep_warning and health is HealthStatus.WARNING:
            weights = Weights(weights.passing, 0)
        if weights is not e.weights or health is not e.health:
            return replace(e, weights=weights, health=health)
        return e

    # --- admission ---------------------------------------------------------------------------

    def request(
        self, key: Key = None, *, exclude: frozenset[ServiceEndpoint] = _NO_EXCLUDE
    ) -> RouteRequest:
        """Pick an endpoint and take its breaker permit: one admitted request.

        ``exclude`` (endpoints already tried) are not picked. A breaker that refuses the
        endpoint its gate admitted a moment ago makes the route pick again. When nothing
        is eligible (critical, ejected, breakers open) the request goes to the best
        candidate anyway (panic; with a probe permit if its breaker allows one).

        Raises:
            NoEndpointsAvailable: nothing routable (none registered, all maintenance,
                disabled or drained; the reason says which), or ``exclude`` covers every
                candidate (``"all tried"``).
        """
        lb = self._balancer
        if not exclude:  # the common case, inlined
            try:
                endpoint = lb.pick(key)
            except NoEndpointsAvailable as exc:
                return self._panic_request(exc)
            breaker = self._detector.breaker(endpoint)
            now = lb.monotonic()  # one reading for the permit and the load figures (one clock)
            if breaker is None:
                return self._request(lb, self._detector, endpoint, None, now)
            try:
                return self._request(lb, self._detector, endpoint, breaker.acquire(now), now)
            except CircuitOpen:
                return self._repick(key, exclude, frozenset((endpoint,)))
        return self._repick(key, exclude, exclude)

    def _repick(
        self,
        key: Key,
        exclude: frozenset[ServiceEndpoint],
        refused: frozenset[ServiceEndpoint],
    ) -> RouteRequest:
        """Admission avoiding ``refused`` (tried, or their breakers refused just now)."""
        for _ in range(_MAX_REFUSALS):
            try:
                endpoint = self._balancer.pick(key, exclude=refused)
            except NoEndpointsAvailable as exc:
                if exclude:
                    raise
                return self._panic_request(exc)
            breaker = self._detector.breaker(endpoint)
            if breaker is None:
                return self._request(self._balancer, self._detector, endpoint, None)
            try:
                permit = breaker.acquire()
            except CircuitOpen:
                refused = refused | {endpoint}
                continue
            return self._request(self._balancer, self._detector, endpoint, permit)
        if exclude:
            raise NoEndpointsAvailable(self.service, "all tried")
        return self._panic_request(None)

    def _admit_recorded(self, key: Key, exclude: frozenset[ServiceEndpoint]) -> RequestContext:
        return self.request(key, exclude=exclude)

    def _panic_request(self, cause: NoEndpointsAvailable | None) -> RouteRequest:
        """Nothing is eligible: go to the best routable candidate, or say why none is."""
        candidates = [e for e in self._balancer.endpoints if e.health in _RANK]
        if not candidates:
            why = self._why_none()
            call_safely(self.instruments.no_endpoint, self.service, why)
            raise NoEndpointsAvailable(self.service, why) from cause
        call_safely(self.instruments.panic, self.service, None if cause is None else cause.reason)
        best = min(_RANK[e.health] for e in candidates)
        candidates = [e for e in candidates if _RANK[e.health] == best]
        endpoint = candidates[next(self._turn) % len(candidates)]
        breaker = self._detector.breaker(endpoint)
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()  # a due probe, when its reset timeout is over
            except CircuitOpen:
                permit = None  # sent anyway; the outcome is observed, not a probe
        return self._request(self._balancer, self._detector, endpoint, permit)

    def _why_none(self) -> str:
        """Why no endpoint is routable: ``"all drained"``, ``"none registered"``..."""
        if not self._raw:
            return "none registered"
        counts: Counter[str] = Counter()
        for endpoint in self._raw:
            own = self._settings_of(endpoint)
            if own is not None and own.disabled:
                counts["disabled"] += 1
            elif own is not None and own.drained:
                counts["drained"] += 1
            else:
                counts[endpoint.health.value] += 1
        if len(counts) == 1:
            return f"all {next(iter(counts))}"
        return "none routable (" + ", ".join(f"{n} {w}" for w, n in counts.most_common()) + ")"

    # --- calls with retries ------------------------------------------------------------------

    def call(
        self,
        fn: Callable[[ServiceEndpoint, float | None], _T],
        options: CallOptions | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
    ) -> _T:
        """Run ``fn(endpoint, timeout)`` on admitted endpoints, with retries.

        Each attempt is admitted (:meth:`request`, avoiding endpoints already tried), runs
        with no lock held and ``timeout`` = the attempt's seconds (per-try timeout, the
        instance's own, what the deadline leaves), and is finished with its classified
        outcome. :class:`~lake_mesh_consul._core.retry.RetryState` decides whether to wait
        and try again; every retry must also get a token from the retry budget.

        Returns:
            The first successful (or non-retriable) result, or the last result when
            attempts ran out on a retriable status (as Envoy returns the last response).

        Raises:
            NoEndpointsAvailable: nothing could be admitted for the first attempt.
            RetryExhausted: retries stopped after an exception; ``.attempts`` has each.
            DeadlineExceeded: the deadline ran out; ``.attempts`` has each.
            Exception: an error of a kind the policy does not retry, unchanged.
        """
        opts, policy = self._call_policy(options)
        per_try = self._per_try  # usually empty: then no per-instance lookup per attempt
        return run_call(
            self.request,
            fn,
            opts,
            policy=policy,
            budget=self._budget,
            classifier=self._detector.classifier,
            clock=self.clock,
            sleep=sleep,
            rng=self._rng,
            cap_of=per_try.get if per_try else None,
            on_retry=self._on_retry,
        )

    def _call_policy(self, options: CallOptions | None) -> tuple[CallOptions, RetryPolicy]:
        """The call's options and retry policy (one attempt for a call that cannot replay)."""
        opts = options or CallOptions()
        policy = self._settings.retry
        if not opts.replayable and policy.attempts > 1:
            policy = replace(policy, attempts=1)
        return opts, policy

    async def acall(
        self,
        fn: Callable[[ServiceEndpoint, float | None], Awaitable[_T]],
        options: CallOptions | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> _T:
        """:meth:`call` for a coroutine function: ``await fn(endpoint, timeout)`` per attempt.

        The same admission, retry state, budget, classifier and backoff as :meth:`call`
        (the loop is :func:`lake_mesh_consul._core.retry_async.run_call_async`); the backoff
        is awaited (``sleep``, default ``asyncio.sleep``). A cancelled attempt releases its
        breaker permit and outstanding count, records no outcome, and the
        ``asyncio.CancelledError`` propagates unchanged. Returns and raises as :meth:`call`.
        """
        from lake_mesh_consul._core.retry_async import run_call_async  # asyncio on first use

        opts, policy = self._call_policy(options)
        per_try = self._per_try
        return await run_call_async(
            self.request,
            fn,
            opts,
            policy=policy,
            budget=self._budget,
            classifier=self._detector.classifier,
            clock=self.clock,
            sleep=sleep,
            rng=self._rng,
            cap_of=per_try.get if per_try else None,
            on_retry=self._on_retry,
        )

    # --- explaining ----------------------------------------------------------------------

    def explain(self) -> RouteState:
        """Every endpoint and why it is or is not eligible: the census a pick uses.

        Reads memory only (asks the gates about each endpoint: O(N)). Thread-safe.
        """
        stats = self._balancer.stats()
        raw = {e.key: e for e in self._raw}
        instances = []
        for state in stats.endpoints:
            original = raw.get(state.endpoint.key, state.endpoint)
            instances.append(self._explain_one(original, state))
        reason = stats.reason
        routable = any(e.health in _RANK for e in self._balancer.endpoints)
        if reason is not None and not routable:
            reason = self._why_none()
        return RouteState(
            service=self.service,
            strategy=stats.strategy,
            registered=stats.registered,
            eligible=stats.eligible,
            # Nothing eligible but something routable: requests go to the best candidate.
            panic=stats.panic or (stats.eligible == 0 and routable),
            reason=reason,
            instances=tuple(instances),
        )

    def _explain_one(self, endpoint: ServiceEndpoint, state: EndpointState) -> InstanceState:
        own = self._settings_of(endpoint)
        dstate = self._detector.state(state.endpoint)
        reasons = _health_reasons(endpoint, state, own, keep_warning=self._settings.keep_warning)
        if dstate.ejected_until is not None and dstate.ejected_for > 0:
            reasons.append(
                f"ejected ({dstate.ejected_for:.1f}s left; {dstate.ejection_reason}, "
                f"ejection #{dstate.ejections})"
            )
        breaker = dstate.breaker
        if breaker is not None and not state.eligible:
            if breaker.state is BreakerState.OPEN and breaker.retry_after:
                reasons.append(f"breaker open (probe in {breaker.retry_after:.1f}s)")
            elif breaker.state is BreakerState.OPEN:
                reasons.append("breaker open")
            elif breaker.state is BreakerState.FORCED_OPEN:
                reasons.append("breaker forced open")
            elif breaker.state is BreakerState.HALF_OPEN:
                reasons.append(f"breaker half-open ({breaker.probes_in_flight} probe(s) out)")
        if not state.eligible and not reasons:
            reasons.append(state.reason or "not eligible")
        return InstanceState(
            endpoint=endpoint,
            eligible=state.eligible,
            reasons=() if state.eligible else tuple(reasons),
            balancer=state,
            ejected_for=dstate.ejected_for,
            ejection_reason=dstate.ejection_reason,
            ejections=dstate.ejections,
            breaker=breaker,
            settings=own,
        )

    def __repr__(self) -> str:
        return f"Route({self.service!r}, {self._balancer!r})"


def _health_reasons(
    endpoint: ServiceEndpoint,
    state: EndpointState,
    own: EndpointSettings | None,
    *,
    keep_warning: bool,
) -> list[str]:
    """The health and settings part of why ``endpoint`` is not eligible."""
    reasons: list[str] = []
    if own is not None and own.disabled:
        reasons.append("disabled by config")
    if own is not None and own.drained:
        reasons.append("drained by config")
    health = endpoint.health
    if health is HealthStatus.CRITICAL:
        reasons.append("critical (a health check is failing)")
    elif health is HealthStatus.MAINTENANCE:
        reasons.append("maintenance")
    elif state.base_weight <= 0 and not reasons:
        if health is HealthStatus.WARNING and not keep_warning and endpoint.weights.warning > 0:
            reasons.append("warning (keep_warning is off)")
        else:
            reasons.append(f"{health.value} weight 0")
    return reasons
