"""Mesh: the composition root that wires every part of the mesh for one process.

One object does registration, discovery, balancing, breaking, retries and live
configuration for a service and for the services it calls.

What a :class:`Mesh` owns, and what each piece is for::

    Mesh
    ├── ConsulClient           one connection pool to the local agent
    ├── ServiceRegistry        mesh.register(...): this process's instances and their checks
    │   └── HealthCheckManager   one per registered instance (TTL heartbeats, metrics)
    ├── ConfigStore            KV configuration, live reload (strategy, thresholds, weights)
    ├── ServiceDiscovery       one blocking query per called service, served from memory
    └── per called service (created on first use, then kept): a Route
        (lake_mesh_consul._core.route, Consul-free), following discovery and the service's
        effective configuration; it owns the LoadBalancer, the FailureDetector (ejection and
        per-endpoint breakers), the RetryPolicy and RetryBudget and the endpoint settings.

The request path (:meth:`Mesh.call`, ``mesh.balancer(...).request()`` and the requests
integration in :mod:`lake_mesh_consul.http`) is the route's: :meth:`Route.request` picks an
endpoint and takes its breaker permit in one step; each result is classified once and
reported once (balancer figures, detector, breaker); retries re-pick among the endpoints not
yet tried, and only idempotent calls are retried after the request may have been sent. When
nothing is eligible a request goes to the best candidate (Envoy's panic) unless every
instance is in maintenance, disabled or drained. Mesh is wiring: it builds each route's
:class:`~lake_mesh_consul._core.route.RouteSettings` from configuration and feeds it
discovery's endpoints.

Discovery follows *every* instance of a called service (``passing_only=False``), so the
balancer sees critical and maintenance instances and can apply Envoy's panic threshold
honestly; :meth:`Mesh.explain` shows each instance with the reason it is or is not eligible
(the route's own census, the one its picks use).

Live reload: a change of a service's effective configuration in KV is applied in place:
:meth:`Route.configure` swaps the strategy (outstanding counts and latency estimates
survive), takes the new panic threshold and slow-start window, hands new ejection and breaker
thresholds to the detector and every breaker it owns (state and counts kept); new retry
policy and budget apply to the next call; endpoint weights, ``drained`` and ``disabled`` are
re-applied to the current endpoints.

This module imports the heavy parts (requests, python-consul2, tenacity, pybreaker);
``import lake_mesh_consul`` does not import it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery, ServiceSnapshot
from lake_mesh_consul._consul.kvconfig import ConfigChange, ConfigEvent, ConfigStore, StartMode
from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._consul.watch import Consistency
from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import EndpointConfig, MeshConfig, ServiceConfig
from lake_mesh_consul._core.config_layers import EffectiveConfig
from lake_mesh_consul._core.config_policies import (
    balancer_settings,
    detector_policy,
    retry_policy,
)
from lake_mesh_consul._core.detector import FailureDetector
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.instruments import (
    Instruments,
    LogInstruments,
    Readings,
    ServiceReadings,
    combine,
    listens,
)
from lake_mesh_consul._core.names import check_service_name
from lake_mesh_consul._core.retry import BudgetPolicy, CallOptions, RetryBudget, RetryPolicy
from lake_mesh_consul._core.route import (
    EndpointSettings,
    InstanceState,
    Route,
    RouteSettings,
)
from lake_mesh_consul._shutdown import ShutdownHook
from lake_mesh_consul.errors import DiscoveryTimeout, InvalidSetting, MeshError

if TYPE_CHECKING:
    import asyncio

    from lake_mesh_consul._consul.health_checks import CheckFunction, HealthCheckManager
    from lake_mesh_consul._core.registration import Check, ServiceMetadata
    from lake_mesh_consul.http import MeshSession

__all__ = [
    "Explanation",
    "InstanceExplanation",
    "Mesh",
    "MeshStatus",
]

_log = logging.getLogger("lake_mesh_consul.mesh")

_T = TypeVar("_T")

#: Seconds the first use of a service waits for discovery's first answer (by default).
DEFAULT_DISCOVERY_TIMEOUT = 10.0
#: Most services :meth:`Mesh.status` explains when it lists the catalog.
MAX_STATUS_SERVICES = 100
#: Seconds close() may take beyond the drain grace (drain calls, then every thread joined).
CLOSE_MARGIN = 2.0
#: Seconds a caller waiting for another thread's first use of a service (or start) waits
#: beyond that thread's own timeout before giving up.
FLIGHT_SLACK = 1.0


@dataclass(frozen=True)
class InstanceExplanation:
    """One instance of a service and why it is or is not eligible right now.

    Attributes:
        id: the Consul service instance id.
        address: ``host:port``.
        health: the aggregate of its checks (``passing``, ``warning``, ``critical``,
            ``maintenance``).
        eligible: whether a pick may choose it now (ignoring panic mode).
        reasons: why not (empty when eligible), e.g. ``"critical"``,
            ``"ejected until 12:00:05 (consecutive_failures, 1 ejection)"``,
            ``"breaker open (probe in 3.2s)"``, ``"drained by config"``.
        breaker: the breaker's state (``closed``, ``open``, ``half_open``...).
        breaker_retry_after: seconds until an open breaker admits a probe.
        ejected_until: wall-clock time (epoch seconds) the current ejection ends, or None.
        ejection_reason: the trigger of the current ejection.
        outstanding: requests in flight from this process.
        latency_ms: the peak-EWMA latency estimate, in milliseconds.
        requests: finished requests seen by the balancer; failures: of those, failed.
        weight: the weight a pick uses now (slow start included; 0 when not eligible).
        slow_start: the slow-start multiplier (1.0 when warmed up).
        config: the endpoint-level settings that apply to it (weight, drained, disabled).
        node: the Consul node it runs on (an instance is (datacenter, node, id)).
    """

    id: str
    address: str
    health: str
    eligible: bool
    reasons: tuple[str, ...]
    breaker: str | None
    breaker_retry_after: float | None
    ejected_until: float | None
    ejection_reason: str | None
    outstanding: int
    latency_ms: float
    requests: int
    failures: int
    weight: float
    slow_start: float
    config: Mapping[str, Any] = field(default_factory=dict)
    node: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = dataclasses.asdict(self)
        data["reasons"] = list(self.reasons)
        data["config"] = dict(self.config)
        return data


@dataclass(frozen=True)
class Explanation:
    """Why each instance of a service is or is not picked right now (from :meth:`Mesh.explain`).

    Printable: ``str(explanation)`` is a small report with a table of instances.

    Attributes:
        service: the service name.
        strategy: the balancer's strategy; strategy_source: where it came from
            (``kv:<key>``, ``code``, ``built-in``...).
        registered: instances discovery knows (every health status).
        eligible: instances a pick may choose now.
        panic: whether panic mode is on (fewer eligible than ``panic_threshold`` percent:
            the balancer uses every routable instance).
        panic_threshold: the threshold in percent.
        reason: why nothing is eligible now, or None. With ``panic`` on, requests still go
            to the best candidate; without it (every instance in maintenance, disabled or
            drained) they fail fast with this reason.
        stale: whether discovery serves a stale snapshot (Consul unreachable); age: seconds
            since Consul last answered; snapshot_source: ``consul``, ``persisted`` or
            ``failover``; discovery_error: the last error while stale.
        retry_budget_left: retries the service's budget allows right now.
        retry_attempts: attempts per call in all; per_try_timeout and deadline in seconds.
        config_stale: whether KV configuration could not be read lately; config_index: the
            KV index of the configuration in force.
        instances: every instance, in discovery order.
        at: wall-clock time of the explanation.
    """

    service: str
    strategy: str
    strategy_source: str
    registered: int
    eligible: int
    panic: bool
    panic_threshold: float
    reason: str | None
    stale: bool
    age: float | None
    snapshot_source: str
    discovery_error: str | None
    retry_budget_left: int
    retry_attempts: int
    per_try_timeout: float | None
    deadline: float | None
    config_stale: bool
    config_index: int
    instances: tuple[InstanceExplanation, ...]
    at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``instances`` as a list of dicts)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["instances"] = [i.to_dict() for i in self.instances]
        return data

    def summary(self) -> str:
        """One line: eligible count, strategy, panic, staleness, budget."""
        parts = [
            f"{self.service}: {self.eligible}/{self.registered} eligible",
            f"strategy {self.strategy} ({self.strategy_source})",
        ]
        if self.panic:
            parts.append(f"PANIC (below {self.panic_threshold:g}%: using every instance)")
        if self.reason and self.panic and self.eligible == 0:
            parts.append(f"nothing eligible ({self.reason}): requests go to the best candidate")
        elif self.reason:
            parts.append(f"a pick would fail: {self.reason}")
        if self.stale:
            age = "never answered" if self.age is None else f"{self.age:.1f}s old"
            parts.append(f"STALE snapshot ({age}; {self.discovery_error or 'Consul unreachable'})")
        else:
            age = "-" if self.age is None else f"{self.age:.1f}s"
            parts.append(f"snapshot fresh (age {age})")
        parts.append(f"retry budget {self.retry_budget_left} left")
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        if not self.instances:
            lines.append("  (no instance registered)")
            return "\n".join(lines)
        headers = ("ID", "ADDRESS", "HEALTH", "BREAKER", "ELIGIBLE", "LAT", "REQ", "WHY NOT")
        rows = [
            (
                f"{i.id}@{i.node}" if i.node else i.id,  # IDs repeat across nodes
                i.address,
                i.health,
                i.breaker or "-",
                "yes" if i.eligible else "no",
                f"{i.latency_ms:.0f}ms",
                str(i.requests),
                "; ".join(i.reasons) or "-",
            )
            for i in self.instances
        ]
        widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append("  " + fmt.format(*headers).rstrip())
        lines.extend("  " + fmt.format(*row).rstrip() for row in rows)
        return "\n".join(lines)


@dataclass(frozen=True)
class MeshStatus:
    """Every service of the catalog (or those asked for), explained; and the config source.

    Attributes:
        address: the agent's base URL.
        config_prefix: the KV prefix of the configuration; config_index: its KV index;
            config_stale: whether KV could not be read lately.
        services: one :class:`Explanation` per service.
        registered: the instances this mesh registered (ids).
        config_events: the latest configuration events (``kind key: reason``).
        skipped: catalog services that were not explained, by name, with why (e.g. a name
            another tool registered that lake-mesh's service-name rule does not accept).
    """

    address: str
    config_prefix: str
    config_index: int
    config_stale: bool
    services: tuple[Explanation, ...]
    registered: tuple[str, ...]
    config_events: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["services"] = [s.to_dict() for s in self.services]
        data["registered"] = list(self.registered)
        data["config_events"] = list(self.config_events)
        data["skipped"] = dict(self.skipped)
        return data

    def __str__(self) -> str:
        stale = " (STALE)" if self.config_stale else ""
        lines = [
            f"agent {self.address}; config from KV {self.config_prefix}/ "
            f"(index {self.config_index}){stale}"
        ]
        for explanation in self.services:
            lines.append("")
            lines.append(str(explanation))
        if not self.services and not self.skipped:
            lines.append("no services registered")
        if self.skipped:
            lines.append("")
            lines.extend(f"skipped {name}: {note}" for name, note in self.skipped.items())
        return "\n".join(lines)


def _wall(clock: Clock, seconds_from_now: float) -> float:
    return clock.time() + seconds_from_now


def _clock_text(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _explained(state: InstanceState, clock: Clock) -> InstanceExplanation:
    """An instance of the route's census, with wall-clock times for people."""
    endpoint = state.endpoint
    ejected_until = None
    reasons = list(state.reasons)
    if state.ejected_for > 0:
        ejected_until = _wall(clock, state.ejected_for)
        reasons = [
            r.replace("ejected (", f"ejected until {_clock_text(ejected_until)} (", 1)
            if r.startswith("ejected (")
            else r
            for r in reasons
        ]
    breaker = state.breaker
    own = state.settings
    config: dict[str, Any] = {}
    if own is not None:
        if own.weight is not None:
            config["weight"] = own.weight
        if own.drained:
            config["drained"] = True
        if own.disabled:
            config["disabled"] = True
    return InstanceExplanation(
        id=endpoint.id,
        address=endpoint.host_port,
        health=endpoint.health.value,
        eligible=state.eligible,
        reasons=tuple(reasons),
        breaker=breaker.state.value if breaker is not None else None,
        breaker_retry_after=breaker.retry_after if breaker is not None else None,
        ejected_until=ejected_until,
        ejection_reason=state.ejection_reason if ejected_until else None,
        outstanding=state.balancer.outstanding,
        latency_ms=state.balancer.latency * 1000.0,
        requests=state.balancer.requests,
        failures=state.balancer.failures,
        weight=state.balancer.weight,
        slow_start=state.balancer.slow_start,
        config=config,
        node=endpoint.node,
    )


class _Service:
    """One called service: its :class:`Route`, fed by discovery and configuration."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.mesh = mesh
        self.name = name
        self.lock = threading.Lock()
        self.effective = mesh.store.effective(name)
        self.route = Route(
            name,
            self._settings(),
            clock=mesh.clock,
            rng=random.Random(mesh.rng.random()),
            instruments=mesh.instruments,
        )
        self.filters = self._filters(self.effective.values)
        self.unsubscribe: Callable[[], None] = _noop
        self.unsubscribe_config: Callable[[], None] = _noop

    # -- discovery ----------------------------------------------------------------------------

    @staticmethod
    def _filters(values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "tags": tuple(values.get("tags") or ()),
            "service_meta": dict(values.get("meta") or {}) or None,
            "passing_only": False,
            # None leaves the discovery's own failover list in force.
            "failover": tuple(values.get("failover_datacenters") or ()) or None,
        }

    def follow(self, timeout: float) -> None:
        """Subscribe to discovery (waiting up to ``timeout`` for the first answer)."""
        source = self.mesh.discovery.source(self.name, timeout=timeout, **self.filters)
        self.unsubscribe = source.subscribe_changes(self.route.update)

    # -- configuration ------------------------------------------------------------------------

    def _settings(self) -> RouteSettings:
        """The route's settings from the service's effective configuration."""
        values = self.effective.values
        balancing = balancer_settings(values)
        return RouteSettings(
            strategy=balancing["strategy"],
            panic_threshold=balancing["panic_threshold"],
            slow_start_window=balancing["slow_start_window"],
            keep_warning=bool(values.get("keep_warning", True)),
            detector=detector_policy(values),
            retry=retry_policy(values),
            budget=BudgetPolicy(
                min_retries_per_sec=int(values["retry.budget_min_per_second"]),
                percent_can_retry=float(values["retry.budget_ratio"]),
            ),
            endpoints=self._endpoint_settings(values.get("per_try_timeout")),
        )

    def _endpoint_settings(self, service_per_try: Any) -> dict[str, EndpointSettings]:
        """Endpoint-level settings by setting name (``<id>`` or ``<id>@<node>``)."""
        snapshot = self.mesh.store.snapshot
        settings: dict[str, EndpointSettings] = {}
        for name in snapshot.endpoints(self.name):
            eff = snapshot.effective(self.name, name)
            timeout = eff.values.get("per_try_timeout")
            weight = _own(eff, "weight")
            settings[name] = EndpointSettings(
                weight=None if weight is None else int(weight),
                drained=bool(_own(eff, "drained")),
                disabled=bool(_own(eff, "disabled")),
                per_try_timeout=(
                    float(timeout) if timeout is not None and timeout != service_per_try else None
                ),
            )
        return settings

    def on_config(self, change: ConfigChange) -> None:
        """Apply the service's new effective settings in place (runs on the KV watch thread)."""
        with self.lock:
            self.effective = change.current.effective(self.name)
            settings = self._settings()
            try:
                self.route.configure(settings)
            except MeshError as exc:  # validated already; a strategy the balancer refuses
                _log.warning("service %s: strategy not applied: %s", self.name, exc)
                kept = self.route.settings.strategy
                self.route.configure(dataclasses.replace(settings, strategy=kept))
            filters = self._filters(self.effective.values)
            if filters != self.filters:
                self.filters = filters
                self.unsubscribe()
                source = self.mesh.discovery.source(self.name, wait=False, **filters)
                self.unsubscribe = source.subscribe_changes(self.route.update)
        _log.info(
            "service %s: configuration reloaded (strategy %s)",
            self.name,
            self.route.balancer.strategy,
        )

    def close(self) -> None:
        self.unsubscribe_config()
        self.unsubscribe()


def _on_loop(
    fn: Callable[[], Coroutine[Any, Any, object]], loop: asyncio.AbstractEventLoop
) -> CheckFunction:
    """A check function that runs the coroutine function ``fn`` on ``loop`` and waits.

    Called on a check thread of the HealthCheckManager, never on the loop itself.
    """
    import asyncio

    def check() -> object:
        coroutine = fn()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise
        return future.result()

    check.__name__ = getattr(fn, "__name__", "check")
    return check


def _noop() -> None:
    return None


def _own(eff: EffectiveConfig, key: str) -> Any:
    """A setting set at the endpoint level itself (not inherited), else None."""
    return eff.values[key] if eff.provenance[key].level == "endpoint" else None


class _Flight(Generic[_T]):
    """One action in progress that other threads may wait for (single-flight).

    The thread that starts the action runs it with no lock held and calls :meth:`land`
    or :meth:`crash`; the others :meth:`wait` for that outcome instead of repeating the
    action, so N threads asking for one thing cost one wait, and asking for N different
    things costs N waits side by side, never in a row.
    """

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None

    def land(self, value: _T) -> None:
        """The action succeeded with ``value``."""
        self._value = value
        self._done.set()

    def crash(self, error: BaseException) -> None:
        """The action failed with ``error`` (raised again to every waiter)."""
        self._error = error
        self._done.set()

    def wait(self, timeout: float, what: str) -> _T:
        """The action's value, or its error raised again; DiscoveryTimeout after ``timeout``."""
        if not self._done.wait(timeout):
            raise DiscoveryTimeout(what, timeout, "still waiting for another thread's attempt")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Mesh:
    """The mesh for one process: register yourself, call others, explain what happens.

    Args:
        config: connection settings and mesh-wide defaults (default:
            ``MeshConfig.from_env()``).
        services: service-level settings from code (KV settings win over them).
        endpoints: endpoint-level settings from code, by ``(service, name)``: the name is an
            instance id (every instance with that id), or ``"<id>@<node>"`` for one instance
            where the id is registered on several nodes (the same rule as KV's keys).
        watch_config: read and watch KV configuration under ``config.kv_prefix``; when
            False only the code/environment levels apply.
        config_start_mode: what :meth:`start` does when KV cannot be read (``"fail"``
            raises; ``"defaults"`` starts without and picks KV up when it returns).
        discovery_timeout: seconds the first use of a service waits for Consul's answer
            (and :meth:`start` for the KV configuration's first answer).
        drain_grace: seconds between maintenance-on and deregistration when closing.
        drain_on_close: whether :meth:`close` drains registered instances (default True).
        drain_on_sigterm: whether the first :meth:`register` made on the main thread installs
            a SIGTERM handler that closes the mesh (drain included) and then hands the signal
            on: to the handler the application installed before, or else ends the process
            with ``SystemExit(143)``. Default True (Spring Cloud Consul deregisters on
            shutdown too); pass False to keep SIGTERM to yourself, and call
            :meth:`close` from your own handler.
        persist_dir, invalidate_after, failover, consistency, max_stale, cached,
            dedicated_watches: the ServiceDiscovery options of the same names (see
            :class:`~lake_mesh_consul._consul.discovery.ServiceDiscovery`: snapshots kept on
            disk for a start while Consul is down; how long a stale snapshot is served;
            failover datacenters; read consistency; re-read from the leader past
            ``max_stale`` seconds; the agent cache; how many services get a blocking query
            of their own before the rest share the multiplexed watcher: the process's
            thread and connection budget).
        clock: time source for everything the mesh builds.
        rng: randomness (seed it for reproducible balancing and jitter).
        instruments: metrics (or any listener) for requests, retries, breakers, ejections,
            panic, configuration events, and the gauges read at scrape time, e.g.
            :class:`lake_mesh_consul.observability.prometheus.PrometheusInstruments` or
            :class:`lake_mesh_consul.observability.otel.OtelInstruments`. The mesh always
            adds :class:`~lake_mesh_consul.observability.LogInstruments` (ejections, breaker
            transitions, budget refusals as log lines) unless ``log_events`` is False. Its
            ``close()`` runs when the mesh closes.
        log_events: whether those log lines are written (default True).
        overrides: MeshConfig fields applied over ``config`` (or the environment), e.g.
            ``address="127.0.0.1:8500"``.

    Lifecycle: the constructor does no I/O. :meth:`start` (or entering ``with``) reads the
    KV configuration and starts its watch; the first :meth:`balancer` / :meth:`call` of a
    service starts that service's discovery. The KV configuration in force when
    :meth:`start` returns is applied to every service from its first request. :meth:`close`
    (leaving ``with``, or SIGTERM) stops the health heartbeats, drains and deregisters
    registered instances, then stops every thread; it returns within ``drain_grace + 2``
    seconds even with the agent hung, and no thread of the mesh survives it.

    Every entry point that takes a service name checks it first (InvalidSetting), before
    any network call, started or not.

    Thread-safety: every method may be called from any thread. No lock of the mesh is held
    across I/O: the first uses of N services wait for Consul side by side (each within one
    ``discovery_timeout``), and :meth:`close` never waits behind them. The request path takes
    no lock of the mesh (only the balancer's, detector's and budget's short ones).

    Example::

        with Mesh.from_env() as mesh:
            mesh.register(ServiceMetadata("orders", 8080, checks=(
                HttpCheck(url="http://127.0.0.1:8080/health", interval="5s"),)))
            items = mesh.session().get("http://inventory/items").json()
            conn = mesh.call("db", lambda ep: connect(ep.address, ep.port), idempotent=True)
            print(mesh.explain("inventory"))
    """

    def __init__(
        self,
        config: MeshConfig | None = None,
        *,
        services: Mapping[str, ServiceConfig] | None = None,
        endpoints: Mapping[tuple[str, str], EndpointConfig] | None = None,
        watch_config: bool = True,
        config_start_mode: StartMode = "fail",
        discovery_timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        drain_grace: float | None = None,
        drain_on_close: bool = True,
        drain_on_sigterm: bool = True,
        persist_dir: str | os.PathLike[str] | None = None,
        invalidate_after: float | None = None,
        failover: Sequence[str] = (),
        consistency: Consistency = "stale",
        max_stale: float | None = None,
        cached: bool = False,
        dedicated_watches: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        instruments: Instruments | None = None,
        log_events: bool = True,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = MeshConfig.from_env(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        if isinstance(discovery_timeout, bool) or not (
            isinstance(discovery_timeout, int | float) and 0 < discovery_timeout <= 3600
        ):
            raise InvalidSetting(
                "discovery_timeout", f"must be seconds in (0, 3600], got {discovery_timeout!r}"
            )
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.discovery_timeout = float(discovery_timeout)
        self.client = ConsulClient(config)
        registry_kwargs: dict[str, Any] = {"drain_on_close": drain_on_close}
        if drain_grace is not None:
            registry_kwargs["drain_grace"] = drain_grace
        self.registry = ServiceRegistry(
            self.client, clock=clock, rng=random.Random(self.rng.random()), **registry_kwargs
        )
        #: Discovery (own hub only with an injected clock or rng, see ServiceDiscovery).
        self.discovery = ServiceDiscovery(
            self.client,
            clock=clock,
            rng=None if rng is None else random.Random(self.rng.random()),
            timeout=self.discovery_timeout,
            persist_dir=persist_dir,
            invalidate_after=invalidate_after,
            failover=failover,
            consistency=consistency,
            max_stale=max_stale,
            cached=cached,
            dedicated_watches=dedicated_watches,
        )
        self.store = ConfigStore(
            config,
            client=self.client,
            services=services,
            endpoints=endpoints,
            start_mode=config_start_mode,
            start_timeout=self.discovery_timeout,
            clock=clock,
        )
        #: Where routes and the configuration store report events (logs, then metrics).
        self.instruments = combine(LogInstruments(clock=clock) if log_events else None, instruments)
        self._unsubscribe_events = (
            self.store.on_event(self._config_event)
            if listens(self.instruments, "config_event")
            else _noop
        )
        self._watch_config = watch_config
        self._services: dict[str, _Service] = {}
        self._pending: dict[str, _Flight[_Service]] = {}
        self._health: dict[str, HealthCheckManager] = {}
        self._lock = threading.RLock()  # held for bookkeeping only, never across I/O
        self._starting: _Flight[None] | None = None
        self._started = False
        self._closed = False
        self._drain_on_sigterm = drain_on_sigterm
        # Installed by the first register() on the main thread. register() and close() run
        # in its deferring() blocks: a SIGTERM handled in the middle of them would cut a
        # drain short, or leave behind a registration the agent may already have made.
        self._sigterm = ShutdownHook(
            self.close, budget=self.registry.drain_grace + CLOSE_MARGIN + 0.5, name="lake-mesh"
        )
        self._closer: threading.Thread | None = None  # the thread running close()
        self._close_done = threading.Event()
        self.instruments.attach(self.readings)  # last: a scrape may come from another thread

    @classmethod
    def from_env(cls, **kwargs: Any) -> Mesh:
        """A mesh configured from Consul's environment variables (``CONSUL_HTTP_ADDR``...).

        Keyword arguments are those of :class:`Mesh`; MeshConfig fields among them override
        the environment.
        """
        return cls(None, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Mesh:
        """Read the KV configuration and watch it (idempotent; ``with`` calls it).

        Returns once KV's first answer is *applied* (or failed): every service used after
        this sees the KV configuration from its first request. Threads calling it at once
        share one attempt (no lock is held while it waits for Consul).

        Raises:
            ConsulError: KV could not be read and ``config_start_mode`` is ``"fail"``.
            MeshError: the mesh is closed.
        """
        with self._lock:
            self._check_open()
            if self._started:
                return self
            flight = self._starting
            leader = flight is None
            if flight is None:
                flight = self._starting = _Flight()
        if not leader:
            flight.wait(self.discovery_timeout + FLIGHT_SLACK, "the KV configuration")
            return self
        try:
            if self._watch_config:
                self.store.start()
        except BaseException as exc:
            with self._lock:
                self._starting = None
            flight.crash(exc)
            raise
        with self._lock:
            self._started = not self._closed
            self._starting = None
        flight.land(None)
        self._check_open()
        return self

    def close(self) -> None:
        """Stop heartbeats, drain and deregister our instances, stop every thread.

        Idempotent; returns within ``drain_grace + 2`` seconds whatever the agent does
        (down, hung, trickling): the drain's agent calls have a shared deadline, and closing
        the client wakes any call still parked in the agent. No thread of the mesh survives
        it, whatever it raced with (a :meth:`register` in flight deregisters its instance
        again; a first use of a service in flight fails with MeshError). Errors while
        draining are logged, not raised.

        A second call (another thread, or the SIGTERM drain) waits for the first to finish,
        within the same bound; a SIGTERM that arrives while the main thread is closing is
        handed on once that close has finished, so it never cuts a drain short.
        """
        with self._sigterm.deferring():
            self._close_once()
        self._sigterm.uninstall()

    def _close_once(self) -> None:
        budget = self.registry.drain_grace + CLOSE_MARGIN
        with self._lock:
            closer = self._closer
            if closer is None:
                self._closer = threading.current_thread()
                self._closed = True
                services = list(self._services.values())
                health = list(self._health.values())
                self._services.clear()
                self._health.clear()
        if closer is not None:
            if closer is not threading.current_thread():
                self._close_done.wait(budget)
            return
        try:
            self._shut_down(services, health, time.monotonic() + budget)
        finally:
            self._close_done.set()

    def _shut_down(
        self, services: list[_Service], health: list[HealthCheckManager], end: float
    ) -> None:
        for manager in health:
            manager.stop()  # no waiting here: the drain below gives them time to end
        self.registry.close()
        for service in services:
            service.close()
        self.discovery.close()
        self.store.close()
        self._unsubscribe_events()
        self.instruments.close()
        self.client.close()  # wakes a heartbeat or anti-entropy call parked in the agent
        for manager in health:
            manager.join(end - time.monotonic())
        self.registry.join(end - time.monotonic())

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- asyncio: the same mesh, never blocking the event loop -------------------------------

    async def astart(self) -> Mesh:
        """:meth:`start` in a worker thread (``asyncio.to_thread``): the loop never blocks.

        Returns and raises as :meth:`start`.
        """
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread: drain, deregister and stop, the loop running on.

        Idempotent, bounded as :meth:`close`; the SIGTERM hook (installed on the main
        thread) is put back on the loop's thread afterwards.
        """
        import asyncio

        await asyncio.to_thread(self.close)
        self._sigterm.uninstall()

    async def __aenter__(self) -> Mesh:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aroute(self, service: str) -> Route:
        """:meth:`route` for coroutines: the route at once when known, else from a thread.

        The first use of a service waits for Consul's first answer: that wait runs in a
        worker thread. Raises as :meth:`route`.
        """
        known = self._services.get(service)  # lock-free fast path, as _service()
        if known is not None and not self._closed:
            return known.route
        import asyncio

        return await asyncio.to_thread(self.route, service)

    async def acall(
        self,
        service: str,
        fn: Callable[[ServiceEndpoint], Awaitable[_T]],
        *,
        key: str | bytes | None = None,
        idempotent: bool | None = None,
        method: str | None = None,
        pass_timeout: bool = False,
        status_of: Callable[[_T], int | None] | None = None,
        retry_after_of: Callable[[_T], float | None] | None = None,
    ) -> _T:
        """:meth:`call` for a coroutine function: ``await mesh.acall("db", query)``.

        The same route as :meth:`call` (pick, breaker permit, per-try timeout, outcome
        recording, idempotency, budgeted retries on another endpoint, backoff), with the
        attempt and the backoff awaited; ``fn`` is any async client (gRPC aio, a database
        driver, httpx). A cancelled call (``asyncio.timeout``, ``task.cancel()``) releases
        the attempt's breaker permit and outstanding count, records no outcome, and the
        ``asyncio.CancelledError`` propagates unchanged. With ``pass_timeout`` ``fn`` is
        called ``fn(endpoint, timeout)`` and must honour the seconds it is given.

        Returns and raises as :meth:`call`.

        Example::

            async def fetch(endpoint):
                return await db.fetch(endpoint.address, endpoint.port, "SELECT 1")

            rows = await mesh.acall("db", fetch, idempotent=True)
        """
        route = await self.aroute(service)
        call: Callable[[ServiceEndpoint, float | None], Awaitable[_T]]
        if pass_timeout:
            call = fn  # type: ignore[assignment]
        else:

            def call(endpoint: ServiceEndpoint, _timeout: float | None) -> Awaitable[_T]:
                return fn(endpoint)

        options = CallOptions(
            key=key,
            idempotent=route.retry_policy.is_idempotent(method, idempotent),
            status_of=status_of,
            retry_after_of=retry_after_of,
        )
        return await route.acall(call, options)

    # -- registration -------------------------------------------------------------------------

    def register(
        self,
        metadata: ServiceMetadata,
        *checks: Check,
        functions: Iterable[CheckFunction] = (),
        **health_options: Any,
    ) -> HealthCheckManager:
        """Register an instance of this process with its checks and start its heartbeat.

        ``checks`` are added to ``metadata.checks``. ``functions`` drive the instance's TTL
        check (it must have exactly one TTL check then; use the returned manager's
        ``add_function(fn, check_id=...)`` for several). ``health_options`` go to
        :class:`~lake_mesh_consul._consul.health_checks.HealthCheckManager` (``failure_threshold``,
        ``interval``...). The instance is drained and deregistered when the mesh closes.

        Returns:
            The instance's HealthCheckManager (``report()``, ``snapshot()``).

        On the main thread, the first registration installs the SIGTERM drain (see
        ``drain_on_sigterm``) before it calls the agent.

        Raises:
            InvalidSetting: an invalid check or option (before any network call).
            ConsulUnavailable, PermissionDenied, ConsulStatusError: registration failed.
            MeshError: the mesh is closed (or was closed while registering: the instance
                is then deregistered again and no heartbeat is left running).
        """
        # Here, not at the top: heartbeats and the check dataclasses cost import time that
        # only registering uses (a mesh that only calls services never loads them).
        from lake_mesh_consul._consul.health_checks import HealthCheckManager

        self._check_open()
        if checks:
            metadata = metadata.replace(checks=(*metadata.checks, *checks))
        manager = HealthCheckManager(
            self.registry,
            metadata,
            clock=self.clock,
            rng=random.Random(self.rng.random()),
            **health_options,
        )
        for fn in functions:
            manager.add_function(fn)
        # The drain is in place before the instance exists in Consul, and a SIGTERM that
        # arrives while the main thread registers is handled once the registration is known.
        with self._sigterm.deferring():
            self._install_sigterm()
            self._start_manager(metadata.id, manager)
        return manager

    async def aregister(
        self,
        metadata: ServiceMetadata,
        *checks: Check,
        functions: Iterable[CheckFunction | Callable[[], Coroutine[Any, Any, object]]] = (),
        **health_options: Any,
    ) -> HealthCheckManager:
        """:meth:`register` for coroutines: the agent calls run in a worker thread.

        ``functions`` may be coroutine functions (``async def db_ping(): ...``): each run
        is scheduled on the calling event loop (where the service's own clients live, e.g.
        a database pool) from the manager's check thread, which waits for its result; the
        loop never waits for the agent. The SIGTERM drain is installed on the calling
        thread first, as :meth:`register` does on the main thread. Returns and raises as
        :meth:`register`; a check whose loop has closed reports critical.
        """
        import asyncio
        import inspect

        loop = asyncio.get_running_loop()
        runs: list[CheckFunction] = [
            _on_loop(cast("Callable[[], Coroutine[Any, Any, object]]", fn), loop)
            if inspect.iscoroutinefunction(fn)
            else fn
            for fn in functions
        ]
        self._check_open()
        self._install_sigterm()  # the loop's thread: the main thread in a usual service
        return await asyncio.to_thread(
            self.register, metadata, *checks, functions=runs, **health_options
        )

    def _start_manager(self, service_id: str, manager: HealthCheckManager) -> None:
        """Register through ``manager`` and start its heartbeat, known to close() first."""
        # Known to close() before it can start a thread: close() stops it, whatever the order.
        with self._lock:
            self._check_open()
            old = self._health.get(service_id)
            self._health[service_id] = manager
        if old is not None:
            old.close()
        try:
            manager.start()
        except BaseException:
            with self._lock:
                if self._health.get(service_id) is manager:
                    del self._health[service_id]
            manager.close()
            raise

    def _install_sigterm(self) -> None:
        """Install the SIGTERM drain once (main thread only; see ``drain_on_sigterm``)."""
        if not self._drain_on_sigterm or self._sigterm.installed:
            return
        if not self._sigterm.install():
            _log.warning(
                "Mesh: register() ran off the main thread, so SIGTERM will not drain this "
                "process's instances; register once from the main thread, or call "
                "mesh.close() from your own SIGTERM handler"
            )
            self._drain_on_sigterm = False  # say it once

    def deregister(self, service_id: str, *, drain: bool = False) -> None:
        """Stop the heartbeat of an instance we registered and remove it from Consul.

        With ``drain``: maintenance on, ``drain_grace`` seconds, then deregistration.

        Raises:
            ConsulError: the agent call failed.
        """
        with self._lock:
            manager = self._health.pop(service_id, None)
        if manager is not None:
            manager.close()
        if drain:
            self.registry.drain(service_id)
        else:
            self.registry.deregister(service_id)

    def health(self, service_id: str) -> HealthCheckManager:
        """The HealthCheckManager of an instance registered through :meth:`register`.

        Raises:
            KeyError: no such instance.
        """
        return self._health[service_id]

    # -- the services we call -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MeshError("the Mesh is closed")

    def _service(self, name: str) -> _Service:
        """The service's state, created on first use: one attempt per name, no lock across I/O.

        The name is checked before anything else (a Mesh not yet started included). The
        first caller for a name builds it with no lock held (waiting up to
        ``discovery_timeout`` for discovery); callers for the same name meanwhile wait for
        that attempt's outcome; callers for other names go on side by side.
        """
        service = self._services.get(name)  # lock-free fast path
        if service is not None:
            return service
        check_service_name(name, "service")
        self._check_open()
        if not self._started:
            self.start()
        with self._lock:
            self._check_open()
            service = self._services.get(name)
            if service is not None:
                return service
            flight = self._pending.get(name)
            leader = flight is None
            if flight is None:
                flight = self._pending[name] = _Flight()
        if not leader:
            return flight.wait(self.discovery_timeout + FLIGHT_SLACK, name)
        try:
            service = self._build_service(name)
        except BaseException as exc:
            flight.crash(exc)
            raise
        finally:
            with self._lock:
                self._pending.pop(name, None)
        flight.land(service)
        return service

    def _build_service(self, name: str) -> _Service:
        """Create, follow and publish one service (no lock held while discovery waits).

        Configuration is race-free: the store snapshot is taken before the service reads its
        settings, and the subscription (after discovery's first answer, so that a change of
        the service's filters re-subscribes discovery once) catches up on any change since
        then under the store's apply lock: no KV answer can fall between reading the
        configuration and subscribing to it.
        """
        since = self.store.snapshot
        service = _Service(self, name)
        try:
            service.follow(self.discovery_timeout)
            service.unsubscribe_config = self.store.subscribe(
                service.on_config, service=name, since=since
            )
            with self._lock:
                closed = self._closed
                if not closed:
                    self._services[name] = service
            if closed:
                raise MeshError("the Mesh was closed while starting to follow " + repr(name))
        except BaseException:
            service.close()
            raise
        return service

    def route(self, service: str) -> Route:
        """The :class:`~lake_mesh_consul._core.route.Route` of ``service``: its request path.

        Created on first use (waiting up to ``discovery_timeout`` for Consul's first answer),
        then shared; it follows discovery and the service's configuration. ``request()``
        admits one request (pick + breaker permit) for callers that send themselves;
        ``call()`` runs a function with retries; ``explain()`` is the pick's census.

        Raises:
            DiscoveryTimeout: no answer from Consul in time.
            InvalidSetting: an invalid service name (a ValueError too).
        """
        return self._service(service).route

    def balancer(self, service: str) -> LoadBalancer:
        """The load balancer of ``service`` (its route's), following discovery and config.

        ``balancer.request()`` goes through the route's admission: the breaker permit is
        taken with the pick (half-open probes included) and the outcome is recorded once,
        to the balancer's figures, the detector and the breaker.

        Raises:
            DiscoveryTimeout: no answer from Consul in time.
            InvalidSetting: an invalid service name (a ValueError too).
        """
        return self._service(service).route.balancer

    def detector(self, service: str) -> FailureDetector:
        """The FailureDetector (ejection and per-endpoint breakers) of ``service``."""
        return self._service(service).route.detector

    def retry_policy(self, service: str) -> RetryPolicy:
        """The RetryPolicy in force for ``service`` (from its effective configuration)."""
        return self._service(service).route.retry_policy

    def retry_budget(self, service: str) -> RetryBudget:
        """The RetryBudget shared by every call to ``service``."""
        return self._service(service).route.budget

    def effective(self, service: str, endpoint: str | None = None) -> EffectiveConfig:
        """The effective settings of ``service`` (and ``endpoint``) with provenance."""
        return self.store.effective(service, endpoint)

    def set_strategy(self, service: str, strategy: str) -> None:
        """Swap the strategy of ``service`` now (until the next configuration change).

        Raises:
            InvalidSetting: unknown strategy.
        """
        route = self._service(service).route
        route.configure(dataclasses.replace(route.settings, strategy=strategy))

    def call(
        self,
        service: str,
        fn: Callable[[ServiceEndpoint], _T],
        *,
        key: str | bytes | None = None,
        idempotent: bool | None = None,
        method: str | None = None,
        pass_timeout: bool = False,
        status_of: Callable[[_T], int | None] | None = None,
        retry_after_of: Callable[[_T], float | None] | None = None,
    ) -> _T:
        r"""Call ``fn(endpoint)`` on an endpoint of ``service``, with breaker and retries.

        Each attempt picks an endpoint (a different one from those already tried), passes
        its breaker, runs ``fn`` with no lock held, and records latency and outcome. A
        failure is retried per the service's RetryPolicy and RetryBudget: transport
        failures, timeouts, gateway errors and 429s; only when the call is idempotent
        (``idempotent=True``, or ``method`` is an idempotent HTTP method), except failures
        to connect, which are always safe to retry.

        Args:
            service: the service to call.
            fn: does the work against one endpoint (any client: a socket, gRPC, a driver).
                With ``pass_timeout`` it is called ``fn(endpoint, timeout)`` with the
                seconds this attempt may take (or None).
            key: a hash key for ``ring_hash`` and ``maglev`` (ignored by other strategies).
            idempotent: whether the call is safe to repeat.
            method: an HTTP method, to decide idempotency when ``idempotent`` is None.
            status_of: the HTTP status of a result (5xx/429 results count as failures).
            retry_after_of: the Retry-After of a result in seconds.

        Returns:
            What ``fn`` returned (the last result when attempts ran out on a status).

        Raises:
            NoEndpointsAvailable: nothing to pick (says why).
            RetryExhausted: every allowed attempt failed (``.attempts`` has each).
            DeadlineExceeded: the service's deadline ran out.
            Exception: an error of ``fn`` that is not retriable, unchanged.
            DiscoveryTimeout: first use of the service, and Consul did not answer.

        Example::

            def ping(endpoint):
                with socket.create_connection((endpoint.address, endpoint.port), 2) as s:
                    s.sendall(b"PING\\n")
                    return s.recv(64)

            reply = mesh.call("redis", ping, idempotent=True)
        """
        route = self._service(service).route
        call: Callable[[ServiceEndpoint, float | None], _T]
        if pass_timeout:
            call = fn  # type: ignore[assignment]
        else:

            def call(endpoint: ServiceEndpoint, _timeout: float | None) -> _T:
                return fn(endpoint)

        options = CallOptions(
            key=key,
            idempotent=route.retry_policy.is_idempotent(method, idempotent),
            status_of=status_of,
            retry_after_of=retry_after_of,
        )
        return route.call(call, options)

    def session(self, **kwargs: Any) -> MeshSession:
        """A :class:`lake_mesh_consul.http.MeshSession` routing through this mesh.

        ``kwargs`` go to MeshSession (e.g. ``preserve_host=False``). The session does not
        close the mesh.
        """
        from lake_mesh_consul.http import MeshSession

        return MeshSession(self, **kwargs)

    # -- explaining ---------------------------------------------------------------------------

    def explain(self, service: str) -> Explanation:
        """Every instance of ``service`` and why it is or is not eligible right now.

        Starts following the service if the mesh did not yet (waiting for Consul's first
        answer, like :meth:`balancer`). Reads only memory afterwards.

        Raises:
            DiscoveryTimeout: first use, and Consul did not answer in time.
        """
        svc = self._service(service)
        route = svc.route
        state = route.explain()
        snapshot: ServiceSnapshot | None
        try:
            snapshot = self.discovery.snapshot(service, **svc.filters)
        except MeshError:
            snapshot = None
        policy = route.retry_policy
        return Explanation(
            service=service,
            strategy=state.strategy,
            strategy_source=svc.effective.provenance["strategy"].source,
            registered=state.registered,
            eligible=state.eligible,
            panic=state.panic,
            panic_threshold=route.settings.panic_threshold * 100.0,
            reason=state.reason,
            stale=snapshot.stale if snapshot is not None else True,
            age=snapshot.age if snapshot is not None else None,
            snapshot_source=snapshot.source if snapshot is not None else "unknown",
            discovery_error=snapshot.error if snapshot is not None else "no snapshot",
            retry_budget_left=route.budget.balance(),
            retry_attempts=policy.attempts,
            per_try_timeout=policy.per_try_timeout,
            deadline=policy.deadline,
            config_stale=self.store.stale if self._watch_config else False,
            config_index=self.store.snapshot.index,
            instances=tuple(_explained(i, self.clock) for i in state.instances),
            at=self.clock.time(),
        )

    def services(self) -> list[str]:
        """The services in Consul's catalog (``consul`` itself left out), sorted.

        Raises:
            ConsulError: the catalog could not be read.
        """
        response = self.client.request(
            "GET", "/v1/catalog/services", operation="list the catalog's services"
        )
        names = response.json() or {}
        return sorted(str(n) for n in names if n != "consul")

    def status(self, services: Sequence[str] | None = None) -> MeshStatus:
        """Explain every service of the catalog (or ``services``), with the config source.

        Breaker states and ejections are this process's own view (a client-side mesh keeps
        them per process). A catalog service whose name lake-mesh's service-name rule does
        not accept (another tool registered ``web:v1``, which Consul allows) is not
        explained: it is listed in ``skipped`` with a note instead of failing the status.

        Raises:
            ConsulError: the catalog could not be read.
            InvalidSetting: a name in ``services`` (asked for by the caller) is invalid.
        """
        self._check_open()
        for name in services or ():  # the caller's names: checked before any network call
            check_service_name(name, "service")
        if not self._started:
            self.start()
        skipped: dict[str, str] = {}
        if services is not None:
            names = list(services)
        else:
            names = []
            for name in self.services():
                try:
                    names.append(check_service_name(name, "service"))
                except InvalidSetting as exc:
                    skipped[name] = f"name not supported by lake-mesh: {exc.reason}"
        explained = tuple(self.explain(n) for n in names[:MAX_STATUS_SERVICES])
        events = tuple(
            f"{e.kind} {e.key or ''}: {e.reason}".strip() for e in self.store.events[-10:]
        )
        return MeshStatus(
            address=self.client.address,
            config_prefix=self.store.layout.prefix,
            config_index=self.store.snapshot.index,
            config_stale=self.store.stale if self._watch_config else False,
            services=explained,
            registered=tuple(m.id for m in self.registry.registered),
            config_events=events,
            skipped=skipped,
        )

    # -- observability ------------------------------------------------------------------------

    def _config_event(self, event: ConfigEvent) -> None:
        self.instruments.config_event(event.kind, event.key, event.field, event.reason)

    def readings(self) -> Readings:
        """The mesh's gauges now (what metrics exporters read when scraped).

        Per called service: endpoints, eligible, panic, breakers per state, ejections
        active, discovery snapshot age and staleness; the configuration's staleness; this
        process's registrations, re-registrations and consecutive heartbeat failures. Reads
        memory only (never Consul); O(endpoints). Thread-safe.
        """
        with self._lock:
            services = list(self._services.values())
            health = dict(self._health)
        out = []
        for svc in services:
            state = svc.route.explain()
            breakers: dict[str, int] = {}
            for inst in state.instances:
                if inst.breaker is not None:
                    name = inst.breaker.state.value
                    breakers[name] = breakers.get(name, 0) + 1
            try:
                snap = self.discovery.snapshot(svc.name, timeout=0.1, **svc.filters)
                age, stale, failures = snap.age, snap.stale, snap.failures
            except MeshError:
                age, stale, failures = None, True, 0
            out.append(
                ServiceReadings(
                    service=svc.name,
                    endpoints=state.registered,
                    eligible=state.eligible,
                    panic=state.panic,
                    breakers=breakers,
                    ejected=sum(1 for i in state.instances if i.ejected_for > 0),
                    snapshot_age=age,
                    snapshot_stale=stale,
                    watch_failures=failures,
                )
            )
        beats = {sid: manager.snapshot().service for sid, manager in health.items()}
        return Readings(
            services=tuple(out),
            config_stale=self.store.stale if self._watch_config else False,
            registered=len(self.registry.registered),
            reregistrations=self.registry.reregistrations,
            heartbeat_failures={
                sid: manager.consecutive_push_failures for sid, manager in health.items()
            },
            heartbeats_sent={sid: s.ttl_updates_sent for sid, s in beats.items()},
            heartbeats_failed={sid: s.ttl_updates_failed for sid, s in beats.items()},
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._started else "new")
        return (
            f"Mesh({self.client.address!r}, {state}, services={sorted(self._services)}, "
            f"registered={sorted(self._health)})"
        )
