"""The demo behind ``lake-mesh demo``: the whole mesh at work on one machine, in phases.

1. A local Consul: the agent at ``CONSUL_HTTP_ADDR`` (or ``--http-addr``) when one answers
   there, else the one ``lake-mesh agent up`` provisions (reused when already up; stopped at
   the end only if the demo started it).
2. Three small HTTP instances of the service ``demo-web`` on loopback (``http.server`` on
   threads), each with ``/health`` and switches for failing (HTTP 503) and slowness,
   registered through :class:`~lake_mesh_consul.mesh.Mesh` with an HTTP check every second.
3. A steady stream of idempotent ``GET http://demo-web/work`` through
   :class:`~lake_mesh_consul.http.MeshSession`, while a table shows each endpoint's share,
   latency, health and breaker state (redrawn in place on a terminal; log lines otherwise).
4. Phases, each with a caption: baseline -> one instance fails (its breaker opens, traffic
   moves) -> one turns slow (peak EWMA moves traffic away) -> the strategy changes through a
   KV write (live reload) -> one instance is killed (its check goes critical, it leaves the
   rotation) -> drain, deregister, stop; then a summary with the figures of each phase.

The caller should see zero failures: every request is idempotent, so the mesh retries it on
another endpoint. :func:`run_demo` returns the summary; the CLI exits 1 when the caller saw
any failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

__all__ = ["DemoInstance", "DemoSummary", "PhaseFigures", "run_demo"]

#: The demo service's name in Consul.
SERVICE = "demo-web"
#: The KV prefix of the demo's configuration (deleted at the end).
KV_PREFIX = "lake-mesh-demo"
#: Default length of the traffic phases, in seconds (the whole demo stays under 2 minutes).
DEFAULT_DURATION = 45.0
#: Requests per second sent through the mesh.
DEFAULT_RATE = 40.0
#: Extra latency of the slow instance, in seconds.
SLOW_DELAY = 0.12
#: Seconds between two redraws of the live table (or two log lines without it).
REDRAW_EVERY = 0.5
LOG_EVERY = 2.0
#: The service's configuration written to KV at the start (and changed in phase 4).
DEMO_CONFIG: dict[str, Any] = {
    "strategy": "peak_ewma",
    "per_try_timeout": "1s",
    "deadline": "5s",
    "breaker": {"consecutive_failures": 3, "reset_timeout": "3s"},
    "detector": {"consecutive_failures": 3, "base_ejection_time": "3s"},
    "retry": {"attempts": 3, "budget_ratio": 0.5},
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    instance: DemoInstance


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a killed instance is gone

    def do_GET(self) -> None:
        instance = self.server.instance
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        instance.hits += 1
        if self.path == "/health":
            self._send(200, b"ok")
            return
        if instance.delay > 0:
            time.sleep(instance.delay)
        if instance.failing:
            self._send(503, b'{"error": "demo failure"}', retry_after=instance.retry_after)
            return
        answer = {
            "instance": instance.name,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": dict(self.headers.items()),
            "body": body.decode(errors="replace"),
        }
        self._send(200, json.dumps(answer).encode())

    do_POST = do_GET  # noqa: N815 - http.server dispatches on do_<METHOD>
    do_PUT = do_GET  # noqa: N815
    do_DELETE = do_GET  # noqa: N815

    def _send(self, status: int, body: bytes, *, retry_after: str | None = None) -> None:
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class DemoInstance:
    """One instance of the demo service: an HTTP server on a loopback port, on a thread.

    Attributes:
        name: the instance id in Consul.
        failing: answer 503 to everything but ``/health``.
        retry_after: the ``Retry-After`` header of those 503s (None: none).
        delay: seconds added to every answer but ``/health``.
        hits: requests received, ``/health`` included.

    Every other path answers 200 with JSON echoing the instance, method, path, ``Host``,
    headers and body (tests use it).

    Thread-safety: the switches are plain attributes read by the handler threads.
    """

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.failing = False
        self.retry_after: str | None = None
        self.delay = 0.0
        self.hits = 0
        self._server = _Server((host, 0), _Handler)
        self._server.instance = self
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"demo-{name}", daemon=True
        )
        self._thread.start()
        self.alive = True

    def kill(self) -> None:
        """Stop answering: the port refuses connections from now on. Idempotent."""
        if not self.alive:
            return
        self.alive = False
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


@dataclass
class PhaseFigures:
    """What the caller saw during one phase."""

    name: str
    caption: str
    seconds: float = 0.0
    requests: int = 0
    failures: int = 0
    served: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def share(self, endpoint: str) -> float:
        """Percent of this phase's answered requests served by ``endpoint``."""
        total = sum(self.served.values())
        return 100.0 * self.served[endpoint] / total if total else 0.0

    def p50_ms(self) -> float:
        """Median latency seen by the caller, ms."""
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    def p99_ms(self) -> float:
        """99th percentile latency seen by the caller, ms."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "caption": self.caption,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "failures": self.failures,
            "served": dict(self.served),
            "p50_ms": round(self.p50_ms(), 2),
            "p99_ms": round(self.p99_ms(), 2),
        }


@dataclass
class DemoSummary:
    """The demo's result: totals and the figures of each phase."""

    address: str
    agent_started: bool
    requests: int
    failures: int
    phases: list[PhaseFigures]
    seconds: float
    errors: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "address": self.address,
            "agent_started": self.agent_started,
            "requests": self.requests,
            "failures": self.failures,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 2),
            "phases": [p.to_dict() for p in self.phases],
        }

    def render(self, endpoints: list[str]) -> str:
        """The printed summary."""
        lines = [
            "",
            "== summary ==",
            f"requests sent: {self.requests}   failures seen by the caller: {self.failures}"
            f"   ({self.seconds:.1f}s, agent {self.address})",
        ]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in self.errors.items()))
        head = f"{'phase':<12} {'req':>6} {'fail':>5} {'p50':>8} {'p99':>8}  " + "  ".join(
            f"{e:>11}" for e in endpoints
        )
        lines.append(head)
        for p in self.phases:
            shares = "  ".join(f"{p.share(e):>10.1f}%" for e in endpoints)
            lines.append(
                f"{p.name:<12} {p.requests:>6} {p.failures:>5} {p.p50_ms():>6.1f}ms "
                f"{p.p99_ms():>6.1f}ms  {shares}"
            )
        verdict = (
            "OK: zero failures reached the caller"
            if self.failures == 0
            else f"FAILED: {self.failures} failure(s) reached the caller"
        )
        lines.append(verdict)
        return "\n".join(lines)


class _Traffic:
    """Sends a steady stream of GETs through the mesh session and records what came back."""

    def __init__(self, session: Any, rate: float, workers: int = 2) -> None:
        self.session = session
        self.interval = workers / rate
        self.workers = workers
        self.lock = threading.Lock()
        self.phase: PhaseFigures | None = None
        self.errors: Counter[str] = Counter()
        self.recent: list[tuple[float, str, float]] = []  # (time, endpoint, latency)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"demo-traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10.0)

    def _loop(self) -> None:
        from lake_mesh_consul.http import endpoint_of

        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            endpoint = None
            failed = False
            try:
                response = self.session.get(f"http://{SERVICE}/work", timeout=5)
                endpoint = endpoint_of(response)
                if response.status_code >= 500:
                    failed = True
                    self._error(f"HTTP {response.status_code}")
            except Exception as exc:
                failed = True
                self._error(type(exc).__name__)
            latency = time.monotonic() - started
            with self.lock:
                phase = self.phase
                if phase is not None:
                    phase.requests += 1
                    if failed:
                        phase.failures += 1
                    elif endpoint is not None:
                        phase.served[endpoint.id] += 1
                        phase.latencies.append(latency)
                if endpoint is not None and not failed:
                    self.recent.append((time.monotonic(), endpoint.id, latency))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if time.monotonic() - next_at > 1.0:
                next_at = time.monotonic()  # fell behind (slow phase): do not burst

    def _error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def window(self, seconds: float = 2.0) -> tuple[Counter[str], dict[str, float]]:
        """Requests per endpoint and mean latency over the last ``seconds``."""
        cutoff = time.monotonic() - seconds
        with self.lock:
            self.recent = [r for r in self.recent if r[0] >= cutoff]
            recent = list(self.recent)
        counts: Counter[str] = Counter(e for _, e, _ in recent)
        sums: dict[str, float] = {}
        for _, e, latency in recent:
            sums[e] = sums.get(e, 0.0) + latency
        return counts, {e: sums[e] / counts[e] for e in counts}


class _Screen:
    """The live table (redrawn in place) or plain log lines."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self._lines = 0
        self._last_log = 0.0

    def say(self, text: str) -> None:
        if self.live and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self._lines = 0
        self.out.write(text + "\n")
        self.out.flush()

    def table(self, mesh: Any, traffic: _Traffic, phase: PhaseFigures, started: float) -> None:
        now = time.monotonic()
        if not self.live and now - self._last_log < LOG_EVERY:
            return
        self._last_log = now
        counts, latency = traffic.window()
        total = sum(counts.values())
        try:
            explanation = mesh.explain(SERVICE)
        except Exception as exc:
            self.say(f"  (explain failed: {exc})")
            return
        with traffic.lock:
            sent = phase.requests
            failures = phase.failures
        if self.live:
            rows = [
                f"t={now - started:5.1f}s  phase: {phase.name}  strategy: "
                f"{explanation.strategy}  requests this phase: {sent}  caller failures: "
                f"{failures}",
                f"  {'ENDPOINT':<12} {'SHARE':>6} {'LATENCY':>8}  {'HEALTH':<9} "
                f"{'BREAKER':<9} WHY NOT",
            ]
            for inst in explanation.instances:
                share = 100.0 * counts[inst.id] / total if total else 0.0
                lat = f"{latency[inst.id] * 1000:.1f}ms" if inst.id in latency else "-"
                bar = "#" * int(share / 5)
                rows.append(
                    f"  {inst.id:<12} {share:>5.1f}% {lat:>8}  {inst.health:<9} "
                    f"{inst.breaker or '-':<9} {'; '.join(inst.reasons)[:60] or bar}"
                )
            if self._lines:
                self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self.out.write("\n".join(rows) + "\n")
            self.out.flush()
            self._lines = len(rows)
        else:
            parts = []
            for inst in explanation.instances:
                share = 100.0 * counts[inst.id] / total if total else 0.0
                lat = f"{latency[inst.id] * 1000:.0f}ms" if inst.id in latency else "-"
                parts.append(
                    f"{inst.id} {share:.0f}% {lat} {inst.health} {inst.breaker or '-'}"
                    + (" (" + "; ".join(inst.reasons)[:50] + ")" if inst.reasons else "")
                )
            self.out.write(
                f"t={now - started:5.1f}s [{phase.name}] {explanation.strategy} "
                f"sent={sent} fail={failures} | " + " | ".join(parts) + "\n"
            )
            self.out.flush()


def _agent(address: str | None, progress: Callable[[str], None]) -> tuple[str, bool]:
    """The agent to use: ``address`` if one answers there, else ``agent up``'s."""
    from lake_mesh_consul.testing import _provision

    if address:
        plain = address.split("://", 1)[-1].rstrip("/")
        if _provision.leader_of(plain) is not None:
            progress(f"using the Consul agent at {plain}")
            return plain, False
        progress(f"no agent answers at {plain}; starting a local one")
    state = _provision.agent_up(progress=progress)
    started = state.mode != "external" and "already running" not in state.notes
    progress(
        f"Consul agent at {state.address} "
        + ("(started for the demo)" if started else "(already running: reused)")
    )
    return state.address, started


def run_demo(
    *,
    duration: float = DEFAULT_DURATION,
    live: bool | None = None,
    address: str | None = None,
    rate: float = DEFAULT_RATE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> DemoSummary:
    """Run the demo (see the module docstring) and return its summary.

    Args:
        duration: seconds of traffic, shared among the five phases (at least 10).
        live: redraw a table in place (default: when ``out`` is a terminal); otherwise
            print a log line every two seconds.
        address: the agent to use (default ``CONSUL_HTTP_ADDR``; else ``agent up``).
        rate: requests per second.
        out: where the table and summary go (stdout); err: progress (stderr).

    Raises:
        ProvisioningError: no local agent could be had.
        MeshError: registration or configuration failed.
    """
    import logging

    from lake_mesh_consul._core.config import MeshConfig
    from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata
    from lake_mesh_consul.mesh import Mesh
    from lake_mesh_consul.testing import _provision

    out = out or sys.stdout
    err = err or sys.stderr
    if live is None:
        live = bool(getattr(out, "isatty", lambda: False)())
    duration = max(10.0, float(duration))
    library = logging.getLogger("lake_mesh_consul")
    if not library.handlers:
        library.addHandler(logging.NullHandler())

    def progress(text: str) -> None:
        print(text, file=err, flush=True)

    t0 = time.monotonic()
    agent_address, agent_started = _agent(address or os.environ.get("CONSUL_HTTP_ADDR"), progress)
    screen = _Screen(out, live)
    phases: list[PhaseFigures] = []
    instances = [DemoInstance(f"{SERVICE}-{i}") for i in (1, 2, 3)]
    names = [i.name for i in instances]
    traffic: _Traffic | None = None
    try:
        config = MeshConfig(address=agent_address, kv_prefix=KV_PREFIX, watch_wait=10.0)
        mesh = Mesh(config, drain_grace=1.0)
        with mesh:
            key = mesh.store.layout.service_key(SERVICE)
            mesh.store.set(key, DEMO_CONFIG)
            for inst in instances:
                mesh.register(
                    ServiceMetadata(SERVICE, inst.port, id=inst.name, address=inst.host),
                    HttpCheck(
                        url=f"http://{inst.host}:{inst.port}/health",
                        interval=1.0,
                        timeout=1.0,
                    ),
                )
            screen.say(f"registered {', '.join(names)} with HTTP checks every 1s")
            _wait(
                lambda: (
                    mesh.explain(SERVICE).eligible == 3
                    and mesh.explain(SERVICE).strategy == "peak_ewma"
                ),
                timeout=15.0,
            )
            session = mesh.session()
            traffic = _Traffic(session, rate)
            traffic.start()
            started = time.monotonic()
            part = duration / 5.0

            def phase(name: str, caption: str, seconds: float) -> PhaseFigures:
                figures = PhaseFigures(name, caption)
                assert traffic is not None
                with traffic.lock:
                    traffic.phase = figures
                phases.append(figures)
                screen.say(f"\n>> {caption}")
                begin = time.monotonic()
                while time.monotonic() - begin < seconds:
                    screen.table(mesh, traffic, figures, started)
                    time.sleep(REDRAW_EVERY)
                figures.seconds = time.monotonic() - begin
                screen.table(mesh, traffic, figures, started)
                return figures

            phase(
                "baseline",
                f"3 healthy instances; strategy peak_ewma (from KV {key})",
                part * 0.8,
            )
            instances[1].failing = True
            phase(
                "failing",
                f"{names[1]} starts failing (HTTP 503): retries hide it, its breaker opens "
                "and traffic moves to the others",
                part * 1.1,
            )
            instances[1].failing = False
            instances[2].delay = SLOW_DELAY
            phase(
                "slow",
                f"{names[1]} recovered (its breaker closes after a probe); {names[2]} turns "
                f"slow (+{SLOW_DELAY * 1000:.0f} ms): peak EWMA moves traffic away",
                part * 1.1,
            )
            mesh.store.set(key, {**DEMO_CONFIG, "strategy": "round_robin"})
            phase(
                "reload",
                f"KV write: {key} strategy=round_robin -> live reload, no restart: "
                f"{names[2]} gets its third again (and the latency shows it)",
                part * 0.9,
            )
            instances[2].delay = 0.0
            instances[0].kill()
            phase(
                "killed",
                f"{names[0]} killed: refused connections are retried elsewhere, its check "
                "goes critical and it leaves the rotation",
                part * 1.1,
            )
            traffic.stop()
            with traffic.lock:
                traffic.phase = None
            screen.say("\n>> draining: maintenance on, 1s grace, deregister; stopping every thread")
            session.close()
            with contextlib.suppress(Exception):
                mesh.store.client.request(
                    "DELETE",
                    f"/v1/kv/{mesh.store.layout.folder}",
                    operation="delete the demo's configuration",
                    params={"recurse": ""},
                )
        screen.say(f"deregistered {', '.join(names)}; mesh closed")
        remaining = [
            e for e in _health(agent_address) if e.get("Service", {}).get("Service") == SERVICE
        ]
        if remaining:
            screen.say(f"warning: {len(remaining)} instance(s) still registered")
    finally:
        if traffic is not None:
            traffic.stop()
        for inst in instances:
            inst.kill()
        if agent_started:
            progress("stopping the agent the demo started")
            _provision.agent_down(progress=progress)
    errors = traffic.errors if traffic is not None else Counter()
    return DemoSummary(
        address=agent_address,
        agent_started=agent_started,
        requests=sum(p.requests for p in phases),
        failures=sum(p.failures for p in phases),
        phases=phases,
        seconds=time.monotonic() - t0,
        errors=errors,
    )


def _wait(predicate: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.1)
    from lake_mesh_consul.errors import MeshError

    raise MeshError(f"the demo instances did not become healthy within {timeout:g}s")


def _health(address: str) -> list[dict[str, Any]]:
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"http://{address}/v1/health/service/{SERVICE}", timeout=2
        ) as response:
            data = json.loads(response.read() or b"[]")
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
