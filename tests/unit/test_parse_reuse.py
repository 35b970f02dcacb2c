"""A change costs what changed: HealthEntryParser reuses endpoints whose ModifyIndex held."""

from __future__ import annotations

import copy
import random
from typing import Any

from lake_mesh_consul._consul.health_entries import HealthEntryParser, parse_health_entries
from lake_mesh_consul._core.health import HealthStatus


def entry(i: int, *, index: int = 10, node: str | None = None) -> dict[str, Any]:
    """An entry shaped like Consul's, with the ModifyIndex values the parser keys on."""
    sid = f"web-{i}"
    return {
        "Node": {
            "Node": node or f"node-{i % 3}",
            "Address": f"10.0.0.{i % 250}",
            "Datacenter": "dc1",
            "CreateIndex": 5,
            "ModifyIndex": 5,
        },
        "Service": {
            "ID": sid,
            "Service": "web",
            "Tags": ["v1"],
            "Address": f"10.1.0.{i % 250}",
            "Meta": {"zone": f"z{i % 2}"},
            "Port": 8000 + i,
            "Weights": {"Passing": 1, "Warning": 1},
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": "", "ModifyIndex": 5},
            {
                "CheckID": f"service:{sid}",
                "Status": "passing",
                "ServiceID": sid,
                "ModifyIndex": index,
            },
        ],
    }


def answer(n: int) -> list[dict[str, Any]]:
    return [entry(i) for i in range(n)]


def by_id(endpoints: Any) -> dict[str, Any]:
    return {e.id: e for e in endpoints}


def test_an_unchanged_answer_reuses_every_endpoint_object() -> None:
    parser = HealthEntryParser(service="web")
    first = parser.parse(answer(50))
    second = parser.parse(answer(50))
    assert len(second) == 50
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert (parser.parsed, parser.reused) == (0, 50)


def test_a_health_flip_parses_only_the_instance_that_changed() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(100)
    before = by_id(parser.parse(data))
    changed = copy.deepcopy(data)
    changed[7]["Checks"][1].update(Status="critical", ModifyIndex=11)
    after = by_id(parser.parse(changed))
    assert after["web-7"] is not before["web-7"]
    assert after["web-7"].health is HealthStatus.CRITICAL
    assert all(after[k] is before[k] for k in before if k != "web-7")
    assert (parser.parsed, parser.reused) == (1, 99)


def test_a_moved_service_or_node_index_is_parsed_again() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(3)
    before = by_id(parser.parse(data))
    changed = copy.deepcopy(data)
    changed[0]["Service"].update(Port=9999, ModifyIndex=12)
    changed[1]["Service"]["Address"] = ""  # falls back to the node's address, which moved
    changed[1]["Node"].update(Address="10.9.9.9", ModifyIndex=13)
    after = by_id(parser.parse(changed))
    assert after["web-0"].port == 9999
    assert after["web-1"].address == "10.9.9.9"
    assert after["web-2"] is before["web-2"]


def test_an_added_check_is_seen_even_if_the_others_kept_their_index() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(2)
    parser.parse(data)
    changed = copy.deepcopy(data)
    changed[0]["Checks"].append(
        {"CheckID": "_service_maintenance:web-0", "Status": "critical", "ModifyIndex": 3}
    )
    assert by_id(parser.parse(changed))["web-0"].health is HealthStatus.MAINTENANCE


def test_entries_without_indexes_are_always_parsed() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(4)
    for e in data:
        del e["Service"]["ModifyIndex"]
    first = parser.parse(data)
    data[2]["Checks"][1]["Status"] = "warning"  # changed without any index to say so
    second = parser.parse(data)
    assert not any(a is b for a, b in zip(first, second, strict=True))
    assert by_id(second)["web-2"].health is HealthStatus.WARNING
    assert parser.reused == 0


def test_same_id_on_two_nodes_is_two_instances() -> None:
    parser = HealthEntryParser(service="web")
    data = [entry(1, node="node-a"), entry(1, node="node-b")]
    first = parser.parse(data)
    changed = copy.deepcopy(data)
    changed[1]["Checks"][1].update(Status="critical", ModifyIndex=20)
    second = parser.parse(changed)
    assert [e.node for e in second] == ["node-a", "node-b"]
    assert second[0] is first[0]
    assert second[1].health is HealthStatus.CRITICAL


def test_an_instance_that_left_is_forgotten() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(3)
    first = by_id(parser.parse(data))
    parser.parse(data[:2])
    back = by_id(parser.parse(data))
    assert back["web-2"] is not first["web-2"]
    assert back["web-0"] is first["web-0"]


def test_reuse_false_and_an_empty_answer_parse_from_scratch() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(5)
    first = parser.parse(data)
    assert not any(a is b for a, b in zip(first, parser.parse(data, reuse=False), strict=True))
    assert parser.parse(None) == ()
    assert parser.parse(data)[0] is not first[0]


def test_malformed_entries_are_skipped_and_not_remembered() -> None:
    parser = HealthEntryParser(service="web")
    data = answer(3)
    data[1]["Service"]["Port"] = "not a port"
    assert [e.id for e in parser.parse(data)] == ["web-0", "web-2"]
    assert [e.id for e in parser.parse(data)] == ["web-0", "web-2"]
    assert parser.parsed == 1  # the bad one is tried again, the good ones are reused


def test_random_changes_give_what_a_fresh_parse_gives() -> None:
    """Whatever changes, the reused result equals parsing the answer from scratch."""
    rng = random.Random(15)
    parser = HealthEntryParser(service="web")
    data = answer(40)
    index = 100
    for _ in range(200):
        index += 1
        target = rng.choice(data)
        what = rng.randrange(4)
        if what == 0:
            target["Checks"][1].update(
                Status=rng.choice(["passing", "warning", "critical"]), ModifyIndex=index
            )
        elif what == 1:
            target["Service"].update(Tags=[f"t{index}"], ModifyIndex=index)
        elif what == 2:
            target["Node"].update(Address=f"10.7.0.{index % 250}", ModifyIndex=index)
            target["Service"]["Address"] = ""
        elif len(data) > 1:
            data.remove(target)
        got = parser.parse(copy.deepcopy(data))
        fresh = parse_health_entries(copy.deepcopy(data), service="web")
        assert len(got) == len(fresh)
        assert all(a.same_as(b) for a, b in zip(got, fresh, strict=True))


def test_keep_order_keeps_consuls_order() -> None:
    parser = HealthEntryParser(service="web", keep_order=True)
    data = [entry(2), entry(1)]
    parser.parse(data)
    assert [e.id for e in parser.parse(data)] == ["web-2", "web-1"]
