"""ServiceEndpoint: one instance of a service, as discovery produces and balancers pick it.

What a reader finds here: :class:`ServiceEndpoint` and its identity rule, :class:`Weights`,
and how a per-instance setting names one instance (:func:`setting_names`,
:func:`settings_for`, :func:`ambiguous_ids`).

Identity. Consul guarantees a service ID unique per *agent* only, and an ID left out
defaults to the service name, so many deployments register ``web`` with ID ``web`` on every
node. An instance is therefore ``(datacenter, node, id)`` everywhere: equality, hashing,
balancer membership, breakers, outlier detection, a retry's "tried" set and the points of
the consistent-hash strategies all use :attr:`ServiceEndpoint.key` (fabio fixed the same
bug: the service ID is unique per agent, not cluster-wide).

Naming one instance in a setting (KV ``<prefix>/services/<service>/endpoints/<name>``)::

    <id>@<node>    exactly the instance with that ID on that node (always unambiguous)
    <id>           every instance with that ID (one instance where the ID is unique)

The qualified name wins over the plain one for the instance it names. A write of a plain
``<id>`` while that ID is registered on two or more nodes is refused (see
:func:`ambiguous_ids`), and the error lists the ``<id>@<node>`` names to write instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from lake_mesh_consul._core.hashing import endpoint_token
from lake_mesh_consul._core.health import HealthStatus

__all__ = [
    "NODE_SEPARATOR",
    "ServiceEndpoint",
    "Weights",
    "ambiguous_ids",
    "setting_names",
    "settings_for",
]

#: Meta keys that carry the instance's zone, in the order they are looked up.
ZONE_META_KEYS = ("zone", "availability_zone", "az")

#: Separates the service ID from the node in a setting's name: ``web@node-1``.
NODE_SEPARATOR = "@"

_EMPTY_META: Mapping[str, str] = MappingProxyType({})
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Weights:
    """Consul's service ``Weights``: the share of a passing and of a warning instance.

    Consul's defaults are 1 and 1; a warning weight below the passing weight down-weights
    instances whose checks warn without dropping them.
    """

    passing: int = 1
    warning: int = 1

    def __post_init__(self) -> None:
        if self.passing < 1 or self.warning < 0:
            raise ValueError(
                f"weights must be passing >= 1 and warning >= 0, got {self.passing}/{self.warning}"
            )

    def for_status(self, status: HealthStatus) -> int:
        """The weight that applies to an instance in ``status`` (0 unless passing/warning)."""
        if status is HealthStatus.PASSING:
            return self.passing
        if status is HealthStatus.WARNING:
            return self.warning
        return 0


@dataclass(frozen=True, slots=True, eq=False)
class ServiceEndpoint:
    """One instance of a service: where to send a request and what is known about it.

    Identity is ``(datacenter, node, id)`` (:attr:`key`): equality and hashing use only
    those three, so an endpoint whose health or tags changed is still "the same" endpoint
    for per-endpoint state (breakers, outstanding requests, latency), while two instances
    registered with the same ID on two nodes are two endpoints. Use :meth:`same_as` to
    compare every field.

    Attributes:
        id: the Consul service instance id (unique per agent only).
        service: the service name.
        address: host or IP to connect to (the service address, falling back to the node's).
        port: TCP port.
        tags: the instance's tags.
        meta: the instance's service meta.
        weights: Consul's ``Weights``.
        health: the aggregate of the instance's checks.
        node: the Consul node name.
        datacenter: the datacenter it was discovered in.
        zone: the zone from meta (``zone``, ``availability_zone`` or ``az``), if any.
        token: the identity as bytes (derived; :func:`~lake_mesh_consul._core.hashing.\
endpoint_token`): what places the instance on a hash ring or in a Maglev table.
    """

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY_META)
    weights: Weights = field(default_factory=Weights)
    health: HealthStatus = HealthStatus.PASSING
    node: str = ""
    datacenter: str = ""
    zone: str | None = None
    # Derived once: endpoints are hashed and addressed on every request, and frozen.
    _hash: int = field(init=False, repr=False, compare=False, default=0)
    _host_port: str = field(init=False, repr=False, compare=False, default="")
    token: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        object.__setattr__(self, "_host_port", f"{host}:{self.port}")
        object.__setattr__(self, "_hash", hash((self.datacenter, self.node, self.id)))
        # Read for every instance on each consistent-hash update: computed once here.
        object.__setattr__(self, "token", endpoint_token(self.datacenter, self.node, self.id))

    @classmethod
    def create(
        cls,
        id: str,
        address: str,
        port: int,
        *,
        service: str = "",
        tags: tuple[str, ...] | list[str] = (),
        meta: Mapping[str, str] | None = None,
        weights: Weights | None = None,
        health: HealthStatus = HealthStatus.PASSING,
        node: str = "",
        datacenter: str = "",
        zone: str | None = None,
    ) -> ServiceEndpoint:
        """Build an endpoint, freezing ``meta`` and deriving ``zone`` from it when not given."""
        frozen_meta: Mapping[str, str] = MappingProxyType(dict(meta)) if meta else _EMPTY_META
        if zone is None:
            zone = next((frozen_meta[k] for k in ZONE_META_KEYS if frozen_meta.get(k)), None)
        return cls(
            id=id,
            service=service,
            address=address,
            port=port,
            tags=tuple(tags),
            meta=frozen_meta,
            weights=weights or Weights(),
            health=health,
            node=node,
            datacenter=datacenter,
            zone=zone,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """The identity: ``(datacenter, node, id)``."""
        return (self.datacenter, self.node, self.id)

    @property
    def instance(self) -> str:
        """The instance as people name it: ``id@node`` (``id`` when the node is unknown)."""
        return f"{self.id}{NODE_SEPARATOR}{self.node}" if self.node else self.id

    @property
    def host_port(self) -> str:
        """``address:port``, with IPv6 addresses bracketed (``[::1]:8080``)."""
        return self._host_port

    @property
    def weight(self) -> int:
        """The weight that applies to the current health status."""
        return self.weights.for_status(self.health)

    @property
    def eligible(self) -> bool:
        """Whether health allows picking it: passing or warning, with a weight above zero.

        Critical and maintenance instances are never eligible; a warning instance is
        eligible (weighted strategies give it ``weights.warning``) unless that weight is 0.
        """
        return self.weights.for_status(self.health) > 0

    @property
    def ineligible_reason(self) -> str | None:
        """Why health makes it ineligible, or ``None`` when it is eligible.

        One of ``"critical"``, ``"maintenance"`` or ``"warning weight 0"``.
        """
        if self.health is HealthStatus.CRITICAL or self.health is HealthStatus.MAINTENANCE:
            return str(self.health)
        if self.weights.for_status(self.health) <= 0:
            return f"{self.health} weight 0"
        return None

    def same_as(self, other: ServiceEndpoint) -> bool:
        """Whether every field (not only the identity) is equal."""
        return (
            self.key == other.key
            and self.address == other.address
            and self.port == other.port
            and self.tags == other.tags
            and dict(self.meta) == dict(other.meta)
            and self.weights == other.weights
            and self.health is other.health
            and self.node == other.node
            and self.zone == other.zone
            and self.service == other.service
        )

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ServiceEndpoint):
            return NotImplemented
        return (
            self.id == other.id and self.node == other.node and self.datacenter == other.datacenter
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        node = f", node={self.node!r}" if self.node else ""
        return (
            f"ServiceEndpoint(id={self.id!r}{node}, address={self.host_port!r}, "
            f"health={self.health.value})"
        )


def setting_names(endpoint: ServiceEndpoint) -> tuple[str, ...]:
    """The names a per-instance setting may use for ``endpoint``, most specific first.

    ``("web@node-1", "web")`` for ID ``web`` on node ``node-1``; ``("web",)`` when the node
    is unknown.
    """
    if endpoint.node:
        return (f"{endpoint.id}{NODE_SEPARATOR}{endpoint.node}", endpoint.id)
    return (endpoint.id,)


def settings_for(endpoint: ServiceEndpoint, by_name: Mapping[str, _V]) -> _V | None:
    """The setting that applies to ``endpoint`` in ``by_name`` (keyed by setting name).

    ``<id>@<node>`` wins over ``<id>``; ``None`` when neither is there.

    Example:
        >>> e = ServiceEndpoint.create("web", "10.0.0.1", 80, node="n1")
        >>> settings_for(e, {"web": "all", "web@n1": "this one"})
        'this one'
    """
    if not by_name:
        return None
    for name in setting_names(endpoint):
        value = by_name.get(name)
        if value is not None:
            return value
    return None


def ambiguous_ids(endpoints: Iterable[ServiceEndpoint]) -> dict[str, tuple[str, ...]]:
    """Service IDs registered on two or more nodes, each with its sorted node names.

    A plain ``<id>`` setting name would address all of those instances at once; a writer
    should name one of them as ``<id>@<node>`` instead.
    """
    nodes: dict[str, set[str]] = {}
    for endpoint in endpoints:
        nodes.setdefault(endpoint.id, set()).add(endpoint.node)
    return {i: tuple(sorted(n)) for i, n in sorted(nodes.items()) if len(n) > 1}
