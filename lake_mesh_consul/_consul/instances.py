"""Which nodes carry a service ID, and the rule that keeps a per-instance setting unambiguous.

What a reader finds here: :func:`nodes_of` (one catalog read) and
:func:`refuse_ambiguous`, which a configuration write calls before it writes an
endpoint-level key. Consul keeps service IDs unique per agent only, so ``web`` registered
with ID ``web`` on three nodes is three instances; the plain key
``<prefix>/services/web/endpoints/web`` would reach all three, and the writer almost
certainly meant one. Such a write is refused with
:class:`~lake_mesh_consul.errors.AmbiguousInstance`, whose message lists the
``.../endpoints/<id>@<node>`` keys to write instead. A plain key whose ID is unique (or not
registered yet) is written as before; a qualified key is always unambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.config_schema import ENDPOINT
from lake_mesh_consul._core.endpoint import NODE_SEPARATOR
from lake_mesh_consul.errors import AmbiguousInstance

if TYPE_CHECKING:  # kvconfig calls this module
    from lake_mesh_consul._consul.kvconfig import KVLayout

__all__ = ["nodes_of", "refuse_ambiguous"]


def nodes_of(client: ConsulClient, service: str, instance_id: str) -> tuple[str, ...]:
    """The nodes (sorted) on which ``service`` has an instance with ID ``instance_id``.

    Reads ``/v1/catalog/service/<service>`` of the client's datacenter once.

    Raises:
        ConsulError: the catalog could not be read.
    """
    answer = client.request(
        "GET",
        f"/v1/catalog/service/{quote(service, safe='')}",
        operation=f"read the catalog of {service!r}",
        allow_404=True,
    )
    entries = answer.json() if answer.status == 200 else None
    if not isinstance(entries, list):
        return ()
    return tuple(
        sorted(
            {
                str(e.get("Node", ""))
                for e in entries
                if isinstance(e, dict) and e.get("ServiceID") == instance_id
            }
        )
    )


def refuse_ambiguous(client: ConsulClient, layout: KVLayout, keys: Iterable[str]) -> None:
    """Refuse to write a plain ``.../endpoints/<id>`` whose ID is on two or more nodes.

    Keys of other levels, qualified keys (``<id>@<node>``) and deletions are not checked
    (a deletion of a plain key removes a setting from every instance, as meant).

    Raises:
        AmbiguousInstance: naming the nodes and the ``<id>@<node>`` keys to write instead.
        ConsulError: the catalog could not be read.
    """
    for key in keys:
        where = layout.classify(key)
        if where is None or where[0] != ENDPOINT:
            continue
        _, service, name = where
        if service is None or name is None or NODE_SEPARATOR in name:
            continue
        nodes = nodes_of(client, service, name)
        if len(nodes) > 1:
            raise AmbiguousInstance(key, service, name, nodes)
