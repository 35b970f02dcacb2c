"""Discovery: propagation against Consul's own Go watcher, idle cost, scale.

Rows:

* ``discovery.propagation.<kind>.p50/p99``: seconds from the HTTP call that changes Consul
  (``deregister`` an instance, or ``ttl_fail`` its TTL check) to ServiceDiscovery's watch
  callback with the new snapshot (called right after the swap), side by side with
  ``consul watch -type=service -passingonly`` on the same agent, whose handler
  (``echo >> fifo``, one ``sh`` per change) is timestamped by this process when its line
  arrives. Trials are paced at 4 changes per second so the default rate limit (burst 2,
  10/s) is not what is measured.
* ``discovery.idle.requests_per_wait_window``: Consul requests per watched service per wait
  window with nothing changing (target <= 1; at the default 60 s wait that is the number
  per minute); ``requests_per_service_minute`` is the same at the short wait measured.
  ``discovery.request_path.consul_requests``: requests caused by 100k ``endpoints()``
  calls (target 0).
* ``discovery.scale.<n>.parse_and_swap``: decoding a ``/v1/health/service`` answer of n
  instances into endpoints, comparing with the current snapshot and swapping it, per
  answer; ``.bytes_per_endpoint``: memory held per endpoint (tracemalloc).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import Context, Row, compare, percentile

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import (
    ServiceDiscovery,
    _same_endpoints,
    parse_health_entries,
)
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary


def _address(ctx: Context) -> str:
    helper = getattr(ctx, "consul_address", None)
    if helper is not None:
        return str(helper())
    binary = find_consul_binary()
    if binary is None:
        raise RuntimeError("no consul binary")
    agent = DevAgent(binary)
    agent.start()
    ctx.on_close(agent.close)
    return agent.address


class _GoWatcher:
    """``consul watch -type=service`` with a handler that appends a line to a FIFO."""

    def __init__(self, binary: Path, address: str, service: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lake-mesh-bench-"))
        self.fifo = self.dir / "events"
        os.mkfifo(self.fifo)
        # O_RDWR keeps the FIFO open between handler runs (no EOF when a writer exits).
        self._fd = os.open(self.fifo, os.O_RDWR)
        self.times: list[float] = []
        self.cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.proc = subprocess.Popen(
            [
                str(binary),
                "watch",
                f"-http-addr={address}",
                "-type=service",
                f"-service={service}",
                "-passingonly=true",
                f"echo x >> {self.fifo}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _read(self) -> None:
        with os.fdopen(self._fd, "rb", buffering=0) as fh:
            buf = b""
            while True:
                chunk = fh.read(64)
                if not chunk:
                    return
                now = time.perf_counter()
                buf += chunk
                while b"\n" in buf:
                    _, buf = buf.split(b"\n", 1)
                    with self.cond:
                        self.times.append(now)
                        self.cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.times) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.times[n - 1]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            with open(self.fifo, "wb", buffering=0) as fh:  # unblock the reader; then EOF
                fh.write(b"")
        except OSError:
            pass
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()


class _Ours:
    """ServiceDiscovery's watch callback, timestamped."""

    def __init__(self, discovery: ServiceDiscovery, service: str) -> None:
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.cond = threading.Condition()
        discovery.watch(service, self._on)

    def _on(self, snapshot: Any) -> None:
        now = time.perf_counter()
        with self.cond:
            self.times.append(now)
            self.sizes.append(len(snapshot))
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.times) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.times[n - 1]


def _propagation(ctx: Context, address: str) -> Iterator[Row]:
    binary = find_consul_binary()
    if binary is None:
        return
    config = MeshConfig(address=address)
    trials = 20 if ctx.quick else 200
    for kind in ("deregister", "ttl_fail"):
        service = f"bench-prop-{uuid.uuid4().hex[:8]}"
        client = ConsulClient(config)
        stable = {"Name": service, "ID": "stable", "Port": 9000, "Address": "127.0.0.1"}
        client.request("PUT", "/v1/agent/service/register", operation="reg", json=stable)
        moving = {
            "Name": service,
            "ID": "moving",
            "Port": 9001,
            "Address": "127.0.0.1",
            "Check": {"TTL": "10m", "Status": "passing"},
        }
        client.request("PUT", "/v1/agent/service/register", operation="reg", json=moving)
        time.sleep(0.3)
        discovery = ServiceDiscovery(config, rng=random.Random(1))
        go = _GoWatcher(binary, address, service)
        ours = _Ours(discovery, service)
        mine: list[float] = []
        theirs: list[float] = []
        try:
            if go.wait_count(1, 10) is None or ours.wait_count(1, 10) is None:
                raise RuntimeError("watchers did not start")
            time.sleep(0.3)
            for _ in range(trials):
                n_go, n_ours = len(go.times), len(ours.times)
                start = time.perf_counter()
                if kind == "deregister":
                    client.request("PUT", "/v1/agent/service/deregister/moving", operation="dereg")
                else:
                    client.request("PUT", "/v1/agent/check/fail/service:moving", operation="ttl")
                t_ours = ours.wait_count(n_ours + 1, 5)
                t_go = go.wait_count(n_go + 1, 5)
                if t_ours is not None and t_go is not None:
                    mine.append(t_ours - start)
                    theirs.append(t_go - start)
                time.sleep(0.1)
                # restore (not measured)
                n_go, n_ours = len(go.times), len(ours.times)
                if kind == "deregister":
                    client.request(
                        "PUT", "/v1/agent/service/register", operation="reg", json=moving
                    )
                else:
                    client.request("PUT", "/v1/agent/check/pass/service:moving", operation="ttl")
                ours.wait_count(n_ours + 1, 5)
                go.wait_count(n_go + 1, 5)
                time.sleep(0.15)  # pace: ~4 changes/s, under the default 10/s rate limit
        finally:
            go.close()
            discovery.close()
            client.request("PUT", "/v1/agent/service/deregister/moving", operation="d")
            client.request("PUT", "/v1/agent/service/deregister/stable", operation="d")
            client.close()
        extra = {"trials": len(mine), "baseline_is": "consul watch -type=service"}
        for q in (50, 99):
            yield compare(
                f"discovery.propagation.{kind}.p{q}",
                percentile(mine, q),
                percentile(theirs, q),
                "s",
                **extra,
            )


def _idle(ctx: Context, address: str) -> Iterator[Row]:
    config = MeshConfig(address=address)
    services = 5
    wait = 2.5 if ctx.quick else 5.0
    window = 7.5 if ctx.quick else 30.0
    names = [f"bench-idle-{uuid.uuid4().hex[:8]}-{n}" for n in range(services)]
    with ConsulClient(config) as client:
        for name in names:
            body = {"Name": name, "ID": name, "Port": 1, "Address": "127.0.0.1"}
            client.request("PUT", "/v1/agent/service/register", operation="reg", json=body)
        time.sleep(0.5)
        discovery = ServiceDiscovery(config, rng=random.Random(2), wait=wait)
        try:
            for name in names:
                discovery.endpoints(name)
            time.sleep(0.5)
            before = discovery.hub.requests
            time.sleep(window)
            idle = discovery.hub.requests - before
        finally:
            discovery.close()
        # The request path, on a discovery whose polls cannot expire meanwhile (600 s wait):
        # every request counted here would come from endpoints() itself.
        discovery = ServiceDiscovery(config, rng=random.Random(3), wait=600)
        try:
            for name in names:
                discovery.endpoints(name)
            time.sleep(0.3)
            before = discovery.hub.requests
            calls = 20_000 if ctx.quick else 100_000
            started = time.perf_counter()
            for i in range(calls):
                discovery.endpoints(names[i % services])
            per_call = (time.perf_counter() - started) / calls
            path_requests = discovery.hub.requests - before
        finally:
            discovery.close()
            for name in names:
                client.request("PUT", f"/v1/agent/service/deregister/{name}", operation="d")
    per_window = idle / services / (window / wait)
    yield Row(
        "discovery.idle.requests_per_wait_window",
        per_window,
        "req",
        extra={"wait_s": wait, "window_s": window, "services": services},
    )
    yield Row(
        "discovery.idle.requests_per_service_minute",
        idle / services / (window / 60.0),
        "req/min",
        extra={"wait_s": wait, "note": "at the default 60 s wait: requests_per_wait_window"},
    )
    yield Row(
        "discovery.request_path.consul_requests", path_requests, "req", extra={"calls": calls}
    )
    yield Row("discovery.request_path.endpoints_call", per_call, "s")


def _entry(i: int) -> dict[str, Any]:
    sid = f"web-{i}"
    return {
        "Node": {
            "ID": f"n{i % 50}",
            "Node": f"node-{i % 50}",
            "Address": f"10.0.{i // 250}.{i % 250}",
            "Datacenter": "dc1",
        },
        "Service": {
            "ID": sid,
            "Service": "web",
            "Tags": ["v1", "http"],
            "Address": f"10.1.{i // 250}.{i % 250}",
            "Meta": {"zone": f"z{i % 3}", "version": "1.4.2"},
            "Port": 8000 + i % 1000,
            "Weights": {"Passing": 1, "Warning": 1},
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"CheckID": f"service:{sid}", "Status": "passing", "ServiceID": sid},
        ],
    }


def _scale(ctx: Context) -> Iterator[Row]:
    for n in (1000, 5000):
        body = json.dumps([_entry(i) for i in range(n)]).encode()
        current = parse_health_entries(json.loads(body), service="web")
        holder = {"snapshot": current}
        repeat = 5 if ctx.quick else 20
        best = float("inf")
        for r in range(repeat):
            # a different answer each time (one instance changed), as after a real change
            data = json.loads(body)
            data[r % n]["Checks"][1]["Status"] = "warning" if r % 2 else "passing"
            started = time.perf_counter()
            new = parse_health_entries(data, service="web")
            if not _same_endpoints(holder["snapshot"], new):
                holder["snapshot"] = new
            best = min(best, time.perf_counter() - started)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        kept = parse_health_entries(json.loads(body), service="web")
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert len(kept) == n
        yield Row(
            f"discovery.scale.{n}.parse_and_swap", best, "s", extra={"json_decode": "excluded"}
        )
        yield Row(f"discovery.scale.{n}.parse_and_swap_per_endpoint", best / n, "s")
        yield Row(f"discovery.scale.{n}.bytes_per_endpoint", used / n, "B")


def run(ctx: Context) -> Iterator[Row]:
    address = _address(ctx)
    yield from _propagation(ctx, address)
    yield from _idle(ctx, address)
    yield from _scale(ctx)
