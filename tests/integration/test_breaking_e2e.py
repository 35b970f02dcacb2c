"""End to end over real sockets: three HTTP servers on loopback, one returning 500s.

Traffic shifts away from the failing server, its breaker opens, and after the reset timeout
(virtual time: a FakeClock) a probe finds it recovered and the breaker closes. No Consul is
needed: the endpoints are given directly, as discovery would hand them over.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState, BreakerTransition
from lake_mesh_consul._core.detector import DetectorPolicy, FailureDetector, OutcomeKind
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import DEFAULT_RETRY_ON, RetryPolicy, execute
from lake_mesh_consul.errors import NoEndpointsAvailable
from lake_mesh_consul.testing.clock import FakeClock


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    failing = False
    name = ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status = 500 if self.server.failing else 200
        body = self.server.name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    started: list[tuple[_Server, threading.Thread]] = []
    for i in range(3):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.name = f"s{i}"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread))
    yield [s for s, _ in started]
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(2)


class _RoundRobin:
    """A stand-in balancer: round robin over the endpoints the detector allows."""

    def __init__(self, endpoints: list[ServiceEndpoint], detector: FailureDetector) -> None:
        self._endpoints = endpoints
        self._detector = detector
        self._next = itertools.count()
        self._lock = threading.Lock()

    def __call__(self, *, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        with self._lock:
            start = next(self._next)
        n = len(self._endpoints)
        for i in range(n):
            ep = self._endpoints[(start + i) % n]
            if ep not in exclude and self._detector.is_available(ep):
                return ep
        raise NoEndpointsAvailable("echo", "all unavailable or tried")


def test_traffic_shifts_breaker_opens_then_closes(servers: list[_Server]) -> None:
    clock = FakeClock(autojump=True)  # back-off sleeps jump virtual time
    transitions: list[BreakerTransition] = []
    detector = FailureDetector(
        DetectorPolicy(
            consecutive_failures=None,  # let the breaker, not an ejection, take it out
            window=None,
            breaker=BreakerPolicy(consecutive_failures=3, window=None, reset_timeout=30.0),
        ),
        clock=clock,
        breaker_listeners=[transitions.append],
    )
    endpoints = [
        ServiceEndpoint.create(s.name, "127.0.0.1", s.server_address[1], service="echo")
        for s in servers
    ]
    detector.update_endpoints("echo", endpoints)
    pick = _RoundRobin(endpoints, detector)
    policy = RetryPolicy(retry_on=DEFAULT_RETRY_ON | {OutcomeKind.SERVER_ERROR})
    hits: Counter[str] = Counter()
    session = requests.Session()

    def call(ep: ServiceEndpoint, timeout: float | None) -> requests.Response:
        hits[ep.id] += 1
        return session.get(f"http://{ep.host_port}/", timeout=timeout or 5)

    def send(n: int) -> Counter[str]:
        answered: Counter[str] = Counter()
        for _ in range(n):
            response = execute(
                pick,
                call,
                policy=policy,
                detector=detector,
                clock=clock,
                method="GET",
                status_of=lambda r: r.status_code,
            )
            assert response.status_code == 200  # retries hide the failing server
            answered[response.text] += 1
        return answered

    servers[1].failing = True
    answered = send(30)
    bad = endpoints[1]
    breaker = detector.breaker(bad)
    assert breaker is not None
    assert breaker.state is BreakerState.OPEN
    assert hits["s1"] == 3  # three failures, then no more traffic
    assert answered["s1"] == 0
    assert answered["s0"] + answered["s2"] == 30
    assert not detector.is_available(bad)

    hits.clear()
    send(10)
    assert hits["s1"] == 0  # traffic stays away while open

    servers[1].failing = False
    clock.advance(30)  # the reset timeout, in virtual time
    assert detector.is_available(bad)
    answered = send(30)
    assert detector.state(bad).breaker is not None
    assert breaker.snapshot().state is BreakerState.CLOSED
    assert [(t.old, t.new) for t in transitions] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert answered["s1"] >= 9  # back in the rotation
    session.close()
