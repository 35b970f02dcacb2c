"""Instance identity: (datacenter, node, service ID), and how a setting names one instance.

Consul guarantees a service ID unique per agent only; ``web`` registered with ID ``web`` on
three nodes is three instances, and must stay three through the balancer, its stats, the
hash strategies and the per-instance settings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.endpoint import (
    ServiceEndpoint,
    ambiguous_ids,
    setting_names,
    settings_for,
)
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.strategies import STRATEGIES, Weighted, strategy_by_name
from lake_mesh_consul.testing import FakeClock


def same_id_on(nodes: int, *, dc: str = "dc1") -> tuple[ServiceEndpoint, ...]:
    return tuple(
        ServiceEndpoint.create("web", f"10.0.0.{i + 1}", 8080, node=f"node-{i}", datacenter=dc)
        for i in range(nodes)
    )


def test_same_id_on_two_nodes_is_two_instances() -> None:
    a, b = same_id_on(2)
    assert a != b
    assert a.key != b.key
    assert len({a, b}) == 2
    assert a.key == ("dc1", "node-0", "web")
    assert a.instance == "web@node-0"


def test_identity_ignores_everything_but_datacenter_node_and_id() -> None:
    a = ServiceEndpoint.create("web", "10.0.0.1", 8080, node="n1", datacenter="dc1")
    moved = ServiceEndpoint.create(
        "web", "10.9.9.9", 9090, node="n1", datacenter="dc1", health=HealthStatus.CRITICAL
    )
    other_dc = ServiceEndpoint.create("web", "10.0.0.1", 8080, node="n1", datacenter="dc2")
    assert a == moved
    assert hash(a) == hash(moved)
    assert not a.same_as(moved)
    assert a != other_dc


def test_repr_shows_the_node() -> None:
    (a,) = same_id_on(1)
    assert "node='node-0'" in repr(a)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_spreads_over_instances_sharing_an_id(name: str) -> None:
    eps = same_id_on(3)
    lb = LoadBalancer("web", name, endpoints=eps, clock=FakeClock())  # equal EWMA stamps
    keys = [f"user-{i}" for i in range(600)] if name in {"ring_hash", "maglev"} else [None] * 600
    counts = Counter(lb.pick(key).node for key in keys)
    if name == "nearest_first":
        assert counts == {"node-0": 600}  # by design: the first in discovery's order
    else:
        assert set(counts) == {"node-0", "node-1", "node-2"}
        assert min(counts.values()) >= 100, counts


def test_a_retry_excludes_only_the_instance_it_tried() -> None:
    eps = same_id_on(3)
    lb = LoadBalancer("web", "round_robin", endpoints=eps)
    first = lb.pick()
    second = lb.pick(exclude=frozenset({first}))
    assert second.id == first.id
    assert second.node != first.node


def test_setting_names_and_lookup_prefer_the_qualified_name() -> None:
    a, b = same_id_on(2)
    assert setting_names(a) == ("web@node-0", "web")
    assert setting_names(ServiceEndpoint.create("web", "10.0.0.1", 80)) == ("web",)
    settings = {"web": {"weight": 1}, "web@node-1": {"weight": 5}}
    assert settings_for(a, settings) == {"weight": 1}
    assert settings_for(b, settings) == {"weight": 5}
    assert settings_for(a, {}) is None


def test_ambiguous_ids_lists_the_nodes_to_name() -> None:
    eps = (*same_id_on(3), ServiceEndpoint.create("api", "10.0.1.1", 80, node="node-0"))
    assert ambiguous_ids(eps) == {"web": ("node-0", "node-1", "node-2")}
    assert ambiguous_ids(eps[:1]) == {}


def test_weighted_overrides_address_one_instance_by_id_at_node() -> None:
    eps = same_id_on(2)
    w = Weighted(overrides={"web@node-1": 3})
    counts = Counter(w.pick(eps).node for _ in range(400))
    assert counts == {"node-0": 100, "node-1": 300}


@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_hash_points_come_from_the_node_too(name: str) -> None:
    eps = same_id_on(3)
    options: dict[str, Any] = {"table_size": 5003} if name == "maglev" else {}
    strategy = strategy_by_name(name, **options)
    counts = Counter(strategy.pick(eps, f"k{i}").node for i in range(3000))
    assert min(counts.values()) >= 600, counts
