"""The multiplexed watcher's pure rules: which queries it serves, which services a change
of the check list names, and how long a watch waits after a connection-limit refusal."""

from __future__ import annotations

import random

import pytest

from lake_mesh_consul._consul.client import ConsulResponse
from lake_mesh_consul._consul.watch import failure_backoff
from lake_mesh_consul._consul.watch_mux import changed_services, decode_checks, muxable
from lake_mesh_consul._core.blocking import CONNECTION_LIMIT_BACKOFF, Backoff
from lake_mesh_consul.errors import ConsulConnectionLimit, ConsulUnavailable


@pytest.mark.parametrize(
    ("path", "params", "options", "expected"),
    [
        ("/v1/health/service/web", {}, {}, True),
        ("/v1/health/service/web", {"passing": "1", "tag": ["a", "b"]}, {"wait": 30}, True),
        ("/v1/health/service/web", {"near": "_agent"}, {}, False),
        ("/v1/health/service/web", {"filter": "Service.Port == 80"}, {}, False),
        ("/v1/health/service/web", {"node-meta": ["k:v"]}, {}, False),
        ("/v1/health/service/web", {"dc": "dc2"}, {}, False),
        ("/v1/health/service/web", {}, {"cached": True}, False),
        ("/v1/health/service/web", {}, {"max_stale": 2.0}, False),
        ("/v1/kv/app/", {"recurse": ""}, {}, False),
        ("/v1/health/service/", {}, {}, False),
    ],
)
def test_only_local_service_health_queries_are_multiplexed(path, params, options, expected):
    assert muxable(path, params, options) is expected


def test_a_check_change_names_its_service_and_a_node_check_everyone():
    old = {("n1", "service:a"): (10, "web", "critical"), ("n1", "serfHealth"): (5, "", "critical")}
    assert changed_services(old, dict(old)) == (set(), False)
    moved = {**old, ("n1", "service:a"): (11, "web", "warning")}
    assert changed_services(old, moved) == ({"web"}, False)
    appeared = {**old, ("n2", "service:b"): (12, "api", "critical")}
    assert changed_services(old, appeared) == ({"api"}, False)
    vanished = {("n1", "serfHealth"): (5, "", "critical")}  # service:a became passing
    assert changed_services(old, vanished) == ({"web"}, False)
    node = {("n1", "service:a"): (10, "web", "critical")}  # the node check recovered
    assert changed_services(old, node) == (set(), True)


def test_decode_checks_keeps_what_the_diff_needs():
    body = (
        b'[{"Node": "n1", "CheckID": "service:a", "ServiceName": "web", "Status": "critical",'
        b' "ModifyIndex": 7}, {"Node": "n1", "CheckID": "serfHealth", "ModifyIndex": "x"}, 3]'
    )
    answer = ConsulResponse(status=200, body=body, index=7, known_leader=True, last_contact=0)
    assert decode_checks(answer) == {
        ("n1", "service:a"): (7, "web", "critical"),
        ("n1", "serfHealth"): (-1, "", ""),
    }
    with pytest.raises(ValueError, match="not a list"):
        decode_checks(ConsulResponse(200, b"{}", 7, True, 0))


def test_a_connection_limit_refusal_allows_at_most_two_attempts_a_minute():
    usual = Backoff()
    limited = ConsulConnectionLimit("http://127.0.0.1:8500", "connection reset (watch web)", 3)
    assert failure_backoff(limited, usual) is CONNECTION_LIMIT_BACKOFF
    assert failure_backoff(ConsulUnavailable("a", "refused"), usual) is usual
    rng = random.Random(4)
    pauses = [CONNECTION_LIMIT_BACKOFF.delay(n, rng) for n in range(1, 200)]
    assert min(pauses) >= 30.0
    assert max(pauses) <= 120.0
