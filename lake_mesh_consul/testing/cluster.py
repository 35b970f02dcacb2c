"""A real multi-agent Consul cluster for fault tests: three servers and client agents.

:class:`ConsulCluster` runs ``consul agent`` processes (not ``-dev``): servers with real raft
(``-server``, ``bootstrap_expect``, ``retry_join``) and client agents that join them, each on
its own loopback address (``127.a.b.1``, ``127.a.b.2``, ... with a random ``a.b`` per cluster,
so clusters of parallel test runs never meet) and its own free ports. Raft and gossip timings
are tightened (``raft_multiplier = 1``, sub-second probes) so a new leader is elected within
one to three seconds of losing the old one.

Every member (:class:`ClusterMember`) can be killed (SIGKILL), stopped (SIGTERM, without
leaving), restarted with or without its data directory, wiped, paused (SIGSTOP) and resumed
(SIGCONT). Members keep their address, ports and node id across restarts and wipes, like a
machine that reboots with an empty disk.

Optional modes:

* ``acl_master_token=...``: ACLs enabled, ``default_policy = "deny"``, that token is the
  management token (and the agents' own token).
* ``tls=True``: the agents serve HTTPS only, with a CA and certificates made by
  ``consul tls`` (see :class:`~lake_mesh_consul.testing._tls.TLSMaterial`);
  ``verify_incoming=True`` makes them demand a client certificate.
* ``wan_join=other``: a second datacenter (``datacenter="dc2"``) whose servers join the
  servers of ``other`` over WAN gossip (``retry_join_wan``), so each datacenter can query
  the other (``?dc=``). :meth:`ConsulCluster.join_wan` joins two running clusters instead.

:func:`tls_agent` is a one-server cluster in TLS mode, for tests that only need an HTTPS agent.

Thread-safety: a cluster is driven by one test thread; reading :attr:`ConsulCluster.members`
and calling :meth:`ClusterMember.api` from other threads is safe.

Example::

    with ConsulCluster() as cluster:
        leader = cluster.wait_for_leader(timeout=15)
        leader.kill()
        new_leader = cluster.wait_for_leader(timeout=15)
        config = cluster.mesh_config()          # talks to the first client agent

    with ConsulCluster(servers=1, clients=0) as dc1, ConsulCluster(
        servers=1, clients=0, datacenter="dc2", wan_join=dc1
    ) as dc2:
        dc1.client.api("GET", "/v1/health/service/web?dc=dc2")
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lake_mesh_consul.testing._agent import BIND_CONFLICT, find_consul_binary, free_port
from lake_mesh_consul.testing._tls import TLSMaterial, create_tls_material

if TYPE_CHECKING:
    from lake_mesh_consul._core.config import MeshConfig

__all__ = ["ApiAnswer", "ClusterMember", "ConsulCluster", "tls_agent"]

#: Seconds to wait for a stopped agent to exit before it is killed.
STOP_TIMEOUT = 10.0

#: Seconds a single helper HTTP request (status, members) may take.
API_TIMEOUT = 2.0

#: Serf (SWIM) timings: fast failure detection on loopback, yet tolerant of a busy CPU.
GOSSIP_LAN = {
    "gossip_interval": "100ms",
    "probe_interval": "500ms",
    "probe_timeout": "250ms",
    "suspicion_mult": 3,
}

#: WAN gossip timings (Consul's defaults suit real WANs: probes every 5 s).
GOSSIP_WAN = {
    "gossip_interval": "200ms",
    "probe_interval": "1s",
    "probe_timeout": "500ms",
    "suspicion_mult": 3,
}

#: Serf state names, as Consul's ``/v1/agent/members`` numbers them.
SERF_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}

Role = Literal["server", "client"]

# Processes started here and still running: killed at interpreter exit, whatever happened.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(timeout=5)


atexit.register(_kill_leftovers)


def _loopback_prefix() -> str:
    """A random ``127.a.b`` prefix whose ``.1`` address can be bound on this machine."""
    rng = random.SystemRandom()
    for _ in range(20):
        prefix = f"127.{rng.randint(100, 254)}.{rng.randint(0, 255)}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((f"{prefix}.1", 0))
        except OSError:
            continue
        return prefix
    raise RuntimeError("cannot bind any 127.x.y.1 address (only Linux routes all of 127/8)")


@dataclass(frozen=True)
class ApiAnswer:
    """One answer of an agent's HTTP API (see :meth:`ClusterMember.api`).

    Attributes:
        status: the HTTP status code.
        body: the body decoded as JSON, or the text when it is not JSON (``None`` if empty).
        headers: the response headers (``X-Consul-KnownLeader``, ``X-Consul-LastContact``...).
    """

    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass(eq=False)
class ClusterMember:
    """One ``consul agent`` process of a :class:`ConsulCluster`, server or client.

    The member keeps its address, ports and node id across :meth:`restart` and :meth:`wipe`.
    Use it from the test thread; :meth:`api` may be called from any thread.

    Attributes:
        name: the node name (``server-1``, ``client-1``...).
        role: ``"server"`` or ``"client"``.
        host: its own loopback address.
        ports: ``http`` (or ``https``), ``serf_lan``, ``serf_wan`` and ``server`` ports.
        directory: where its config, data and log live.
        node_id: its fixed node id.
    """

    name: str
    role: Role
    host: str
    ports: dict[str, int]
    directory: Path
    node_id: str
    cluster: ConsulCluster = field(repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _paused: bool = field(default=False, repr=False)
    _answered: bool = field(default=False, repr=False)

    # -- where it is -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """``"https"`` in TLS mode, else ``"http"``."""
        return "https" if self.cluster.tls_material is not None else "http"

    @property
    def address(self) -> str:
        """``host:port`` of the HTTP(S) API, as MeshConfig takes it."""
        return f"{self.host}:{self.ports[self.scheme]}"

    @property
    def http_addr(self) -> str:
        """``scheme://host:port`` of the HTTP(S) API."""
        return f"{self.scheme}://{self.address}"

    @property
    def server_address(self) -> str:
        """``host:port`` of the server RPC port: what ``/v1/status/leader`` names."""
        return f"{self.host}:{self.ports['server']}"

    @property
    def serf_address(self) -> str:
        """``host:port`` of the LAN gossip port (what ``retry_join`` uses)."""
        return f"{self.host}:{self.ports['serf_lan']}"

    @property
    def wan_address(self) -> str:
        """``host:port`` of the WAN gossip port (what ``retry_join_wan`` uses; servers only)."""
        return f"{self.host}:{self.ports['serf_wan']}"

    @property
    def data_dir(self) -> Path:
        """The agent's data directory (raft log, snapshots, node id, local state)."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The agent's log file (kept across restarts and wipes)."""
        return self.directory / "agent.log"

    # -- state -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the process exists (a paused process is running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by SIGSTOP."""
        return self.running and self._paused

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def log(self, tail: int = 40) -> str:
        """The last ``tail`` lines of the agent's log."""
        if not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    # -- control -----------------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the agent (same address, ports and node id as before).

        Args:
            wait: wait until its HTTP API answers (any status: a server without quorum
                still answers).
            timeout: seconds to wait.

        Raises:
            RuntimeError: it is already running, or did not answer in time (with its log).
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "config.json"
        config_path.write_text(json.dumps(self.cluster.agent_config(self), indent=2))
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.cluster.binary), "agent", "-config-file", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self._proc = proc
        self._paused = False
        if wait:
            self.wait_answering(timeout)

    def wait_answering(self, timeout: float = 30.0) -> None:
        """Wait until the HTTP API answers at all, or raise RuntimeError with the log.

        On its first start only, a member that lost one of its ports to another process
        between choosing and binding it ("bind: address already in use") takes a new one and
        starts again (twice at most); once it has answered, its ports never change.
        """
        deadline = time.monotonic() + timeout
        for _ in range(3):
            if self._answers_by(deadline):
                self._answered = True
                return
            if not self._rebind_after_conflict():
                break
        state = "exited" if not self.running else "did not answer"
        raise RuntimeError(f"consul agent {self.name} at {self.address} {state}:\n{self.log()}")

    def _answers_by(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                self.api("GET", "/v1/status/leader", timeout=1.0)
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _rebind_after_conflict(self) -> bool:
        if self._answered or self.running:
            return False
        match = BIND_CONFLICT.search(self.log(tail=8))
        if match is None:
            return False
        taken = int(match.group(1))
        for name, port in list(self.ports.items()):
            if port == taken:
                self.ports[name] = free_port(self.host)
        self.start(wait=False)
        return True

    def _end(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused agent cannot handle SIGTERM
                proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        with _LIVE_LOCK:
            _LIVE.discard(proc)
        self._paused = False

    def stop(self, *, leave: bool = False) -> None:
        """Stop the agent; a no-op if it is not running.

        Args:
            leave: leave the cluster gracefully (SIGINT) instead of just exiting (SIGTERM).
                A server that leaves is removed from the raft configuration.
        """
        self._end(signal.SIGINT if leave else signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the agent: no leave, no flush, sockets reset; a no-op if not running."""
        self._end(signal.SIGKILL)

    def wipe(self) -> None:
        """Delete the data directory (raft log, snapshots, local services and checks).

        Raises:
            RuntimeError: the agent is running; stop or kill it first.
        """
        if self.running:
            raise RuntimeError(f"stop {self.name} before wiping its data directory")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, *, wipe: bool = False, kill: bool = False, wait: bool = True) -> None:
        """Stop (or kill) the agent, optionally wipe its data, and start it again."""
        if kill:
            self.kill()
        else:
            self.stop()
        if wipe:
            self.wipe()
        self.start(wait=wait)

    def pause(self) -> None:
        """SIGSTOP the agent: its sockets stay open, nothing answers until :meth:`resume`."""
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused agent."""
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._paused = False

    # -- talking to it -----------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = None,
        timeout: float = API_TIMEOUT,
    ) -> ApiAnswer:
        """Send one request to this agent's HTTP API (for test setup and assertions).

        Args:
            method: HTTP method.
            path: path and query, e.g. ``/v1/kv/a?stale``.
            body: JSON-encoded when not ``None`` (bytes and str are sent as they are).
            token: ACL token; defaults to the cluster's management token (if any).
            timeout: seconds for connect and read.

        Returns:
            The answer, whatever its status.

        Raises:
            OSError: the agent did not answer (refused, reset, timed out, TLS failure).
        """
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - our own agent on loopback
            self.http_addr + path, data=data, method=method
        )
        secret = token if token is not None else self.cluster.acl_master_token
        if secret:
            request.add_header("X-Consul-Token", secret)
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own agent on loopback
                request, timeout=timeout, context=self.cluster.ssl_context()
            ) as response:
                return _answer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return _answer(exc.code, exc.read(), dict(exc.headers or {}))
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise reason if isinstance(reason, OSError) else OSError(str(reason)) from exc

    def reported_leader(self) -> str:
        """``/v1/status/leader`` as this agent sees it: ``host:port`` or ``""``.

        Raises:
            OSError: the agent did not answer.
        """
        answer = self.api("GET", "/v1/status/leader", timeout=1.0)
        return answer.body if answer.status == 200 and isinstance(answer.body, str) else ""

    def connected_servers(self) -> list[ClusterMember]:
        """The servers this agent holds an established TCP connection to on their RPC port.

        For a client agent that is the server its RPCs go to right now (read from
        ``/proc/net/tcp``, Linux only; an empty list elsewhere).
        """
        by_address = {(s.host, s.ports["server"]): s for s in self.cluster.servers}
        found: list[ClusterMember] = []
        try:
            lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return found
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "01":  # 01 = ESTABLISHED
                continue
            local, remote = _proc_address(fields[1]), _proc_address(fields[2])
            server = by_address.get(remote)
            if local[0] == self.host and server not in (None, self, *found):
                assert server is not None
                found.append(server)
        return found

    def serf_members(self, *, wan: bool = False) -> dict[str, str]:
        """``/v1/agent/members`` as this agent sees it: node name -> ``alive``/``failed``...

        Args:
            wan: the WAN pool (servers only; names are ``node.datacenter``).

        Raises:
            OSError: the agent did not answer.
        """
        answer = self.api("GET", "/v1/agent/members" + ("?wan=1" if wan else ""))
        if answer.status != 200 or not isinstance(answer.body, list):
            return {}
        return {m["Name"]: SERF_STATUS.get(m.get("Status", 0), "?") for m in answer.body}


def _proc_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``, IPv4 in host byte order) -> ``("127.0.0.1", 8080)``."""
    ip_hex, _, port_hex = text.partition(":")
    ip = socket.inet_ntoa(struct.pack("=I", int(ip_hex, 16)))
    return ip, int(port_hex, 16)


def _answer(status: int, raw: bytes, headers: dict[str, str]) -> ApiAnswer:
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
    return ApiAnswer(status=status, body=body, headers=headers)


class ConsulCluster:
    """Three (or ``servers``) Consul servers and ``clients`` client agents, real processes.

    Args:
        servers: number of servers (1 or 3 are the useful values; ``bootstrap_expect``).
        clients: number of client agents (0, 1 or 2).
        binary: the consul binary (default: :func:`find_consul_binary`).
        acl_master_token: enable ACLs with default deny and this management token.
        tls: serve HTTPS only, with a CA and certificates made by ``consul tls``.
        verify_incoming: with ``tls``, require callers to present a client certificate.
        datacenter: the datacenter name.
        wan_join: another cluster (another datacenter) whose servers this cluster's servers
            join over WAN gossip; :meth:`start` then also waits until the datacenters see
            each other (:meth:`wait_wan`). Not with ACLs or TLS (no replication tokens or
            cross-datacenter certificates are set up).
        base_dir: where member directories go (default: a new temporary directory,
            removed by :meth:`close`).

    The cluster is a context manager: entering starts every member and waits until it is
    ready (:meth:`start`); leaving (or :meth:`close`) kills every process, paused or not, and
    removes the temporary directory, whatever happened in between.

    Raises:
        RuntimeError: no consul binary, or the cluster did not form in time (with logs).
    """

    def __init__(
        self,
        *,
        servers: int = 3,
        clients: int = 1,
        binary: Path | None = None,
        acl_master_token: str | None = None,
        tls: bool = False,
        verify_incoming: bool = False,
        datacenter: str = "dc1",
        base_dir: Path | None = None,
        wan_join: ConsulCluster | None = None,
    ) -> None:
        if servers < 1:
            raise ValueError("a cluster needs at least one server")
        if clients < 0:
            raise ValueError("clients must be >= 0")
        if verify_incoming and not tls:
            raise ValueError("verify_incoming needs tls=True")
        if wan_join is not None:
            if wan_join.datacenter == datacenter:
                raise ValueError(f"wan_join needs another datacenter than {datacenter!r}")
            if acl_master_token or tls or wan_join.acl_master_token or wan_join.tls_material:
                raise ValueError("wan_join is supported without ACLs and TLS only")
        found = binary or find_consul_binary()
        if found is None:
            raise RuntimeError("no consul binary (set LAKE_MESH_CONSUL_BIN or put it on PATH)")
        self.binary = found
        self.acl_master_token: str | None = acl_master_token
        self.verify_incoming = verify_incoming
        self.datacenter: str = datacenter
        #: The clusters (datacenters) this one's servers join over WAN gossip.
        self.wan_peers: list[ConsulCluster] = [wan_join] if wan_join is not None else []
        self._own_dir = base_dir is None
        self.directory = base_dir or Path(tempfile.mkdtemp(prefix="lake-mesh-cluster-"))
        self._ssl: ssl.SSLContext | None = None
        prefix = _loopback_prefix()
        names = [f"server-{i + 1}" for i in range(servers)]
        names += [f"client-{i + 1}" for i in range(clients)]
        self._members: list[ClusterMember] = []
        for index, name in enumerate(names):
            host = f"{prefix}.{index + 1}"
            api_port = "https" if tls else "http"
            self._members.append(
                ClusterMember(
                    name=name,
                    role="server" if name.startswith("server") else "client",
                    host=host,
                    ports={
                        api_port: free_port(host),
                        "serf_lan": free_port(host),
                        "serf_wan": free_port(host),
                        "server": free_port(host),
                    },
                    directory=self.directory / name,
                    node_id=str(uuid.uuid4()),
                    cluster=self,
                )
            )
        self.tls_material: TLSMaterial | None = None
        if tls:
            try:
                self.tls_material = create_tls_material(
                    self.binary,
                    self.directory / "tls",
                    datacenter=datacenter,
                    ip_addresses=[m.host for m in self._members],
                )
            except BaseException:
                self.close()
                raise

    # -- members -----------------------------------------------------------------------------

    @property
    def members(self) -> tuple[ClusterMember, ...]:
        """Every member, servers first."""
        return tuple(self._members)

    @property
    def servers(self) -> tuple[ClusterMember, ...]:
        """The server members."""
        return tuple(m for m in self._members if m.role == "server")

    @property
    def clients(self) -> tuple[ClusterMember, ...]:
        """The client agent members."""
        return tuple(m for m in self._members if m.role == "client")

    @property
    def client(self) -> ClusterMember:
        """The first client agent (or the first server when there are no clients)."""
        return (self.clients or self.servers)[0]

    def member(self, name: str) -> ClusterMember:
        """The member called ``name``; KeyError if there is none."""
        for m in self._members:
            if m.name == name:
                return m
        raise KeyError(name)

    def mesh_config(
        self, member: ClusterMember | None = None, *, token: str | None = None, **overrides: Any
    ) -> MeshConfig:
        """A MeshConfig for ``member`` (default :attr:`client`) with scheme, CA and cert set.

        Args:
            member: which agent to talk to.
            token: ACL token; ``None`` means the management token (in ACL mode), ``""`` the
                anonymous token.
            overrides: more MeshConfig fields (they win).
        """
        from lake_mesh_consul._core.config import MeshConfig

        target = member or self.client
        values: dict[str, Any] = {"address": target.address, "scheme": target.scheme}
        values["token"] = self.acl_master_token if token is None else token
        if self.tls_material is not None:
            values["ca_file"] = str(self.tls_material.ca_file)
            if self.verify_incoming:
                values["client_cert"] = str(self.tls_material.client_cert)
                values["client_key"] = str(self.tls_material.client_key)
        values.update(overrides)
        return MeshConfig(**values)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every member and wait until the cluster is ready (see :meth:`wait_ready`).

        Raises:
            RuntimeError: it did not form within ``timeout`` (the message carries logs).
        """
        deadline = time.monotonic() + timeout
        try:
            # Servers answer before clients start: a server that had to take a new port on its
            # first start is then written into the clients' retry_join as it really is.
            for group in (self.servers, self.clients):
                for m in group:
                    m.start(wait=False)
                for m in group:
                    m.wait_answering(max(1.0, deadline - time.monotonic()))
            self.wait_ready(max(1.0, deadline - time.monotonic()))
            if self.wan_peers:
                self.wait_wan(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise

    def wait_ready(self, timeout: float = 30.0) -> ClusterMember:
        """Wait for a leader and for every client agent to see every running member.

        "Sees" means the member is ``alive`` in the client's gossip view and in its catalog
        (``/v1/catalog/nodes``), which needs a working leader and the client's sync.

        Returns:
            The leader.

        Raises:
            TimeoutError: not ready in time (with the logs of the members).
        """
        deadline = time.monotonic() + timeout
        leader = self.wait_for_leader(timeout)
        want = {m.name for m in self._members if m.running and not m.paused}
        while True:
            missing: set[str] = set()
            for c in self.clients:
                if not c.running or c.paused:
                    continue
                try:
                    answer = c.api("GET", "/v1/catalog/nodes")
                    seen = {n["Node"] for n in answer.body} if answer.status == 200 else set()
                    alive = {n for n, state in c.serf_members().items() if state == "alive"}
                except (OSError, TypeError, KeyError):
                    seen = alive = set()
                missing |= want - (seen & alive)
            if not missing:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients do not see {sorted(missing)}:\n{self.logs()}")
            time.sleep(0.1)

    def leader(self) -> ClusterMember | None:
        """The server a majority of the answering servers names as leader, if it runs.

        Paused or stopped servers are not asked. Returns ``None`` when no leader is known.
        """
        answers: list[str] = []
        for s in self.servers:
            if s.running and not s.paused:
                try:
                    answers.append(s.reported_leader())
                except OSError:
                    continue
        votes = Counter(a for a in answers if a)
        if not votes:
            return None
        address, count = votes.most_common(1)[0]
        if count * 2 <= len(answers):
            return None
        for s in self.servers:
            if s.server_address == address and s.running and not s.paused:
                return s
        return None

    def wait_for_leader(
        self, timeout: float = 15.0, *, not_: ClusterMember | None = None
    ) -> ClusterMember:
        """Wait until a running server is leader and says so itself.

        Args:
            timeout: seconds to wait.
            not_: a member that must not be the answer (the old leader, when it may still be
                named by a stale follower).

        Returns:
            The leader.

        Raises:
            TimeoutError: no leader in time (the message carries the servers' logs).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.leader()
            if found is not None and found is not not_:
                with contextlib.suppress(OSError):
                    if found.reported_leader() == found.server_address:
                        return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no raft leader within {timeout:g}s:\n{self.logs()}")
            time.sleep(0.05)

    # -- several datacenters ----------------------------------------------------------------

    def join_wan(self, other: ConsulCluster, *, timeout: float = 30.0) -> None:
        """WAN-join this running cluster's servers to ``other``'s servers, and wait for it.

        Uses ``PUT /v1/agent/join/<addr>?wan=1`` on each running server of this cluster;
        ``other`` is also added to :attr:`wan_peers`, so restarted servers rejoin it
        (``retry_join_wan``).

        Args:
            other: a running cluster of another datacenter.
            timeout: seconds to wait until each datacenter sees the other (:meth:`wait_wan`).

        Raises:
            ValueError: ``other`` is this cluster's datacenter.
            RuntimeError: a server refused the join (with its answer).
            TimeoutError: the datacenters do not see each other in time.
        """
        if other.datacenter == self.datacenter:
            raise ValueError(f"both clusters are datacenter {self.datacenter!r}")
        if other not in self.wan_peers:
            self.wan_peers.append(other)
        target = other.servers[0].wan_address
        for s in self.servers:
            if s.running and not s.paused:
                answer = s.api("PUT", f"/v1/agent/join/{target}?wan=1", timeout=10.0)
                if answer.status != 200:
                    raise RuntimeError(
                        f"{s.name}: WAN join to {target}: HTTP {answer.status} {answer.body!r}"
                    )
        self.wait_wan(timeout)

    def datacenters(self, via: ClusterMember | None = None) -> list[str]:
        """``/v1/catalog/datacenters`` as ``via`` (default :attr:`client`) sees it.

        Raises:
            OSError: the agent did not answer.
        """
        answer = (via or self.client).api("GET", "/v1/catalog/datacenters")
        if answer.status != 200 or not isinstance(answer.body, list):
            return []
        return [str(dc) for dc in answer.body]

    def wait_wan(self, timeout: float = 30.0) -> None:
        """Wait until the datacenters of this cluster and its :attr:`wan_peers` see each other.

        "See" means every running server of each finds every running server of the others
        ``alive`` in its WAN pool, and every running agent lists every datacenter in
        ``/v1/catalog/datacenters``.

        Raises:
            TimeoutError: not in time (with what is missing and the logs).
        """
        deadline = time.monotonic() + timeout
        clusters = [self, *self.wan_peers]
        want_dcs = {c.datacenter for c in clusters}
        want_servers = {
            f"{s.name}.{c.datacenter}"
            for c in clusters
            for s in c.servers
            if s.running and not s.paused
        }
        while True:
            missing: set[str] = set()
            for c in clusters:
                for m in c.members:
                    if not m.running or m.paused:
                        continue
                    try:
                        seen = set(c.datacenters(m))
                        alive = set(want_servers)
                        if m.role == "server":
                            wan = m.serf_members(wan=True)
                            alive = {n for n, state in wan.items() if state == "alive"}
                    except (OSError, TypeError, KeyError):
                        seen, alive = set(), set()
                    where = f"{m.name}.{c.datacenter}"
                    missing |= {f"{where} lists no {d}" for d in want_dcs - seen}
                    missing |= {f"{where} sees no {n}" for n in want_servers - alive}
            if not missing:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(c.logs() for c in clusters)
                raise TimeoutError(f"WAN not joined: {sorted(missing)[:10]}:\n{logs}")
            time.sleep(0.1)

    def raft_peers(self, via: ClusterMember | None = None) -> list[dict[str, Any]]:
        """``/v1/operator/raft/configuration?stale``: each server's Node, Address, Leader, Voter.

        Raises:
            OSError: the agent did not answer.
            RuntimeError: it answered with an error status.
        """
        target = via or self.client
        answer = target.api("GET", "/v1/operator/raft/configuration?stale")
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise RuntimeError(f"raft configuration: HTTP {answer.status} {answer.body!r}")
        servers: list[dict[str, Any]] = answer.body.get("Servers", [])
        return servers

    def logs(self, tail: int = 15) -> str:
        """The last lines of every member's log, headed by its name."""
        return "\n".join(f"--- {m.name} ({m.host})\n{m.log(tail)}" for m in self._members)

    def close(self) -> None:
        """Kill every member (paused ones too) and remove the temporary directory. Idempotent."""
        for m in self._members:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                m.kill()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ConsulCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{m.name}@{m.address}{'' if m.running else ' down'}{' paused' if m.paused else ''}"
            for m in self._members
        )
        return f"ConsulCluster({parts})"

    # -- agent configuration ------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for this cluster's agents (``None`` unless ``tls=True``)."""
        if self.tls_material is None:
            return None
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.tls_material.ca_file))
            context.load_cert_chain(
                str(self.tls_material.client_cert), str(self.tls_material.client_key)
            )
            self._ssl = context
        return self._ssl

    def agent_config(self, member: ClusterMember) -> dict[str, Any]:
        """The agent configuration (JSON-ready) that ``member`` is started with."""
        servers = self.servers
        ports: dict[str, int] = {"dns": -1, "grpc": -1, **member.ports}
        if self.tls_material is not None:
            ports["http"] = -1
        config: dict[str, Any] = {
            "datacenter": self.datacenter,
            "node_name": member.name,
            "node_id": member.node_id,
            "data_dir": str(member.data_dir),
            "bind_addr": member.host,
            "client_addr": member.host,
            "advertise_addr": member.host,
            "ports": ports,
            "retry_join": [s.serf_address for s in servers if s is not member],
            "retry_interval": "1s",
            "leave_on_terminate": False,
            "skip_leave_on_interrupt": False,
            "rejoin_after_leave": True,
            "disable_update_check": True,
            "disable_remote_exec": True,
            "enable_script_checks": False,
            "log_level": "INFO",
            "performance": {"raft_multiplier": 1},
            "gossip_lan": GOSSIP_LAN,
            "check_update_interval": "0s",
        }
        if member.role == "server":
            config["gossip_wan"] = GOSSIP_WAN
            if self.wan_peers:
                config["retry_join_wan"] = [
                    s.wan_address for peer in self.wan_peers for s in peer.servers
                ]
                config["retry_interval_wan"] = "1s"
            config["server"] = True
            config["bootstrap_expect"] = len(servers)
            config["autopilot"] = {
                # Keep killed servers in the raft configuration: "two of three down" must
                # mean "no quorum", not "autopilot shrank the cluster to one".
                "cleanup_dead_servers": False,
                "last_contact_threshold": "1s",
                "server_stabilization_time": "1s",
            }
        if self.acl_master_token:
            # Not "agent_master": a client agent resolves that token locally to agent-only
            # rights, which would shadow the management token on that agent.
            tokens: dict[str, str] = {"agent": self.acl_master_token}
            if member.role == "server":
                tokens["master"] = self.acl_master_token
            config["primary_datacenter"] = self.datacenter
            config["acl"] = {
                "enabled": True,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "enable_token_persistence": False,
                "tokens": tokens,
            }
        if self.tls_material is not None:
            config.update(
                ca_file=str(self.tls_material.ca_file),
                cert_file=str(self.tls_material.server_cert),
                key_file=str(self.tls_material.server_key),
                verify_incoming=False,
                verify_incoming_rpc=False,
                verify_incoming_https=self.verify_incoming,
                verify_outgoing=False,
            )
        return config


@contextlib.contextmanager
def tls_agent(
    *,
    verify_incoming: bool = False,
    acl_master_token: str | None = None,
    binary: Path | None = None,
) -> Iterator[ConsulCluster]:
    """One Consul server serving HTTPS only, with a CA and certificates from ``consul tls``.

    Yields a one-server :class:`ConsulCluster`: ``cluster.client.address`` is the HTTPS
    address, ``cluster.tls_material`` holds ``ca_file``, ``client_cert`` and ``client_key``,
    and ``cluster.mesh_config()`` is a working MeshConfig for it.

    Args:
        verify_incoming: require a client certificate on HTTPS connections.
        acl_master_token: also enable ACLs (default deny) with this management token.
        binary: the consul binary.

    Example::

        with tls_agent(verify_incoming=True) as agent:
            with ConsulClient(agent.mesh_config()) as client:
                client.leader()
    """
    cluster = ConsulCluster(
        servers=1,
        clients=0,
        binary=binary,
        tls=True,
        verify_incoming=verify_incoming,
        acl_master_token=acl_master_token,
    )
    with cluster:
        yield cluster
