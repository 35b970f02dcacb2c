"""A prefork server on one host against an agent with its DEFAULT connection limit.

Consul's ``limits.http_max_conns_per_client`` (200) counts connections per client IP, so
every process on a host shares it. Eight worker processes watching the same 60 services
each, plus one process keeping a TTL-checked registration alive with a fresh connection per
heartbeat: with one connection per watched service (480) the agent would refuse the
heartbeats and the workers' last watches; with the multiplexed watch engine every worker
resolves every service, the registration stays passing throughout, and each worker holds
a handful of connections (printed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from typing import Any

import pytest

from lake_mesh_consul._core.config import MeshConfig

pytestmark = pytest.mark.integration

WORKERS = 8
SERVICES = 60
#: Seconds the whole scenario may take before it is called a failure.
BUDGET = 60.0

WORKER = textwrap.dedent(
    """
    import json, sys, threading, time
    from urllib.parse import urlsplit
    from lake_mesh_consul._consul.agent_sockets import agent_connections
    from lake_mesh_consul._consul.discovery import ServiceDiscovery
    from lake_mesh_consul._core.config import MeshConfig

    address, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = MeshConfig(address=address)
    parts = urlsplit(config.base_url)
    started = time.monotonic()
    with ServiceDiscovery(config) as discovery:  # the process-wide hub, default budget
        resolved = 0
        errors = []
        for n in range(count):
            try:
                if discovery.endpoints(f"{prefix}-{n}", timeout=15):
                    resolved += 1
            except Exception as exc:  # reported, not raised: the test prints every worker
                errors.append(f"{prefix}-{n}: {type(exc).__name__}: {exc}")
        seconds = round(time.monotonic() - started, 2)
        settle = time.monotonic() + 3.0  # the first-read thread retires a second after its work
        while discovery.hub.threads > 3 and time.monotonic() < settle:
            time.sleep(0.05)
        report = {
            "resolved": resolved,
            "errors": errors[:5],
            "connections": agent_connections(parts.hostname, parts.port),
            "threads": threading.active_count(),
            "seconds": seconds,
        }
        print(json.dumps(report), flush=True)
        sys.stdin.readline()  # hold the watches until the test has seen everyone ready
    """
)

HEARTBEAT = textwrap.dedent(
    """
    import sys, time, urllib.request
    base, sid, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def put(path, body=None):
        request = urllib.request.Request(base + path, data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=5) as answer:  # a new connection each
            answer.read()
    put("/v1/agent/service/register", (
        '{"Name": "%s", "ID": "%s", "Port": 80, "Address": "127.0.0.1",'
        ' "Check": {"TTL": "10s", "Status": "passing"}}' % (sid, sid)
    ).encode())
    refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            put(f"/v1/agent/check/pass/service:{sid}")
        except OSError as exc:
            refused += 1
            print(f"heartbeat refused: {exc}", file=sys.stderr, flush=True)
        time.sleep(1.0)
    print(refused, flush=True)
    """
)


def _put(base: str, path: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()


def _check_status(base: str, sid: str) -> str:
    with urllib.request.urlopen(f"{base}/v1/health/checks/{sid}", timeout=5) as answer:
        checks = json.loads(answer.read())
    return str(checks[0]["Status"]) if checks else "missing"


def test_prefork_workers_share_the_default_connection_limit(dedicated_consul_agent):
    config = MeshConfig(address=dedicated_consul_agent.address)
    base = config.base_url
    with urllib.request.urlopen(f"{base}/v1/agent/self", timeout=5) as answer:
        limit = json.loads(answer.read())["DebugConfig"]["HTTPMaxConnsPerClient"]
    assert limit == 200  # the agent runs with Consul's default
    prefix = f"pf-{uuid.uuid4().hex[:6]}"
    for n in range(SERVICES):
        _put(
            base,
            "/v1/agent/service/register",
            {"Name": f"{prefix}-{n}", "ID": f"{prefix}-{n}-i", "Port": 8000 + n},
        )
    ttl_id = f"{prefix}-ttl"
    started = time.monotonic()
    heartbeat = subprocess.Popen(
        [sys.executable, "-c", HEARTBEAT, base, ttl_id, str(BUDGET + 30)],  # killed at the end
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[subprocess.Popen[str]] = []
    try:
        time.sleep(1.0)  # registered and passing before the workers start
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, config.address, prefix, str(SERVICES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(WORKERS)
        ]
        statuses: list[str] = []
        reports: list[dict[str, Any]] = []
        for worker in workers:  # each prints one line once every service resolved
            assert worker.stdout is not None
            line = worker.stdout.readline()
            statuses.append(_check_status(base, ttl_id))
            assert line, f"a worker died: exit {worker.poll()}"
            reports.append(json.loads(line))
            assert time.monotonic() - started < BUDGET
        for _ in range(10):  # everyone holds its watches: the registration stays passing
            statuses.append(_check_status(base, ttl_id))
            time.sleep(0.3)
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        heartbeat.kill()
        heart_out, heart_err = heartbeat.communicate(timeout=5)
        for worker in workers:
            if worker.stdout is not None:
                worker.stdout.close()
    for number, report in enumerate(reports):
        print(
            f"\nworker {number}: resolved {report['resolved']}/{SERVICES}, "
            f"{report['connections']} agent connections, {report['threads']} threads "
            f"(resolved in {report['seconds']} s)"
        )
    assert [r["resolved"] for r in reports] == [SERVICES] * WORKERS, [r["errors"] for r in reports]
    assert all(r["connections"] is not None and r["connections"] <= 3 for r in reports)
    assert set(statuses) == {"passing"}, (statuses, heart_out, heart_err[-2000:])
    assert "heartbeat refused" not in heart_err
    assert time.monotonic() - started < BUDGET
