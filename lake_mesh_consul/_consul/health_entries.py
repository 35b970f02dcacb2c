"""Consul's ``/v1/health/service/<name>`` answer, decoded into ServiceEndpoints.

Two ways in:

* :func:`parse_health_entry` / :func:`parse_health_entries`: one entry, or one whole answer,
  parsed from scratch (defensively: a malformed entry is skipped and logged).
* :class:`HealthEntryParser`: the successive answers of one blocking query. **A change costs
  what changed**: an entry whose Consul ``ModifyIndex`` values (its node's, its service's and
  each of its checks') are those of the previous answer is not parsed again; the previous
  answer's ServiceEndpoint object is reused as is. When one instance's health flips among
  10,000, one entry is parsed and 9,999 objects are carried over, so the snapshot comparison
  that follows (``a is b``) and every per-endpoint cache keyed by object stay cheap.

Why the indexes are enough: Consul raises an object's ``ModifyIndex`` on every write that
changes it (a check's status or output, a service's address, port, tags, meta or weights, a
node's address), and the indexes only grow (consul ``agent/structs``: ``RaftIndex``). An
entry without them (a proxy that strips them, a hand-written answer) is always parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus, aggregate
from lake_mesh_consul._core.names import is_host

__all__ = ["HealthEntryParser", "parse_health_entries", "parse_health_entry"]

# The discovery module's logger: these lines are about discovery's answers.
log = logging.getLogger("lake_mesh_consul.discovery")

#: Check ids Consul uses for maintenance mode (they are reported as ``critical``).
_MAINTENANCE_PREFIXES = ("_service_maintenance:", "_node_maintenance")

#: The sort order of an answer when Consul's order is not kept: (node, id), as a C call.
_BY_NODE_AND_ID = attrgetter("node", "id")

Endpoints = tuple[ServiceEndpoint, ...]

#: What identifies the version of one entry: node, service and per-check ModifyIndex.
_Fingerprint = tuple[Any, Any, tuple[Any, ...]]

#: What a parser remembers of the previous answer: (node, service id) -> version, endpoint.
_Known = dict[tuple[str, str], tuple[_Fingerprint, ServiceEndpoint]]


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r}")
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return {str(k): str(v) for k, v in value.items()}


def _check_status(check: Any) -> HealthStatus:
    if not isinstance(check, dict):
        raise ValueError("a check is not an object")
    check_id = str(check.get("CheckID") or "")
    if check_id.startswith(_MAINTENANCE_PREFIXES):
        return HealthStatus.MAINTENANCE
    return HealthStatus.parse(str(check.get("Status") or ""))


def _address(node: dict[str, Any], service: dict[str, Any], service_id: str) -> str:
    """The service's address, falling back to the node's, checked and unbracketed."""
    address = service.get("Address") or node.get("Address") or ""
    address = _str(address, "address").strip()
    if not address:
        raise ValueError(f"instance {service_id!r} has neither a service nor a node address")
    if not is_host(address):  # brackets only around IPv6
        # Consul stores any text; a request to it would fail before being sent (InvalidURL).
        raise ValueError(
            f"instance {service_id!r} has an address that is neither an IP nor a host name: "
            f"{address!r}"
        )
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    return address


def _weights(service: dict[str, Any], service_id: str) -> Weights:
    raw = service.get("Weights")
    if not isinstance(raw, dict):
        return Weights()
    try:
        return Weights(passing=int(raw.get("Passing", 1)), warning=int(raw.get("Warning", 1)))
    except (TypeError, ValueError, OverflowError):  # Weights 1e400 decodes to inf
        log.warning("instance %r: invalid Weights %r, using 1/1", service_id, raw)
        return Weights()


def parse_health_entry(entry: Any, *, datacenter: str | None = None) -> ServiceEndpoint:
    """Turn one element of ``/v1/health/service/<name>``'s answer into a ServiceEndpoint.

    The address is the service's, falling back to the node's (IPv6 brackets removed), and
    must be an IPv4 or IPv6 address or a host name (Consul stores any text: ``not a host!``
    cannot be requested); health is the aggregate of every check of the entry (node checks
    included; Consul's maintenance checks count as maintenance); the zone comes from meta.

    Raises:
        ValueError: the entry is malformed (missing id, an address that is no host, no
            valid port...).
    """
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    node = entry.get("Node")
    service = entry.get("Service")
    if not isinstance(node, dict) or not isinstance(service, dict):
        raise ValueError("entry has no Node or Service object")
    service_id = _str(service.get("ID"), "Service.ID")
    name = _str(service.get("Service"), "Service.Service")
    if not service_id:
        raise ValueError("Service.ID is empty")
    address = _address(node, service, service_id)
    port = service.get("Port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise ValueError(f"instance {service_id!r} has no usable port: {port!r}")
    tags = service.get("Tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"instance {service_id!r}: Tags is not a list of strings")
    checks = entry.get("Checks") or []
    if not isinstance(checks, list):
        raise ValueError(f"instance {service_id!r}: Checks is not a list")
    health = aggregate(_check_status(c) for c in checks)
    dc = datacenter or (node.get("Datacenter") if isinstance(node.get("Datacenter"), str) else "")
    return ServiceEndpoint.create(
        service_id,
        address,
        port,
        service=name,
        tags=tuple(tags),
        meta=_str_map(service.get("Meta"), "Service.Meta"),
        weights=_weights(service, service_id),
        health=health,
        node=str(node.get("Node") or ""),
        datacenter=dc or "",
    )


def parse_health_entries(
    data: Any, *, service: str = "", datacenter: str | None = None, keep_order: bool = False
) -> Endpoints:
    """Parse a whole ``/v1/health/service`` answer; malformed entries are skipped and logged.

    Every entry is parsed from scratch; :class:`HealthEntryParser` parses successive answers
    of one query and reuses what did not change.

    Args:
        data: the decoded JSON (a list; ``None`` counts as empty).
        service: the service name, for log lines.
        datacenter: the datacenter queried (else each node's own).
        keep_order: keep Consul's order (``near``); otherwise sort by (node, id) so that
            equal sets compare equal.

    Returns:
        The endpoints, never raising for bad content.
    """
    return HealthEntryParser(service=service, datacenter=datacenter, keep_order=keep_order).parse(
        data, reuse=False
    )


def _fingerprint(entry: Any) -> tuple[tuple[str, str], _Fingerprint] | None:
    """``((node, service id), indexes)`` of a well-formed entry that has its indexes, else None.

    Any index missing, or an unexpected shape, means "parse it" (never a wrong reuse).
    """
    if not isinstance(entry, dict):
        return None
    node = entry.get("Node")
    service = entry.get("Service")
    checks = entry.get("Checks")
    if not isinstance(node, dict) or not isinstance(service, dict) or not isinstance(checks, list):
        return None
    node_index = node.get("ModifyIndex")
    service_index = service.get("ModifyIndex")
    if node_index is None or service_index is None:
        return None
    try:
        check_indexes = tuple([c["ModifyIndex"] for c in checks])
    except (KeyError, TypeError):
        return None
    node_name, service_id = node.get("Node"), service.get("ID")
    if not isinstance(node_name, str) or not isinstance(service_id, str):
        return None
    return (node_name, service_id), (node_index, service_index, check_indexes)


class HealthEntryParser:
    """Parses the successive answers of one ``/v1/health/service`` query, reusing what held.

    An entry whose node, service and check ``ModifyIndex`` values all equal those it had in
    the previous answer (same node name and service id) yields the previous ServiceEndpoint
    object itself: no parsing, no new object. Everything else is parsed as
    :func:`parse_health_entry` does; malformed entries are skipped and logged.

    Args:
        service: the service name, for log lines.
        datacenter: the datacenter queried (else each node's own).
        keep_order: keep Consul's order (``near``); otherwise sort by (node, id).

    Thread-safety: one parser belongs to one watch, whose thread alone calls :meth:`parse`.

    Example::

        parser = HealthEntryParser(service="web")
        first = parser.parse(answer_1)
        second = parser.parse(answer_2)   # unchanged instances: the same objects as in first
    """

    def __init__(
        self, *, service: str = "", datacenter: str | None = None, keep_order: bool = False
    ) -> None:
        self.service = service
        self.datacenter = datacenter
        self.keep_order = keep_order
        self._known: _Known = {}
        #: Entries parsed / reused by the last :meth:`parse` (what a change cost).
        self.parsed = 0
        self.reused = 0

    def parse(self, data: Any, *, reuse: bool = True) -> Endpoints:
        """Decode one answer (the JSON value; ``None`` is empty); never raises for bad content.

        ``reuse=False`` parses every entry (and still remembers them for the next answer).
        """
        if data is None:
            self._known = {}
            return ()
        if not isinstance(data, list):
            log.warning(
                "service %r: answer is not a list (%s), ignored", self.service, type(data).__name__
            )
            return ()
        out, self._known = self._decode(data, self._known if reuse else {})
        if not self.keep_order:
            out.sort(key=_BY_NODE_AND_ID)
        return tuple(out)

    def _decode(self, data: Sequence[Any], known: _Known) -> tuple[list[ServiceEndpoint], _Known]:
        """Endpoints of ``data`` in its order, and what to remember for the next answer."""
        out: list[ServiceEndpoint] = []
        kept: _Known = {}
        parsed = 0
        for position, entry in enumerate(data):
            marked = _fingerprint(entry)
            if marked is not None:
                previous = known.get(marked[0])
                if previous is not None and previous[0] == marked[1]:
                    out.append(previous[1])
                    kept[marked[0]] = previous
                    continue
            parsed += 1
            try:
                endpoint = parse_health_entry(entry, datacenter=self.datacenter)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning(
                    "service %r: skipping malformed entry %d of the answer: %s",
                    self.service,
                    position,
                    exc,
                )
                continue
            out.append(endpoint)
            if marked is not None:
                kept[marked[0]] = (marked[1], endpoint)
        self.parsed, self.reused = parsed, len(data) - parsed
        return out, kept
