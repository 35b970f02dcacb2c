"""EndpointChanges: how one snapshot of a service became the next (a change set).

Discovery's parser knows which instances moved in an answer (see
``_consul/health_entries.py``); this value hands that knowledge down to the route and its
balancer, so that a one-instance health flip among 10,000 costs the work of one instance
rather than a fresh comparison of both snapshots (issue 15: "a change costs what
changed"). It plays the part of Envoy's ``hosts_added`` / ``hosts_removed`` in
``PrioritySet::updateHosts``, with the positions a snapshot in discovery order needs.

Rules, all checked by :meth:`EndpointChanges.applies_to` or guaranteed by whoever builds
the value:

* ``before`` and ``after`` are the very snapshots (tuples) it relates: a consumer uses it
  only when ``before`` is the snapshot it holds (``is``), else it compares the snapshots
  itself. A change set is never trusted by equality.
* ``left`` are positions in ``before``; ``joined`` positions in ``after``; ``changed``
  positions in ``after`` whose endpoint has the identity of the one it replaces but other
  fields (health, weights, address...). Each is in ascending order.
* Today the parser reports in-place changes only (a health flip, a weight, an address:
  the usual change); when instances join or leave it reports nothing (``None``) and the
  consumers compare the snapshots, as they do for any change set that does not apply.
* Every other endpoint of ``after`` is the same object as in ``before``, and those keep
  their relative order.
"""

from __future__ import annotations

from dataclasses import dataclass

from lake_mesh_consul._core.endpoint import ServiceEndpoint

__all__ = ["EndpointChanges"]

Endpoints = tuple[ServiceEndpoint, ...]


@dataclass(frozen=True, slots=True, eq=False)
class EndpointChanges:
    """What changed from snapshot ``before`` to snapshot ``after`` (see the module rules).

    Attributes:
        before: the previous snapshot (the object itself).
        after: the new snapshot (the object itself).
        changed: positions in ``after`` of endpoints whose fields changed in place.
        joined: positions in ``after`` of endpoints that were not in ``before``.
        left: positions in ``before`` of endpoints that are not in ``after``.

    Example:
        >>> a = ServiceEndpoint.create("a", "10.0.0.1", 80)
        >>> b = ServiceEndpoint.create("a", "10.0.0.1", 81)
        >>> changes = EndpointChanges((a,), (b,), changed=(0,))
        >>> changes.in_place, bool(changes)
        (True, True)
    """

    before: Endpoints
    after: Endpoints
    changed: tuple[int, ...] = ()
    joined: tuple[int, ...] = ()
    left: tuple[int, ...] = ()

    @property
    def in_place(self) -> bool:
        """Whether membership and order are unchanged (only fields of ``changed`` moved)."""
        return not self.joined and not self.left

    def applies_to(self, current: Endpoints, new: Endpoints) -> bool:
        """Whether this describes the step from ``current`` to ``new`` (both by identity)."""
        return self.before is current and self.after is new

    def __bool__(self) -> bool:
        return bool(self.changed or self.joined or self.left)
