"""Discovery snapshots on disk: one JSON file per query, written atomically, read back warily.

A snapshot file is written by this process, but it is read back after restarts, upgrades,
disk trouble and the occasional hand edit, so :meth:`SnapshotStore.load` trusts nothing in
it. A file that does not parse into exactly the shape :meth:`SnapshotStore.save` writes
(``[]``, ``null``, ``"port": 1e400``, a list where ``weights`` or ``meta`` belong, deep
nesting, a file larger than :data:`MAX_SNAPSHOT_BYTES`...) is ignored as a whole, with one
warning naming the file, and is replaced by the next good answer from Consul. Loading never
raises. A write that fails leaves no temporary file behind.

Format (version 1)::

    {"version": 1, "query": "<repr of the query>", "saved_at": <unix time>,
     "endpoints": [<endpoint_to_dict(e)>, ...]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from lake_mesh_consul._consul.files import read_json_file, write_atomically
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.names import is_host

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_VERSION",
    "SnapshotStore",
    "endpoint_from_dict",
    "endpoint_to_dict",
]

log = logging.getLogger("lake_mesh_consul.discovery")

#: Version of the persisted snapshot format.
SNAPSHOT_VERSION = 1
#: Largest snapshot file read back (bytes); a bigger one is ignored unread. Sized for a
#: catalog far above Consul's practical service sizes (~2 KB per instance: 30,000 instances).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
#: Largest weight accepted from a file (Consul stores weights as Go ints; ours are counts).
_MAX_WEIGHT = 2**31 - 1
#: Latest save time accepted (the year 9999, in seconds since the epoch).
_MAX_TIME = 253_402_300_800


class _Query(Protocol):
    """What the store needs of a discovery query: its service name and a stable ``repr``."""

    @property
    def name(self) -> str:
        """The service name."""
        ...


def endpoint_to_dict(e: ServiceEndpoint) -> dict[str, Any]:
    """A JSON-ready dict of every field of ``e`` (the persisted and CLI form)."""
    return {
        "id": e.id,
        "service": e.service,
        "address": e.address,
        "port": e.port,
        "tags": list(e.tags),
        "meta": dict(e.meta),
        "weights": {"passing": e.weights.passing, "warning": e.weights.warning},
        "health": e.health.value,
        "node": e.node,
        "datacenter": e.datacenter,
        "zone": e.zone,
    }


def _text(d: dict[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not text: {type(value).__name__}")
    return value


def _count(weights: dict[str, Any], key: str) -> int:
    value = weights.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_WEIGHT:
        raise ValueError(f"weights.{key} is not a whole number in 0..{_MAX_WEIGHT}: {value!r}")
    return value


def endpoint_from_dict(d: Any) -> ServiceEndpoint:
    """The inverse of :func:`endpoint_to_dict`, checking every field's type and range.

    Raises:
        ValueError: ``d`` is not such a dict (a field of the wrong type, a port outside
            1..65535, an address that is no host, weights outside Consul's rules...).
    """
    if not isinstance(d, dict):
        raise ValueError(f"an endpoint is not an object: {type(d).__name__}")
    address = _text(d, "address")
    if not is_host(address):
        raise ValueError(f"address {address!r} is neither an IP nor a host name")
    port = d.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port is not a whole number in 1..65535: {port!r}")
    tags = d.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("tags is not a list of text")
    meta = d.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("meta is not an object of text values")
    weights = d.get("weights") or {}
    if not isinstance(weights, dict):
        raise ValueError("weights is not an object")
    zone = d.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise ValueError(f"zone is not text: {type(zone).__name__}")
    try:
        parsed_weights = Weights(_count(weights, "passing"), _count(weights, "warning"))
    except ValueError as exc:
        raise ValueError(f"weights: {exc}") from None
    endpoint_id = _text(d, "id")
    if not endpoint_id:
        raise ValueError("id is empty")
    return ServiceEndpoint.create(
        endpoint_id,
        address,
        port,
        service=_text(d, "service", ""),
        tags=tags,
        meta=meta,
        weights=parsed_weights,
        health=HealthStatus.parse(_text(d, "health", "passing")),
        node=_text(d, "node", ""),
        datacenter=_text(d, "datacenter", ""),
        zone=zone,
    )


def _endpoints_of(doc: Any, query: _Query) -> tuple[tuple[ServiceEndpoint, ...], float] | None:
    """The endpoints and save time in ``doc``; ``None`` when it is another query's or version.

    Raises:
        ValueError: ``doc`` is not a snapshot document.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"the document is not an object: {type(doc).__name__}")
    if doc.get("version") != SNAPSHOT_VERSION or doc.get("query") != repr(query):
        return None  # an older format or a hash collision: not ours to read, not an error
    saved_at = doc.get("saved_at")
    if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
        raise ValueError(f"saved_at is not a number: {saved_at!r}")
    if not 0 <= saved_at < _MAX_TIME:  # compared as given: 10**400 fits no float
        raise ValueError(f"saved_at is not a time: {saved_at!r:.40}")
    raw = doc.get("endpoints")
    if not isinstance(raw, list):
        raise ValueError("endpoints is not a list")
    endpoints: list[ServiceEndpoint] = []
    for position, item in enumerate(raw):
        try:
            endpoints.append(endpoint_from_dict(item))
        except ValueError as exc:
            raise ValueError(f"endpoints[{position}]: {exc}") from None
    return tuple(endpoints), float(saved_at)


class SnapshotStore:
    """Snapshots on disk, one JSON file per query, written atomically.

    ``save`` and ``load`` never raise: a failed write is logged (and its temporary file
    removed), an unreadable file is logged once and ignored. Not locked: each query's file
    is written by the one view that owns the query.

    Raises:
        OSError: from the constructor, when ``directory`` cannot be created.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._warned: set[Path] = set()

    def path(self, query: _Query) -> Path:
        """The file that holds ``query``'s snapshot."""
        digest = hashlib.sha256(repr(query).encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", query.name)[:60]
        return self.directory / f"{safe}-{digest}.json"

    def save(self, query: _Query, endpoints: Iterable[ServiceEndpoint], saved_at: float) -> None:
        """Write ``endpoints`` as ``query``'s snapshot (atomically; errors are logged)."""
        doc = {
            "version": SNAPSHOT_VERSION,
            "query": repr(query),
            "saved_at": saved_at,
            "endpoints": [endpoint_to_dict(e) for e in endpoints],
        }
        target = self.path(query)
        try:
            write_atomically(target, json.dumps(doc))
        except OSError as exc:
            log.warning("could not persist the snapshot of %r to %s: %s", query.name, target, exc)
            return
        self._warned.discard(target)  # a good file again: warn anew if it goes bad

    def load(self, query: _Query) -> tuple[tuple[ServiceEndpoint, ...], float] | None:
        """``query``'s snapshot and its save time, or ``None`` (no file, or not usable)."""
        path = self.path(query)
        try:
            return _endpoints_of(read_json_file(path, MAX_SNAPSHOT_BYTES), query)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if path not in self._warned:
                self._warned.add(path)
                log.warning(
                    "ignoring persisted snapshot %s (replaced on the next answer from Consul): %s",
                    path,
                    _short(exc),
                )
            return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
