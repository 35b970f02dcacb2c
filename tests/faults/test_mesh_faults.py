"""Faults seen through the whole mesh: ``Mesh`` and ``mesh.session()``, not the parts.

Three real HTTP backends on loopback are registered through ``mesh.register`` (a TTL check
each) and called as ``http://<service>/...`` by 8 threads with a bounded request count.
The service's settings come from code (``ServiceConfig``): round robin, a 300 ms per-try
timeout, ejection and breaker after 5 consecutive failures, 1 s base ejection.

Promises:

* one backend refuses connections, then answers 503, then hangs: zero caller-visible
  failures for GET; it is ejected (or its breaker opens) within the configured 5 failures
  plus the requests already in flight on the other threads; after it heals it gets its
  share again. A plain 500 is not retried by default (``DEFAULT_RETRY_ON``) and no
  ServiceConfig/KV field changes that, so 500s reach a GET caller until the ejection: that
  count is measured and bounded by the same number;
* POST is not idempotent: a POST whose connection was refused (never sent) is retried on
  another backend (zero failures, every request processed exactly once); a POST answered
  500 or 503, or timing out, is not retried: the caller sees exactly as many failures as
  the bad backend received POSTs, and no request is processed twice;
* the local agent (the client agent of a one-server cluster) killed and restarted with its
  data wiped under a steady call loop, with a KV config (``peak_ewma``) in force: zero
  failed calls; the instances and their checks registered again within 5 s of the agent
  answering; the discovery and KV watches end on the true state; the KV config, which
  lives on the servers, is kept throughout.
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._core.config import (
    BreakerSettings,
    DetectorSettings,
    RetrySettings,
    ServiceConfig,
)
from lake_mesh_consul._core.detector import EjectionEvent
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.http import endpoint_of
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing._agent import find_consul_binary
from lake_mesh_consul.testing.cluster import ConsulCluster

from ._loops import RecordProperty, until

#: The longest a hanging backend holds a request (released at once when healed).
HANG_MAX = 2.0
#: Caller threads.
THREADS = 8
#: The configured consecutive failures that eject an endpoint (and open its breaker).
EJECT_AFTER = 5


# --- backends ----------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        backend = self.server.backend
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        mode = backend.mode
        with backend.lock:
            backend.received[(self.command, mode)] += 1
            if self.command == "POST":
                backend.post_ids.append(body.decode())
        if mode in ("500", "503"):
            self.send_response(int(mode))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "hang":
            backend.healed.wait(HANG_MAX)
        answer = backend.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = _handle  # noqa: N815 - BaseHTTPRequestHandler's names
    do_POST = _handle  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: Backend

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a caller that timed out closed its end while the backend hung


class Backend:
    """A loopback HTTP backend that can refuse, answer 500/503, hang, and heal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.healed = threading.Event()
        self.lock = threading.Lock()
        self.received: Counter[tuple[str, str]] = Counter()
        self.post_ids: list[str] = []
        self.port = 0
        self._server: _Server | None = None
        self._start()

    def _start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.backend = self
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server

    def fault(self, mode: str) -> None:
        """``refuse`` (close the listening socket), ``500``, ``503`` or ``hang``."""
        self.healed.clear()
        if mode == "refuse":
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
        else:
            self.mode = mode

    def heal(self) -> None:
        self.mode = "ok"
        self.healed.set()
        if self._server is None:
            self._start()

    def close(self) -> None:
        self.healed.set()
        self.fault("refuse")


@pytest.fixture
def backends(unique_name: str) -> Iterator[list[Backend]]:
    started = [Backend(f"{unique_name}-{i}") for i in range(3)]
    yield started
    for backend in started:
        backend.close()


def _service_config() -> ServiceConfig:
    return ServiceConfig(
        strategy="round_robin",
        per_try_timeout=0.3,
        deadline=5.0,
        detector=DetectorSettings(
            consecutive_failures=EJECT_AFTER, base_ejection_time=1.0, max_ejection_time=2.0
        ),
        breaker=BreakerSettings(consecutive_failures=EJECT_AFTER, reset_timeout=1.0),
        retry=RetrySettings(attempts=3, budget_min_per_second=100),
    )


def _register(mesh: Mesh, name: str, backends: list[Backend]) -> None:
    for backend in backends:
        mesh.register(
            ServiceMetadata(name, backend.port, id=backend.name, address="127.0.0.1"),
            TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
        )
    assert until(lambda: mesh.balancer(name).stats().eligible == 3, 10) is not None


def _recovered(mesh: Mesh, name: str, instance: str) -> bool:
    """Eligible, not ejected, breaker closed: back to an ordinary instance."""
    return any(
        i.id == instance and i.eligible and i.breaker == "closed" and i.ejected_until is None
        for i in mesh.explain(name).instances
    )


def _recover(mesh: Mesh, session: requests.Session, name: str, instance: str) -> float:
    """Send a trickle of GETs until ``instance`` has recovered; the seconds it took.

    A breaker that went open only closes after a successful half-open probe, which needs
    traffic: the trickle is that traffic (bounded: 10 s, one request per 50 ms).
    """
    start = time.monotonic()
    while time.monotonic() - start < 10:
        if _recovered(mesh, name, instance):
            return time.monotonic() - start
        session.get(f"http://{name}/warm", timeout=5)
        time.sleep(0.05)
    raise AssertionError(f"{instance} did not recover within 10 s: {mesh.explain(name)}")


# --- load --------------------------------------------------------------------------------------


@dataclass
class Phase:
    """What the callers saw in one phase."""

    name: str
    requests: int = 0
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def share(self, instance: str) -> float:
        total = sum(self.served.values())
        return self.served[instance] / total if total else 0.0


def _load(
    session: requests.Session,
    url: str,
    phase: str,
    *,
    method: str = "GET",
    per_thread: int = 40,
) -> Phase:
    result = Phase(phase, requests=THREADS * per_thread)
    lock = threading.Lock()
    start = time.monotonic()

    def worker(n: int) -> None:
        for i in range(per_thread):
            body = f"{phase}-{n}-{i}" if method == "POST" else None
            try:
                response = session.request(method, url, data=body, timeout=5)
            except requests.RequestException as exc:
                with lock:
                    result.failures.append(f"{type(exc).__name__}: {exc}"[:160])
                continue
            endpoint = endpoint_of(response)
            with lock:
                if response.status_code == 200 and endpoint is not None:
                    result.served[endpoint.id] += 1
                else:
                    result.failures.append(f"HTTP {response.status_code}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    result.seconds = time.monotonic() - start
    return result


class EjectionWatch:
    """Records the bad instance's ejections with its failure count at that moment."""

    def __init__(self, mesh: Mesh, name: str, instance: str) -> None:
        self.detector = mesh.detector(name)
        self.instance = instance
        self.events: list[tuple[float, str, int]] = []
        self.detector.add_listener(self._on_event)

    def failures(self) -> int:
        for state in self.detector.states():
            if state.endpoint.id == self.instance:
                return state.failures
        return 0

    def _on_event(self, event: EjectionEvent) -> None:
        if event.endpoint.id == self.instance:
            self.events.append((time.monotonic(), event.kind, self.failures()))

    def first_ejection_after(self, t0: float) -> tuple[float, int] | None:
        for at, kind, failures in self.events:
            if at >= t0 and kind == "ejected":
                return at - t0, failures
        return None


# --- GET: refuse, 503, hang (and a plain 500) ---------------------------------------------------


@pytest.mark.slow
def test_get_one_bad_backend_through_the_mesh(
    mesh_config: MeshConfig,
    unique_name: str,
    backends: list[Backend],
    record_property: RecordProperty,
) -> None:
    name = unique_name
    bad = backends[0]
    mesh = Mesh(
        mesh_config.replace(kv_prefix=name),
        services={name: _service_config()},
        drain_on_close=False,
        drain_grace=0.0,
        rng=random.Random(11),
    )
    report: dict[str, Any] = {}
    phases: dict[str, tuple[Phase, Phase]] = {}
    ejections: dict[str, tuple[float, int] | None] = {}
    reasons: dict[str, list[str]] = {}
    recovery: dict[str, float] = {}
    with mesh, mesh.session() as session:
        _register(mesh, name, backends)
        watch = EjectionWatch(mesh, name, bad.name)
        url = f"http://{name}/item"
        for fault in ("refuse", "503", "hang", "500"):
            _recover(mesh, session, name, bad.name)
            t0 = time.monotonic()
            failures_before = watch.failures()
            bad.fault(fault)
            try:
                faulty = _load(session, url, fault)
                reasons[fault] = next(
                    list(i.reasons) for i in mesh.explain(name).instances if i.id == bad.name
                )
            finally:
                bad.heal()
            first = watch.first_ejection_after(t0)
            ejections[fault] = None if first is None else (first[0], first[1] - failures_before)
            recovery[fault] = _recover(mesh, session, name, bad.name)
            healed = _load(session, url, f"{fault}-healed", per_thread=30)
            phases[fault] = (faulty, healed)

    for fault, (faulty, healed) in phases.items():
        ejected = ejections[fault]
        report[fault] = {
            "requests": faulty.requests,
            "caller_failures": len(faulty.failures),
            "served": {k.rsplit("-", 1)[-1]: v for k, v in sorted(faulty.served.items())},
            "ejected_after_s": None if ejected is None else round(ejected[0], 3),
            "bad_failures_before_ejection": None if ejected is None else ejected[1],
            "explain_while_faulty": reasons[fault],
            "seconds": round(faulty.seconds, 2),
            "recovered_after_heal_s": round(recovery[fault], 2),
            "bad_share_after_heal": round(healed.share(bad.name), 3),
            "failures_after_heal": len(healed.failures),
        }
    print(f"\n[mesh GET, one bad backend] {json.dumps(report, indent=1)}")
    for key, value in report.items():
        record_property(key, value)

    for fault, (faulty, healed) in phases.items():
        ejected = ejections[fault]
        assert ejected is not None, f"{fault}: the bad backend was never ejected"
        assert EJECT_AFTER <= ejected[1] <= EJECT_AFTER + THREADS - 1, (fault, ejected)
        if fault == "500":
            # Not retried by default: the caller sees 500s until the ejection, no more.
            assert set(faulty.failures) == {"HTTP 500"}, faulty.failures[:3]
            assert 1 <= len(faulty.failures) <= EJECT_AFTER + THREADS - 1
        else:
            assert faulty.failures == [], (fault, faulty.failures[:3])
        assert sum(faulty.served.values()) + len(faulty.failures) == faulty.requests
        assert healed.failures == [], (fault, healed.failures[:3])
        assert healed.share(bad.name) >= 0.25, (fault, healed.served)


# --- POST: retried only when never sent --------------------------------------------------------


def test_post_retried_only_when_never_sent(
    mesh_config: MeshConfig,
    unique_name: str,
    backends: list[Backend],
    record_property: RecordProperty,
) -> None:
    name = unique_name
    bad = backends[0]
    mesh = Mesh(
        mesh_config.replace(kv_prefix=name),
        services={name: _service_config()},
        drain_on_close=False,
        drain_grace=0.0,
        rng=random.Random(12),
    )
    results: dict[str, dict[str, Any]] = {}
    with mesh, mesh.session() as session:
        _register(mesh, name, backends)
        watch = EjectionWatch(mesh, name, bad.name)
        url = f"http://{name}/orders"
        for fault in ("refuse", "500", "503", "hang"):
            _recover(mesh, session, name, bad.name)
            failures_before = watch.failures()
            received_before = {b.name: len(b.post_ids) for b in backends}
            bad.fault(fault)
            try:
                phase = _load(session, url, f"post-{fault}", method="POST", per_thread=25)
            finally:
                bad.heal()
            ids = [i for b in backends for i in b.post_ids[received_before[b.name] :]]
            on_bad = len(bad.post_ids) - received_before[bad.name]
            results[fault] = {
                "posts": phase.requests,
                "caller_failures": len(phase.failures),
                "failure_kinds": dict(Counter(f.split(":")[0] for f in phase.failures)),
                "received_by_bad": on_bad,
                "bad_failures_recorded": watch.failures() - failures_before,
                "processed": len(ids),
                "processed_twice": len(ids) - len(set(ids)),
            }
    print(f"\n[mesh POST, one bad backend] {json.dumps(results, indent=1)}")
    for key, value in results.items():
        record_property(key, value)

    refused = results["refuse"]
    assert refused["caller_failures"] == 0
    assert refused["received_by_bad"] == 0
    assert refused["bad_failures_recorded"] >= 1  # POSTs were refused there, then re-picked
    assert refused["processed"] == refused["posts"]
    assert refused["processed_twice"] == 0
    for fault in ("500", "503", "hang"):
        seen = results[fault]
        assert seen["received_by_bad"] >= 1, (fault, seen)
        # Not retried: each POST the bad backend got is one failure the caller saw.
        assert seen["caller_failures"] == seen["received_by_bad"], (fault, seen)
        assert seen["processed"] == seen["posts"], (fault, seen)
        assert seen["processed_twice"] == 0, (fault, seen)


# --- the local agent killed and wiped ------------------------------------------------------------


@pytest.fixture
def small_cluster() -> Iterator[ConsulCluster]:
    """One server and one client agent (the local agent), fresh for this test."""
    binary = find_consul_binary()
    if binary is None:
        pytest.skip("no consul binary")
    with ConsulCluster(servers=1, clients=1, binary=binary) as cluster:
        yield cluster


class CallLoop:
    """One thread calling the service through the session every few ms, bounded."""

    def __init__(self, session: requests.Session, url: str, max_seconds: float = 60.0) -> None:
        self.session = session
        self.url = url
        self.max_seconds = max_seconds
        self.calls = 0
        self.failures: list[tuple[float, str]] = []
        self.served: Counter[str] = Counter()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-call-loop", daemon=True)

    def _run(self) -> None:
        deadline = self.started + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline and self.calls < 20_000:
            try:
                response = self.session.get(self.url, timeout=5)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                self.served[response.text] += 1
            except Exception as exc:  # any failure the caller sees
                self.failures.append((time.monotonic() - self.started, str(exc)[:160]))
            self.calls += 1
            self._stop.wait(0.005)

    def __enter__(self) -> CallLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


@pytest.mark.slow
def test_local_agent_wiped_under_mesh_calls_keeps_config(
    small_cluster: ConsulCluster,
    unique_name: str,
    backends: list[Backend],
    record_property: RecordProperty,
) -> None:
    cluster = small_cluster
    name = unique_name
    config = cluster.mesh_config(kv_prefix=name)
    mesh = Mesh(config, drain_on_close=False, drain_grace=0.0, rng=random.Random(13))
    with mesh, mesh.session() as session:
        key = mesh.store.layout.service_key(name)
        mesh.store.set(key, {"strategy": "peak_ewma", "per_try_timeout": "1s"})
        _register(mesh, name, backends)
        assert until(lambda: mesh.explain(name).strategy == "peak_ewma", 10) is not None
        ids = {b.name for b in backends}

        def agent_knows_all() -> bool:
            """Every instance and a check of each, as the local agent itself lists them."""
            services = cluster.client.api("GET", "/v1/agent/services").body
            agent_checks = cluster.client.api("GET", "/v1/agent/checks").body
            checked = {c["ServiceID"] for c in agent_checks.values() if c.get("Type") == "ttl"}
            return ids <= set(services) and ids <= checked

        assert agent_knows_all()
        strategies: Counter[str] = Counter()
        with CallLoop(session, f"http://{name}/steady") as loop:
            time.sleep(0.5)
            killed_at = time.monotonic()
            cluster.client.kill()
            time.sleep(2.0)  # the agent is gone: the mesh serves what it knows
            while_down = mesh.explain(name)
            strategies[while_down.strategy] += 1
            cluster.client.wipe()
            cluster.client.start()  # returns once the HTTP API answers
            answering_at = time.monotonic()
            reregistered = until(agent_knows_all, 15)
            strategies[mesh.explain(name).strategy] += 1
            # The discovery watch ends on the true state: one instance goes away.
            mesh.deregister(backends[2].name)
            converged = until(lambda: mesh.explain(name).registered == 2, 15)
            # The KV watch ends on the true state: a write after the wipe is applied.
            mesh.store.set(key, {"strategy": "least_request"})
            kv_followed = until(lambda: mesh.explain(name).strategy == "least_request", 15)
            after = mesh.explain(name)
            time.sleep(0.3)
        agent_services = sorted(cluster.client.api("GET", "/v1/agent/services").body)

    report = {
        "calls": loop.calls,
        "failed_calls": len(loop.failures),
        "first_failures": loop.failures[:3],
        "served": {k.rsplit("-", 1)[-1]: v for k, v in sorted(loop.served.items())},
        "agent_down_s": round(answering_at - killed_at, 2),
        "stale_while_down": while_down.stale,
        "eligible_while_down": while_down.eligible,
        "strategy_while_down_and_after_restart": dict(strategies),
        "config_index_after": after.config_index,
        "reregistered_after_answering_s": reregistered,
        "watch_converged_s": converged,
        "kv_write_after_wipe_applied_s": kv_followed,
        "stale_after": after.stale,
        "agent_services_at_end": agent_services,
    }
    print(f"\n[local agent wiped under mesh calls] {report}")
    for k, value in report.items():
        record_property(k, value)

    assert loop.failures == [], loop.failures[:3]
    assert while_down.stale
    assert while_down.eligible == 3
    assert strategies == {"peak_ewma": 2}  # the KV config kept while down and after the wipe
    assert reregistered is not None
    assert reregistered <= 5.0
    assert converged is not None
    assert kv_followed is not None
    assert not after.stale
    assert len(loop.served) == 3
