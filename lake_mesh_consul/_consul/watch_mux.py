"""The multiplexed watcher: any number of services followed with two blocking queries.

A dedicated :class:`~lake_mesh_consul._consul.watch.Watch` per service costs one thread and
one agent connection held open through the whole wait. Consul's
``limits.http_max_conns_per_client`` (200 by default) counts connections per client IP,
shared by every process on a host, so a few processes watching a few dozen services each
exhaust it. :class:`Multiplexer` follows every watched ``/v1/health/service/<name>`` query
of one :class:`~lake_mesh_consul._consul.watch.WatchHub` with a fixed cost:

====================================  ===========================================================
blocking query                        wakes for (proven against Consul 1.8 in
                                      tests/integration/test_watch_mux.py)
====================================  ===========================================================
``/v1/health/state/any`` with         every change to the checks table (its index is the
``filter=Status != "passing"``        table's); the answer lists only the checks that are not
                                      passing, each with its ``ModifyIndex``: a check that
                                      leaves or enters "passing", changes between warning and
                                      critical, or goes into or out of maintenance (service or
                                      node) shows up in the difference. A healthy cluster
                                      answers with a near-empty list, so a wake costs little
                                      whatever the number of checks.
``/v1/catalog/services``              every change to the services table: register,
                                      deregister, tag, meta, port or address change (which
                                      leave the checks alone).
====================================  ===========================================================

On a wake only the services that may have changed are read, each with a plain
(non-blocking) read of its own query over the waking loop's connection:

* a non-passing check whose ``ModifyIndex`` moved, or that appeared (left "passing") or
  vanished (became passing, or was removed): its ``ServiceName``; and every service whose
  last read is newer than the loop's previous answer (it may show a change whose undo
  left the list as the loop last saw it). A check that is passing
  before and after (or is added or removed as passing) changes no endpoint's health; an
  instance registered or deregistered with its checks is a catalog change too;
* a node-level check (no ``ServiceName``) that changed: every watched service, since any of
  them may have an instance on that node (rare: node failure, node maintenance);
* a catalog change: every watched service that is or was in the catalog (a service never
  registered cannot have changed). A read whose ``X-Consul-Index`` did not move is not even
  decoded, and an equal result notifies nobody (the rules of
  :class:`~lake_mesh_consul._core.blocking.BlockingIndex`).

After a loop's first answer, and after it recovers from a failure or its index went
backwards, every watched service is read again (a change may have been missed meanwhile).
Both loops follow every blocking-query rule of the watch engine (index >= 1, reset when it
goes backwards, full-jitter backoff, token bucket). When a loop fails, every member is
marked stale with the error and keeps its last good value.

A member's first read, and any read that failed, is done by a short-lived reader thread
with a connection of its own; it backs off as a whole when the agent is unavailable (one
probe, not one per service) and exits, closing its connection, once nothing is pending.
Steady state: two daemon threads and two agent connections per hub, whatever the number of
services.

Not seen by the multiplexed loops (documented limits): a change of a *node's* address alone
(no service or check touched) until the service's next change. Queries that depend on
nodes or coordinates (``near``, ``node-meta``, ``filter``), another datacenter, the agent
cache or ``max_stale`` always get a dedicated watch.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from lake_mesh_consul._consul.client import ConsulResponse
from lake_mesh_consul._consul.watch import (
    Consistency,
    ParamValue,
    PollClient,
    Watch,
    WatchBase,
)
from lake_mesh_consul._core.blocking import CONNECTION_LIMIT_BACKOFF, Backoff
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import ConsulConnectionLimit, ConsulUnavailable, MeshError

__all__ = [
    "CHECKS_QUERY",
    "HEALTH_PATH",
    "Multiplexer",
    "MuxMember",
    "changed_services",
    "decode_checks",
    "muxable",
]

log = logging.getLogger("lake_mesh_consul.watch")

T = TypeVar("T")

#: The path prefix of the queries the multiplexer can follow.
HEALTH_PATH = "/v1/health/service/"

#: Query parameters a multiplexed query may carry (Consul applies them to the targeted read;
#: neither depends on anything but the service's own instances and checks).
_MUXABLE_PARAMS = frozenset({"tag", "passing"})

#: The Watch options the two loops take from the watch that started them.
_LOOP_OPTIONS = frozenset({"wait", "backoff", "rate", "burst"})

#: Seconds an idle reader thread waits for more first reads before it exits (and closes its
#: connection): services asked for one after another share one thread and one connection.
READER_LINGER = 1.0

#: The outcome of one targeted read.
ReadOutcome = Literal["ok", "failed", "unavailable", "limited", "closed"]

#: Outcomes after which the agent is not answering at all: stop reading, back off as a whole.
_AGENT_DOWN = frozenset({"unavailable", "limited"})

#: A check, as the multiplexer compares it: (ModifyIndex, ServiceName, Status).
CheckKey = tuple[str, str]
CheckValue = tuple[int, str, str]


def muxable(path: str, params: Mapping[str, ParamValue] | None, options: Mapping[str, Any]) -> bool:
    """Whether a watch of ``path``/``params`` with Watch ``options`` can be multiplexed.

    Only local ``/v1/health/service/<name>`` queries with at most ``tag`` and ``passing``
    qualify, without the agent cache or ``max_stale`` (see the module docstring).
    """
    name = path[len(HEALTH_PATH) :] if path.startswith(HEALTH_PATH) else ""
    return (
        bool(name)
        and "/" not in name
        and set(params or {}) <= _MUXABLE_PARAMS
        and not options.get("cached")
        and options.get("max_stale") is None
    )


#: The checks loop's query: every check change wakes it, only non-passing checks are sent.
CHECKS_QUERY = {"filter": 'Status != "passing"'}


def decode_checks(response: ConsulResponse) -> dict[CheckKey, CheckValue]:
    """The non-passing checks as ``{(node, check id): (modify index, service, status)}``."""
    data = response.json()
    if not isinstance(data, list):
        raise ValueError("the check list is not a list")
    out: dict[CheckKey, CheckValue] = {}
    for check in data:
        if isinstance(check, dict):
            modify = check.get("ModifyIndex")
            out[(str(check.get("Node") or ""), str(check.get("CheckID") or ""))] = (
                modify if isinstance(modify, int) else -1,
                str(check.get("ServiceName") or ""),
                str(check.get("Status") or ""),
            )
    return out


def _decode_catalog(response: ConsulResponse) -> frozenset[str]:
    """``/v1/catalog/services`` as the set of service names."""
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("the service catalog is not an object")
    return frozenset(str(name) for name in data)


def _never_equal(_a: object, _b: object) -> bool:
    return False  # the multiplexer diffs itself: every moved index is worth a look


def changed_services(
    old: Mapping[CheckKey, CheckValue], new: Mapping[CheckKey, CheckValue]
) -> tuple[set[str], bool]:
    """Services whose checks changed between two check lists, and whether a node check did.

    A check that appeared, vanished or whose ``(ModifyIndex, ServiceName, Status)`` moved
    names its service; one without a service (a node check) sets the flag instead.
    """
    names: set[str] = set()
    node_level = False
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        service = (after or before or (0, "", ""))[1]
        if service:
            names.add(service)
        else:
            node_level = True
    return names, node_level


class MuxMember(WatchBase[T]):
    """One watched query served by a :class:`Multiplexer` (no thread or connection of its own).

    It has the reading and listening API of :class:`~lake_mesh_consul._consul.watch.Watch`
    (``state``, ``current``, ``wait_first``, ``subscribe``, ``close``...); its answers come
    from targeted reads that the multiplexer does when the service may have changed.

    Thread-safety: as :class:`~lake_mesh_consul._consul.watch.WatchBase`; reads of one member
    never overlap (a later read always applies after an earlier one).
    """

    def __init__(
        self,
        mux: Multiplexer,
        path: str,
        params: Mapping[str, ParamValue] | None,
        *,
        decode: Callable[[ConsulResponse], T],
        consistency: Consistency = "stale",
        allow_404: bool = True,
        on_change: Callable[[T], None] | None = None,
        on_error: Callable[[MeshError], None] | None = None,
        equal: Callable[[T, T], bool] | None = None,
        invalidate_after: float | None = None,
        invalidated_value: T | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            path,
            params,
            decode=decode,
            on_change=on_change,
            on_error=on_error,
            equal=equal,
            invalidate_after=invalidate_after,
            invalidated_value=invalidated_value,
            name=name,
            clock=clock,
        )
        self.service = path[len(HEALTH_PATH) :]
        self.consistency: Consistency = consistency
        self.allow_404 = allow_404
        self._mux = mux
        self._read_lock = threading.Lock()
        self._started = False

    def start(self) -> MuxMember[T]:
        """Join the multiplexer (idempotent): the first read is queued at once."""
        if not self._started and not self.closed:
            self._started = True
            self._mux.add(self)
        return self

    def close(self) -> None:
        """Leave the multiplexer; no listener starts afterwards. Idempotent."""
        if self.closed:
            return
        self._interrupt()
        self._mux.remove(self)
        # A listener running on a multiplexer thread holds the dispatch lock: wait it out.
        if self._dispatch_lock.acquire(timeout=0.9):
            self._dispatch_lock.release()

    def query(self) -> dict[str, Any]:
        """The parameters of this member's targeted read (its own plus the consistency flag)."""
        query: dict[str, Any] = {
            k: v if isinstance(v, str) else list(v) for k, v in self.params.items()
        }
        if self.consistency != "default":
            query[self.consistency] = ""
        return query

    def refresh(
        self, read: Callable[[str, Mapping[str, Any], str, bool], ConsulResponse]
    ) -> ReadOutcome:
        """Read this member's query once with ``read`` and apply the answer or the failure."""
        closed = self._closed.is_set
        with self._read_lock:
            if closed():
                return "closed"
            self.requests += 1
            try:
                response = read(self.path, self.query(), f"watch {self.name}", self.allow_404)
                if not closed():
                    self._apply_answer(response)
                return "ok"
            except MeshError as exc:
                if closed():
                    return "closed"
                outcome: ReadOutcome = "failed"
                if isinstance(exc, ConsulConnectionLimit):
                    outcome = "limited"
                elif isinstance(exc, ConsulUnavailable):
                    outcome = "unavailable"
                self._apply_failure(exc, quiet=True)
            return outcome

    def mark_failed(self, exc: MeshError) -> None:
        """Record a failure of the multiplexer's loop (stale, last good value kept)."""
        if not self.closed:
            self._apply_failure(exc, quiet=True)

    def __repr__(self) -> str:
        state = self._state
        return (
            f"MuxMember({self.name!r}, index={state.index}, stale={state.stale}, "
            f"requests={self.requests}, closed={self.closed})"
        )


class _Loop:
    """One blocking query of the multiplexer (a Watch) and what its last answer said."""

    def __init__(
        self,
        mux: Multiplexer,
        path: str,
        decode: Callable[[ConsulResponse], Any],
        *,
        params: Mapping[str, str],
        name: str,
        rng: random.Random,
        options: Mapping[str, Any],
    ) -> None:
        self.value: Any = None  # the last value given to the multiplexer (None: none yet)
        self.seen = 0  # the index of that value
        self.resync = True  # read every member at the next answer
        self.resets = 0
        self._mux = mux
        self.watch: Watch[Any] = Watch(
            mux.config,
            path,
            params,
            decode=decode,
            on_change=self._on_change,
            on_error=self._on_error,
            equal=_never_equal,
            allow_404=False,
            name=name,
            clock=mux.clock,
            rng=rng,
            **options,
        )

    def _on_change(self, value: Any) -> None:
        self._mux.on_loop_answer(self, value)

    def _on_error(self, exc: MeshError) -> None:
        self.resync = True
        self._mux.on_loop_error(exc)


class Multiplexer:
    """Follow many ``/v1/health/service/<name>`` queries with two blocking queries.

    See the module docstring for the rules. A :class:`~lake_mesh_consul._consul.watch.WatchHub`
    owns one and hands out :class:`MuxMember` s; the loops start with the first member and
    stop with the last.

    Args:
        config: the agent configuration.
        clock: time source.
        rng: randomness for jitter.
        loop_options: :class:`~lake_mesh_consul._consul.watch.Watch` keyword arguments; the
            two loops take ``wait``, ``backoff``, ``rate`` and ``burst`` from them (others
            are ignored: the loops read stale, which every agent answers).

    Thread-safety: every method may be called from any thread.
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        loop_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        #: The time source of the loops, members and reader pauses.
        self.clock = clock
        self._rng = rng or random.Random()
        self._loop_options = {
            k: v for k, v in (loop_options or {}).items() if k in _LOOP_OPTIONS and v is not None
        }
        backoff = self._loop_options.get("backoff")
        self._backoff: Backoff = backoff if isinstance(backoff, Backoff) else Backoff()
        self._lock = threading.Lock()
        self._members: dict[str, tuple[MuxMember[Any], ...]] = {}
        self._loops: tuple[_Loop, ...] = ()
        self._pending: set[MuxMember[Any]] = set()
        self._reader: threading.Thread | None = None
        self._reader_work = threading.Event()  # set: new members, the last one left, close()
        self._reader_client: PollClient | None = None
        self._closed = False
        self._closed_requests = 0
        #: Requests sent by reader threads (first reads and retries).
        self.reader_requests = 0

    # -- membership ------------------------------------------------------------------------------

    def add(self, member: MuxMember[Any]) -> None:
        """Follow ``member``'s query: its first read is queued, the loops run."""
        with self._lock:
            if self._closed:
                member.mark_failed(ConsulUnavailable(self.config.base_url, "watch hub closed"))
                return
            self._members[member.service] = (*self._members.get(member.service, ()), member)
            self._pending.add(member)
            start_loops = not self._loops
            if start_loops:
                self._loops = self._new_loops()
            self._ensure_reader()
        self._reader_work.set()
        if start_loops:
            for loop in self._loops:
                loop.watch.start()

    def remove(self, member: MuxMember[Any]) -> None:
        """Stop following ``member``; the loops stop with the last member."""
        with self._lock:
            rest = tuple(m for m in self._members.get(member.service, ()) if m is not member)
            if rest:
                self._members[member.service] = rest
            else:
                self._members.pop(member.service, None)
            self._pending.discard(member)
            loops: tuple[_Loop, ...] = ()
            reader: threading.Thread | None = None
            client: PollClient | None = None
            if not self._members:
                loops, self._loops = self._loops, ()
                self._closed_requests += sum(loop.watch.requests for loop in loops)
                reader, client = self._reader, self._reader_client
                self._reader = self._reader_client = None  # let go: a new member starts anew
        _close_loops(loops)
        if reader is not None:  # nobody left to read for: the reader stops too
            self._reader_work.set()
            if client is not None:
                client.interrupt()
            if reader is not threading.current_thread():
                reader.join(0.9)

    def members(self) -> list[MuxMember[Any]]:
        """The members (a snapshot)."""
        with self._lock:
            return [m for group in self._members.values() for m in group]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._members.values())

    @property
    def requests(self) -> int:
        """HTTP requests of the loops (their targeted reads included) and of the readers."""
        with self._lock:
            loops = self._loops
            closed = self._closed_requests
        return closed + sum(loop.watch.requests for loop in loops) + self.reader_requests

    @property
    def threads(self) -> int:
        """Threads the multiplexer runs now (loops plus a reader while one is at work)."""
        with self._lock:
            return len(self._loops) + (self._reader is not None)

    def close(self) -> None:
        """Stop the loops and the reader (within about a second). Idempotent."""
        with self._lock:
            self._closed = True
            loops, self._loops = self._loops, ()
            self._closed_requests += sum(loop.watch.requests for loop in loops)
            self._pending.clear()
            reader, client = self._reader, self._reader_client
        self._reader_work.set()
        if client is not None:
            client.interrupt()
        _close_loops(loops)
        if reader is not None and reader is not threading.current_thread():
            reader.join(0.9)

    # -- the two loops ----------------------------------------------------------------------------

    def _new_loops(self) -> tuple[_Loop, ...]:
        return tuple(
            _Loop(
                self,
                path,
                decode,
                params=params,
                name=name,
                rng=random.Random(self._rng.random()),
                options=self._loop_options,
            )
            for path, params, decode, name in (
                ("/v1/health/state/any", CHECKS_QUERY, decode_checks, "mux checks"),
                ("/v1/catalog/services", {}, _decode_catalog, "mux catalog"),
            )
        )

    def on_loop_error(self, exc: MeshError) -> None:
        """A loop failed: every member is stale, with the error (its last value stays)."""
        for member in self.members():
            member.mark_failed(exc)

    def on_loop_answer(self, loop: _Loop, value: Any) -> None:
        """A loop's index moved: read the members that may have changed."""
        old, loop.value = loop.value, value
        seen, loop.seen = loop.seen, loop.watch.state.index
        if loop.watch.resets != loop.resets:
            loop.resets, loop.resync = loop.watch.resets, True
        if loop.resync or old is None:
            loop.resync = False
            names: Iterable[str] | None = None  # everyone
        elif isinstance(value, frozenset):
            names = {name for name in self._member_names() if name in old or name in value}
        else:
            changed, node_level = changed_services(old, value)
            # A member read after this loop's last answer may show a state the loop never
            # saw (a change and its undo can land between two answers, leaving the list as
            # it was): read those again too.
            names = None if node_level else changed | self._read_after(seen)
        log.debug(
            "%s: index %d, reading %s",
            loop.watch.name,
            loop.watch.state.index,
            "every service" if names is None else sorted(names) or "nothing",
        )
        self._refresh(loop.watch, names)

    def refresh_service(self, service: str, *, via: Watch[Any]) -> None:
        """Read ``service``'s members now, over ``via``'s connection.

        A dedicated watch of the same service saw it change, so its other queries (other
        tags or health filters) may have changed too.
        """
        with self._lock:
            known = service in self._members
        if known:
            self._refresh(via, (service,))

    def _read_after(self, index: int) -> set[str]:
        """Services with a member whose last answer is newer than ``index``."""
        return {m.service for m in self.members() if m.state.index > index}

    def _member_names(self) -> list[str]:
        with self._lock:
            return list(self._members)

    def _refresh(self, via: Watch[Any], names: Iterable[str] | None) -> None:
        """Read the members of ``names`` (``None``: all) over ``via``'s connection."""
        with self._lock:
            groups = self._members
            if names is None:
                members = [m for group in groups.values() for m in group]
            else:
                members = [m for name in names for m in groups.get(name, ())]

        def read(path: str, params: Mapping[str, Any], operation: str, allow_404: bool) -> Any:
            return via.read(path, params, operation=operation, allow_404=allow_404)

        for position, member in enumerate(members):
            if via.closed:
                return
            outcome = member.refresh(read)
            if outcome == "failed":
                self._queue([member])  # the reader retries it, with backoff
            elif outcome in _AGENT_DOWN:
                self._queue(members[position:])  # and everyone left: one probe, not one each
                return

    # -- the reader: first reads and retries ---------------------------------------------

    def _queue(self, members: Iterable[MuxMember[Any]]) -> None:
        """Leave failed ``members`` to the reader, starting one if none runs.

        A lingering reader is not woken: retries wait for its pause or linger (a new
        member's first read, in :meth:`add`, wakes it).
        """
        with self._lock:
            if self._closed:
                return
            self._pending.update(m for m in members if not m.closed)
            self._ensure_reader()

    def _ensure_reader(self) -> None:
        """Start a reader thread if none runs (called with the lock held)."""
        if self._reader is None and self._pending and not self._closed:
            self._reader_client = PollClient(self.config)
            self._reader = threading.Thread(
                target=self._read_pending,
                args=(self._reader_client,),
                name="lake-mesh-watch:mux reader",
                daemon=True,
            )
            self._reader.start()

    def _take_pending(self, client: PollClient, *, retire: bool) -> list[MuxMember[Any]]:
        """The pending members, emptied; with ``retire`` and none, the reader retires.

        A reader that was let go (its ``client`` is no longer the current one) gets
        nothing: the pending members belong to its successor.
        """
        with self._lock:
            if self._reader_client is not client:
                return []
            batch = [] if self._closed else [m for m in self._pending if not m.closed]
            self._pending.clear()
            if retire and not batch:
                self._reader = None
                self._reader_client = None
            return batch

    def _next_batch(self, client: PollClient) -> list[MuxMember[Any]]:
        """The next members to read, lingering a moment for more; [] when the reader retires."""
        batch = self._take_pending(client, retire=False)
        if batch:
            return batch
        self._reader_work.clear()
        batch = self._take_pending(client, retire=False)  # queued between take and clear
        if batch or not self._has_members():
            return batch or self._take_pending(client, retire=True)
        # Real time: how long an idle thread and its connection live is not behaviour.
        self._reader_work.wait(READER_LINGER)
        return self._take_pending(client, retire=True)

    def _has_members(self) -> bool:
        with self._lock:
            return bool(self._members) and not self._closed

    def _read_pending(self, client: PollClient) -> None:
        failures = 0

        def read(path: str, params: Mapping[str, Any], operation: str, allow_404: bool) -> Any:
            self.reader_requests += 1
            return client.request(
                "GET", path, operation=operation, params=params, allow_404=allow_404
            )

        try:
            while batch := self._next_batch(client):
                retry: list[MuxMember[Any]] = []
                backoff = self._backoff
                for position, member in enumerate(batch):
                    outcome = member.refresh(read)
                    if outcome in _AGENT_DOWN:
                        retry.extend(batch[position:])  # one probe per round, not one each
                        if outcome == "limited":
                            backoff = CONNECTION_LIMIT_BACKOFF
                        break
                    if outcome == "failed":
                        retry.append(member)
                failures = failures + 1 if retry else 0
                if retry:
                    self._queue(retry)
                    pause = backoff.delay(failures, self._rng)
                    # Woken early by close(), by the last member leaving, or by a new
                    # member (one early probe per new member, bounded by the callers).
                    self._reader_work.clear()
                    if self._has_members():
                        self.clock.wait(self._reader_work, pause)
        except Exception:  # a bug: log it; the loops' next wake queues the members again
            log.exception("watch multiplexer: reader stopped by an unexpected error")
            with self._lock:
                if self._reader_client is client:
                    self._reader = self._reader_client = None
        finally:
            client.close()


def _close_loops(loops: tuple[_Loop, ...]) -> None:
    for loop in loops:  # wake every parked poll first, then wait for each
        loop.watch.interrupt()
    for loop in loops:
        loop.watch.close()
