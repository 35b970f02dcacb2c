"""``lake-mesh register / deregister / maint / checks``: JSON output and exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lake_mesh_consul.cli import main
from lake_mesh_consul.testing._agent import free_port
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines and "--json" in argv else captured.out, captured.err


def test_register_maint_checks_deregister(
    consul_agent: ConsulAgentHandle, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = ("--http-addr", consul_agent.address)
    code, out, _ = run(
        capsys,
        "register",
        unique_name,
        "--port",
        "8080",
        "--address",
        "127.0.0.1",
        "--tag",
        "v1",
        "--tag",
        "blue",
        "--meta",
        "zone=a",
        "--tcp-check",
        "127.0.0.1:1",
        "--ttl",
        "15s",
        "--interval",
        "30s",
        "--deregister-after",
        "1m",
        "--json",
        *addr,
    )
    assert code == 0
    service_id = f"{unique_name}-127.0.0.1-8080"
    assert out["id"] == service_id
    assert out["tags"] == ["v1", "blue"]
    assert out["meta"] == {"zone": "a"}
    assert [c["kind"] for c in out["checks"]] == ["tcp", "ttl"]

    code, checks, _ = run(capsys, "checks", unique_name, "--json", *addr)
    assert code == 0
    assert {c["check_id"] for c in checks} == {f"service:{service_id}:1", f"service:{service_id}:2"}
    assert {c["type"] for c in checks} == {"tcp", "ttl"}
    assert all(c["service_id"] == service_id for c in checks)

    code, out, _ = run(capsys, "maint", service_id, "on", "--reason", "deploy", "--json", *addr)
    assert (code, out) == (0, {"id": service_id, "maintenance": True, "reason": "deploy"})
    code, checks, _ = run(capsys, "checks", unique_name, "--json", *addr)
    maint = [c for c in checks if c["check_id"] == f"_service_maintenance:{service_id}"]
    assert maint[0]["status"] == "critical"
    assert maint[0]["notes"] == "deploy"
    code, out, _ = run(capsys, "maint", service_id, "off", *addr)
    assert code == 0
    assert "Maintenance off" in out

    code, out, _ = run(capsys, "checks", unique_name, *addr)
    assert code == 0
    assert "SERVICE ID" in out
    assert service_id in out

    code, out, _ = run(capsys, "deregister", service_id, "--json", *addr)
    assert (code, out) == (0, {"id": service_id, "deregistered": True})
    # An unknown service exits 1 on every command (issue 14.6), `checks` included.
    code, checks, _ = run(capsys, "checks", unique_name, "--json", *addr)
    assert (code, checks["kind"]) == (1, "NoEndpointsAvailable")


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--port", "0"], "--port"),
        (["--port", "80", "--meta", "novalue"], "--meta"),
        (["--port", "80", "--ttl", "soon"], "--ttl"),
        (["--port", "80", "--http-check", "ftp://x", "--interval", "1s"], "--http-check"),
        (["--port", "80", "--tcp-check", "nohost"], "--tcp-check"),
        (["--port", "80", "--tcp-check", "h:1", "--interval", "0s"], "--interval"),
        (["--port", "80", "--ttl", "5s", "--deregister-after", "30s"], "--deregister-after"),
        (["--port", "80", "--deregister-after", "5m"], "--deregister-after"),
        (["--port", "80", "--id", "a/b"], "--id"),
    ],
)
def test_invalid_input_is_one_line_before_any_network_call(
    extra: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at this address: an error naming the flag proves nothing was sent.
    addr = f"127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "register", "web", *extra, "--http-addr", addr, "--json")
    assert code == 1
    assert out["kind"] == "configuration"
    assert out["error"].startswith(f"{flag}:")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_unreachable_agent_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "register", "web", "--port", "80", "--http-addr", addr)
    assert code == 1
    assert addr in err
    assert "unavailable" in err
    assert "Traceback" not in err


def test_maint_of_unknown_instance_is_exit_1(
    consul_agent: ConsulAgentHandle, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "maint", unique_name, "on", "--json", "--http-addr", consul_agent.address
    )
    assert code == 1
    assert out["kind"] == "ConsulNotFound"
    assert unique_name in err


def test_usage_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "web"]) == 2  # --port is required
    assert main(["register", "web", "--port", "eighty"]) == 2
    assert main(["maint", "web-1", "sideways"]) == 2
    capsys.readouterr()
