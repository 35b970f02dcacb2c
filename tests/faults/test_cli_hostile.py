"""The command line against a closed pipe, a dead agent and unknown services (issue 14.6).

Promises (README, "The command line"; ``lake-mesh --help``):

* ``lake-mesh ... | head`` ends quietly: exit 141 (128 + SIGPIPE, what the shell reports
  for ``consul``), nothing on stderr but what the command printed before (a progress line).
* A dead agent fails at once, with one line: the error is the refused connection of the
  first request (``ConsulUnavailable``, "reach the agent"), never a discovery timeout.
* An unknown service exits 1 on every command that answers about it, with one line.
* ``config set`` refuses a key whose service name Consul cannot hold, and writes nothing.

Closed pipes need real processes (a closed stdout); the other promises run in-process
against the session's real agent (``consul_agent``), or a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.cli import EXIT_CLOSED_PIPE, main
from lake_mesh_consul.testing._agent import free_port
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

#: The console script next to this interpreter, else the same entry point.
_SCRIPT = Path(sys.executable).with_name("lake-mesh")
LAKE_MESH = (
    [str(_SCRIPT)]
    if _SCRIPT.is_file()
    else [sys.executable, "-c", "from lake_mesh_consul.cli import _entry; _entry()"]
)
#: Seconds any one CLI process may take.
RUN_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def known(consul_agent: ConsulAgentHandle) -> Iterator[str]:
    """A service registered on the session's agent (one instance, no checks)."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    config = _config(consul_agent)
    with ConsulClient(config) as client:
        body = {"Name": name, "ID": f"{name}-1", "Port": 8080, "Address": "127.0.0.1"}
        client.request("PUT", "/v1/agent/service/register", operation="register", json=body)
        try:
            yield name
        finally:
            client.request("PUT", f"/v1/agent/service/deregister/{name}-1", operation="deregister")


def _config(agent: ConsulAgentHandle) -> MeshConfig:
    return MeshConfig(address=agent.address)


def _env(agent: ConsulAgentHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "LAKE_MESH_"))}
    env["CONSUL_HTTP_ADDR"] = agent.address
    env["LAKE_MESH_KV_PREFIX"] = f"hostile-{uuid.uuid4().hex[:8]}"
    return env


# --- a closed pipe --------------------------------------------------------------------------

#: Commands that print to stdout, with the service filled in ("{s}").
READS = [
    "version",
    "endpoints {s}",
    "endpoints {s} --json",
    "watch {s} --count 1",
    "watch {s} --count 1 --json",
    "status",
    "status {s} --json",
    "explain {s}",
    "checks {s} --json",
    "config get --effective",
    "config get --json",
    "config watch --count 0",
    "config watch --count 0 --json",
    "config validate - --level service",
]


@pytest.mark.parametrize("command", READS)
def test_a_closed_pipe_ends_quietly(
    consul_agent: ConsulAgentHandle, known: str, command: str
) -> None:
    argv = command.format(s=known).split()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is gone before the command writes anything
    try:
        proc = subprocess.run(
            [*LAKE_MESH, *argv],
            env=_env(consul_agent),
            input=b"{}",
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    stderr = proc.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipe" not in stderr, stderr
    assert "Error" not in stderr, stderr
    assert proc.returncode == EXIT_CLOSED_PIPE, (command, proc.returncode, stderr)


# --- a dead agent ----------------------------------------------------------------------------

#: Every command that talks to the agent.
TALKS = [
    "endpoints web --timeout 60",
    "watch web --timeout 60",
    "call web /",
    "status",
    "status web",
    "explain web",
    "checks web",
    "register web --port 80",
    "deregister web-1",
    "maint web-1 on",
    "config get",
    "config watch --count 0",
    "config delete services/web",
    "doctor",
]


@pytest.mark.parametrize("command", TALKS)
def test_a_dead_agent_fails_at_once_with_one_line(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    dead = f"127.0.0.1:{free_port()}"
    assert main([*command.split(), "--http-addr", dead, "--json"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("Error: ")
    assert "connection refused" in lines[0]
    # the refused connection itself: never a discovery timeout waited out (60 s given)
    assert json.loads(captured.out)["kind"] == "ConsulUnavailable"


# --- unknown services ------------------------------------------------------------------------

#: Every command that answers about a service or instance, given one Consul does not know.
UNKNOWN = [
    "endpoints {u}",
    "endpoints {u} --all",
    "call {u} /",
    "status {u}",
    "explain {u}",
    "checks {u}",
    "deregister {u}-1",
    "maint {u}-1 on",
]


@pytest.mark.parametrize("command", UNKNOWN)
def test_an_unknown_service_exits_1_on_every_command(
    consul_agent: ConsulAgentHandle, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = f"nosuch-{uuid.uuid4().hex[:8]}"
    argv = [*command.format(u=unknown).split(), "--http-addr", consul_agent.address]
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ")
    assert unknown in lines[-1]
    assert len([line for line in lines if not line.endswith("...")]) == 1  # progress aside


@pytest.mark.parametrize("command", ["endpoints {s}", "status {s}", "explain {s}", "checks {s}"])
def test_a_known_service_is_an_answer(
    consul_agent: ConsulAgentHandle, known: str, command: str
) -> None:
    argv = [*command.format(s=known).split(), "--http-addr", consul_agent.address]
    assert main(argv) == 0


def test_watch_may_start_before_the_service_exists(
    consul_agent: ConsulAgentHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = f"nosuch-{uuid.uuid4().hex[:8]}"
    argv = ["watch", unknown, "--count", "1", "--json", "--http-addr", consul_agent.address]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"] == []


# --- config set: a key no other command would read --------------------------------------------

BAD_KEYS = [
    "services/bad name!",
    "services/web\n",
    "services/-web",
    "services/web/endpoints/a b",
    "services/" + "a" * 256,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_config_set_refuses_an_invalid_service_key_and_writes_nothing(
    consul_agent: ConsulAgentHandle,
    key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps({"strategy": "random"}))
    monkeypatch.setenv("LAKE_MESH_KV_PREFIX", prefix)
    argv = ["config", "set", key, str(doc), "--http-addr", consul_agent.address]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "service" in err or "endpoint" in err
    with ConsulClient(_config(consul_agent)) as client:
        answer = client.request(
            "GET", f"/v1/kv/{prefix}/", operation="read", params={"keys": ""}, allow_404=True
        )
        assert answer.status == 404  # nothing under the prefix


@pytest.mark.parametrize("header", ["X-A: a\r\nX-Evil: 1", "X-A: a\nb", "X-A: \x00", "X-A"])
def test_call_refuses_a_header_that_would_split_the_request(
    consul_agent: ConsulAgentHandle, known: str, header: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["call", known, "/", "-H", header, "--http-addr", consul_agent.address]
    assert main(argv) == 2  # a usage error, before discovery or any request
    assert capsys.readouterr().err.count("\n") == 1


def test_config_watch_ends_quietly_when_the_reader_goes_away_later(
    consul_agent: ConsulAgentHandle,
) -> None:
    # The lines after the first are printed by the store's watch thread: the closed pipe
    # must still end the command quietly (the thread hands the error to the main thread).
    env = _env(consul_agent)
    prefix = env["LAKE_MESH_KV_PREFIX"]
    with subprocess.Popen(
        [*LAKE_MESH, "config", "watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith(b"# index")  # the configuration now
            proc.stdout.close()  # `head -n 1` is done
            with ConsulClient(_config(consul_agent)) as client:
                for n in range(20):  # each change prints; the first print after close fails
                    body = json.dumps({"deadline": f"{n + 1}s"}).encode()
                    client.request("PUT", f"/v1/kv/{prefix}/global", operation="put", data=body)
                    try:
                        proc.wait(0.5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            assert proc.wait(RUN_TIMEOUT) == EXIT_CLOSED_PIPE
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode(errors="replace")
            assert "Traceback" not in stderr, stderr
            assert "Error" not in stderr, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
