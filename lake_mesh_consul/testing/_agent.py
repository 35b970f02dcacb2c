"""Running a real Consul agent for tests: ``consul agent -dev`` on free loopback ports.

:class:`DevAgent` owns one agent process and can stop, restart (optionally wiping its
state, as ``-dev`` does on every start), pause (SIGSTOP) and resume (SIGCONT) it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from lake_mesh_consul.errors import MeshError

__all__ = [
    "BIND_CONFLICT",
    "DevAgent",
    "cache_dir",
    "find_consul_binary",
    "free_port",
    "retry_on_bind_conflict",
    "wait_stopped",
]


def cache_dir() -> Path:
    """Where provisioning caches Consul downloads (``$LAKE_MESH_CACHE`` or XDG cache)."""
    base = os.environ.get("LAKE_MESH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lake-mesh"
    )
    return Path(base)


def find_consul_binary() -> Path | None:
    """``$LAKE_MESH_CONSUL_BIN``, else ``consul`` on PATH, else the provisioning cache."""
    explicit = os.environ.get("LAKE_MESH_CONSUL_BIN")
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    on_path = shutil.which("consul")
    if on_path:
        return Path(on_path)
    for candidate in sorted(cache_dir().glob("consul-*/usr/bin/consul"), reverse=True):
        if candidate.is_file():
            return candidate
    return None


#: An agent's log line when a port it was given is taken: ``listen udp 127.0.0.1:PORT: bind: ...``.
BIND_CONFLICT = re.compile(r"listen (?:tcp|udp) \S*:(\d+): bind: address already in use")


#: Ports :func:`free_port` handed out in this process: never handed out twice, so a stopped
#: agent that will start again on its old ports keeps them, and two agents started in a row
#: never get the same one (the kernel's choice of a free port can repeat).
_handed_out: set[tuple[str, int]] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel hands out as free on ``host``, free for UDP too (Serf uses both).

    A port is handed out once per process (see ``_handed_out``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
        except OSError:
            continue
        with _handed_out_lock:
            if (host, port) in _handed_out:
                continue
            _handed_out.add((host, port))
        return port
    raise RuntimeError(f"no free TCP+UDP port on {host}")


T = TypeVar("T")


def retry_on_bind_conflict(
    start: Callable[[], T],
    *,
    failure_text: Callable[[Exception], str],
    http_port: int,
    attempts: int = 8,
    pause: Callable[[float], None] = time.sleep,
) -> T:
    """``start()``, again (``attempts`` times in all) while an agent's port was taken.

    Run again only when a port other than the HTTP one was taken between its choice and the
    agent's bind ("address already in use"), after a pause that grows with each attempt
    (0.5 s, 1 s, ... at most 2 s: about 11 s in all). ``start`` must choose new Serf and
    server ports each time; ``failure_text(exc)`` is where the agent's log tail can be read
    for the exception it raised. When the last attempt fails too, the error carries what held
    each taken port right after each failure (``ss``), to find the culprit.
    """
    seen: list[str] = []
    for attempt in range(attempts):
        try:
            return start()
        except (RuntimeError, MeshError) as exc:
            conflict = BIND_CONFLICT.search(failure_text(exc))
            if conflict is None or int(conflict[1]) == http_port:
                raise
            seen.append(_holders(int(conflict[1])))
            if attempt == attempts - 1:
                _note(exc, f"after {attempts} attempts; " + "; ".join(seen))
                raise
            pause(min(0.5 * (attempt + 1), 2.0))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _holders(port: int) -> str:
    """What holds ``port`` (TCP or UDP) as ``ss`` sees it, for an error message."""
    try:
        out = _ss("-Hanptu", f"sport = :{port}")
        udp = len(_ss("-Hanu").splitlines())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"port {port}: cannot run ss ({exc})"
    return f"port {port} held by: {out or 'nothing now'} ({udp} UDP sockets open)"


def _ss(*args: str) -> str:
    return subprocess.run(
        ["ss", *args], capture_output=True, text=True, timeout=5, check=False
    ).stdout.strip()


def _note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` (``add_note`` on Python 3.11+, stderr before)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)
    else:
        print(text, file=sys.stderr)


def wait_stopped(pid: int, timeout: float = 5.0) -> bool:
    """Wait until process ``pid`` is really stopped (state ``T``) after a SIGSTOP.

    ``kill`` returns before the signal takes effect; a request sent right after a pause
    could otherwise still be answered. Returns False where /proc is not available.
    """
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = stat.read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.005)
    return False


@dataclass
class DevAgent:
    """A ``consul agent -dev`` process on loopback with its own ports.

    Args:
        binary: the consul binary.
        host: loopback address to bind (distinct addresses let several agents coexist).
        acl_master_token: when set, ACLs are enabled with default deny and this is the
            management token.
        extra_args: more agent flags.
    """

    binary: Path
    host: str = "127.0.0.1"
    acl_master_token: str | None = None
    extra_args: list[str] = field(default_factory=list)
    http_port: int = 0
    datacenter: str = "dc1"
    _proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = None
    _log: Path | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the HTTP API."""
        return f"{self.host}:{self.http_port}"

    @property
    def http_addr(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def _ports(self) -> dict[str, int]:
        return {
            "http": self.http_port,
            "dns": -1,
            "grpc": -1,
            "serf_lan": free_port(self.host),
            "serf_wan": free_port(self.host),
            "server": free_port(self.host),
        }

    def start(self, *, wipe: bool = True, timeout: float = 30.0) -> None:
        """Start the agent and wait until it has a leader.

        Serf and server ports are chosen anew at every start; when another process takes
        one between the choice and the agent's bind ("address already in use"), the agent
        is started again with new ones (twice at most).
        """
        if self.http_port == 0:
            self.http_port = free_port(self.host)
        if self._dir is None or wipe:
            self._dir = Path(tempfile.mkdtemp(prefix="lake-mesh-consul-"))

        def launch_and_wait() -> None:
            self._launch()
            self.wait_ready(timeout)

        retry_on_bind_conflict(
            launch_and_wait, failure_text=lambda _exc: self.log(tail=8), http_port=self.http_port
        )

    def _launch(self) -> None:
        assert self._dir is not None
        config: dict[str, object] = {
            "datacenter": self.datacenter,
            "ports": self._ports(),
            "bind_addr": self.host,
            "client_addr": self.host,
            "advertise_addr": self.host,
            "disable_update_check": True,
            "enable_script_checks": False,
            "enable_local_script_checks": True,
        }
        if self.acl_master_token:
            config["acl"] = {
                "enabled": True,
                "default_policy": "deny",
                "enable_token_persistence": False,
                "tokens": {"master": self.acl_master_token, "agent": self.acl_master_token},
            }
        cfg = self._dir / "config.json"
        cfg.write_text(json.dumps(config))
        self._log = self._dir / "agent.log"
        log = self._log.open("ab")
        self._proc = subprocess.Popen(
            [str(self.binary), "agent", "-dev", "-config-file", str(cfg), *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the HTTP API answers with a leader, or raise RuntimeError with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:
                url = f"{self.http_addr}/v1/status/leader"
                with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - http to loopback
                    if json.loads(r.read() or b'""'):
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"consul agent at {self.address} did not become ready:\n{self.log()}")

    def log(self, tail: int = 40) -> str:
        """The last lines of the agent's log."""
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-tail:])

    @property
    def pid(self) -> int | None:
        """The agent's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the agent (SIGTERM, or SIGKILL with ``kill``); resumes it first if paused."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, wipe: bool = True) -> None:
        """Stop and start again on the same HTTP port (``-dev`` forgets everything)."""
        self.stop()
        self.start(wipe=wipe)

    def pause(self) -> None:
        """SIGSTOP the agent: it stops answering but keeps its sockets open."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)
            wait_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT a paused agent."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the agent and remove its data directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> DevAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
