"""A change costs what changed: the parser's change set, and what route and balancer do with it.

The parser says which positions changed (:class:`EndpointChanges`); the route and balancer
then look only at those. Whatever the change, the result must be what comparing both
snapshots (or building from scratch) gives: same endpoints, same eligibility, same weights,
same picks.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_mesh_consul._consul.health_entries import HealthEntryParser, parse_health_entries
from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.route import Route, RouteSettings
from lake_mesh_consul.errors import NoEndpointsAvailable

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATUSES = ("passing", "warning", "critical")


def entry(i: int, *, index: int = 10) -> dict[str, Any]:
    """An entry shaped like Consul's, with the ModifyIndex values the parser keys on."""
    sid = f"web-{i}"
    return {
        "Node": {
            "Node": f"node-{i:03d}",
            "Address": f"10.0.0.{i % 250}",
            "Datacenter": "dc1",
            "ModifyIndex": 5,
        },
        "Service": {
            "ID": sid,
            "Service": "web",
            "Tags": ["v1"],
            "Address": f"10.1.0.{i % 250}",
            "Meta": {},
            "Port": 8000 + i,
            "Weights": {"Passing": 1, "Warning": 1},
            "ModifyIndex": index,
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "Output": "", "ModifyIndex": 5},
            {
                "CheckID": f"service:{sid}",
                "Status": "passing",
                "Output": "",
                "ModifyIndex": index,
            },
        ],
    }


def answer(n: int) -> list[dict[str, Any]]:
    return [entry(i) for i in range(n)]


def set_status(data: list[dict[str, Any]], i: int, status: str, index: int) -> None:
    data[i]["Checks"][1].update(Status=status, ModifyIndex=index)


# --- the parser's change set ------------------------------------------------------------------


def test_a_flip_names_its_position_and_reuses_the_rest() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(30)
    first = parser.parse(copy.deepcopy(data))
    set_status(data, 7, "critical", 11)
    second = parser.parse(copy.deepcopy(data))
    changes = parser.changes
    assert changes is not None
    assert changes.applies_to(first, second)
    assert changes.in_place
    assert changes.changed == (7,)
    assert second[7].health is HealthStatus.CRITICAL
    assert all(a is b for i, (a, b) in enumerate(zip(first, second, strict=True)) if i != 7)
    assert parser.parsed == 1


def test_an_answer_where_nothing_moved_is_the_same_tuple() -> None:
    parser = HealthEntryParser(service="web")
    first = parser.parse(answer(20))
    second = parser.parse(answer(20))
    assert second is first
    assert parser.changes is not None
    assert not parser.changes


def test_a_check_output_that_moved_keeps_the_endpoint_object() -> None:
    """A TTL check's output raises its ModifyIndex; nothing a consumer sees changed."""
    parser = HealthEntryParser(service="web")
    data = answer(10)
    first = parser.parse(copy.deepcopy(data))
    data[3]["Checks"][1].update(Output="still fine", ModifyIndex=12)
    assert parser.parse(copy.deepcopy(data)) is first
    assert parser.parsed == 1
    assert parser.parse(copy.deepcopy(data)) is first
    assert parser.parsed == 0  # its new index was remembered


def test_membership_changes_and_malformed_entries_give_no_change_set() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(10)
    parser.parse(copy.deepcopy(data))
    del data[4]
    assert len(parser.parse(copy.deepcopy(data))) == 9
    assert parser.changes is None  # the consumers compare the snapshots themselves
    data[2]["Service"].update(Port="nope", ModifyIndex=20)
    assert len(parser.parse(copy.deepcopy(data))) == 8
    assert parser.changes is None


def test_reuse_false_gives_no_change_set() -> None:
    parser = HealthEntryParser(service="web")
    parser.parse(answer(5))
    parser.parse(answer(5), reuse=False)
    assert parser.changes is None


@st.composite
def edits(draw: st.DrawFn) -> list[tuple[int, int, str]]:
    """(kind, instance, status) steps: 0 status, 1 tags, 2 output only, 3 leave, 4 join."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, 4), st.integers(0, 11), st.sampled_from(STATUSES)),
            min_size=1,
            max_size=25,
        )
    )


@EXAMPLES
@given(steps=edits())
def test_a_change_set_always_describes_the_step(steps: list[tuple[int, int, str]]) -> None:
    """Whatever happens, the answer is what a fresh parse gives, and the change set is true."""
    parser = HealthEntryParser(service="web")
    data = answer(8)
    previous = parser.parse(copy.deepcopy(data))
    index = 100
    for kind, i, status in steps:
        index += 1
        present = [j for j, e in enumerate(data) if e["Service"]["ID"] == f"web-{i}"]
        if kind == 4 and not present:
            data.append(entry(i, index=index))
            data.sort(key=lambda e: e["Node"]["Node"])
        elif present and kind == 3:
            del data[present[0]]
        elif present:
            target = data[present[0]]
            if kind == 0:
                target["Checks"][1].update(Status=status, ModifyIndex=index)
            elif kind == 1:
                target["Service"].update(Tags=[f"t{index % 3}"], ModifyIndex=index)
            else:
                target["Checks"][1].update(Output=f"o{index}", ModifyIndex=index)
        got = parser.parse(copy.deepcopy(data))
        fresh = parse_health_entries(copy.deepcopy(data), service="web")
        assert len(got) == len(fresh)
        assert all(a.same_as(b) for a, b in zip(got, fresh, strict=True))
        changes = parser.changes
        if changes is not None:
            assert changes.applies_to(previous, got)
            assert changes.in_place
            for j, (a, b) in enumerate(zip(previous, got, strict=True)):
                if j in changes.changed:
                    assert a == b
                    assert not a.same_as(b)
                else:
                    assert a is b
        previous = got


# --- route and balancer: with a change set or without, the same state ---------------------------


def endpoints(n: int) -> tuple[ServiceEndpoint, ...]:
    return tuple(
        ServiceEndpoint.create(f"e{i:02d}", f"10.0.0.{i}", 80, node=f"n{i:02d}") for i in range(n)
    )


def changed(
    snapshot: tuple[ServiceEndpoint, ...], positions: list[int], rng: random.Random
) -> tuple[ServiceEndpoint, ...]:
    """``snapshot`` with new objects at ``positions``: other health or weights."""
    out = list(snapshot)
    for i in positions:
        health = rng.choice(list(HealthStatus))
        weights = Weights(passing=rng.randint(1, 3), warning=rng.randint(0, 2))
        out[i] = ServiceEndpoint.create(
            out[i].id, out[i].address, 80, node=out[i].node, health=health, weights=weights
        )
    return tuple(out)


def state(lb: LoadBalancer) -> tuple[Any, ...]:
    stats = lb.stats()
    rows = tuple((s.endpoint.id, s.eligible, s.reason, s.weight) for s in stats.endpoints)
    return stats.eligible, stats.panic, stats.reason, rows


def picks(lb: LoadBalancer, count: int) -> list[str]:
    out = []
    for _ in range(count):
        try:
            out.append(lb.pick().id)
        except NoEndpointsAvailable as exc:  # the failure itself is compared
            out.append(type(exc).__name__)
    return out


@pytest.mark.parametrize("strategy", ["round_robin", "least_request", "weighted", "nearest_first"])
@EXAMPLES
@given(seed=st.integers(0, 10_000), rounds=st.integers(1, 12))
def test_a_balancer_given_the_change_set_ends_as_one_that_compares(
    strategy: str, seed: int, rounds: int
) -> None:
    rng = random.Random(seed)
    snapshot = endpoints(12)
    told = LoadBalancer("web", strategy, endpoints=snapshot, rng=random.Random(1))
    compared = LoadBalancer("web", strategy, endpoints=snapshot, rng=random.Random(1))
    for _ in range(rounds):
        positions = sorted(rng.sample(range(len(snapshot)), rng.randint(1, 4)))
        new = changed(snapshot, positions, rng)
        told.update(new, EndpointChanges(snapshot, new, changed=tuple(positions)))
        compared.update(new)
        snapshot = new
        fresh = LoadBalancer("web", strategy, endpoints=snapshot, rng=random.Random(1))
        assert state(told) == state(compared) == state(fresh)
        assert picks(told, 30) == picks(compared, 30)


def test_a_change_set_for_another_snapshot_is_not_trusted() -> None:
    snapshot = endpoints(5)
    lb = LoadBalancer("web", endpoints=snapshot)
    new = changed(snapshot, [1], random.Random(3))
    stale = EndpointChanges(endpoints(5), new, changed=())  # says "nothing", about others
    lb.update(new, stale)
    assert lb.endpoints is new
    assert state(lb) == state(LoadBalancer("web", endpoints=new))


def test_neighbours_flipping_together_keep_discovery_order() -> None:
    """Two adjacent endpoints change at once: one comes back, the next changes weight."""
    base = endpoints(6)
    down = list(base)
    down[2] = ServiceEndpoint.create(
        "e02", "10.0.0.2", 80, node="n02", health=HealthStatus.CRITICAL
    )
    down_t = tuple(down)
    lb = LoadBalancer("web", "round_robin", endpoints=down_t)
    back = list(base)
    back[3] = ServiceEndpoint.create("e03", "10.0.0.3", 80, node="n03", health=HealthStatus.WARNING)
    back_t = tuple(back)
    lb.update(back_t, EndpointChanges(down_t, back_t, changed=(2, 3)))
    fresh = LoadBalancer("web", "round_robin", endpoints=back_t)
    assert picks(lb, 12) == picks(fresh, 12)


@EXAMPLES
@given(seed=st.integers(0, 10_000), rounds=st.integers(1, 8))
def test_a_route_given_the_change_set_ends_as_one_that_compares(seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    snapshot = endpoints(10)
    settings_ = RouteSettings(strategy="round_robin")
    told = Route("web", settings_, endpoints=snapshot, rng=random.Random(1))
    compared = Route("web", settings_, endpoints=snapshot, rng=random.Random(1))
    for _ in range(rounds):
        positions = sorted(rng.sample(range(len(snapshot)), rng.randint(1, 3)))
        new = changed(snapshot, positions, rng)
        told.update(new, EndpointChanges(snapshot, new, changed=tuple(positions)))
        compared.update(new)
        snapshot = new
        assert told.endpoints is new
        assert state(told.balancer) == state(compared.balancer)
        assert picks(told.balancer, 20) == picks(compared.balancer, 20)
