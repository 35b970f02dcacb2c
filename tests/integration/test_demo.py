"""`lake-mesh demo` runs to completion and the caller sees no failure."""

from __future__ import annotations

import json

import pytest

from lake_mesh_consul.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_to_completion_without_caller_failures(consul_agent, capsys):
    code = main(
        ["demo", "--no-live", "--duration", "10", "--json", "--http-addr", consul_agent.address]
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0, captured.err
    assert summary["failures"] == 0
    assert summary["requests"] > 100
    assert summary["agent_started"] is False
    phases = {p["name"]: p for p in summary["phases"]}
    assert list(phases) == ["baseline", "failing", "slow", "reload", "killed"]
    # the failing instance's breaker took it out of the rotation; the killed one left it
    assert phases["failing"]["served"].get("demo-web-2", 0) < phases["failing"]["requests"] / 5
    assert phases["killed"]["served"].get("demo-web-1", 0) < phases["killed"]["requests"] / 3
    assert "reload" in captured.err or "round_robin" in captured.err
    assert "deregistered" in captured.err
