"""Parsing /v1/health/service answers into ServiceEndpoints, defensively; queries and diffs."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from lake_mesh_consul._consul.discovery import (
    EndpointDiff,
    ServiceQuery,
    endpoint_from_dict,
    endpoint_to_dict,
    parse_health_entries,
    parse_health_entry,
    with_diff,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul.errors import InvalidSetting


def entry(
    sid: str = "web-1",
    *,
    address: str = "10.0.0.5",
    node_address: str = "192.168.1.1",
    port: Any = 8080,
    checks: list[dict[str, Any]] | None = None,
    meta: dict[str, str] | None = None,
    weights: Any = None,
    tags: Any = None,
    node: str = "node-a",
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "ID": sid,
        "Service": "web",
        "Tags": ["v1", "primary"] if tags is None else tags,
        "Address": address,
        "Meta": meta if meta is not None else {"version": "1.2"},
        "Port": port,
        "Weights": weights if weights is not None else {"Passing": 3, "Warning": 1},
    }
    return {
        "Node": {"ID": "abc", "Node": node, "Address": node_address, "Datacenter": "dc1"},
        "Service": service,
        "Checks": checks
        if checks is not None
        else [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"CheckID": f"service:{sid}", "Status": "passing", "ServiceID": sid},
        ],
    }


def test_parse_full_entry() -> None:
    e = parse_health_entry(entry(meta={"zone": "eu-1a", "version": "2"}))
    assert e.id == "web-1"
    assert e.service == "web"
    assert e.address == "10.0.0.5"
    assert e.port == 8080
    assert e.tags == ("v1", "primary")
    assert dict(e.meta) == {"zone": "eu-1a", "version": "2"}
    assert e.weights == Weights(3, 1)
    assert e.health is HealthStatus.PASSING
    assert e.node == "node-a"
    assert e.datacenter == "dc1"
    assert e.zone == "eu-1a"


def test_address_falls_back_to_the_node() -> None:
    assert parse_health_entry(entry(address="")).address == "192.168.1.1"


@pytest.mark.parametrize("address", ["::1", "[2001:db8::7]", "2001:db8::7"])
def test_ipv6_addresses(address: str) -> None:
    e = parse_health_entry(entry(address=address))
    assert not e.address.startswith("[")
    assert e.host_port.startswith("[")
    assert e.host_port.endswith("]:8080")


def test_queried_datacenter_wins_over_the_nodes() -> None:
    assert parse_health_entry(entry(), datacenter="dc9").datacenter == "dc9"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["passing", "passing"], HealthStatus.PASSING),
        (["passing", "warning"], HealthStatus.WARNING),
        (["warning", "critical"], HealthStatus.CRITICAL),
        (["passing", "bogus"], HealthStatus.CRITICAL),
        ([], HealthStatus.PASSING),
    ],
)
def test_health_is_the_aggregate_of_all_checks(statuses: list[str], expected: HealthStatus) -> None:
    checks = [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]
    assert parse_health_entry(entry(checks=checks)).health is expected


def test_maintenance_checks_count_as_maintenance() -> None:
    checks = [
        {"CheckID": "serfHealth", "Status": "passing"},
        {"CheckID": "_service_maintenance:web-1", "Status": "critical"},
    ]
    assert parse_health_entry(entry(checks=checks)).health is HealthStatus.MAINTENANCE
    node_maint = [{"CheckID": "_node_maintenance", "Status": "critical"}]
    assert parse_health_entry(entry(checks=node_maint)).health is HealthStatus.MAINTENANCE


def test_invalid_weights_fall_back_to_defaults(caplog: pytest.LogCaptureFixture) -> None:
    e = parse_health_entry(entry(weights={"Passing": 0, "Warning": 1}))
    assert e.weights == Weights()
    assert "invalid Weights" in caplog.text


def test_null_meta_and_tags() -> None:
    raw = entry()
    raw["Service"]["Meta"] = None
    raw["Service"]["Tags"] = None
    e = parse_health_entry(raw)
    assert e.tags == ()
    assert dict(e.meta) == {}


def _malformed() -> list[Any]:
    cases: list[Any] = [None, 42, "text", [], {}, {"Node": {}, "Service": None}]
    for mutate in (
        lambda d: d["Service"].pop("ID"),
        lambda d: d["Service"].__setitem__("ID", ""),
        lambda d: d["Service"].__setitem__("ID", 17),
        lambda d: d["Service"].__setitem__("Port", "80"),
        lambda d: d["Service"].__setitem__("Port", 0),
        lambda d: d["Service"].__setitem__("Port", 70000),
        lambda d: d["Service"].__setitem__("Port", True),
        lambda d: d["Service"].__setitem__("Tags", "v1"),
        lambda d: d["Service"].__setitem__("Meta", ["x"]),
        lambda d: d.__setitem__("Checks", {"a": 1}),
        lambda d: d.__setitem__("Checks", ["oops"]),
        lambda d: (d["Service"].__setitem__("Address", ""), d["Node"].__setitem__("Address", "")),
        lambda d: d["Service"].__setitem__("Address", 12),
        lambda d: d["Service"].__setitem__("Address", "not a host!"),
        lambda d: d["Service"].__setitem__("Address", "a=b"),
        lambda d: d["Service"].__setitem__("Address", "::::"),
        lambda d: d["Service"].__setitem__("Address", "[not-ipv6]"),
        lambda d: (
            d["Service"].__setitem__("Address", ""),
            d["Node"].__setitem__("Address", "x y"),
        ),
    ):
        raw = entry()
        mutate(raw)
        cases.append(raw)
    return cases


@pytest.mark.parametrize("bad", _malformed())
def test_malformed_entry_raises_value_error(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_health_entry(bad)


def test_malformed_entries_are_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    good = [entry("web-2", node="n2"), entry("web-1", node="n1")]
    data = [good[0], *_malformed(), good[1]]
    with caplog.at_level(logging.WARNING, logger="lake_mesh_consul.discovery"):
        out = parse_health_entries(data, service="web")
    assert [e.id for e in out] == ["web-1", "web-2"]  # sorted by (node, id)
    assert caplog.text.count("skipping malformed entry") == len(_malformed())


def test_keep_order_for_near() -> None:
    data = [entry("b", node="z"), entry("a", node="a")]
    assert [e.id for e in parse_health_entries(data, keep_order=True)] == ["b", "a"]


@pytest.mark.parametrize("data", [None, {}, "x", 3])
def test_non_list_answers_are_empty(data: Any) -> None:
    assert parse_health_entries(data) == ()


def test_parse_never_mutates_its_input() -> None:
    data = [entry()]
    before = copy.deepcopy(data)
    parse_health_entries(data)
    assert data == before


# --- queries --------------------------------------------------------------------------------


def test_query_params() -> None:
    q = ServiceQuery.build(
        "web",
        tags=["b", "a", "a"],
        node_meta={"rack": "r1"},
        filter="Service.Port == 80",
        dc="dc2",
        near="_agent",
    )
    assert q.tags == ("a", "b")
    assert q.params() == {
        "tag": ["a", "b"],
        "node-meta": ["rack:r1"],
        "filter": "Service.Port == 80",
        "dc": "dc2",
        "passing": "1",
        "near": "_agent",
    }
    assert q.path == "/v1/health/service/web"


def test_query_health_filters() -> None:
    assert "passing" not in ServiceQuery.build("web", include_warning=True).params()
    assert "passing" not in ServiceQuery.build("web", passing_only=False).params()

    def ep(health: HealthStatus, meta: dict[str, str] | None = None) -> ServiceEndpoint:
        return ServiceEndpoint.create("x", "h", 1, health=health, meta=meta)

    strict = ServiceQuery.build("web")
    warn = ServiceQuery.build("web", include_warning=True)
    everything = ServiceQuery.build("web", passing_only=False)
    for status, s, w, a in [
        (HealthStatus.PASSING, True, True, True),
        (HealthStatus.WARNING, False, True, True),
        (HealthStatus.CRITICAL, False, False, True),
        (HealthStatus.MAINTENANCE, False, False, True),
    ]:
        assert (
            strict.accepts(ep(status)),
            warn.accepts(ep(status)),
            everything.accepts(ep(status)),
        ) == (s, w, a)
    meta_q = ServiceQuery.build("web", service_meta={"v": "2"})
    assert meta_q.accepts(ep(HealthStatus.PASSING, {"v": "2", "x": "y"}))
    assert not meta_q.accepts(ep(HealthStatus.PASSING, {"v": "1"}))


def test_query_is_hashable_and_normalized() -> None:
    a = ServiceQuery.build("web", tags=["x", "y"], service_meta={"a": "1", "b": "2"})
    b = ServiceQuery.build("web", tags=["y", "x"], service_meta={"b": "2", "a": "1"})
    assert a == b
    assert hash(a) == hash(b)


@pytest.mark.parametrize("name", ["", "a/b"])
def test_query_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        ServiceQuery.build(name)


# --- diffs and round trips ------------------------------------------------------------


def test_diff() -> None:
    a = ServiceEndpoint.create("a", "10.0.0.1", 80)
    b = ServiceEndpoint.create("b", "10.0.0.2", 80)
    b_warn = ServiceEndpoint.create("b", "10.0.0.2", 80, health=HealthStatus.WARNING)
    c = ServiceEndpoint.create("c", "10.0.0.3", 80)
    d = EndpointDiff.between([a, b], [b_warn, c])
    assert d.added == (c,)
    assert d.removed == (a,)
    assert d.changed == (b_warn,)
    assert d
    assert not EndpointDiff.between([a], [a])


def test_with_diff_tracks_the_previous_snapshot() -> None:
    a = ServiceEndpoint.create("a", "10.0.0.1", 80)
    b = ServiceEndpoint.create("b", "10.0.0.2", 80)
    seen: list[tuple[list[str], list[str]]] = []
    listener = with_diff(
        lambda snap, diff: seen.append(([e.id for e in diff.added], [e.id for e in diff.removed]))
    )
    listener((a,))
    listener((a, b))
    listener((b,))
    assert seen == [(["a"], []), (["b"], []), ([], ["a"])]


def test_endpoint_dict_round_trip() -> None:
    e = parse_health_entry(entry(address="::1", meta={"az": "z1"}))
    back = endpoint_from_dict(endpoint_to_dict(e))
    assert back.same_as(e)


@pytest.mark.parametrize("address", ["web-1.internal", "my_app_1", "fe80::1%eth0", "[::1]"])
def test_host_names_and_ips_are_kept(address: str) -> None:
    assert parse_health_entry(entry(address=address)).address == address.strip("[]")


def test_an_address_that_is_no_host_is_skipped_with_a_line_naming_the_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = [entry("web-1", node="n1"), entry("web-bad", address="not a host!", node="n2")]
    with caplog.at_level(logging.WARNING, logger="lake_mesh_consul.discovery"):
        out = parse_health_entries(data, service="web")
    assert [e.id for e in out] == ["web-1"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "'web-bad'" in line
    assert "'not a host!'" in line
    assert "neither an IP nor a host name" in line


@pytest.mark.parametrize("name", ["bad/name", "", "a b", "-x", "x" * 256])
def test_query_rejects_an_invalid_service_name(name: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        ServiceQuery.build(name)
    assert info.value.setting == "name"
    assert isinstance(info.value, ValueError)
    assert "not a valid service name" in str(info.value) or "is required" in str(info.value)
