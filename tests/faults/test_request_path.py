"""The request path under faults: bad backends under load, and 32 threads while instances churn.

Built from LoadBalancer, FailureDetector and the retry path ``execute`` (the mesh session of
issue 8 will wrap the same composition). Backends are real HTTP servers on loopback.

Promises:

* one of three backends refuses connections, then answers 500, then hangs: with retries
  for idempotent requests, zero caller-visible failures; it is ejected within the configured
  consecutive failures (plus the requests already in flight); it gets traffic again after
  it heals;
* 32 threads and a bounded number of picks while instances come and go through Consul: no
  exception, the counts add up, and round robin stays fair among the stable instances.
"""

from __future__ import annotations

import http.server
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pytest
import requests

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.detector import (
    DetectorPolicy,
    EjectionEvent,
    EjectionPolicy,
    FailureDetector,
    OutcomeKind,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import DEFAULT_RETRY_ON, RetryBudget, RetryPolicy, execute
from lake_mesh_consul.errors import MeshError, NoEndpointsAvailable
from lake_mesh_consul.testing._agent import find_consul_binary
from lake_mesh_consul.testing.cluster import ConsulCluster

from ._loops import RecordProperty, until

#: The longest a hanging backend holds a request (it is released when healed).
HANG_MAX = 3.0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _BackendServer

    def do_GET(self) -> None:
        backend = self.server.backend
        if backend.mode == "500":
            self.send_response(500)
            self.end_headers()
            return
        if backend.mode == "hang":
            backend.healed.wait(HANG_MAX)
        body = backend.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _BackendServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: Backend

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a caller that timed out closed its end: expected while hanging


class Backend:
    """An HTTP backend on loopback that can refuse, answer 500, hang, and heal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.healed = threading.Event()
        self.port = 0
        self._server: _BackendServer | None = None
        self._start()
        self.endpoint = ServiceEndpoint.create(name, "127.0.0.1", self.port, service="api")

    def _start(self) -> None:
        server = _BackendServer(("127.0.0.1", self.port), _Handler)
        server.backend = self
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def refuse(self) -> None:
        """Close the listening socket: connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail(self, mode: str) -> None:
        """Answer 500 (``"500"``) or hang (``"hang"``)."""
        self.healed.clear()
        self.mode = mode

    def heal(self) -> None:
        """Back to normal: listening, answering 200 at once."""
        self.mode = "ok"
        self.healed.set()
        if self._server is None:
            self._start()

    def close(self) -> None:
        self.healed.set()
        self.refuse()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(3)]
    yield started
    for backend in started:
        backend.close()


@dataclass
class PhaseResult:
    requests: int
    failures: list[str]
    served_by: Counter[str]
    ejected_after_failures: int | None
    seconds: float


def _run_phase(
    backends: list[Backend],
    fault: str,
    *,
    threads: int = 8,
    per_thread: int = 60,
) -> tuple[PhaseResult, PhaseResult]:
    """Load with backend b0 faulty, then healed; returns both phases' results."""
    events: list[EjectionEvent] = []
    policy = DetectorPolicy(
        consecutive_failures=5,
        window=None,
        ejection=EjectionPolicy(base_ejection_time=1.0, ejection_jitter=0.0),
    )
    detector = FailureDetector(policy, listeners=[events.append], rng=random.Random(3))
    lb = LoadBalancer(
        "api",
        "round_robin",
        endpoints=[b.endpoint for b in backends],
        gates=[detector],
        rng=random.Random(3),
        gate_refresh=0.05,
    )
    retry = RetryPolicy(
        attempts=3,
        per_try_timeout=0.3,
        deadline=5.0,
        # A plain 500 is not retried by default; this caller says its GETs may be.
        retry_on=DEFAULT_RETRY_ON | {OutcomeKind.SERVER_ERROR},
    )
    budget = RetryBudget()
    session = requests.Session()
    session.trust_env = False
    bad = backends[0]
    failures_on_bad = [0]
    lock = threading.Lock()

    def pick(*, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        for _ in range(6):
            endpoint = lb.pick()
            if endpoint not in exclude:
                return endpoint
        raise NoEndpointsAvailable("api", "every eligible endpoint was tried")

    def call(endpoint: ServiceEndpoint, timeout: float | None) -> requests.Response:
        try:
            response = session.get(f"http://{endpoint.address}:{endpoint.port}/", timeout=timeout)
        except requests.RequestException:
            if endpoint is bad.endpoint and not events:
                with lock:
                    failures_on_bad[0] += 1
            raise
        if response.status_code >= 500 and endpoint is bad.endpoint and not events:
            with lock:
                failures_on_bad[0] += 1
        return response

    def one_phase() -> PhaseResult:
        served: Counter[str] = Counter()
        failures: list[str] = []
        start = time.monotonic()

        def worker(_: int) -> None:
            for _ in range(per_thread):
                try:
                    response = execute(
                        pick,
                        call,
                        policy=retry,
                        budget=budget,
                        detector=detector,
                        method="GET",
                        status_of=lambda r: r.status_code,
                    )
                except MeshError as exc:
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                with lock:
                    if response.status_code == 200:
                        served[response.text] += 1
                    else:
                        failures.append(f"HTTP {response.status_code}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
        return PhaseResult(
            requests=threads * per_thread,
            failures=failures,
            served_by=served,
            ejected_after_failures=failures_on_bad[0] if events else None,
            seconds=time.monotonic() - start,
        )

    if fault == "refuse":
        bad.refuse()
    else:
        bad.fail(fault)
    try:
        faulty = one_phase()
    finally:
        bad.heal()
    time.sleep(1.2)  # the ejection (1 s) ends
    healed = one_phase()
    session.close()
    ejected = [e for e in events if e.kind == "ejected" and e.endpoint is bad.endpoint]
    faulty = replace(faulty, ejected_after_failures=failures_on_bad[0] if ejected else None)
    return faulty, healed


@pytest.mark.parametrize("fault", ["refuse", "500", "hang"])
def test_one_bad_backend_zero_caller_visible_failures(
    backends: list[Backend], fault: str, record_property: RecordProperty
) -> None:
    faulty, healed = _run_phase(backends, fault)
    report = {
        "fault": fault,
        "requests": faulty.requests,
        "caller_visible_failures": len(faulty.failures),
        "served_while_faulty": dict(faulty.served_by),
        "bad_backend_failures_before_ejection": faulty.ejected_after_failures,
        "faulty_phase_s": round(faulty.seconds, 2),
        "served_after_heal": dict(healed.served_by),
        "failures_after_heal": len(healed.failures),
    }
    print(f"\n[backend {fault}] {report}")
    for key, value in report.items():
        record_property(key, value)

    assert faulty.failures == [], faulty.failures[:3]
    assert sum(faulty.served_by.values()) == faulty.requests
    assert faulty.ejected_after_failures is not None, "the bad backend was never ejected"
    # Five in a row eject; requests already in flight on the other threads may fail too.
    assert faulty.ejected_after_failures <= 5 + 8
    assert healed.failures == []
    assert healed.served_by["b0"] > 0


# --- 32 threads while instances churn ---------------------------------------------------


@pytest.fixture
def churn_cluster() -> Iterator[ConsulCluster]:
    binary = find_consul_binary()
    if binary is None:
        pytest.skip("no consul binary")
    with ConsulCluster(servers=1, clients=1, binary=binary) as cluster:
        yield cluster


def test_32_threads_while_instances_churn(
    churn_cluster: ConsulCluster, record_property: RecordProperty
) -> None:
    name = f"churn-{random.randrange(1 << 30):x}"
    admin = ConsulClient(churn_cluster.mesh_config())

    def register(i: int) -> None:
        admin.request(
            "PUT",
            "/v1/agent/service/register",
            json={"Name": name, "ID": f"{name}-{i}", "Address": "127.0.0.1", "Port": 21000 + i},
            operation="register",
        )

    def deregister(i: int) -> None:
        admin.request("PUT", f"/v1/agent/service/deregister/{name}-{i}", operation="deregister")

    stable = range(4)
    churning = range(4, 8)
    for i in stable:
        register(i)
    discovery = ServiceDiscovery(churn_cluster.mesh_config(), wait=2.0, rng=random.Random(5))
    assert until(lambda: len(discovery.endpoints(name)) == 4, 10) is not None
    lb = LoadBalancer(name, "round_robin")
    unfollow = lb.follow(discovery.source(name))
    updates = [0]
    discovery.watch(name, lambda _snapshot: updates.__setitem__(0, updates[0] + 1))

    stop = threading.Event()

    def churn() -> int:
        changes = 0
        rng = random.Random(11)
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and changes < 400:
            i = rng.choice(churning)
            if rng.random() < 0.5:
                register(i)
            else:
                deregister(i)
            changes += 1
            stop.wait(0.05)
        return changes

    threads, per_thread = 32, 1500
    counts: list[Counter[str]] = [Counter() for _ in range(threads)]
    errors: list[str] = []

    def worker(n: int) -> None:
        mine = counts[n]
        for _ in range(per_thread):
            try:
                with lb.request() as ctx:
                    mine[ctx.endpoint.id] += 1
            except Exception as exc:  # any exception at all is a failure here
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)  # a request's worth of time: the churn and the watch run

    with ThreadPoolExecutor(1) as churner:
        churned = churner.submit(churn)
        start = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
        took = time.monotonic() - start
        stop.set()
        changes = churned.result(timeout=35)
    unfollow()
    discovery.close()
    admin.close()

    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    stable_counts = [total[f"{name}-{i}"] for i in stable]
    fairness = max(stable_counts) / max(1, min(stable_counts))
    report = {
        "threads": threads,
        "picks": sum(total.values()),
        "errors": len(errors),
        "churn_changes": changes,
        "snapshot_updates": updates[0],
        "per_instance": {k.rsplit("-", 1)[-1]: v for k, v in sorted(total.items())},
        "stable_max_over_min": round(fairness, 3),
        "seconds": round(took, 2),
        "picks_per_s": round(sum(total.values()) / took),
    }
    print(f"\n[32 threads + churn] {report}")
    for key, value in report.items():
        record_property(key, value)

    assert errors == [], errors[:3]
    assert sum(total.values()) == threads * per_thread
    assert changes > 20
    assert updates[0] > 5
    # Round robin among whatever is eligible: the stable instances share alike.
    assert fairness <= 1.25
