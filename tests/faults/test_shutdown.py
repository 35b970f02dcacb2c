"""Shutdown always drains and always finishes (issue 12.5), against real processes.

* SIGTERM to a subprocess written exactly as the README quickstart (``examples/quickstart.py``,
  which handles no signal itself): maintenance is seen, then the instance is deregistered
  within the drain grace, and the process exits with status 143;
* the same with the agent hung (SIGSTOP): the process exits within grace + 5 s;
* a handler the application installed before is called after the drain; ``drain_on_sigterm=
  False`` leaves SIGTERM alone;
* ``close()`` with the agent hung returns within grace + 2 s and no thread of the mesh
  survives it; ``register()`` racing ``close()`` leaves no thread and no registration;
* ``register()`` against an agent that trickles one byte a second fails within its deadline.

Every wait is bounded; each scenario prints what it measured (``-s``).
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.registry import DEFAULT_DRAIN_GRACE, ServiceRegistry
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.errors import ConsulUnavailable, MeshError
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing._agent import free_port
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


# --- helpers -----------------------------------------------------------------------------------


def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _instances(client: ConsulClient, name: str) -> dict[str, dict[str, Any]]:
    """The agent's instances of ``name`` by id."""
    services = client.request("GET", "/v1/agent/services", operation="list").json() or {}
    return {k: v for k, v in services.items() if v.get("Service") == name}


def _in_maintenance(client: ConsulClient, service_id: str) -> bool:
    checks = client.request("GET", "/v1/agent/checks", operation="checks").json() or {}
    return f"_service_maintenance:{service_id}" in checks


def _env(agent: ConsulAgentHandle) -> dict[str, str]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": agent.address, "PYTHONUNBUFFERED": "1"}
    env.pop("CONSUL_HTTP_TOKEN", None)
    return env


def _spawn(args: list[str], agent: ConsulAgentHandle) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        env=_env(agent),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str]:
    """Wait for the process (bounded; killed after ``timeout``); return code and output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return proc.returncode, out + err


def _wait_line(proc: subprocess.Popen[str], text: str, timeout: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no {text!r} within {timeout}s"
    line = proc.stdout.readline()
    assert text in line, line


def _lake_threads(before: set[int]) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and t.name.startswith("lake-mesh")
    ]


@pytest.fixture
def client(consul_agent: ConsulAgentHandle) -> Iterator[ConsulClient]:
    with ConsulClient(MeshConfig(address=consul_agent.address)) as c:
        yield c


# --- SIGTERM to the README quickstart ------------------------------------------------------------


def test_sigterm_drains_the_readme_quickstart(consul_agent, client, unique_name):
    port = free_port()
    proc = _spawn([str(QUICKSTART), "--name", unique_name, "--port", str(port)], consul_agent)
    try:
        _wait_line(proc, "registered", 60)  # register() returned: the service is up
        (service_id,) = _instances(client, unique_name)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        maintenance_at = None
        while time.monotonic() - sent < DEFAULT_DRAIN_GRACE + 5:
            if maintenance_at is None and _in_maintenance(client, service_id):
                maintenance_at = time.monotonic() - sent
            if not _instances(client, unique_name):
                break
            time.sleep(0.05)
        gone_at = time.monotonic() - sent
        code, output = _finish(proc)
        exited_at = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for leftover in _instances(client, unique_name):
            client.request("PUT", f"/v1/agent/service/deregister/{leftover}", operation="clean")
    print(
        f"\nSIGTERM -> maintenance seen at {maintenance_at}s, deregistered at {gone_at:.2f}s, "
        f"exit {code} at {exited_at:.2f}s (grace {DEFAULT_DRAIN_GRACE}s)"
    )
    assert maintenance_at is not None, "drained without maintenance first: " + output
    assert gone_at <= DEFAULT_DRAIN_GRACE + 1.0, output
    assert code == 128 + signal.SIGTERM, output
    assert exited_at <= DEFAULT_DRAIN_GRACE + 5.0


def test_sigterm_with_the_agent_hung_exits_within_grace_plus_5s(
    dedicated_consul_agent, unique_name
):
    agent = dedicated_consul_agent
    port = free_port()
    proc = _spawn([str(QUICKSTART), "--name", unique_name, "--port", str(port)], agent)
    paused = False
    try:
        _wait_line(proc, "registered", 60)
        agent.pause()
        paused = True
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, output = _finish(proc, timeout=DEFAULT_DRAIN_GRACE + 15)
        exited_at = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if paused:
            agent.resume()
    print(f"\nagent SIGSTOPped: SIGTERM -> exit {code} after {exited_at:.2f}s")
    assert code == 128 + signal.SIGTERM, output
    assert exited_at <= DEFAULT_DRAIN_GRACE + 5.0, output


_CHAINED = textwrap.dedent(
    """
    import json, os, signal, sys, threading, urllib.request
    from lake_mesh_consul import ServiceMetadata
    from lake_mesh_consul.mesh import Mesh

    name, port, opt_in = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
    agent = os.environ["CONSUL_HTTP_ADDR"]

    def app_handler(signum, frame):
        with urllib.request.urlopen(f"http://{agent}/v1/agent/services", timeout=5) as r:
            left = [s for s in json.load(r).values() if s["Service"] == name]
        print(f"app handler: {len(left)} instance(s) left", flush=True)
        sys.exit(7)

    signal.signal(signal.SIGTERM, app_handler)
    with Mesh.from_env(drain_grace=0.3, drain_on_sigterm=opt_in) as mesh:
        mesh.register(ServiceMetadata(name, port, address="127.0.0.1"))
        print("registered", flush=True)
        threading.Event().wait(60)
    """
)


@pytest.mark.parametrize("opt_in", [True, False], ids=["default", "opted-out"])
def test_sigterm_chains_the_application_handler(consul_agent, client, unique_name, opt_in):
    args = ["-c", _CHAINED, unique_name, str(free_port()), "on" if opt_in else "off"]
    proc = _spawn(args, consul_agent)
    try:
        _until(lambda: _instances(client, unique_name), 30, "the script to register")
        proc.send_signal(signal.SIGTERM)
        code, output = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for leftover in _instances(client, unique_name):
            client.request("PUT", f"/v1/agent/service/deregister/{leftover}", operation="clean")
    print(f"\n{'default' if opt_in else 'drain_on_sigterm=False'}: exit {code}: {output.strip()}")
    assert code == 7, output  # the application's handler ran, and decided the exit
    # By default the drain ran first; opted out, the application's handler is on its own.
    expected = "0 instance(s) left" if opt_in else "1 instance(s) left"
    assert expected in output, output


_DURING_CLOSE = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from lake_mesh_consul import MeshConfig, ServiceMetadata, ServiceRegistry
    from lake_mesh_consul.mesh import Mesh

    name, port, owner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if owner == "mesh":
        closing = Mesh.from_env(drain_grace=1.0)
        closing.start()
    else:
        closing = ServiceRegistry(MeshConfig.from_env(), drain_grace=1.0)
        closing.install_shutdown_hooks()
    closing.register(ServiceMetadata(name, port, address="127.0.0.1"))
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    try:
        closing.close()  # the main thread is draining when SIGTERM arrives
    finally:
        print(f"close took {time.monotonic() - started:.2f}s", flush=True)
    print("SIGTERM was swallowed", flush=True)
    """
)


@pytest.mark.parametrize("owner", ["mesh", "registry"])
def test_sigterm_during_close_does_not_cut_the_drain_short(
    consul_agent, client, unique_name, owner
):
    proc = _spawn(["-c", _DURING_CLOSE, unique_name, str(free_port()), owner], consul_agent)
    try:
        code, output = _finish(proc)
        left = _instances(client, unique_name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for leftover in _instances(client, unique_name):
            client.request("PUT", f"/v1/agent/service/deregister/{leftover}", operation="clean")
    print(f"\n{owner}: SIGTERM 0.3s into close(): exit {code}: {output.strip()}")
    took = float(output.split("close took ")[1].split("s")[0])
    assert took >= 1.0, output  # the whole grace was waited out
    assert took <= 1.0 + 2.0, output  # and no more than the bound
    assert left == {}, output  # and the instance deregistered
    assert code == 128 + signal.SIGTERM, output  # then the signal went on
    assert "swallowed" not in output


_REGISTER_DOWN = textwrap.dedent(
    """
    from lake_mesh_consul import ServiceMetadata
    from lake_mesh_consul.mesh import Mesh

    with Mesh.from_env(watch_config=False) as mesh:
        print("registering", flush=True)
        mesh.register(ServiceMetadata("never-up", 8080, address="127.0.0.1"))  # retries 30 s
    """
)


def test_sigterm_while_register_retries_a_down_agent_exits_in_time() -> None:
    """register() retries a dead agent for up to 30 s; SIGTERM still ends it within grace + 5 s."""
    down = ConsulAgentHandle(address=f"127.0.0.1:{free_port()}")  # nothing listens there
    proc = _spawn(["-c", _REGISTER_DOWN], down)
    try:
        _wait_line(proc, "registering", 60)
        time.sleep(1.0)  # the main thread is inside register(), retrying
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, output = _finish(proc, timeout=DEFAULT_DRAIN_GRACE + 15)
        exited_at = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    print(f"\nSIGTERM during register() against a down agent: exit {code} after {exited_at:.2f}s")
    assert code == 128 + signal.SIGTERM, output
    assert exited_at <= DEFAULT_DRAIN_GRACE + 5.0, output


# --- close() and register() in-process -----------------------------------------------------------


def test_close_with_the_agent_hung_is_bounded_and_leaves_no_thread(
    dedicated_consul_agent, unique_name
):
    agent = dedicated_consul_agent
    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    grace = 1.0
    mesh = Mesh(MeshConfig(address=agent.address), drain_grace=grace, drain_on_sigterm=False)
    mesh.start()
    mesh.register(
        ServiceMetadata(unique_name, free_port(), address="127.0.0.1"),
        TtlCheck(ttl=3.0, status=HealthStatus.PASSING),
        functions=[lambda: True],
    )
    mesh.balancer(unique_name)  # a discovery watch parked in the agent
    agent.pause()
    try:
        time.sleep(0.5)  # the heartbeat's next push is now parked in the hung agent
        started = time.monotonic()
        mesh.close()
        took = time.monotonic() - started
        alive = _lake_threads(before)
    finally:
        agent.resume()
    print(f"\nclose() with the agent hung: {took:.2f}s (grace {grace}s); threads left: {alive}")
    assert took <= grace + 2.0
    assert alive == []


def test_register_racing_close_leaves_no_thread_and_no_registration(
    consul_agent, client, unique_name
):
    rng = random.Random(12)
    outcomes: list[str] = []
    for trial in range(10):
        before = {t.ident for t in threading.enumerate() if t.ident is not None}
        mesh = Mesh(MeshConfig(address=consul_agent.address), drain_grace=0.0)
        mesh.start()
        meta = ServiceMetadata(f"{unique_name}", 20000 + trial, id=f"{unique_name}-{trial}")

        def register(mesh: Mesh = mesh, meta: ServiceMetadata = meta) -> None:
            try:
                mesh.register(meta, TtlCheck(ttl=30.0, status=HealthStatus.PASSING))
                outcomes.append("registered")
            except MeshError:
                outcomes.append("refused")

        racer = threading.Thread(target=register)
        racer.start()
        time.sleep(rng.uniform(0.0, 0.03))
        mesh.close()
        racer.join(10)
        assert not racer.is_alive()
        assert _lake_threads(before) == [], f"trial {trial}"
        assert _instances(client, unique_name) == {}, f"trial {trial}"
    print(f"\nregister racing close, 10 trials: {outcomes}")


# --- a trickling agent ---------------------------------------------------------------------------


class _Trickler:
    """A hostile loopback server: answers every request one byte a second (bounded: 60 s)."""

    ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{"'

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        ends = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < ends:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn, ends), daemon=True).start()

    def _trickle(self, conn: socket.socket, ends: float) -> None:
        with conn:
            try:
                conn.recv(65536)
                for byte in self.ANSWER * 100:
                    if self.stop.is_set() or time.monotonic() > ends:
                        return
                    conn.sendall(bytes([byte]))
                    self.stop.wait(1.0)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


def test_register_against_a_trickling_agent_fails_within_its_deadline():
    trickler = _Trickler()
    startup_timeout = 3.0
    registry = ServiceRegistry(
        MeshConfig(address=f"127.0.0.1:{trickler.port}"),
        startup_timeout=startup_timeout,
        drain_on_close=False,
    )
    try:
        started = time.monotonic()
        with pytest.raises(ConsulUnavailable) as caught:
            registry.register(ServiceMetadata("trickled", 8080, address="127.0.0.1"))
        took = time.monotonic() - started
    finally:
        registry.close()
        trickler.close()
    print(f"\nregister() against a 1 byte/s agent: {caught.value} after {took:.2f}s")
    assert took <= startup_timeout + 1.0
