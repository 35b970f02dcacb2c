"""Discovery: propagation against Consul's own Go watcher, idle cost, threads and sockets.

Rows:

* ``discovery.propagation.<kind>.p50/p90[/p99]``: seconds from the HTTP call that changes
  Consul (``deregister`` an instance, or ``ttl_fail`` its TTL check) to ServiceDiscovery's
  watch callback (``time.monotonic()`` on the watch thread, right after the swap), side by
  side with ``consul watch -type=service -passingonly`` on the same agent and the same
  change, whose handler is a compiled C program stamping its own CLOCK_MONOTONIC at start
  (:mod:`_handler`; no shell, no reader in this process). The two kinds are interleaved
  trial by trial; p99 is printed only from 200 trials (the full run), the quick run prints
  p50/p90. Paced at about 5 changes a second, under the default rate limit (10/s, burst 2).
* ``discovery.propagation.1_of_500.p50/p90[/p99]``: the same for one change (TTL failing)
  in one of 500 services this process watches; baseline ``consul watch`` on that service
  (full run only).
* ``discovery.watch.<K>.threads`` / ``.agent_connections`` / ``.kb_per_service``: a fresh
  process (``python -c``) watching K services (one instance each) once every one has
  answered (or 30 s passed: ``resolved`` says how many did): its thread count, its
  established TCP connections to the agent, and resident memory per watched service.
  K = 1 and 100 in the quick run; 1, 100, 500 and 1,000 in the full run.
* ``discovery.idle.500.requests_per_minute``: HTTP requests that process sends to the agent
  while nothing changes, watching 500 services (full run; counted over several wait
  windows at a 15 s wait, reported per wait window: at the default 60 s wait that is the
  rate per minute).
* ``discovery.request_path.consul_requests``: requests caused by 100k ``endpoints()``
  calls (target 0): those sent during the calls minus those sent in an idle window as long
  (watches wake on other writes to the agent); ``discovery.request_path.endpoints_call``:
  one call from memory.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _catalog import Catalog
from _common import Context, Row, percentile_rows
from _handler import compile_handler, read_stamps

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.testing import find_consul_binary


class _GoWatcher:
    """``consul watch -type=service -passingonly`` running the compiled stamping handler."""

    def __init__(self, binary: Path, handler: Path, address: str, service: str) -> None:
        self.stamps = handler.parent / f"stamps-{service}"
        env = {**os.environ, "LAKE_MESH_STAMPS": str(self.stamps)}
        self.proc = subprocess.Popen(
            [
                str(binary),
                "watch",
                f"-http-addr={address}",
                "-type=service",
                f"-service={service}",
                "-passingonly=true",
                str(handler),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def wait_count(self, n: int, timeout: float) -> float | None:
        """The monotonic stamp of the n-th handler run, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            stamps = read_stamps(self.stamps)
            if len(stamps) >= n:
                return stamps[n - 1]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)

    def count(self) -> int:
        return len(read_stamps(self.stamps))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Ours:
    """ServiceDiscovery's watch callback, stamped with time.monotonic() on the watch thread."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cond = threading.Condition()

    def __call__(self, snapshot: Any) -> None:
        now = time.monotonic()
        with self.cond:
            self.times.append(now)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> float | None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.times) >= n, timeout):
                return None
            return self.times[n - 1]


def _register(client: ConsulClient, service: str, sid: str, port: int, check: bool) -> None:
    body: dict[str, Any] = {"Name": service, "ID": sid, "Port": port, "Address": "127.0.0.1"}
    if check:
        body["Check"] = {"TTL": "10m", "Status": "passing"}
    client.request("PUT", "/v1/agent/service/register", operation="reg", json=body)


class _Pair:
    """Our watcher and consul watch on the same service; measures one change at a time."""

    def __init__(self, ours: _Ours, go: _GoWatcher) -> None:
        self.ours, self.go = ours, go

    def change(self, act: Any) -> tuple[float, float] | None:
        n_ours, n_go = len(self.ours.times), self.go.count()
        start = time.monotonic()
        act()
        t_ours = self.ours.wait_count(n_ours + 1, 5)
        t_go = self.go.wait_count(n_go + 1, 5)
        if t_ours is None or t_go is None:
            return None
        return t_ours - start, t_go - start


def _propagation(ctx: Context, address: str, binary: Path, handler: Path) -> Iterator[Row]:
    trials = 20 if ctx.quick else 200
    config = MeshConfig(address=address)
    service = f"bench-prop-{uuid.uuid4().hex[:8]}"
    client = ConsulClient(config)
    _register(client, service, "stable", 9000, check=False)
    _register(client, service, "moving", 9001, check=True)
    time.sleep(0.3)
    discovery = ServiceDiscovery(config, rng=random.Random(1))
    ours = _Ours()
    discovery.watch(service, ours)
    go = _GoWatcher(binary, handler, address, service)
    pair = _Pair(ours, go)
    figures: dict[str, tuple[list[float], list[float]]] = {
        "deregister": ([], []),
        "ttl_fail": ([], []),
    }
    actions = {
        "deregister": (
            lambda: client.request("PUT", "/v1/agent/service/deregister/moving", operation="d"),
            lambda: _register(client, service, "moving", 9001, check=True),
        ),
        "ttl_fail": (
            lambda: client.request("PUT", "/v1/agent/check/fail/service:moving", operation="t"),
            lambda: client.request("PUT", "/v1/agent/check/pass/service:moving", operation="t"),
        ),
    }
    try:
        if go.wait_count(1, 10) is None or ours.wait_count(1, 10) is None:
            raise RuntimeError("watchers did not start")
        time.sleep(0.3)
        for trial in range(2 * trials):
            kind = "deregister" if trial % 2 == 0 else "ttl_fail"  # interleaved kinds
            change, restore = actions[kind]
            measured = pair.change(change)
            if measured is not None:
                figures[kind][0].append(measured[0])
                figures[kind][1].append(measured[1])
            time.sleep(0.08)
            pair.change(restore)  # not measured
            time.sleep(0.1)  # pace: ~5 changes/s, under the default 10/s rate limit
    finally:
        go.close()
        discovery.close()
        client.request("PUT", "/v1/agent/service/deregister/moving", operation="d")
        client.request("PUT", "/v1/agent/service/deregister/stable", operation="d")
        client.close()
    for kind, (mine, theirs) in figures.items():
        yield from percentile_rows(
            f"discovery.propagation.{kind}",
            mine,
            theirs,
            "ms",
            scale=1e3,
            baseline_is="consul watch -type=service, compiled handler stamping its own clock",
        )


def _one_of_500(ctx: Context, address: str, binary: Path, handler: Path) -> Iterator[Row]:
    count = 500
    trials = 20 if ctx.quick else 200
    prefix = f"bench-500-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(count)]
    target = names[0]
    config = MeshConfig(address=address)
    with Catalog(address) as catalog:
        catalog.populate_services(names)
        catalog.wait_count(names[-1], 1)
        discovery = ServiceDiscovery(config, rng=random.Random(4))
        ours = _Ours()
        go = _GoWatcher(binary, handler, address, target)
        try:
            discovery.watch(target, ours)
            for name in names[1:]:
                discovery.watch(name, lambda _s: None)
            if go.wait_count(1, 30) is None or ours.wait_count(1, 30) is None:
                raise RuntimeError("watchers did not start")
            time.sleep(1.0)
            pair = _Pair(ours, go)
            mine: list[float] = []
            theirs: list[float] = []
            for _ in range(trials):
                measured = pair.change(lambda: catalog.set_status(target, 0, "critical"))
                if measured is not None:
                    mine.append(measured[0])
                    theirs.append(measured[1])
                time.sleep(0.1)
                pair.change(lambda: catalog.set_status(target, 0, "passing"))
                time.sleep(0.12)
        finally:
            go.close()
            discovery.close()
            catalog.remove_services(names)
    yield from percentile_rows(
        "discovery.propagation.1_of_500",
        mine,
        theirs,
        "ms",
        scale=1e3,
        baseline_is="consul watch on the changed service, compiled handler",
        watched_services=count,
    )


#: The child process of the threads/connections rows: watches K services, prints JSON.
_WATCHER = r"""
import json, os, random, sys, threading, time
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._core.config import MeshConfig

address, prefix, count, idle_window, wait = sys.argv[1:6]
count, idle_window, wait = int(count), float(idle_window), float(wait)
agent_port = int(address.rsplit(":", 1)[1])

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def agent_connections():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if parts[3] == "01" and remote_port == agent_port and parts[9] in inodes:
                found += 1
    return found

seen = set()
lock = threading.Lock()
def listener(name):
    def on(_snapshot):
        with lock:
            seen.add(name)
    return on

discovery = ServiceDiscovery(MeshConfig(address=address), rng=random.Random(1), wait=wait)
# The first service pays the imports and pools: memory is counted from the second on.
discovery.watch(f"{prefix}-0", listener(f"{prefix}-0"))
deadline = time.monotonic() + 30
while not seen and time.monotonic() < deadline:
    time.sleep(0.02)
before = rss_kb()
for i in range(1, count):
    discovery.watch(f"{prefix}-{i}", listener(f"{prefix}-{i}"))
while len(seen) < count and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
out = {
    "resolved": len(seen),
    "threads": threading.active_count(),
    "connections": agent_connections(),
    "kb_per_service": (rss_kb() - before) / max(1, count - 1),
}
if idle_window > 0:
    hub = discovery.hub
    start = getattr(hub, "requests", 0)
    time.sleep(idle_window)
    out["idle_requests"] = getattr(hub, "requests", 0) - start
print(json.dumps(out), flush=True)
os._exit(0)  # the numbers are out; do not wait for hundreds of watches to close
"""


def _watch_process(address: str, prefix: str, count: int, idle: float, wait: float) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", _WATCHER, address, prefix, str(count), str(idle), str(wait)],
        capture_output=True,
        text=True,
        timeout=120 + idle,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"watcher process failed: {result.stderr[-800:]}")
    return json.loads(lines[-1])


def _threads_and_sockets(ctx: Context, address: str) -> Iterator[Row]:
    counts = (1, 100) if ctx.quick else (1, 100, 500, 1000)
    prefix = f"bench-watch-{uuid.uuid4().hex[:6]}"
    with Catalog(address) as catalog:
        names = [f"{prefix}-{i}" for i in range(max(counts))]
        catalog.populate_services(names)
        catalog.wait_count(names[-1], 1)
        try:
            for count in counts:
                idle = 30.0 if count == 500 and not ctx.quick else 0.0
                wait = 15.0 if idle else 60.0
                fig = _watch_process(address, prefix, count, idle, wait)
                extra = {"resolved": fig["resolved"], "watched": count}
                yield Row(f"discovery.watch.{count}.threads", fig["threads"], "", extra=extra)
                yield Row(
                    f"discovery.watch.{count}.agent_connections",
                    fig["connections"],
                    "",
                    extra=extra,
                )
                if count > 1:
                    yield Row(
                        f"discovery.watch.{count}.kb_per_service",
                        fig["kb_per_service"],
                        "KB",
                        extra=extra,
                    )
                if idle:
                    windows = idle / wait
                    yield Row(
                        "discovery.idle.500.requests_per_minute",
                        fig["idle_requests"] / windows,
                        "req",
                        extra={
                            **extra,
                            "measures": "idle requests per wait window (= per minute at the "
                            "default 60 s wait)",
                            "wait_s": wait,
                            "window_s": idle,
                        },
                    )
        finally:
            catalog.remove_services(names)


def _request_path(ctx: Context, address: str) -> Iterator[Row]:
    config = MeshConfig(address=address)
    services = 5
    names = [f"bench-path-{uuid.uuid4().hex[:8]}-{n}" for n in range(services)]
    with ConsulClient(config) as client:
        for name in names:
            _register(client, name, name, 1, check=False)
        time.sleep(0.5)
        # Polls cannot expire meanwhile (600 s wait): every request counted would come from
        # endpoints() itself.
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
            elapsed = time.perf_counter() - started
            per_call = elapsed / calls
            during = discovery.hub.requests - before
            # Requests the watches send anyway in as long (other writes to the agent wake
            # them): what endpoints() itself caused is the difference.
            before = discovery.hub.requests
            time.sleep(elapsed)
            idle = discovery.hub.requests - before
            path_requests = during - idle
        finally:
            discovery.close()
            for name in names:
                client.request("PUT", f"/v1/agent/service/deregister/{name}", operation="d")
    yield Row(
        "discovery.request_path.consul_requests",
        path_requests,
        "req",
        n=calls,
        extra={"during_calls": during, "idle_same_time": idle},
    )
    yield Row("discovery.request_path.endpoints_call", per_call * 1e6, "us", n=calls)


def run(ctx: Context) -> Iterator[Row]:
    address = ctx.consul_address()
    yield from _request_path(ctx, address)
    binary = find_consul_binary()
    if binary is None:
        raise RuntimeError("no consul binary for the consul watch baseline")
    directory, handler = compile_handler()
    try:
        yield from _propagation(ctx, address, binary, handler)
        if not ctx.quick:  # heavy: 500 watches and 200 trials; full run only
            yield from _one_of_500(ctx, address, binary, handler)
    finally:
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()
    yield from _threads_and_sockets(ctx, address)
