"""`lake-mesh doctor` and `lake-mesh agent`: JSON output and exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lake_mesh_consul.cli import main
from lake_mesh_consul.testing._agent import find_consul_binary, free_port

pytestmark = pytest.mark.integration


def _json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_doctor_json_against_the_agent(consul_agent, capsys):
    code = main(["doctor", "--json", "--http-addr", consul_agent.address])
    report = _json(capsys)
    assert code == 0, report
    assert report["leader"]
    assert report["version"]
    assert report["datacenter"] == consul_agent.datacenter
    assert report["acl"]["enabled"] is False
    assert report["tls"]["in_use"] is False
    assert report["ok"] is True


def test_doctor_human_output(consul_agent, capsys):
    assert main(["doctor", "--http-addr", consul_agent.address]) == 0
    out = capsys.readouterr().out
    assert "leader:" in out
    assert "acls enforced: no" in out


def test_doctor_on_an_acl_agent_without_token_names_the_problem(consul_acl_agent, capsys):
    code = main(["doctor", "--json", "--http-addr", consul_acl_agent.address])
    report = _json(capsys)
    assert code == 1
    assert report["acl"]["enabled"] is True
    assert report["acl"]["token_works"] is False
    assert any("no token" in p for p in report["problems"])


def test_doctor_with_a_management_token_file(consul_acl_agent, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(consul_acl_agent.token)
    args = ["doctor", "--json", "--http-addr", consul_acl_agent.address]
    code = main([*args, "--token-file", str(token_file)])
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0, report
    assert report["acl"] == {
        **report["acl"],
        "enabled": True,
        "token_set": True,
        "token_works": True,
    }
    assert report["acl"]["default_policy"] == "deny"
    assert consul_acl_agent.token not in captured.out + captured.err


def test_doctor_against_a_dead_address_is_one_line_and_exit_1():
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lake_mesh_consul.cli import main; sys.exit(main())",
            "doctor",
            "--http-addr",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0]
    assert "unavailable" in lines[0]


def test_doctor_json_against_a_dead_address(capsys):
    code = main(["doctor", "--json", "--http-addr", f"127.0.0.1:{free_port()}"])
    assert code == 1
    assert "unavailable" in _json(capsys)["error"]


def test_bad_usage_is_exit_2(capsys):
    assert main(["doctor", "--no-such-flag"]) == 2
    assert main(["agent"]) == 2
    assert main(["agent", "up", "--mode", "nonsense"]) == 2


def test_invalid_address_is_exit_1(capsys):
    assert main(["doctor", "--http-addr", "ftp://nowhere"]) == 1
    assert "address" in capsys.readouterr().err


@pytest.mark.binary
def test_agent_up_status_down_with_the_binary(tmp_path, monkeypatch, capsys):
    binary = find_consul_binary()
    if binary is None:
        pytest.fail("no consul binary: run `lake-mesh agent provision`")
    monkeypatch.setenv("LAKE_MESH_CONSUL_BIN", str(binary))
    monkeypatch.setenv("LAKE_MESH_CACHE", str(tmp_path))
    port = free_port()
    assert main(["agent", "status", "--json"]) == 1
    assert _json(capsys)["running"] is False
    try:
        assert main(["agent", "up", "--mode", "binary", "--port", str(port), "--json"]) == 0
        up = _json(capsys)
        assert up["mode"] == "binary"
        assert up["consul_http_addr"] == f"http://127.0.0.1:{port}"
        assert main(["agent", "status", "--json"]) == 0
        status = _json(capsys)
        assert status["running"] is True
        assert status["leader"]
        assert main(["doctor", "--json", "--http-addr", f"127.0.0.1:{port}"]) == 0
        capsys.readouterr()
        assert main(["agent", "up", "--mode", "binary", "--port", str(port)]) == 0
        again = capsys.readouterr()
        assert f"export CONSUL_HTTP_ADDR=http://127.0.0.1:{port}" in again.out
        assert "already running" in again.err
    finally:
        assert main(["agent", "down", "--keep-docker", "--json"]) == 0
    assert _json(capsys)["stopped"] is True
    assert main(["agent", "status"]) == 1
