"""A change costs what changed: patched balancer snapshots equal full builds (issue 15.3)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.route import Route, RouteSettings
from lake_mesh_consul.testing import FakeClock

HEALTHS = (HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL)


def _endpoints(n: int) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="s", node=f"n{i % 3}")
        for i in range(n)
    ]


def _view(lb: LoadBalancer) -> list[tuple[str, bool, float]]:
    return [(s.endpoint.id, s.eligible, s.base_weight) for s in lb.stats().endpoints]


def _step(rng: random.Random, universe: list[ServiceEndpoint], present: list[int]) -> None:
    """One discovery change: health flips, or a few instances leave, or a few come back."""
    kind = rng.choice(("flip", "leave", "join"))
    absent = [i for i in range(len(universe)) if i not in present]
    if kind == "leave" and len(present) > 5:
        for i in rng.sample(present, rng.randint(1, 2)):
            present.remove(i)
    elif kind == "join" and absent:
        present.extend(rng.sample(absent, min(len(absent), rng.randint(1, 2))))
        present.sort()
    else:
        for i in rng.sample(present, rng.randint(1, 3)):
            universe[i] = replace(universe[i], health=rng.choice(HEALTHS))


@pytest.mark.parametrize("strategy", ["round_robin", "least_request", "ring_hash", "maglev"])
def test_changes_patch_the_snapshot_exactly_as_a_full_build(strategy: str) -> None:
    rng = random.Random(7)
    universe = _endpoints(40)
    present = list(range(40))
    clock = FakeClock()
    lb = LoadBalancer("s", strategy, endpoints=universe, clock=clock, panic_threshold=0.0)
    for _ in range(6 if strategy == "maglev" else 30):  # a Maglev table is costly to build
        _step(rng, universe, present)
        current = [universe[i] for i in present]
        lb.update(current)
        fresh = LoadBalancer("s", strategy, endpoints=current, clock=clock, panic_threshold=0.0)
        assert _view(lb) == _view(fresh)
        assert lb.endpoints == fresh.endpoints
        if strategy in ("ring_hash", "maglev") and fresh.stats().eligible:
            keys = [f"user-{k}" for k in range(30)]  # the same set: the same owners
            assert [lb.pick(k) for k in keys] == [fresh.pick(k) for k in keys]


def test_an_unchanged_answer_keeps_the_prepared_snapshot() -> None:
    endpoints = _endpoints(20)
    route = Route("s", RouteSettings(), endpoints=endpoints, clock=FakeClock())
    before = route.balancer.stats()
    strategy = route.balancer.strategy
    route.update(list(endpoints))  # a new list of the same objects: nothing to do
    route.update(tuple(endpoints))
    assert route.balancer.stats() == before
    assert route.balancer.strategy is strategy


def test_a_flip_reaches_explain_and_the_pick() -> None:
    endpoints = _endpoints(10)
    route = Route("s", RouteSettings(), endpoints=endpoints)
    flipped = list(endpoints)
    flipped[3] = replace(endpoints[3], health=HealthStatus.CRITICAL)
    route.update(flipped)
    assert {route.balancer.pick().id for _ in range(30)} == {f"e{i}" for i in range(10)} - {"e3"}
    reasons = {i.endpoint.id: i.reasons for i in route.explain().instances}
    assert reasons["e3"] == ("critical (a health check is failing)",)
    route.update(endpoints)
    assert "e3" in {route.balancer.pick().id for _ in range(30)}


def test_route_updates_with_joins_and_leaves_match_a_fresh_route() -> None:
    rng = random.Random(11)
    universe = _endpoints(30)
    present = list(range(30))
    clock = FakeClock()
    route = Route("s", RouteSettings(), endpoints=universe, clock=clock)
    for _ in range(40):
        _step(rng, universe, present)
        current = [universe[i] for i in present]
        route.update(current)
        fresh = Route("s", RouteSettings(), endpoints=current, clock=clock)
        seen = [(i.endpoint.id, i.eligible, i.reasons) for i in route.explain().instances]
        assert seen == [(i.endpoint.id, i.eligible, i.reasons) for i in fresh.explain().instances]
        members = sorted(s.endpoint.id for s in route.detector.states("s"))
        assert members == sorted(e.id for e in current)  # the ejection cap counts these
