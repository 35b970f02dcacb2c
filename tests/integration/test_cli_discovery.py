"""`lake-mesh endpoints` and `lake-mesh watch`: JSON output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul.cli import main
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.integration


def register(client: ConsulClient, name: str, sid: str, port: int, **extra: Any) -> None:
    body = {"Name": name, "ID": sid, "Port": port, "Address": "127.0.0.1", **extra}
    client.request("PUT", "/v1/agent/service/register", operation="register", json=body)


def test_endpoints_json(mesh_config, consul_agent, unique_name, capsys):
    with ConsulClient(mesh_config) as client:
        register(client, unique_name, "a", 8080, Tags=["v1"], Meta={"zone": "z1"})
        register(
            client, unique_name, "b", 8081, Tags=["v2"], Check={"TTL": "60s", "Status": "critical"}
        )
        addr = ["--http-addr", consul_agent.address]
        assert main(["endpoints", unique_name, "--json", *addr]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [e["id"] for e in out] == ["a"]
        assert out[0]["port"] == 8080
        assert out[0]["zone"] == "z1"
        assert out[0]["health"] == "passing"

        assert main(["endpoints", unique_name, "--all", "--json", *addr]) == 0
        everything = json.loads(capsys.readouterr().out)
        assert {e["id"]: e["health"] for e in everything} == {"a": "passing", "b": "critical"}

        assert main(["endpoints", unique_name, "--all", "--tag", "v2", "--json", *addr]) == 0
        assert [e["id"] for e in json.loads(capsys.readouterr().out)] == ["b"]

        assert main(["endpoints", unique_name, *addr]) == 0
        text = capsys.readouterr().out
        assert "127.0.0.1:8080" in text
        assert "ID" in text.splitlines()[0]
        for sid in ("a", "b"):
            client.request("PUT", f"/v1/agent/service/deregister/{sid}", operation="dereg")


def test_endpoints_exit_codes(consul_agent, unique_name, capsys):
    dead = f"127.0.0.1:{free_port()}"
    # A dead agent fails at once (issue 14.6), not after --timeout: ConsulUnavailable.
    code = main(["endpoints", unique_name, "--json", "--http-addr", dead, "--timeout", "5"])
    assert code == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kind"] == "ConsulUnavailable"
    assert "Error:" in captured.err
    assert "Traceback" not in captured.err
    # a rejected filter is a failure too, at once
    code = main(
        [
            "endpoints",
            unique_name,
            "--filter",
            "Service.Port >= 1",
            "--http-addr",
            consul_agent.address,
        ]
    )
    assert code == 1
    assert "rejected" in capsys.readouterr().err
    assert main(["endpoints"]) == 2  # usage
    assert main(["endpoints", "x", "--timeout", "soon"]) == 2


def test_watch_json_lines_until_count(mesh_config, consul_agent, unique_name, capsys):
    def churn() -> None:
        time.sleep(0.5)
        with ConsulClient(mesh_config) as client:
            register(client, unique_name, "a", 8080)
            time.sleep(0.2)
            client.request("PUT", "/v1/agent/service/deregister/a", operation="dereg")

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    args = ["watch", unique_name, "--json", "--count", "3", "--http-addr", consul_agent.address]
    assert main(args) == 0
    thread.join(5)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[e["id"] for e in line["endpoints"]] for line in lines] == [[], ["a"], []]
    assert lines[1]["added"] == ["a"]
    assert lines[2]["removed"] == ["a"]
    assert all(line["service"] == unique_name for line in lines)


def test_watch_stops_on_ctrl_c(consul_agent, unique_name):
    command = [
        sys.executable,
        "-c",
        "from lake_mesh_consul.cli import main; raise SystemExit(main())",
        "watch",
        unique_name,
        "--http-addr",
        consul_agent.address,
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert "0 endpoint(s)" in first
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
