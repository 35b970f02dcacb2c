"""``lake-mesh config`` against a real agent: JSON output and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul.cli import main
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.integration


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        old = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
        try:
            code = main(list(argv))
        finally:
            sys.stdin = old
    else:
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def conn(consul_agent: ConsulAgentHandle, unique_name: str) -> list[str]:
    return ["--http-addr", consul_agent.address, "--prefix", unique_name]


def _json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


def test_set_get_effective_delete_round_trip(
    capsys: pytest.CaptureFixture[str], conn: list[str], tmp_path: Path, unique_name: str
) -> None:
    doc = tmp_path / "web.json"
    doc.write_text(json.dumps({"strategy": "maglev", "per_try_timeout": "250ms"}))
    code, out, err = run(capsys, "config", "set", "services/web", str(doc), *conn, "--json")
    assert code == 0, err
    assert _json(out)["written"] is True
    assert _json(out)["effective"]["strategy"]["value"] == "maglev"

    code, out, _ = run(capsys, "config", "get", "--service", "web", *conn, "--json")
    assert code == 0
    got = _json(out)
    assert got["key"] == f"{unique_name}/services/web"
    assert got["document"]["strategy"] == "maglev"
    assert got["valid"] is True
    assert got["modify_index"] > 0

    code, out, _ = run(capsys, "config", "get", "--service", "web", "--effective", *conn, "--json")
    assert code == 0
    settings = _json(out)["settings"]
    assert settings["per_try_timeout"] == {
        "value": "250ms",
        "level": "service",
        "source": f"kv:{unique_name}/services/web",
    }
    assert settings["retry.attempts"]["level"] == "default"

    code, out, _ = run(capsys, "config", "get", "--service", "web", "--effective", *conn)
    assert code == 0
    assert "SETTING" in out
    assert "maglev" in out

    code, out, _ = run(capsys, "config", "delete", "services/web", *conn, "--json")
    assert code == 0
    assert _json(out)["written"] is True
    code, out, _ = run(capsys, "config", "get", "--service", "web", *conn, "--json")
    assert _json(out)["exists"] is False


def test_set_from_stdin_and_dry_run(capsys: pytest.CaptureFixture[str], conn: list[str]) -> None:
    code, out, err = run(
        capsys,
        "config",
        "set",
        "services/web/endpoints/w1",
        "-",
        "--dry-run",
        *conn,
        "--json",
        stdin='{"drained": true}',
    )
    assert code == 0, err
    payload = _json(out)
    assert payload["written"] is False
    assert payload["effective"]["drained"]["value"] is True
    code, out, _ = run(
        capsys, "config", "get", "--service", "web", "--endpoint", "w1", *conn, "--json"
    )
    assert _json(out)["exists"] is False


def test_invalid_document_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], conn: list[str], tmp_path: Path, unique_name: str
) -> None:
    doc = tmp_path / "bad.json"
    doc.write_text('{"stratgy": "random"}')
    code, out, err = run(capsys, "config", "set", "services/web", str(doc), *conn)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "did you mean 'strategy'" in lines[0]
    assert f"{unique_name}/services/web" in lines[0]
    assert "Traceback" not in err
    code, out, err = run(capsys, "config", "set", "services/web", str(doc), *conn, "--json")
    assert code == 1
    assert _json(out)["kind"] == "configuration"


def test_cas_conflict_exit_1(
    capsys: pytest.CaptureFixture[str], conn: list[str], tmp_path: Path
) -> None:
    doc = tmp_path / "web.json"
    doc.write_text('{"strategy": "random"}')
    assert run(capsys, "config", "set", "services/web", str(doc), *conn)[0] == 0
    code, _, err = run(capsys, "config", "set", "services/web", str(doc), "--cas", "1", *conn)
    assert code == 1
    assert "changed since index 1" in err
    code, _, err = run(capsys, "config", "delete", "services/nothing", *conn)
    assert code == 1
    assert "does not exist" in err


def test_validate_needs_no_agent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"retry": {"attempts": 2}, "deadline": "3s"}')
    code, out, _ = run(capsys, "config", "validate", str(good), "--json")
    assert code == 0
    assert _json(out) == {
        "valid": True,
        "level": "service",
        "settings": {"retry": {"attempts": 2}, "deadline": "3s"},
    }
    code, out, _ = run(capsys, "config", "validate", "-", "--key", "global", stdin='{"x": 1}')
    assert code == 1
    code, out, err = run(
        capsys, "config", "validate", "-", "--level", "endpoint", stdin='{"weight": 0}'
    )
    assert code == 1
    assert "weight" in err
    whole = tmp_path / "mesh.json"
    whole.write_text(json.dumps({"global": {"strategy": "random"}, "services": {"a": {}}}))
    code, out, _ = run(capsys, "config", "validate", str(whole), "--json")
    assert code == 0
    assert _json(out)["services"] == ["a"]
    code, _, err = run(capsys, "config", "validate", str(tmp_path / "missing.json"))
    assert code == 1
    assert "No such file" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], conn: list[str]) -> None:
    assert run(capsys, "config")[0] == 2
    assert run(capsys, "config", "set", "services/web")[0] == 2
    assert run(capsys, "config", "get", "--endpoint", "w1", *conn)[0] == 2


def test_watch_prints_json_lines(
    consul_agent: ConsulAgentHandle, unique_name: str, tmp_path: Path
) -> None:
    doc = tmp_path / "web.json"
    doc.write_text('{"strategy": "maglev"}')
    conn = ["--http-addr", consul_agent.address, "--prefix", unique_name]
    code = "import sys; from lake_mesh_consul.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["config", "watch", "--service", "web", "--count", "1", "--json", *conn]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["settings"]["strategy"]["value"] == "round_robin"
        from lake_mesh_consul.cli import main as cli_main

        assert cli_main(["config", "set", "services/web", str(doc), *conn]) == 0
        second = json.loads(proc.stdout.readline())
        assert second["settings"]["strategy"]["value"] == "maglev"
        assert second["changed_keys"] == [f"{unique_name}/services/web"]
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
