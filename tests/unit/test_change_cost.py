"""A change costs what changed: the consistent-hash structures kept between snapshots.

Discovery hands an instance whose fields changed over as a new object with the same
identity; a kept ring hands that instance's own points to the new object (no rebuild), so a
pick returns the current object, on the same keys, exactly as a ring built fresh does.
"""

from __future__ import annotations

import dataclasses

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.hashing import endpoint_token
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.strategies import Maglev, RingHash

KEYS = [f"user-{i}" for i in range(2000)]


def fleet(n: int) -> tuple[ServiceEndpoint, ...]:
    return tuple(
        ServiceEndpoint.create("web", f"10.1.0.{i + 1}", 8080, node=f"node-{i}") for i in range(n)
    )


def picks(strategy: RingHash | Maglev, endpoints: tuple[ServiceEndpoint, ...]) -> list[object]:
    pick = strategy.prepare_candidates(endpoints)
    return [pick(key) for key in KEYS]


def test_a_changed_instance_keeps_its_keys_and_is_returned_as_the_new_object() -> None:
    eps = fleet(30)
    kept = RingHash()
    before = picks(kept, eps)
    changed = dataclasses.replace(eps[4], tags=("canary",), health=HealthStatus.WARNING)
    after_eps = (*eps[:4], changed, *eps[5:])
    after = picks(kept, after_eps)
    fresh = picks(RingHash(), after_eps)
    assert [id(p) for p in after] == [id(p) for p in fresh]  # the very objects of the snapshot
    assert [p.key for p in after] == [p.key for p in before]  # no key moved
    assert any(p is changed for p in after)
    assert not any(p is eps[4] for p in after)


def test_uniform_and_weighted_changes_alternate_like_a_fresh_ring() -> None:
    eps = fleet(24)
    kept = RingHash()
    heavy = tuple(
        dataclasses.replace(e, weights=dataclasses.replace(e.weights, passing=3)) for e in eps[:3]
    )
    steps = [eps, eps[:20], (*heavy, *eps[3:20]), eps[:20], eps[2:], eps]
    for step in steps:
        weights = tuple(float(e.weights.passing) for e in step)
        kept_pick, _ = kept.prepare_pair(step, weights, ())
        fresh_pick, _ = RingHash().prepare_pair(step, weights, ())
        assert [kept_pick(k) for k in KEYS] == [fresh_pick(k) for k in KEYS]


def test_token_is_the_identity_bytes() -> None:
    e = ServiceEndpoint.create("web", "10.0.0.1", 80, node="n1", datacenter="dc2")
    assert e.token == endpoint_token("dc2", "n1", "web")
    moved = dataclasses.replace(e, address="10.0.0.2", port=81)
    assert moved.token == e.token  # the address is not part of the identity
    other = dataclasses.replace(e, node="n2")
    assert other.token != e.token


def test_maglev_table_follows_a_changed_instance() -> None:
    eps = fleet(20)
    kept = Maglev()
    before = picks(kept, eps)
    changed = dataclasses.replace(eps[7], tags=("v2",))
    after = picks(kept, (*eps[:7], changed, *eps[8:]))
    assert [p.key for p in after] == [p.key for p in before]
    assert any(p is changed for p in after)
