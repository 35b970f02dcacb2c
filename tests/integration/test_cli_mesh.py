"""`lake-mesh call`, `status` and `explain`: JSON output and exit codes."""

from __future__ import annotations

import json

import pytest
from _mesh_support import mesh_with_instances

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul.cli import main
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.integration


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_call_status_explain_json(mesh_config, consul_agent, unique_name, capsys):
    addr = ("--http-addr", consul_agent.address)
    with mesh_with_instances(mesh_config, unique_name, count=2) as (_, instances):
        code, out, _ = _run(
            capsys, "call", unique_name, "/items", "-X", "POST", "-d", "hello",
            "-H", "X-Demo: 1", "--strategy", "least_request", "--json", *addr,
        )  # fmt: skip
        assert code == 0
        answer = json.loads(out)
        assert answer["status"] == 200
        assert answer["endpoint"]["id"] in {i.name for i in instances}
        echoed = json.loads(answer["body"])
        assert (echoed["method"], echoed["path"], echoed["body"]) == ("POST", "/items", "hello")
        assert echoed["headers"]["X-Demo"] == "1"
        assert echoed["host"] == unique_name

        code, out, err = _run(capsys, "call", unique_name, "items", *addr)
        assert code == 0
        assert "200 OK from" in err
        assert json.loads(out)["path"] == "/items"

        for inst in instances:
            inst.failing = True
        code, out, _ = _run(capsys, "call", unique_name, "/", "--json", *addr)
        assert code == 1  # an error response: printed, exit 1
        assert json.loads(out)["status"] == 503

        code, out, _ = _run(capsys, "explain", unique_name, "--json", *addr)
        assert code == 0
        explained = json.loads(out)
        assert explained["service"] == unique_name
        assert explained["registered"] == 2
        assert {i["id"] for i in explained["instances"]} == {i.name for i in instances}
        assert all(i["health"] == "passing" for i in explained["instances"])
        assert {"retry_budget_left", "panic", "stale", "age", "strategy"} <= set(explained)

        code, out, _ = _run(capsys, "explain", unique_name, *addr)
        assert code == 0
        assert "2/2 eligible" in out
        assert "WHY NOT" in out

        code, out, _ = _run(capsys, "status", unique_name, "--json", *addr)
        assert code == 0
        status = json.loads(out)
        assert [s["service"] for s in status["services"]] == [unique_name]
        assert status["config_prefix"] == "lake-mesh"
        code, out, _ = _run(capsys, "status", "--json", *addr)
        assert code == 0
        assert unique_name in [s["service"] for s in json.loads(out)["services"]]
        code, out, _ = _run(capsys, "status", *addr)
        assert code == 0
        assert unique_name in out


def test_status_skips_a_name_outside_the_rule(mesh_config, consul_agent, unique_name, capsys):
    """Another tool registered ``<name>:v1`` (Consul accepts it): status notes it, exit 0."""
    addr = ("--http-addr", consul_agent.address)
    odd = f"{unique_name}:v1"
    with ConsulClient(mesh_config) as client:
        client.request(
            "PUT",
            "/v1/agent/service/register",
            operation="register a foreign service",
            json={"ID": odd, "Name": odd, "Address": "127.0.0.1", "Port": free_port()},
        )
        try:
            code, out, err = _run(capsys, "status", "--json", *addr)
            assert code == 0, err
            status = json.loads(out)
            assert odd not in [s["service"] for s in status["services"]]
            note = status["skipped"][odd]
            assert note.startswith("name not supported by lake-mesh: ")
            assert "not a valid service name" in note
            code, out, err = _run(capsys, "status", *addr)
            assert code == 0, err
            assert f"skipped {odd}: name not supported by lake-mesh" in out
        finally:
            client.request(
                "PUT",
                f"/v1/agent/service/deregister/{odd}",
                operation="deregister a foreign service",
            )


def test_unknown_service(consul_agent, unique_name, capsys):
    addr = ("--http-addr", consul_agent.address)
    code, out, err = _run(capsys, "call", f"{unique_name}-nobody", "/", "--json", *addr)
    assert code == 1
    assert json.loads(out)["kind"] == "MeshNoEndpoints"
    assert "none registered" in err
    assert "Traceback" not in err
    code, out, err = _run(capsys, "explain", f"{unique_name}-nobody", *addr)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("Error: no endpoint available")


def test_dead_agent_and_usage(capsys):
    dead = ("--http-addr", f"127.0.0.1:{free_port()}")
    for argv in (("call", "web", "/"), ("explain", "web"), ("status",)):
        code, out, err = _run(capsys, *argv, "--json", *dead)
        assert code == 1, argv
        assert json.loads(out)["kind"] == "ConsulUnavailable"
        assert "Traceback" not in err
        assert "is unavailable" in err
    assert main(["call", "web"]) == 2  # PATH missing
    assert main(["call", "web", "/", "-H", "no-colon", *dead]) == 2
    assert main(["explain"]) == 2
    capsys.readouterr()
