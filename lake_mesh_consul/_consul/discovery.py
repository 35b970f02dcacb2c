"""ServiceDiscovery: healthy instances of services, from memory kept current by Consul.

Each distinct query (service, tags, node meta, ``filter``, datacenter, ``passing``, ``near``)
is one watch of ``/v1/health/service/<name>``, shared through the single-flight
:class:`~lake_mesh_consul._consul.watch.WatchHub` by every consumer in the process. Filters
that Consul cannot apply exactly (service meta, "passing or warning") are applied to the
decoded answer in memory, so they share the query too.

**Bounded cost, whatever the number of services**: the first ``dedicated_watches`` local
queries (default 1) each get a blocking query of their own (one thread, one agent
connection); every further one is followed by the hub's multiplexed watcher (two blocking
queries whose indexes cover every check and catalog change, then a read of only the
services that changed: two threads and two connections in all). Queries with ``near``,
``node_meta``, ``filter`` or another datacenter keep a dedicated watch.

* ``endpoints(name)`` waits for the first answer once (bounded by ``timeout``, then
  :class:`~lake_mesh_consul.errors.DiscoveryTimeout`); every later call returns the
  current immutable snapshot from memory: zero Consul requests, no lock.
* ``watch(name, callback)`` delivers the full snapshot on each real change.
* **Last known good**: when Consul fails, the last snapshot keeps being served, marked
  stale, with its age (:meth:`ServiceDiscovery.snapshot`); ``invalidate_after`` bounds how
  long (default: forever). With ``persist_dir`` every snapshot is also written to disk, so a
  process that starts while Consul is down still has instances to route to.
* ``failover=("dc2", "dc3")``: when the local datacenter has no eligible instance that is
  passing or warning, the first datacenter in that order that has one is served.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count, islice
from operator import is_not
from typing import Any, Literal, cast

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._consul.health_entries import (
    HealthEntryParser,
    parse_health_entries,
    parse_health_entry,
)
from lake_mesh_consul._consul.snapshot_store import SnapshotStore as _Store
from lake_mesh_consul._consul.snapshot_store import endpoint_from_dict, endpoint_to_dict
from lake_mesh_consul._consul.watch import (
    DEFAULT_DEDICATED,
    Consistency,
    Flag,
    ParamValue,
    SharedWatch,
    WatchHub,
)
from lake_mesh_consul._core.blocking import DEFAULT_WAIT, Backoff
from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.names import check_service_name
from lake_mesh_consul._core.ports import SnapshotListener
from lake_mesh_consul.errors import (
    ConsulStatusError,
    DiscoveryError,
    DiscoveryTimeout,
    PermissionDenied,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "EndpointDiff",
    "ServiceDiscovery",
    "ServiceQuery",
    "ServiceSnapshot",
    "ServiceSource",
    "endpoint_from_dict",
    "endpoint_to_dict",
    "parse_health_entries",
    "parse_health_entry",
    "with_diff",
]

log = logging.getLogger("lake_mesh_consul.discovery")

#: Seconds the first ``endpoints()`` call for a service waits for Consul's first answer.
DEFAULT_TIMEOUT = 5.0

#: Parts of Consul error answers that mean the query itself is wrong: the first call fails
#: at once instead of waiting out its timeout.
_HOPELESS_ANSWERS = ("boolean expression", "No path to datacenter", "Bad request")

#: Health states that keep a datacenter from failing over (Consul's prepared-query rule).
_HEALTHY = frozenset({HealthStatus.PASSING, HealthStatus.WARNING})

Endpoints = tuple[ServiceEndpoint, ...]

#: Called with the new snapshot and what changed since the previous call (or None).
ChangeListener = Callable[[Endpoints, EndpointChanges | None], None]


def _same_endpoints(a: Endpoints, b: Endpoints) -> bool:
    """Equality of snapshots on every field, in order (``ServiceEndpoint.__eq__`` is identity).

    An endpoint that HealthEntryParser reused is the same object, and an answer in which
    nothing moved is the same tuple: ``is`` settles those in C, and fields are compared
    from the first endpoint that is another object (the parser's first real change).
    """
    if a is b:
        return True
    if len(a) != len(b):
        return False
    first = next(compress(count(), map(is_not, a, b)), None)
    if first is None:
        return True
    rest = zip(islice(a, first, None), islice(b, first, None), strict=True)
    return all(x is y or x.same_as(y) for x, y in rest)


def _accepted(query: ServiceQuery, endpoints: Endpoints | None) -> Endpoints:
    """The endpoints ``query``'s in-memory filter keeps: all of them when it has none.

    The mesh's query has none (health is decided by the balancer), so a change among
    10,000 instances costs no Python call per instance here.
    """
    if not endpoints:
        return ()
    if not query.passing_only and not query.service_meta:
        return tuple(endpoints)  # the same tuple when it is one
    return tuple(filter(query.accepts, endpoints))


# --- queries and snapshots ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceQuery:
    """What to discover: one service with its filters (hashable; the cache key).

    Attributes:
        name: the service name.
        tags: tags every instance must have (Consul applies them).
        service_meta: service meta pairs every instance must have (applied in memory).
        node_meta: node meta pairs (Consul's ``node-meta``).
        filter: a Consul ``filter`` expression.
        dc: the datacenter (``None``: the configured/agent one).
        passing_only: drop instances that are not passing.
        include_warning: with ``passing_only``, keep warning instances too (marked by their
            ``health`` so the balancer can down-weight them).
        near: sort by round-trip time from this node (``"_agent"``: the local agent).
        failover: datacenters to serve from, in order, when the local one has no eligible
            instance (``None``: the discovery's own list; ``()``: none).
    """

    name: str
    tags: tuple[str, ...] = ()
    service_meta: tuple[tuple[str, str], ...] = ()
    node_meta: tuple[tuple[str, str], ...] = ()
    filter: str | None = None
    dc: str | None = None
    passing_only: bool = True
    include_warning: bool = False
    near: str | None = None
    failover: tuple[str, ...] | None = None

    @classmethod
    def build(
        cls,
        name: str,
        *,
        tags: Iterable[str] = (),
        service_meta: Mapping[str, str] | None = None,
        node_meta: Mapping[str, str] | None = None,
        filter: str | None = None,
        dc: str | None = None,
        passing_only: bool = True,
        include_warning: bool = False,
        near: str | None = None,
        failover: Iterable[str] | None = None,
    ) -> ServiceQuery:
        """Normalize arguments into a query (sorted tags and meta).

        Raises:
            InvalidSetting: ``name`` is not a valid service name (the rule of
                :func:`~lake_mesh_consul._core.registration.check_service_name`).
        """
        check_service_name(name, "name")
        return cls(
            name=name,
            tags=tuple(sorted(set(tags))),
            service_meta=tuple(sorted((service_meta or {}).items())),
            node_meta=tuple(sorted((node_meta or {}).items())),
            filter=filter or None,
            dc=dc or None,
            passing_only=passing_only,
            include_warning=include_warning,
            near=near or None,
            failover=None if failover is None else tuple(dc for dc in failover if dc),
        )

    @property
    def path(self) -> str:
        """The health endpoint's path."""
        return f"/v1/health/service/{self.name}"

    def params(self, dc: str | None = None) -> dict[str, ParamValue]:
        """The query parameters Consul applies (not the in-memory filters)."""
        params: dict[str, ParamValue] = {}
        if self.tags:
            params["tag"] = list(self.tags)
        if self.node_meta:
            params["node-meta"] = [f"{k}:{v}" for k, v in self.node_meta]
        if self.filter:
            params["filter"] = self.filter
        datacenter = dc or self.dc
        if datacenter:
            params["dc"] = datacenter
        if self.passing_only and not self.include_warning:
            params["passing"] = "1"
        if self.near:
            params["near"] = self.near
        return params

    def accepts(self, endpoint: ServiceEndpoint) -> bool:
        """The in-memory part of the filter (health when warning is kept, service meta)."""
        if self.passing_only and endpoint.health not in (
            HealthStatus.PASSING,
            HealthStatus.WARNING,
        ):
            return False
        if (
            self.passing_only
            and not self.include_warning
            and endpoint.health is not (HealthStatus.PASSING)
        ):
            return False
        return all(endpoint.meta.get(k) == v for k, v in self.service_meta)


@dataclass(frozen=True)
class ServiceSnapshot:
    """A service's current endpoints with what is known about their freshness.

    Attributes:
        service: the service name.
        endpoints: the eligible endpoints.
        source: ``"consul"``, ``"persisted"`` (loaded from ``persist_dir``) or
            ``"failover"`` (from ``datacenter``, a failover datacenter).
        datacenter: the datacenter the endpoints come from (``None``: the default one).
        stale: whether Consul failed since the last good answer (or it came from disk).
        age: seconds since the last good answer (``None``: never).
        index: the ``X-Consul-Index`` of the answer.
        known_leader: ``X-Consul-KnownLeader`` of the last answer.
        last_contact: ``X-Consul-LastContact`` of the last answer, in seconds.
        error: the last error while stale, as text.
        failures: consecutive failed queries of the watch behind it (0 once an answer came;
            its next retry waits the watch's backoff for that many failures).
    """

    service: str
    endpoints: Endpoints
    source: Literal["consul", "persisted", "failover"]
    datacenter: str | None
    stale: bool
    age: float | None
    index: int
    known_leader: bool | None
    last_contact: float | None
    error: str | None = None
    failures: int = 0


@dataclass(frozen=True)
class EndpointDiff:
    """What changed between two snapshots (by identity ``(datacenter, id)``).

    Attributes:
        added: in the new snapshot only.
        removed: in the old snapshot only.
        changed: in both, with a field changed (health, address, tags...): the new values.
    """

    added: Endpoints
    removed: Endpoints
    changed: Endpoints

    @classmethod
    def between(
        cls, old: Sequence[ServiceEndpoint], new: Sequence[ServiceEndpoint]
    ) -> EndpointDiff:
        """Compare ``old`` and ``new``.

        Example:
            >>> a = ServiceEndpoint.create("a", "10.0.0.1", 80)
            >>> EndpointDiff.between([], [a]).added == (a,)
            True
        """
        before = {e.key: e for e in old}
        after = {e.key: e for e in new}
        return cls(
            added=tuple(e for k, e in after.items() if k not in before),
            removed=tuple(e for k, e in before.items() if k not in after),
            changed=tuple(e for k, e in after.items() if k in before and not e.same_as(before[k])),
        )

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def with_diff(
    callback: Callable[[Endpoints, EndpointDiff], None],
) -> Callable[[Sequence[ServiceEndpoint]], None]:
    """Adapt ``callback(snapshot, diff)`` into a listener for :meth:`ServiceDiscovery.watch`.

    The first call's diff has every endpoint as added. The adapter keeps the previous
    snapshot; use one adapter per watch.

    Example:
        >>> def show(snapshot, diff):
        ...     print(len(snapshot), [e.id for e in diff.added])
        >>> listener = with_diff(show)
        >>> listener((ServiceEndpoint.create("a", "10.0.0.1", 80),))
        1 ['a']
    """
    previous: list[Endpoints] = [()]
    lock = threading.Lock()

    def listener(snapshot: Sequence[ServiceEndpoint]) -> None:
        new = tuple(snapshot)
        with lock:
            old, previous[0] = previous[0], new
        callback(new, EndpointDiff.between(old, new))

    return listener


def _hopeless(error: BaseException | None) -> bool:
    """Whether Consul's answer says the query itself is wrong (retrying cannot help)."""
    if not isinstance(error, ConsulStatusError) or isinstance(error, PermissionDenied):
        return False
    return error.code == 400 or any(text in error.body for text in _HOPELESS_ANSWERS)


# --- one view per query ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Current:
    """What a view serves, swapped by reference."""

    endpoints: Endpoints
    source: Literal["consul", "persisted", "failover"]
    watch_position: int  # which watch (0: primary) the endpoints come from; -1: disk


class _View:
    """The live snapshot of one query: one shared watch per datacenter (primary + failover)."""

    def __init__(
        self,
        query: ServiceQuery,
        datacenters: Sequence[str | None],
        *,
        hub: WatchHub,
        watch_options: Mapping[str, Any],
        store: _Store | None,
        clock: Clock,
    ) -> None:
        self.query = query
        self._clock = clock
        self._lock = threading.RLock()  # writers only (recompute, close); readers never lock
        self._listeners: tuple[tuple[object, ChangeListener], ...] = ()  # (given, called)
        self._closed = False
        self._store = store
        self._persisted_at: float | None = None
        self.current = _Current((), "consul", 0)
        self.ready = Flag()  # set once, never waited on
        if self._store is not None:
            loaded = self._store.load(query)
            if loaded is not None:
                endpoints, self._persisted_at = loaded
                self.current = _Current(endpoints, "persisted", -1)
        self.datacenters = tuple(datacenters)
        self.watches: list[SharedWatch[Endpoints]] = []
        self._parsers: list[HealthEntryParser] = []
        for dc in self.datacenters:
            keep_order = query.near is not None
            # One parser per watch: an answer reuses the endpoints of the previous one whose
            # ModifyIndex did not move (a change costs what changed; see health_entries).
            parser = HealthEntryParser(service=query.name, datacenter=dc, keep_order=keep_order)
            self._parsers.append(parser)

            def decode(response: ConsulResponse, parser: HealthEntryParser = parser) -> Endpoints:
                return parser.parse(response.json() if response.status != 404 else None)

            shared = hub.watch(
                query.path,
                query.params(dc),
                decode=decode,
                name=f"service {query.name}" + (f" dc={dc}" if dc else ""),
                **watch_options,
            )
            self.watches.append(shared)
        for shared in self.watches:
            shared.subscribe(self._on_change, replay=True)

    # Called on a watch thread with that watch's new value.
    def _on_change(self, _value: Endpoints, *, settle: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            new = self._compose(settle=settle)
            if new is None:
                return
            old = self.current
            was_ready = self.ready.is_set()
            self.current = new
            self.ready.set()
            changes = self._changes(old, new)
            if (
                was_ready
                and old.source == new.source
                and (
                    not changes
                    if changes is not None
                    else _same_endpoints(old.endpoints, new.endpoints)
                )
            ):
                return
            if self._store is not None and new.source != "persisted":
                self._store.save(self.query, new.endpoints, self._clock.time())
            for _, listener in self._listeners:  # close() takes the lock: none runs after it
                try:
                    listener(new.endpoints, changes)
                except Exception:
                    log.exception("service %r: listener %r failed", self.query.name, listener)

    def _changes(self, old: _Current, new: _Current) -> EndpointChanges | None:
        """What the parser says changed from ``old`` to ``new``, if it describes that step.

        Only when both come from the same watch and are the parser's own tuples (no
        in-memory filter made new ones): the change set is checked by identity.
        """
        position = new.watch_position
        if position < 0 or old.watch_position != position or old.source != new.source:
            return None
        changes = self._parsers[position].changes
        if changes is None or not changes.applies_to(old.endpoints, new.endpoints):
            return None
        return changes

    def _compose(self, *, settle: bool = False) -> _Current | None:
        """Primary's eligible endpoints, else the first failover datacenter with a healthy one.

        A datacenter counts as "has instances" only if one of its eligible instances is
        passing or warning: with ``passing_only=False`` (the mesh's query) an all-critical
        local datacenter still fails over, as Consul's prepared queries do. Before the first
        snapshot, a failover datacenter that has not answered yet is waited for (``None``),
        unless ``settle`` (its first answer did not come in time).
        """
        primary = self.watches[0].state
        if not primary.has_value:
            return None
        query = self.query
        eligible = _accepted(query, primary.value)
        if len(self.watches) == 1 or any(e.health in _HEALTHY for e in eligible):
            return _Current(eligible, "consul", 0)
        for position, shared in enumerate(self.watches[1:], start=1):
            state = shared.state
            if state.has_value:
                alternative = _accepted(query, state.value)
                if any(e.health in _HEALTHY for e in alternative):
                    return _Current(alternative, "failover", position)
            elif not settle and not self.ready.is_set() and state.error is None:
                return None  # the first snapshot waits for this datacenter's first answer
        return _Current(eligible, "consul", 0)

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the first answer; with a persisted snapshot, also stop at the first error."""
        if self.ready.is_set():
            return True
        primary = self.watches[0]
        has_disk = self.current.source == "persisted"
        deadline = self._clock.monotonic() + timeout
        while True:
            primary.wait_first(max(0.0, deadline - self._clock.monotonic()), or_error=True)
            state = primary.state
            if state.has_value or has_disk or _hopeless(state.error):
                break
            if self._clock.monotonic() >= deadline or primary.watch.closed:
                break
            # a transient failure: wait for the next outcome (the watch keeps retrying)
            primary.wait_first(min(0.05, max(0.0, deadline - self._clock.monotonic())))
        if _hopeless(primary.state.error) and not primary.state.has_value:
            raise DiscoveryError(
                f"Consul rejected the query for service {self.query.name!r}: {primary.state.error}"
            ) from primary.state.error
        if primary.state.has_value:
            # Without a healthy local instance, the failover datacenters' first answers decide.
            for shared in self.watches[1:]:
                self._on_change(())
                if self.ready.is_set():
                    break
                shared.wait_first(max(0.0, deadline - self._clock.monotonic()), or_error=True)
            self._on_change((), settle=True)  # make sure the composed snapshot is in place
            return True
        if has_disk:
            self.ready.set()
            return True
        return False

    def subscribe(
        self, listener: SnapshotListener | ChangeListener, *, replay: bool, changes: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` on each change; return a function that unsubscribes.

        It is called as ``listener(endpoints)``, or with ``changes`` as
        ``listener(endpoints, EndpointChanges | None)``.
        """
        called: ChangeListener
        if changes:
            called = cast(ChangeListener, listener)
        else:
            plain = cast(SnapshotListener, listener)

            def called(endpoints: Endpoints, _changes: EndpointChanges | None) -> None:
                plain(endpoints)

        entry = (listener, called)
        with self._lock:
            self._listeners = (*self._listeners, entry)
            if replay and self.ready.is_set():
                try:
                    called(self.current.endpoints, None)
                except Exception:
                    log.exception("service %r: listener %r failed", self.query.name, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(e for e in self._listeners if e is not entry)

        return unsubscribe

    def snapshot(self) -> ServiceSnapshot:
        current = self.current
        if current.watch_position < 0:
            now = self._clock.time()
            age = None if self._persisted_at is None else max(0.0, now - self._persisted_at)
            primary_state = self.watches[0].state
            return ServiceSnapshot(
                service=self.query.name,
                endpoints=current.endpoints,
                source="persisted",
                datacenter=self.datacenters[0],
                stale=True,
                age=age,
                index=0,
                known_leader=None,
                last_contact=None,
                error=str(primary_state.error) if primary_state.error else None,
                failures=primary_state.failures,
            )
        shared = self.watches[current.watch_position]
        state = shared.state
        return ServiceSnapshot(
            service=self.query.name,
            endpoints=current.endpoints,
            source=current.source,
            datacenter=self.datacenters[current.watch_position],
            stale=state.stale,
            age=shared.age(),
            index=state.index,
            known_leader=state.known_leader,
            last_contact=state.last_contact,
            error=str(state.error) if state.error else None,
            failures=state.failures,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._listeners = ()
        for shared in self.watches:
            shared.close()


# --- the public class ---------------------------------------------------------------------------


class ServiceSource:
    """One service's live endpoints as the load balancer's ``EndpointSource`` port.

    ``snapshot()`` reads memory (never Consul, never a lock); ``subscribe(listener)`` calls
    the listener at once with the current snapshot (so no change between ``snapshot()``
    and ``subscribe()`` is lost; updates are idempotent for a balancer), then with each
    new snapshot, and returns an unsubscribe function.

    Thread-safety: both methods may be called from any thread.
    """

    def __init__(self, view: _View) -> None:
        self._view = view

    @property
    def query(self) -> ServiceQuery:
        """The query this source follows."""
        return self._view.query

    def snapshot(self) -> Endpoints:
        """The current endpoints."""
        return self._view.current.endpoints

    def subscribe(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener`` now and on each change; return a function that unsubscribes."""
        return self._view.subscribe(listener, replay=True)

    def subscribe_changes(self, listener: ChangeListener) -> Callable[[], None]:
        """Like :meth:`subscribe`, with what changed: ``listener(endpoints, changes)``.

        ``changes`` is an :class:`~lake_mesh_consul._core.changes.EndpointChanges` from
        the endpoints of the previous call to these (the positions that changed, joined or
        left, as the parser saw them), or ``None`` when it is not known (the first call, a
        failover, an in-memory filter): compare the snapshots then. A
        :class:`~lake_mesh_consul._core.route.Route`'s ``update`` takes both.
        """
        return self._view.subscribe(listener, replay=True, changes=True)

    def __repr__(self) -> str:
        return f"ServiceSource({self._view.query.name!r}, {len(self.snapshot())} endpoint(s))"


class ServiceDiscovery:
    """Discover services through Consul, served from memory kept current by blocking queries.

    Args:
        config_or_client: a MeshConfig, a ConsulClient, or ``None`` (``MeshConfig.from_env()``).
        clock: time source (ages, backoff); a non-default clock or rng gets a private hub.
        rng: randomness for backoff jitter.
        hub: the single-flight hub to use (default: the process-wide hub of the config).
        wait: the blocking wait in seconds (up to 600).
        consistency: ``"stale"`` (default: works through elections and quorum loss),
            ``"default"`` or ``"consistent"``.
        max_stale: with stale reads, re-read from the leader when ``X-Consul-LastContact``
            exceeds this many seconds.
        cached: use the agent cache (``?cached``).
        invalidate_after: stop serving the last known instances once Consul has failed for
            this long (``None``: serve them forever, marked stale).
        persist_dir: a directory to keep snapshots in, loaded when a service is first asked
            for, so a restart while Consul is down still has instances.
        failover: ordered datacenters to serve from when the local one has no eligible
            instance that is passing or warning (one extra blocking query per datacenter
            per service).
        timeout: default of ``endpoints(timeout=)``.
        backoff, rate: the watch engine's error backoff and request rate limit.
        dedicated_watches: how many local queries get a blocking query of their own
            before the rest are multiplexed (see the module docstring); given, it makes
            the discovery use a private hub. ``None``: the process-wide hub's budget
            (:data:`~lake_mesh_consul._consul.watch.DEFAULT_DEDICATED`, 1).

    Raises:
        ValueError: ``dedicated_watches`` is negative.

    Thread-safety: every method may be called from any thread; reads (``endpoints`` after
    the first answer, ``ServiceSource.snapshot``) never lock and never call Consul.

    Example:
        >>> with ServiceDiscovery(MeshConfig()) as discovery:      # doctest: +SKIP
        ...     for e in discovery.endpoints("web", tags=["v2"]):
        ...         print(e.host_port, e.health)
    """

    def __init__(
        self,
        config_or_client: MeshConfig | ConsulClient | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        hub: WatchHub | None = None,
        wait: float = DEFAULT_WAIT,
        consistency: Consistency = "stale",
        max_stale: float | None = None,
        cached: bool = False,
        invalidate_after: float | None = None,
        persist_dir: str | os.PathLike[str] | None = None,
        failover: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        rate: float | None = None,
        dedicated_watches: int | None = None,
    ) -> None:
        if config_or_client is None:
            config_or_client = MeshConfig.from_env()
        self.config = (
            config_or_client.config
            if isinstance(config_or_client, ConsulClient)
            else config_or_client
        )
        self._clock = clock
        self._own_hub = False
        if hub is None:
            if clock is SYSTEM_CLOCK and rng is None and dedicated_watches is None:
                hub = WatchHub.shared(self.config)
            else:
                budget = DEFAULT_DEDICATED if dedicated_watches is None else dedicated_watches
                hub = WatchHub(self.config, clock=clock, rng=rng, dedicated=budget)
                self._own_hub = True
        self._hub = hub
        options: dict[str, Any] = {
            "wait": wait,
            "consistency": consistency,
            "max_stale": max_stale,
            "cached": cached,
            "invalidate_after": invalidate_after,
            "invalidated_value": (),
            "equal": _same_endpoints,
        }
        if backoff is not None:
            options["backoff"] = backoff
        if rate is not None:
            options["rate"] = rate
        self._watch_options = options
        self._store = _Store(persist_dir) if persist_dir is not None else None
        self._failover = tuple(failover)
        self._timeout = timeout
        self._views: dict[ServiceQuery, _View] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def hub(self) -> WatchHub:
        """The single-flight hub the watches live in (its ``requests`` counts HTTP requests)."""
        return self._hub

    def _view(self, query: ServiceQuery) -> _View:
        view = self._views.get(query)  # lock-free fast path
        if view is not None:
            return view
        with self._lock:
            if self._closed:
                raise DiscoveryError("ServiceDiscovery is closed")
            view = self._views.get(query)
            if view is None:
                datacenters: list[str | None] = [query.dc]
                if query.dc is None:
                    failover = self._failover if query.failover is None else query.failover
                    datacenters += [dc for dc in failover if dc]
                view = _View(
                    query,
                    datacenters,
                    hub=self._hub,
                    watch_options=self._watch_options,
                    store=self._store,
                    clock=self._clock,
                )
                self._views[query] = view
            return view

    def _ready_view(self, query: ServiceQuery, timeout: float | None) -> _View:
        view = self._view(query)
        if view.ready.is_set():
            return view
        limit = self._timeout if timeout is None else timeout
        if not view.wait_ready(limit):
            error = view.watches[0].state.error
            raise DiscoveryTimeout(query.name, limit, str(error) if error else "")
        return view

    def endpoints(
        self,
        name: str,
        *,
        tags: Iterable[str] = (),
        service_meta: Mapping[str, str] | None = None,
        node_meta: Mapping[str, str] | None = None,
        filter: str | None = None,
        dc: str | None = None,
        passing_only: bool = True,
        include_warning: bool = False,
        near: str | None = None,
        failover: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Endpoints:
        """The current eligible endpoints of ``name``: an immutable snapshot.

        The first call for a query starts its watch and waits for Consul's first answer
        (up to ``timeout``, default the constructor's); later calls read memory only.

        Args:
            name: the service.
            tags: every one must be on the instance.
            service_meta: every pair must be in the instance's service meta.
            node_meta: every pair must be in the node's meta.
            filter: a Consul filter expression (``Service.Port == 8080``).
            dc: the datacenter (default: the configured one, with failover if set).
            passing_only: only passing instances (default); ``False`` keeps all.
            include_warning: with ``passing_only``, keep warning instances too.
            near: ``"_agent"`` (or a node name): order by estimated round-trip time.
            failover: this query's failover datacenters, in order (default: the
                constructor's ``failover``); used only when ``dc`` is not given.
            timeout: seconds to wait for the first answer.

        Raises:
            DiscoveryTimeout: no first answer in time (and no persisted snapshot).
            DiscoveryError: Consul rejected the query (a bad ``filter``, an unknown
                datacenter: raised at once, not after the timeout), or the discovery is
                closed.
            InvalidSetting: an invalid service name (a ValueError too).
        """
        query = ServiceQuery.build(
            name,
            tags=tags,
            service_meta=service_meta,
            node_meta=node_meta,
            filter=filter,
            dc=dc,
            passing_only=passing_only,
            include_warning=include_warning,
            near=near,
            failover=failover,
        )
        view = self._views.get(query)
        if view is not None and view.ready.is_set():
            return view.current.endpoints
        return self._ready_view(query, timeout).current.endpoints

    def snapshot(
        self, name: str, *, timeout: float | None = None, **filters: Any
    ) -> ServiceSnapshot:
        """Like :meth:`endpoints`, with freshness: stale flag, age, index, source, leader.

        Raises:
            DiscoveryTimeout, DiscoveryError, InvalidSetting: as :meth:`endpoints`.
        """
        query = ServiceQuery.build(name, **filters)
        return self._ready_view(query, timeout).snapshot()

    def watch(self, name: str, callback: SnapshotListener, **filters: Any) -> Callable[[], None]:
        """Call ``callback`` with the full snapshot now (once known) and on each real change.

        The callback runs on a watch thread, in order, never twice for an equal snapshot.
        Wrap it with :func:`with_diff` to receive ``(snapshot, EndpointDiff)``. Does not
        wait for the first answer. ``filters`` are those of :meth:`endpoints`.

        Returns:
            A function that unsubscribes.

        Raises:
            InvalidSetting: an invalid service name.
        """
        query = ServiceQuery.build(name, **filters)
        view = self._view(query)
        return view.subscribe(callback, replay=True)

    def source(self, name: str, *, wait: bool = True, **filters: Any) -> ServiceSource:
        """An ``EndpointSource`` for the load balancer, following one query.

        With ``wait`` (default) it waits for the first answer like :meth:`endpoints`.

        Raises:
            DiscoveryTimeout: as :meth:`endpoints` (only with ``wait``).
            InvalidSetting: an invalid service name.
        """
        timeout = filters.pop("timeout", None)
        query = ServiceQuery.build(name, **filters)
        view = self._ready_view(query, timeout) if wait else self._view(query)
        return ServiceSource(view)

    def close(self) -> None:
        """Stop every watch of this discovery (within about a second). Idempotent.

        No callback given to :meth:`watch` runs after this returns.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            view.close()
        if self._own_hub:
            self._hub.close()

    def __enter__(self) -> ServiceDiscovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServiceDiscovery({self.config.base_url!r}, services={len(self._views)})"
