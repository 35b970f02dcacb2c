"""Configuration from Consul KV: live, validated reload and check-and-set writes.

KV layout (values are JSON documents, see :mod:`lake_mesh_consul._core.config_schema`)::

    <prefix>/global                                  mesh-wide defaults (global level)
    <prefix>/services/<service>                      one service (service level)
    <prefix>/services/<service>/endpoints/<id>       every instance with that service ID
    <prefix>/services/<service>/endpoints/<id>@<node>  the instance with that ID on that node

``<prefix>`` is ``MeshConfig.kv_prefix`` (default ``lake-mesh``). Any other key under the
prefix is ignored with an event.

:class:`ConfigStore` watches ``<prefix>/`` with the blocking-query watch engine
(:class:`~lake_mesh_consul._consul.watch.Watch`, one long poll for the whole tree) and, on
every answer:

1. parses and validates each changed key; a key that fails keeps its **last good**
   document, and a ``rejected`` :class:`ConfigEvent` plus a warning log line name the key,
   the field and the reason;
2. a key that disappeared falls back to the next level (``deleted`` event);
3. builds a new immutable :class:`~lake_mesh_consul._core.config_layers.ConfigSnapshot`,
   swaps it by reference (readers never lock), and notifies listeners **only** if some
   setting really changed.

An index reset (agent restarted, KV wiped or restored) is handled by the watch engine:
the index goes back to 0, the whole tree is re-read, and keys that are gone fall back.

Writes (:meth:`ConfigStore.set`, :meth:`~ConfigStore.set_many`, :meth:`~ConfigStore.delete`)
validate first, then use check-and-set on ``ModifyIndex``: a concurrent change is refused
with :class:`~lake_mesh_consul.errors.CasConflict`, never overwritten. ``set_many`` changes
several keys atomically through ``/v1/txn``. ``dry_run=True`` shows the effective result
without writing.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._consul.files import read_json_file, write_atomically
from lake_mesh_consul._consul.instances import refuse_ambiguous
from lake_mesh_consul._consul.watch import Watch
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import EndpointConfig, MeshConfig, ServiceConfig
from lake_mesh_consul._core.config_layers import (
    ConfigSnapshot,
    EffectiveConfig,
    Layer,
    layer_from,
)
from lake_mesh_consul._core.config_schema import (
    ENDPOINT,
    GLOBAL,
    SERVICE,
    Level,
    parse_document,
)
from lake_mesh_consul._core.endpoint import NODE_SEPARATOR
from lake_mesh_consul._core.names import check_service_name
from lake_mesh_consul.errors import (
    CasConflict,
    ConfigValidationError,
    ConsulNotFound,
    ConsulStatusError,
    ConsulUnavailable,
    InvalidSetting,
    MeshError,
)

__all__ = [
    "ConfigChange",
    "ConfigEvent",
    "ConfigStore",
    "KVEntry",
    "KVLayout",
    "StartMode",
    "WriteResult",
]

log = logging.getLogger("lake_mesh_consul.config")

#: What to do when KV cannot be read at start: raise (default), start from the local
#: levels only, or start from the last-known-good file; the latter two pick up KV later.
StartMode = Literal["fail", "defaults", "last_known_good"]

#: Events kept in :attr:`ConfigStore.events`.
MAX_EVENTS = 256

#: Consul refuses transactions of more than 64 operations.
MAX_TXN_OPS = 64

#: Version of the last-known-good file format.
LKG_FORMAT = 1
#: Largest last-known-good file read back (bytes); Consul KV holds at most 512 KB per key.
MAX_LKG_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class KVLayout:
    """Where each level lives under a KV prefix, and which level a key is.

    Example:
        >>> KVLayout("lake-mesh").endpoint_key("web", "web-1")
        'lake-mesh/services/web/endpoints/web-1'
    """

    prefix: str = "lake-mesh"

    @property
    def folder(self) -> str:
        """``<prefix>/``: what the watch reads recursively."""
        return self.prefix.strip("/") + "/"

    def global_key(self) -> str:
        """``<prefix>/global``."""
        return self.folder + "global"

    def service_key(self, service: str) -> str:
        """``<prefix>/services/<service>``."""
        return f"{self.folder}services/{service}"

    def endpoint_key(self, service: str, endpoint: str) -> str:
        """``<prefix>/services/<service>/endpoints/<endpoint>``.

        ``endpoint`` is a setting name: ``<id>`` (every instance with that service ID, one
        where the ID is unique) or ``<id>@<node>`` (one instance; see :meth:`instance_key`).
        """
        return f"{self.folder}services/{service}/endpoints/{endpoint}"

    def instance_key(self, service: str, instance_id: str, node: str) -> str:
        """``<prefix>/services/<service>/endpoints/<id>@<node>``: exactly one instance.

        Consul keeps service IDs unique per agent only, so the node names the instance when
        the same ID is registered on several nodes; this key wins over ``.../<id>``.

        Example:
            >>> KVLayout("lake-mesh").instance_key("web", "web", "node-1")
            'lake-mesh/services/web/endpoints/web@node-1'
        """
        return self.endpoint_key(service, f"{instance_id}{NODE_SEPARATOR}{node}")

    def classify(self, key: str) -> tuple[Level, str | None, str | None] | None:
        """``(level, service, endpoint)`` of a key, or ``None`` if it is not a config key."""
        if not key.startswith(self.folder):
            return None
        parts = key[len(self.folder) :].split("/")
        if parts == ["global"]:
            return (GLOBAL, None, None)
        if len(parts) == 2 and parts[0] == "services" and parts[1]:
            return (SERVICE, parts[1], None)
        if len(parts) == 4 and parts[0] == "services" and parts[2] == "endpoints" and all(parts):
            return (ENDPOINT, parts[1], parts[3])
        return None

    def require(self, key: str) -> tuple[Level, str | None, str | None]:
        """Like :meth:`classify`, raising for a key outside the layout.

        Raises:
            ConfigValidationError: naming the key and the layout.
        """
        where = self.classify(key)
        if where is None:
            raise ConfigValidationError(
                f"not a configuration key; expected {self.folder}global, "
                f"{self.folder}services/<name> or {self.folder}services/<name>/endpoints/<id>",
                key=key,
            )
        return where


@dataclass(frozen=True)
class KVEntry:
    """One KV key as read: raw value and ``ModifyIndex`` (for check-and-set)."""

    key: str
    value: bytes
    modify_index: int


@dataclass(frozen=True)
class ConfigEvent:
    """Something the store did or refused.

    Attributes:
        kind: ``applied``, ``rejected``, ``deleted``, ``ignored`` (key outside the layout),
            ``reset`` (the KV index went backwards), ``unavailable``, ``recovered``.
        key: the KV key concerned, if any.
        reason: the reason (for ``rejected``: what is wrong).
        field: the field at fault, for ``rejected``.
        index: the KV index of the answer.
        at: wall-clock time of the event.
    """

    kind: Literal["applied", "rejected", "deleted", "ignored", "reset", "unavailable", "recovered"]
    key: str | None
    reason: str = ""
    field: str | None = None
    index: int = 0
    at: float = 0.0


@dataclass(frozen=True)
class ConfigChange:
    """What listeners receive on a real change.

    Attributes:
        previous: the snapshot that was in force.
        current: the snapshot now in force.
        changed_keys: the KV keys added, changed or deleted.
    """

    previous: ConfigSnapshot
    current: ConfigSnapshot
    changed_keys: tuple[str, ...]


@dataclass(frozen=True)
class WriteResult:
    """The outcome of a write (or a dry run).

    Attributes:
        keys: the keys written or deleted.
        written: False for a dry run.
        preview: the snapshot the write leads to (locally computed).
        effective: for a single service/endpoint key, its effective settings afterwards.
    """

    keys: tuple[str, ...]
    written: bool
    preview: ConfigSnapshot
    effective: EffectiveConfig | None = None


@dataclass(frozen=True)
class _Good:
    """A key's last good document."""

    layer: Layer
    raw: bytes


Document = Mapping[str, Any] | bytes | str


def _decode_entries(response: ConsulResponse) -> dict[str, KVEntry]:
    """The watch's decode: raw entries by key (a 404 is an empty prefix)."""
    if response.status == 404:
        return {}
    entries: dict[str, KVEntry] = {}
    for item in response.json() or ():
        key = item["Key"]
        raw = base64.b64decode(item["Value"]) if item.get("Value") else b""
        entries[key] = KVEntry(key, raw, int(item.get("ModifyIndex", 0)))
    return entries


def _body(document: Document) -> bytes:
    if isinstance(document, bytes):
        return document
    if isinstance(document, str):
        return document.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(dict(document), indent=2, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigValidationError(f"not representable as JSON: {exc}") from None


class ConfigStore:
    """The three configuration levels, kept current from Consul KV.

    Args:
        config: the global level from code/environment/file, and how to reach Consul
            (``MeshConfig.from_env()`` when omitted). ``kv_prefix``, ``watch_wait`` and
            ``watch_rate_limit`` come from here.
        client: a ConsulClient for reads and writes (one is built from ``config``).
        services: service-level settings from code (or a file), under KV's.
        endpoints: endpoint-level settings from code, by ``(service, endpoint id)``.
        local_source: the provenance of ``services``/``endpoints`` (``"code"``, or
            ``"file:<path>"``).
        start_mode: when KV cannot be read at :meth:`start`: ``"fail"`` raises,
            ``"defaults"`` starts from the local levels, ``"last_known_good"`` from the file
            ``last_known_good`` (else the local levels); both then pick up KV when it returns.
        last_known_good: a file where every good KV view is saved (atomically).
        start_timeout: seconds :meth:`start` waits for the first answer.
        clock: time source (events, the watch's pauses).

    Reading (:attr:`snapshot`, :meth:`effective`) is lock-free. Listeners run on the watch
    thread, one at a time; they must not block for long. The store is a context manager;
    :meth:`close` stops the watch within about a second.

    Example::

        with ConfigStore(MeshConfig.from_env()) as store:
            store.subscribe(lambda change: balancer.set_strategy(
                change.current.effective("web").strategy))
            store.set("lake-mesh/services/web", {"strategy": "least_request"})
    """

    def __init__(
        self,
        config: MeshConfig | None = None,
        *,
        client: ConsulClient | None = None,
        services: Mapping[str, ServiceConfig] | None = None,
        endpoints: Mapping[tuple[str, str], EndpointConfig] | None = None,
        local_source: str = "code",
        start_mode: StartMode = "fail",
        last_known_good: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if start_mode not in ("fail", "defaults", "last_known_good"):
            raise ValueError(
                f"start_mode must be fail, defaults or last_known_good: {start_mode!r}"
            )
        self.config = config or (client.config if client is not None else MeshConfig.from_env())
        self._own_client = client is None
        self.client = client or ConsulClient(self.config)
        self.layout = KVLayout(self.config.kv_prefix)
        self.start_mode: StartMode = start_mode
        self.last_known_good = Path(last_known_good) if last_known_good is not None else None
        self.start_timeout = start_timeout
        self._clock = clock
        self._local_global = layer_from(self.config, "code")
        self._local_services = {
            name: layer_from(cfg, local_source) for name, cfg in (services or {}).items()
        }
        self._local_endpoints = {
            key: layer_from(cfg, local_source) for key, cfg in (endpoints or {}).items()
        }
        self._good: dict[str, _Good] = {}
        self._rejected: dict[str, int] = {}
        self._ignored: set[str] = set()
        self._apply_lock = threading.RLock()
        self._listeners: tuple[Callable[[ConfigChange], None], ...] = ()
        self._event_listeners: tuple[Callable[[ConfigEvent], None], ...] = ()
        self._listeners_lock = threading.Lock()
        self._events: deque[ConfigEvent] = deque(maxlen=MAX_EVENTS)
        self._snapshot = self._build({}, index=0, stale=True)
        self._watch: Watch[dict[str, KVEntry]] | None = None
        self._resets = 0
        self._watch_applied = False  # whether an answer of the watch was applied yet
        self._unavailable = False
        self._closed = False
        #: Real changes applied (listener notifications).
        self.changes = 0

    # -- reading ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> ConfigSnapshot:
        """The configuration in force (one atomic read; immutable)."""
        return self._snapshot

    def effective(self, service: str, endpoint: str | None = None) -> EffectiveConfig:
        """The merged settings of ``service`` (and ``endpoint``), with provenance."""
        return self._snapshot.effective(service, endpoint)

    @property
    def stale(self) -> bool:
        """True while KV cannot be read (the last good view stays in force)."""
        watch = self._watch
        if watch is None:
            return self._snapshot.stale
        state = watch.state
        return state.stale or not state.has_value

    def age(self) -> float | None:
        """Seconds since KV last answered (``None``: never)."""
        watch = self._watch
        return watch.age() if watch is not None else None

    @property
    def events(self) -> list[ConfigEvent]:
        """The latest events, oldest first (at most :data:`MAX_EVENTS`)."""
        return list(self._events)

    @property
    def watch(self) -> Watch[dict[str, KVEntry]] | None:
        """The underlying watch (its ``requests`` counter measures the cost)."""
        return self._watch

    def subscribe(
        self,
        listener: Callable[[ConfigChange], None],
        *,
        service: str | None = None,
        since: ConfigSnapshot | None = None,
    ) -> Callable[[], None]:
        """Call ``listener`` on each real change; return a function that unsubscribes.

        With ``service``, only changes of that service's effective settings (or of one of
        its endpoints' settings) are passed on.

        With ``since`` (a snapshot the caller built its state from), a change between that
        snapshot and the one in force now is delivered at once, before any later change:
        subscribing and catching up happen under the lock that applies KV answers, so no
        change can fall between reading the configuration and subscribing to it.
        """
        if service is not None:
            inner = listener

            def listener(change: ConfigChange) -> None:
                if _service_view(change.previous, service) != _service_view(
                    change.current, service
                ):
                    inner(change)

        with self._apply_lock:
            with self._listeners_lock:
                self._listeners = (*self._listeners, listener)
            current = self._snapshot
            if since is not None and since is not current and not since.same_settings(current):
                try:
                    listener(ConfigChange(since, current, ()))
                except Exception:
                    log.exception("config: listener %r failed", listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def on_event(self, listener: Callable[[ConfigEvent], None]) -> Callable[[], None]:
        """Call ``listener`` with every :class:`ConfigEvent`; return an unsubscriber."""
        with self._listeners_lock:
            self._event_listeners = (*self._event_listeners, listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._event_listeners = tuple(x for x in self._event_listeners if x is not listener)

        return unsubscribe

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> ConfigStore:
        """Read KV and start watching it (idempotent).

        Raises:
            ConsulError: KV could not be read and ``start_mode`` is ``"fail"`` (the
                watch is stopped again).
        """
        with self._apply_lock:
            if self._watch is not None or self._closed:
                return self
            watch: Watch[dict[str, KVEntry]] = Watch(
                self.config,
                f"/v1/kv/{self.layout.folder}",
                {"recurse": ""},
                decode=_decode_entries,
                on_change=self._on_entries,
                on_error=self._on_error,
                wait=self.config.watch_wait,
                rate=self.config.watch_rate_limit,
                consistency="default",
                name=f"config:{self.layout.prefix}",
                clock=self._clock,
            )
            self._watch = watch
        watch.start()
        watch.wait_first(self.start_timeout, or_error=True)
        if self._apply_first(watch):
            return self
        error = watch.state.error or ConsulUnavailable(
            self.client.address, f"no answer within {self.start_timeout:g}s (read config)"
        )
        if self.start_mode == "fail":
            self.close()
            raise error
        if self.start_mode == "last_known_good" and self.last_known_good is not None:
            self._load_last_known_good(self.last_known_good)
        log.warning(
            "config: KV unreadable at start (%s); starting from %s, will pick up KV when it "
            "returns",
            error,
            "the last known good file" if self.start_mode == "last_known_good" else "defaults",
        )
        return self

    def _apply_first(self, watch: Watch[dict[str, KVEntry]]) -> bool:
        """Put the watch's first answer in force now, if the watch thread has not yet.

        The first answer is applied before :meth:`start` returns, whatever the order in which
        the watch engine signals "first answer in" and dispatches it to :meth:`_on_entries`:
        the caller of ``start()`` (a Mesh about to build its first balancer) never sees the
        store without KV. Returns whether the watch has a value.

        Race-free: the watch thread applies answers one at a time in order, and sets
        ``_watch_applied`` on its first one. While that is unset, no answer has been applied,
        so the watch's current value is its first one (an answer is dispatched before the
        next is fetched) and applying it here cannot go back in time; the watch thread's own
        application of the same entries then changes nothing.
        """
        state = watch.state
        if not state.has_value or state.value is None:
            return False
        with self._apply_lock:
            if not self._watch_applied:
                self._watch_applied = True
                self._apply(state.value, state.index)
        return True

    def refresh(self) -> ConfigSnapshot:
        """Read KV once (no blocking) and apply it; returns the snapshot in force.

        Raises:
            ConsulError: KV could not be read.
        """
        response = self._read_folder()
        self._apply(_decode_entries(response), response.index)
        return self._snapshot

    def close(self) -> None:
        """Stop the watch (within about a second) and release connections. Idempotent."""
        with self._apply_lock:
            self._closed = True
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        if self._own_client:
            self.client.close()

    def __enter__(self) -> ConfigStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        snap = self._snapshot
        return f"ConfigStore({self.layout.prefix!r}, index={snap.index}, stale={snap.stale})"

    # -- applying KV -----------------------------------------------------------------------

    def _on_entries(self, entries: dict[str, KVEntry]) -> None:
        watch = self._watch
        if watch is not None and watch.resets != self._resets:
            self._resets = watch.resets
            self._event("reset", None, "the KV index went backwards; re-read the tree")
        index = watch.state.index if watch is not None else 0
        with self._apply_lock:
            self._watch_applied = True
            self._apply(entries, index)

    def _on_error(self, exc: MeshError) -> None:
        if not self._unavailable:
            self._unavailable = True
            log.warning(
                "config: KV unreadable, keeping the configuration in force: %s",
                exc,
                extra={"event": "config_unavailable", "reason": str(exc)},
            )
            self._event("unavailable", None, str(exc))

    def _apply(self, entries: Mapping[str, KVEntry], index: int) -> None:
        with self._apply_lock:
            if self._closed:
                return
            if self._unavailable:
                self._unavailable = False
                self._event("recovered", None, "KV is readable again", index=index)
            good: dict[str, _Good] = {}
            changed: list[str] = []
            for key, entry in sorted(entries.items()):
                if key.endswith("/"):
                    continue  # a folder marker
                where = self.layout.classify(key)
                if where is None:
                    if key not in self._ignored:
                        self._ignored.add(key)
                        self._event("ignored", key, "not a configuration key", index=index)
                    continue
                old = self._good.get(key)
                if old is not None and old.layer.modify_index == entry.modify_index:
                    good[key] = old
                    continue
                if self._rejected.get(key) == entry.modify_index:
                    if old is not None:
                        good[key] = old
                    continue
                try:
                    values = parse_document(entry.value, where[0], key=key, kv=True)
                except ConfigValidationError as exc:
                    self._rejected[key] = entry.modify_index
                    kept = "the last good document stays" if old else "falls back a level"
                    log.warning(
                        "config: rejected KV key %r (%s): %s",
                        key,
                        kept,
                        exc,
                        extra={
                            "event": "config_rejected",
                            "key": key,
                            "field": exc.field,
                            "reason": exc.reason,
                        },
                    )
                    self._event("rejected", key, exc.reason, field=exc.field, index=index)
                    if old is not None:
                        good[key] = old
                    continue
                self._rejected.pop(key, None)
                layer = Layer(values, dict.fromkeys(values, f"kv:{key}"), entry.modify_index)
                good[key] = _Good(layer, entry.value)
                if old is None or old.layer != layer:
                    changed.append(key)
                    self._event("applied", key, index=index)
            for key in sorted(set(self._good) - set(good)):
                changed.append(key)
                log.info("config: KV key %r deleted; falling back to the next level", key)
                self._event("deleted", key, "falls back to the next level", index=index)
            for key in set(self._rejected) - set(entries):
                del self._rejected[key]
            self._good = good
            self._swap(self._build(good, index=index, stale=False), tuple(changed))
        if self.last_known_good is not None:
            self._save_last_known_good(self.last_known_good)

    def _build(self, good: Mapping[str, _Good], *, index: int, stale: bool) -> ConfigSnapshot:
        kv_global: list[Layer] = []
        services: dict[str, list[Layer]] = {k: [v] for k, v in self._local_services.items()}
        endpoints: dict[tuple[str, str], list[Layer]] = {
            k: [v] for k, v in self._local_endpoints.items()
        }
        for key, item in good.items():
            level, service, endpoint = self.layout.require(key)
            if level == GLOBAL:
                kv_global.append(item.layer)
            elif level == SERVICE:
                services.setdefault(service or "", []).append(item.layer)
            else:
                endpoints.setdefault((service or "", endpoint or ""), []).append(item.layer)
        return ConfigSnapshot(
            global_layers=(self._local_global, *kv_global),
            service_layers=MappingProxyType({k: tuple(v) for k, v in services.items()}),
            endpoint_layers=MappingProxyType({k: tuple(v) for k, v in endpoints.items()}),
            index=index,
            stale=stale,
        )

    def _swap(self, snapshot: ConfigSnapshot, changed_keys: tuple[str, ...]) -> None:
        previous = self._snapshot
        self._snapshot = snapshot
        if previous.same_settings(snapshot):
            return
        self.changes += 1
        change = ConfigChange(previous, snapshot, changed_keys)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("config: listener %r failed", listener)

    def _event(
        self,
        kind: Any,
        key: str | None,
        reason: str = "",
        *,
        field: str | None = None,
        index: int = 0,
    ) -> None:
        event = ConfigEvent(kind, key, reason, field, index, self._clock.time())
        self._events.append(event)
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("config: event listener %r failed", listener)

    # -- last known good -------------------------------------------------------------------

    def _save_last_known_good(self, path: Path) -> None:
        snap = self._snapshot
        doc = {
            "format": LKG_FORMAT,
            "prefix": self.layout.prefix,
            "index": snap.index,
            "keys": {k: g.raw.decode("utf-8") for k, g in sorted(self._good.items())},
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(doc, indent=1, sort_keys=True), prefix=".lkg-")
        except OSError as exc:
            log.warning("config: cannot save last known good to %s: %s", path, exc)

    def _load_last_known_good(self, path: Path) -> None:
        """Apply the last-known-good file; an unusable one is ignored with one warning."""
        try:
            keys = _lkg_keys(read_json_file(path, MAX_LKG_BYTES))
        except FileNotFoundError:
            log.warning("config: no last known good file at %s; starting from defaults", path)
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "config: ignoring the last known good file %s (starting from defaults; it is "
                "rewritten on the next answer from KV): %.200s",
                path,
                exc,
            )
            return
        entries = {k: KVEntry(k, v, -1) for k, v in keys.items()}
        with self._apply_lock:
            saved, self.last_known_good = self.last_known_good, None
            try:
                self._apply(entries, 0)
            finally:
                self.last_known_good = saved
            self._snapshot = _replace_stale(self._snapshot, True)

    # -- writes ----------------------------------------------------------------------------

    def read(self, key: str) -> KVEntry | None:
        """One key as stored (``None`` when absent).

        Raises:
            ConsulError: KV could not be read.
        """
        response = self.client.request(
            "GET", f"/v1/kv/{key}", operation=f"read key {key!r}", allow_404=True
        )
        if response.status == 404:
            return None
        return _decode_entries(response).get(key)

    def entries(self) -> dict[str, KVEntry]:
        """Every key under the prefix, as stored (invalid ones included).

        Raises:
            ConsulError: KV could not be read.
        """
        return _decode_entries(self._read_folder())

    def _read_folder(self) -> ConsulResponse:
        """One non-blocking read of every key under the prefix (404: an empty folder)."""
        return self.client.request(
            "GET",
            f"/v1/kv/{self.layout.folder}",
            operation=f"read config {self.layout.folder}",
            params={"recurse": ""},
            allow_404=True,
        )

    def validate(self, key: str, document: Document) -> dict[str, Any]:
        """Validate ``document`` for ``key``'s level; return its settings by path.

        Raises:
            ConfigValidationError: naming the key, field and reason.
        """
        level = self._writable(key)[0]
        return parse_document(_body(document), level, key=key, kv=True)

    def _writable(self, key: str) -> tuple[Level, str | None, str | None]:
        """``key``'s place in the layout, for a write: its service name must be valid too.

        Consul accepts any key, but a service name outside lake-mesh's rule could never be
        read back by a service (``lake-mesh config set 'services/bad name!'`` used to write
        one and exit 0).

        Raises:
            ConfigValidationError: a key outside the layout, or an invalid service name.
        """
        where = self.layout.require(key)
        if where[1] is not None:
            try:
                check_service_name(where[1], "service")
            except InvalidSetting as exc:
                raise ConfigValidationError(exc.reason, key=key) from None
        return where

    def preview(self, changes: Mapping[str, Document | None]) -> ConfigSnapshot:
        """The snapshot after ``changes`` (``None`` deletes a key), computed locally.

        Raises:
            ConfigValidationError: a document is invalid.
            ConsulError: KV had to be read first (a store that never read it) and could not.
        """
        parsed: dict[str, _Good | None] = {}  # validated before any network call
        for key, document in changes.items():
            if document is None:
                self._writable(key)
                parsed[key] = None
                continue
            body = _body(document)
            values = self.validate(key, body)
            parsed[key] = _Good(Layer(values, dict.fromkeys(values, f"kv:{key}")), body)
        if self._watch is None and self._snapshot.index == 0:
            self.refresh()
        with self._apply_lock:
            good = dict(self._good)
            for key, item in parsed.items():
                if item is None:
                    good.pop(key, None)
                else:
                    good[key] = item
            return self._build(good, index=self._snapshot.index, stale=self._snapshot.stale)

    def _result(
        self, changes: Mapping[str, Document | None], written: bool, preview: ConfigSnapshot
    ) -> WriteResult:
        effective = None
        if len(changes) == 1:
            _, service, endpoint = self.layout.require(next(iter(changes)))
            if service is not None:
                effective = preview.effective(service, endpoint)
        return WriteResult(tuple(changes), written, preview, effective)

    def set(
        self,
        key: str,
        document: Document,
        *,
        expected_index: int | None = None,
        dry_run: bool = False,
    ) -> WriteResult:
        """Validate ``document`` and write it to ``key`` with check-and-set.

        Args:
            key: a key of the layout (``<prefix>/services/web``...).
            document: a mapping, or JSON text (written as given).
            expected_index: the ``ModifyIndex`` the key must still have (0: must not
                exist). By default the current index is read first, so a change between
                that read and the write is refused.
            dry_run: validate and compute the effective result only.

        Raises:
            ConfigValidationError: the document is invalid (nothing written).
            AmbiguousInstance: ``key`` is ``.../endpoints/<id>`` and that ID is registered
                on two or more nodes (write ``.../endpoints/<id>@<node>``; nothing written).
            CasConflict: the key changed meanwhile (nothing written).
            ConsulError: KV could not be written.
        """
        body = _body(document)
        preview = self.preview({key: body})
        refuse_ambiguous(self.client, self.layout, (key,))  # B2: <id> on 2+ nodes
        if dry_run:
            return self._result({key: body}, False, preview)
        if expected_index is None:
            entry = self.read(key)
            expected_index = entry.modify_index if entry is not None else 0
        response = self.client.request(
            "PUT",
            f"/v1/kv/{key}",
            operation=f"write key {key!r}",
            params={"cas": str(expected_index)},
            data=body,
        )
        if response.json() is not True:
            raise CasConflict(key, expected_index)
        return self._result({key: body}, True, preview)

    def delete(
        self, key: str, *, expected_index: int | None = None, dry_run: bool = False
    ) -> WriteResult:
        """Delete ``key`` with check-and-set; its settings fall back to the next level.

        Raises:
            ConsulNotFound: the key does not exist.
            CasConflict: the key changed meanwhile.
            ConsulError: KV could not be written.
        """
        preview = self.preview({key: None})
        if dry_run:
            return self._result({key: None}, False, preview)
        if expected_index is None:
            entry = self.read(key)
            if entry is None:
                raise ConsulNotFound(404, f"key {key!r} does not exist", f"delete key {key!r}")
            expected_index = entry.modify_index
        response = self.client.request(
            "DELETE",
            f"/v1/kv/{key}",
            operation=f"delete key {key!r}",
            params={"cas": str(expected_index)},
        )
        if response.json() is not True:
            raise CasConflict(key, expected_index)
        return self._result({key: None}, True, preview)

    def set_many(
        self,
        changes: Mapping[str, Document | None],
        *,
        expected_indexes: Mapping[str, int] | None = None,
        dry_run: bool = False,
    ) -> WriteResult:
        """Write (or, for ``None``, delete) several keys atomically through ``/v1/txn``.

        Every document is validated first; then either every change is applied or none
        (a key that changed since its index was read fails the whole transaction).

        Raises:
            ConfigValidationError: a document is invalid (nothing written).
            CasConflict: naming the first key that changed meanwhile (nothing written).
            ConsulError: KV could not be written.
        """
        if not changes:
            raise ConfigValidationError("no changes given")
        if len(changes) > MAX_TXN_OPS:
            raise ConfigValidationError(
                f"{len(changes)} keys in one transaction; Consul allows {MAX_TXN_OPS}"
            )
        bodies = {k: (None if d is None else _body(d)) for k, d in changes.items()}
        preview = self.preview(bodies)
        refuse_ambiguous(self.client, self.layout, (k for k, b in bodies.items() if b is not None))
        if dry_run:
            return self._result(bodies, False, preview)
        indexes = dict(expected_indexes or {})
        if any(k not in indexes for k in bodies):
            current = self.entries()
            for key in bodies:
                if key not in indexes:
                    indexes[key] = current[key].modify_index if key in current else 0
        ops: list[dict[str, Any]] = []
        for key, body in bodies.items():
            index = indexes[key]
            if body is None and index == 0:
                ops.append({"KV": {"Verb": "check-not-exists", "Key": key}})
            elif body is None:
                ops.append({"KV": {"Verb": "delete-cas", "Key": key, "Index": index}})
            else:
                value = base64.b64encode(body).decode("ascii")
                ops.append({"KV": {"Verb": "cas", "Key": key, "Value": value, "Index": index}})
        try:
            self.client.request("PUT", "/v1/txn", operation="config transaction", json=ops)
        except ConsulStatusError as exc:
            if exc.code != 409:
                raise
            key, expected = _txn_conflict(exc.body, list(bodies), indexes)
            raise CasConflict(key, expected) from exc
        return self._result(bodies, True, preview)


def _txn_conflict(body: str, keys: list[str], indexes: Mapping[str, int]) -> tuple[str, int]:
    """The key of the first failed operation of a rolled-back transaction."""
    try:
        errors = json.loads(body).get("Errors") or []
        op = int(errors[0]["OpIndex"])
        key = keys[op]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        key = keys[0]
    return key, indexes.get(key, 0)


def _replace_stale(snapshot: ConfigSnapshot, stale: bool) -> ConfigSnapshot:
    import dataclasses

    return dataclasses.replace(snapshot, stale=stale)


def _service_view(snapshot: ConfigSnapshot, service: str) -> tuple[Any, ...]:
    eff = snapshot.effective(service)
    endpoints = {
        eid: snapshot.effective(service, eid).values for eid in snapshot.endpoints(service)
    }
    return (dict(eff.values), dict(eff.provenance), endpoints)


def _lkg_keys(doc: Any) -> dict[str, bytes]:
    """The ``keys`` of a last-known-good document (key -> document, UTF-8).

    Raises:
        ValueError: ``doc`` is not such a document.
    """
    if not isinstance(doc, dict) or doc.get("format") != LKG_FORMAT:
        raise ValueError(f"not a last known good document (format {LKG_FORMAT})")
    keys = doc.get("keys")
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ValueError("'keys' is not an object of key -> document text")
    return {k: v.encode("utf-8") for k, v in keys.items()}  # UnicodeEncodeError: ValueError
