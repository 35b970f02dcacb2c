"""Consul's ``/v1/health/service/<name>`` answer, decoded into ServiceEndpoints.

Two ways in:

* :func:`parse_health_entry` / :func:`parse_health_entries`: one entry, or one whole answer,
  parsed from scratch (defensively: a malformed entry is skipped and logged).
* :class:`HealthEntryParser`: the successive answers of one blocking query. **A change costs
  what changed**: an entry whose Consul ``ModifyIndex`` values (its node's, its service's and
  each of its checks') are those of the previous answer is not parsed again; the previous
  answer's ServiceEndpoint object is reused as is. When one instance's health flips among
  10,000, one entry is parsed and 9,999 objects are carried over, so the snapshot comparison
  that follows (``a is b``) and every per-endpoint cache keyed by object stay cheap; the
  parser also says which positions changed (``HealthEntryParser.changes``), which discovery
  hands down to the route and balancer so that they need no comparison at all.

Why the indexes are enough: Consul raises an object's ``ModifyIndex`` on every write that
changes it (a check's status or output, a service's address, port, tags, meta or weights, a
node's address), and the indexes only grow (consul ``agent/structs``: ``RaftIndex``). An
entry without them (a proxy that strips them, a hand-written answer) is always parsed.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count, repeat
from operator import attrgetter, itemgetter, ne
from typing import Any, cast

from lake_mesh_consul._core.changes import EndpointChanges
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
_Fingerprint = tuple[Any, ...]

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
        check_indexes = [c["ModifyIndex"] for c in checks]
    except (KeyError, TypeError):
        return None
    node_name, service_id = node.get("Node"), service.get("ID")
    if not isinstance(node_name, str) or not isinstance(service_id, str):
        return None
    return (node_name, service_id), (node_index, service_index, *check_indexes)


@dataclass(slots=True, kw_only=True)
class _Answer:
    """What a parser remembers of the previous answer, aligned with that answer's entries.

    ``names``, ``ids`` and ``versions`` hold each entry's node name, service id and
    ModifyIndex values (``versions[i]`` is None when entry ``i`` has none: always parsed);
    ``parsed[i]`` its endpoint (None: skipped as malformed); ``slot[i]`` the endpoint's
    position in ``out`` (the answer's output, sorted or in Consul's order).
    """

    names: list[Any]
    ids: list[Any]
    versions: list[_Fingerprint | None]
    parsed: list[ServiceEndpoint | None]
    slot: list[int | None]
    out: Endpoints

    def known(self) -> _Known:
        """``(node, service id) -> (versions, endpoint)`` for the entries that may be reused."""
        return {
            (name, sid): (version, endpoint)
            for name, sid, version, endpoint in zip(
                self.names, self.ids, self.versions, self.parsed, strict=True
            )
            if version is not None and endpoint is not None
        }


#: A check's ModifyIndex, read in C.
_MODIFY_INDEX = itemgetter("ModifyIndex")


def _columns(data: Sequence[Any]) -> tuple[list[Any], list[Any], list[_Fingerprint]] | None:
    """Node names, service ids and versions of every entry, in one lean pass over the answer.

    As lean as a raw decode loop (the answer's objects are touched once, entry by entry:
    separate C-level passes would each pay the memory latency of 10,000 scattered
    objects). None when any entry is unusual (not an object, an index missing or null, a
    name that is no string...): the answer is then read entry by entry
    (:func:`_fingerprint`), which decides for each.
    """
    names: list[Any] = []
    ids: list[Any] = []
    versions: list[_Fingerprint] = []
    add_name, add_id, add_version = names.append, ids.append, versions.append
    try:
        for entry in data:
            node = entry["Node"]
            service = entry["Service"]
            add_name(node["Node"])
            add_id(service["ID"])
            add_version(
                (node["ModifyIndex"], service["ModifyIndex"], *map(_MODIFY_INDEX, entry["Checks"]))
            )
    except (KeyError, TypeError, AttributeError):
        return None
    if (
        None in chain.from_iterable(versions)
        or not all(map(str.__instancecheck__, names))
        or not all(map(str.__instancecheck__, ids))
    ):
        return None
    return names, ids, versions


def _moved(previous: list[Any], current: list[Any]) -> list[int]:
    """Positions where two equally long lists differ (C-level; none when equal)."""
    if previous == current:
        return []
    return list(compress(count(), map(ne, previous, current)))


class HealthEntryParser:
    """Parses the successive answers of one ``/v1/health/service`` query, reusing what held.

    An entry whose node, service and check ``ModifyIndex`` values all equal those it had in
    the previous answer (same node name and service id) yields the previous ServiceEndpoint
    object itself: no parsing, no new object. An entry parsed again into an endpoint whose
    fields are all those of the previous one (a check's output moved, not its status) also
    yields the previous object. Everything else is parsed as :func:`parse_health_entry`
    does; malformed entries are skipped and logged.

    When an answer lists the same instances in the same order as the previous one (a
    health flip, a weight change: the usual change), its identities and versions are read
    in one lean pass, compared with the previous answer's in C, and only the entries that
    moved are looked at further; the answer is the previous tuple itself when nothing a
    consumer sees moved. :attr:`changes` then
    says which positions changed (an :class:`~lake_mesh_consul._core.changes.EndpointChanges`
    from the previous answer's tuple to this one's), for the route and balancer to apply.

    Args:
        service: the service name, for log lines.
        datacenter: the datacenter queried (else each node's own).
        keep_order: keep Consul's order (``near``); otherwise sort by (node, id).

    Thread-safety: one parser belongs to one watch, whose thread alone calls :meth:`parse`;
    :attr:`changes` may be read from any thread (an immutable value, replaced whole).

    Example::

        parser = HealthEntryParser(service="web")
        first = parser.parse(answer_1)
        second = parser.parse(answer_2)   # unchanged instances: the same objects as in first
        parser.changes                    # positions of second that changed, if known
    """

    def __init__(
        self, *, service: str = "", datacenter: str | None = None, keep_order: bool = False
    ) -> None:
        self.service = service
        self.datacenter = datacenter
        self.keep_order = keep_order
        self._last: _Answer | None = None
        #: Entries parsed / reused by the last :meth:`parse` (what a change cost).
        self.parsed = 0
        self.reused = 0
        #: How the last answer's tuple differs from the one before (None: not known).
        self.changes: EndpointChanges | None = None

    def parse(self, data: Any, *, reuse: bool = True) -> Endpoints:
        """Decode one answer (the JSON value; ``None`` is empty); never raises for bad content.

        ``reuse=False`` parses every entry (and still remembers them for the next answer).
        """
        self.changes = None
        if data is None:
            self._last = None
            return ()
        if not isinstance(data, list):
            log.warning(
                "service %r: answer is not a list (%s), ignored", self.service, type(data).__name__
            )
            return ()
        last = self._last if reuse else None
        columns = _columns(data)
        if columns is not None and last is not None:
            out = self._patch(data, last, columns)
            if out is not None:
                return out
        return self._parse_all(data, last, columns)

    def _patch(
        self,
        data: list[Any],
        last: _Answer,
        columns: tuple[list[Any], list[Any], list[_Fingerprint]],
    ) -> Endpoints | None:
        """The answer when it lists the previous answer's instances in the same order.

        Only the entries whose versions moved are parsed; None when it does not apply (the
        instances differ, or an entry that moved no longer parses): read it all then.
        """
        names, ids, versions = columns
        if len(names) != len(last.names) or names != last.names or ids != last.ids:
            return None
        moved = _moved(last.versions, versions)
        out: list[ServiceEndpoint] | None = None
        changed: list[int] = []
        parsed = list(last.parsed)
        for i in moved:
            position = last.slot[i]
            if position is None:
                return None  # it was skipped before: parsing it may change membership
            endpoint = self._parse_one(data[i], i)
            if endpoint is None:
                return None
            before = last.out[position]
            if endpoint.same_as(before):
                continue  # nothing a consumer sees moved: keep the object
            if out is None:
                out = list(last.out)
            out[position] = parsed[i] = endpoint
            changed.append(position)
        result = last.out if out is None else tuple(out)
        self._last = _Answer(
            names=names, ids=ids, versions=list(versions), parsed=parsed, slot=last.slot, out=result
        )
        self.parsed, self.reused = len(moved), len(data) - len(moved)
        self.changes = EndpointChanges(last.out, result, changed=tuple(sorted(changed)))
        return result

    def _parse_one(self, entry: Any, position: int) -> ServiceEndpoint | None:
        try:
            return parse_health_entry(entry, datacenter=self.datacenter)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning(
                "service %r: skipping malformed entry %d of the answer: %s",
                self.service,
                position,
                exc,
            )
            return None

    def _reuse_by_key(
        self,
        data: list[Any],
        last: _Answer | None,
        columns: tuple[list[Any], list[Any], list[_Fingerprint]],
    ) -> tuple[list[Any], list[Any], list[_Fingerprint | None], list[ServiceEndpoint | None], int]:
        """Reuse by (node, service id) with C-level lookups; parse only what moved or is new."""
        names, ids, current = columns
        versions: list[_Fingerprint | None] = list(current)
        keys = list(zip(names, ids, strict=True))
        if last is None:
            parsed_list: list[ServiceEndpoint | None] = [None] * len(data)
            fresh: Iterable[int] = range(len(data))
        else:
            # Where each entry was in the last answer (-1: new), then its old version and
            # endpoint by position: one dict, the rest C-level passes.
            where_was = dict(zip(zip(last.names, last.ids, strict=True), count()))
            where = list(map(where_was.get, keys, repeat(-1)))
            old_versions = map([*last.versions, None].__getitem__, where)
            parsed_list = list(map([*last.parsed, None].__getitem__, where))
            same = map(operator.eq, old_versions, current)
            fresh = list(compress(count(), map(operator.not_, same)))
        parsed = 0
        for i in fresh:
            parsed += 1
            endpoint = parsed_list[i] = self._parse_one(data[i], i)
            if endpoint is None:
                versions[i] = None
        return names, ids, versions, parsed_list, parsed

    def _reuse_entry_by_entry(
        self, data: list[Any], last: _Answer | None
    ) -> tuple[list[Any], list[Any], list[_Fingerprint | None], list[ServiceEndpoint | None], int]:
        """Reuse entry by entry (an unusual answer: each entry's fingerprint decides)."""
        known = last.known() if last is not None else {}
        names: list[Any] = []
        ids: list[Any] = []
        versions: list[_Fingerprint | None] = []
        parsed_list: list[ServiceEndpoint | None] = []
        parsed = 0
        for position, entry in enumerate(data):
            marked = _fingerprint(entry)
            endpoint: ServiceEndpoint | None = None
            if marked is not None:
                previous = known.get(marked[0])
                if previous is not None and previous[0] == marked[1]:
                    endpoint = previous[1]
            if endpoint is None:
                parsed += 1
                endpoint = self._parse_one(entry, position)
            names.append(marked[0][0] if marked is not None else None)
            ids.append(marked[0][1] if marked is not None else None)
            versions.append(marked[1] if marked is not None and endpoint is not None else None)
            parsed_list.append(endpoint)
        return names, ids, versions, parsed_list, parsed

    def _parse_all(
        self,
        data: list[Any],
        last: _Answer | None,
        columns: tuple[list[Any], list[Any], list[_Fingerprint]] | None,
    ) -> Endpoints:
        """Every entry of any answer, reusing those whose versions held, in output order."""
        if columns is not None:
            names, ids, versions, parsed_list, parsed = self._reuse_by_key(data, last, columns)
        else:
            names, ids, versions, parsed_list, parsed = self._reuse_entry_by_entry(data, last)
        self.parsed, self.reused = parsed, len(data) - parsed
        present = list(compress(count(), map(operator.is_not, parsed_list, repeat(None))))
        endpoints = cast(list[ServiceEndpoint], list(map(parsed_list.__getitem__, present)))
        if not self.keep_order:
            order = list(map(_BY_NODE_AND_ID, endpoints))
            ranks = sorted(range(len(endpoints)), key=order.__getitem__)
            present = list(map(present.__getitem__, ranks))
            endpoints = list(map(endpoints.__getitem__, ranks))
        slot: list[int | None] = [None] * len(data)
        for position, i in enumerate(present):
            slot[i] = position
        out = tuple(endpoints)
        self._last = _Answer(
            names=names, ids=ids, versions=versions, parsed=parsed_list, slot=slot, out=out
        )
        return out
