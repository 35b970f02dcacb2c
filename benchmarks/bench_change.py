"""What one change costs: one instance's health flips among N (issue 15.3).

Every answer is a real agent's: N instances written to the catalog in a realistic shape
(:mod:`_catalog`: about 2.5 KB per entry as the dev agent sends it, 1.3 KB compact), and
one instance's service check flipped between passing and critical per trial.

Stage rows (in process, the agent's own bodies, CPU time of the measuring thread,
alternated pairs with the raw decode loop):

* ``change.<N>.raw_decode_loop``: ``json.loads`` of the body and a plain loop pulling
  (node, id, address, port, worst status) from every entry: the least any Python client
  pays per answer. The baseline of every ratio below.
* ``change.<N>.parse.fresh``: the body decoded and every entry parsed into endpoints
  (``parse_health_entries``: what discovery did before reuse).
* ``change.<N>.parse.reuse``: the same answer through ``HealthEntryParser`` after the
  previous answer (one entry moved): what discovery does now.
* ``change.<N>.update.<strategy>``: ``LoadBalancer.update()`` with the flipped snapshot and
  the parser's change set (as the mesh's route hands it down) on a balancer gated by a
  FailureDetector as Mesh builds it (the update, not construction); ``.unchanged``:
  ``update()`` with a snapshot equal to the current one; ``.round_robin.compared``: the
  flip without a change set (the balancer compares both snapshots itself).

Whole-path rows (a ``Mesh`` following the service on the agent; full run also N=10,000):

* ``change.<N>.library_cpu``: CPU seconds of every thread the mesh runs (per-thread CPU
  clocks), from the catalog write to the mesh's balancer holding the flipped instance, per
  change; baseline: a raw watcher in the same process (``http.client`` blocking query +
  the raw decode loop) on the same change. ``.vs_consul_watch``: baseline the CPU of
  ``consul watch -type=service`` (its process and its handler) on the same change.
* ``change.<N>.per_unchanged_instance``: (library - raw) / (N - 1).
* ``change.growth_<N1>_to_<N2>``: library CPU per change at N2 over N1.
* ``change.<N>.stall``: the worst lateness of a 1 ms ticker thread of the same process
  while the mesh applies a change; baseline: the same ticker while a thread runs the raw
  decode loop on the same body.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _catalog import Catalog
from _common import (
    Context,
    Row,
    alternate,
    compare,
    compare_alternated,
    paired_ratio,
    quiet_mesh_options,
)
from _handler import compile_handler

from lake_mesh_consul._consul.health_entries import HealthEntryParser, parse_health_entries
from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.detector import FailureDetector
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.strategies import STRATEGIES  # every built-in, timed each
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing import find_consul_binary

FLIPPED = 7  # the instance whose health flips


def raw_decode(body: bytes) -> list[tuple[Any, ...]]:
    """The raw decode loop: JSON, then one tuple per entry with a crude worst status."""
    rank = {"passing": 0, "warning": 1, "critical": 2}
    out = []
    for entry in json.loads(body):
        node, service = entry["Node"], entry["Service"]
        worst = "passing"
        for check in entry["Checks"]:
            status = check["Status"]
            if rank.get(status, 2) > rank[worst]:
                worst = status
        address = service["Address"] or node["Address"]
        out.append((node["Node"], service["ID"], address, service["Port"], worst))
    return out


def _cpu(fn: Callable[[], object]) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


# --- stages --------------------------------------------------------------------------------


def _stage_rows(n: int, body_a: bytes, body_b: bytes, rounds: int) -> Iterator[Row]:
    raw = lambda: _cpu(lambda: raw_decode(body_b))  # noqa: E731
    fresh = lambda: _cpu(lambda: parse_health_entries(json.loads(body_b)))  # noqa: E731
    parser = HealthEntryParser(service="bench")
    bodies = [body_a, body_b]
    parser.parse(json.loads(body_a))

    def reuse() -> float:
        bodies.reverse()  # a, b, a, ...: each answer differs from the last by one instance
        body = bodies[0]
        return _cpu(lambda: parser.parse(json.loads(body)))

    ms = 1e3
    base_x, base_y = alternate(fresh, raw, rounds)
    yield Row(f"change.{n}.raw_decode_loop", statistics.median(base_y) * ms, "ms", n=rounds)
    yield compare_alternated(
        f"change.{n}.parse.fresh",
        [x * ms for x in base_x],
        [y * ms for y in base_y],
        "ms",
        baseline_is="raw decode loop",
    )
    rx, ry = alternate(reuse, raw, rounds)
    yield compare_alternated(
        f"change.{n}.parse.reuse",
        [x * ms for x in rx],
        [y * ms for y in ry],
        "ms",
        baseline_is="raw decode loop",
        reused_per_answer=parser.reused,
    )


def _update_rows(
    n: int,
    snap_a: Sequence[ServiceEndpoint],
    snap_b: Sequence[ServiceEndpoint],
    changes_ab: EndpointChanges | None,
    rounds: int,
) -> Iterator[Row]:
    """``update()`` as the mesh calls it: with the parser's change set (a -> b, b -> a)."""
    a, b = tuple(snap_a), tuple(snap_b)
    changed = changes_ab.changed if changes_ab is not None else ()
    steps = {  # the snapshot to apply, with the change set from the other one
        id(a): EndpointChanges(b, a, changed=changed),
        id(b): EndpointChanges(a, b, changed=changed),
    }
    for name in STRATEGIES:
        flips, same = _update_times(name, a, b, steps, rounds)
        yield Row(
            f"change.{n}.update.{name}",
            statistics.median(flips) * 1e3,
            "ms",
            n=len(flips),
            extra={
                "measures": "LoadBalancer.update() with one instance's health flipped, "
                "given the parser's change set (as the mesh's route gives it)"
            },
        )
        yield Row(
            f"change.{n}.update.{name}.unchanged",
            statistics.median(same) * 1e3,
            "ms",
            n=len(same),
            extra={"measures": "update() with the snapshot it already holds"},
        )
    flips, _ = _update_times("round_robin", a, b, None, rounds)
    yield Row(
        f"change.{n}.update.round_robin.compared",
        statistics.median(flips) * 1e3,
        "ms",
        n=len(flips),
        extra={"measures": "update() with one flip and no change set (both snapshots compared)"},
    )


def _update_times(
    name: str,
    a: tuple[ServiceEndpoint, ...],
    b: tuple[ServiceEndpoint, ...],
    steps: dict[int, EndpointChanges] | None,
    rounds: int,
) -> tuple[list[float], list[float]]:
    """Seconds of each one-flip ``update()`` and of each ``update()`` with the same snapshot."""
    detector = FailureDetector()
    lb = LoadBalancer("bench", name, endpoints=a, gates=(detector,), rng=random.Random(1))
    snaps = [a, b]
    flips: list[float] = []
    same: list[float] = []
    budget = time.monotonic() + 5.0  # a slow strategy gets fewer rounds (at least 3)
    for i in range(rounds):
        if i >= 3 and time.monotonic() > budget:
            break
        snaps.reverse()
        snap = snaps[0]
        changes = steps[id(snap)] if steps is not None else None
        started = time.perf_counter()
        lb.update(snap, changes)
        flips.append(time.perf_counter() - started)
        started = time.perf_counter()
        lb.update(snap)
        same.append(time.perf_counter() - started)
    return flips, same


# --- the whole path ------------------------------------------------------------------------


class _RawWatcher:
    """A raw blocking-query client on its own thread: http.client + the raw decode loop."""

    def __init__(self, address: str, service: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=70)
        self.service = service
        self.cpu: list[float] = []
        self.answers = 0
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-raw")
        self.thread.start()

    def _run(self) -> None:
        index = 0
        while not self.stop:
            path = f"/v1/health/service/{self.service}?index={index}&wait=60s"
            try:
                self.conn.request("GET", path)
                start = time.thread_time()
                answer = self.conn.getresponse()
                body = answer.read()
                index = int(answer.getheader("X-Consul-Index") or 0)
                raw_decode(body)
                used = time.thread_time() - start
            except (OSError, http.client.HTTPException, ValueError):
                return
            with self.cond:
                self.cpu.append(used)
                self.answers += 1
                self.cond.notify_all()

    def wait_answers(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.answers >= count, timeout)

    def close(self) -> None:
        self.stop = True
        self.conn.close()


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (utime+stime+cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class _GoWatch:
    """``consul watch -type=service`` with the compiled handler; its CPU is read from /proc."""

    def __init__(
        self, binary: Path, address: str, service: str, handler: Path, stamps: Path
    ) -> None:
        self.stamps = stamps
        env = {**os.environ, "LAKE_MESH_STAMPS": str(stamps)}
        self.proc = subprocess.Popen(
            [
                str(binary),
                "watch",
                f"-http-addr={address}",
                "-type=service",
                f"-service={service}",
                str(handler),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def count(self) -> int:
        try:
            return len(self.stamps.read_bytes().splitlines())
        except OSError:
            return 0

    def wait_count(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _thread_cpu(threads: Sequence[threading.Thread]) -> float:
    total = 0.0
    for t in threads:
        if t.ident is None or not t.is_alive():
            continue
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except OSError:  # the thread ended meanwhile
            pass
    return total


class _Ticker:
    """A thread that sleeps 1 ms at a time and remembers its worst lateness."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-ticker")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            time.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - start - 0.001)

    def reset(self) -> None:
        self.worst = 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


def _health_of(lb: LoadBalancer, endpoint_id: str) -> HealthStatus | None:
    for e in lb.endpoints:
        if e.id == endpoint_id:
            return e.health
    return None


def _whole_path(
    ctx: Context, catalog: Catalog, service: str, n: int, trials: int, *, body: bytes
) -> dict[str, Any]:
    """Library, raw and consul-watch CPU per change, and the stalls (seconds).

    The stalls come in alternated pairs in the same process state (the mesh open, its
    snapshot held): one change applied by the mesh, and the raw decode loop run once on a
    thread over ``body`` (the same answer), each under the same ticker. The collector's
    full passes cost in proportion to every tracked object the process holds, so a
    baseline measured after the mesh has closed would have a smaller heap to walk.
    """
    address = ctx.consul_address()
    binary = find_consul_binary()
    handler_dir, handler = compile_handler()
    stamps = handler_dir / f"stamps-{service}"
    flipped_id = f"{service}-{FLIPPED}"
    before = set(threading.enumerate())
    out: dict[str, Any] = {"lib": [], "raw": [], "go": [], "stall": [], "raw_stall": []}
    with Mesh(
        MeshConfig(address=address),
        **quiet_mesh_options(),
        rng=random.Random(5),
    ) as mesh:
        lb = mesh.balancer(service)
        deadline = time.monotonic() + 60
        while len(lb.endpoints) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        library = [t for t in threading.enumerate() if t not in before]
        raw = _RawWatcher(address, service)
        go = _GoWatch(binary, address, service, handler, stamps) if binary else None
        try:
            raw.wait_answers(1, 30)
            if go is not None:
                go.wait_count(1, 30)
            status = "critical"
            for _ in range(trials):
                want = HealthStatus.CRITICAL if status == "critical" else HealthStatus.PASSING
                answers, go_count = raw.answers, go.count() if go else 0
                lib0, go0 = _thread_cpu(library), go.cpu() if go else 0.0
                catalog.set_status(service, FLIPPED, status)
                deadline = time.monotonic() + 30
                while _health_of(lb, flipped_id) is not want and time.monotonic() < deadline:
                    time.sleep(0.002)
                raw.wait_answers(answers + 1, 30)
                if go is not None:
                    go.wait_count(go_count + 1, 30)
                time.sleep(0.05)  # trailing work of every watcher is in the figures
                out["lib"].append(_thread_cpu(library) - lib0)
                out["raw"].append(raw.cpu[-1])
                if go is not None:
                    out["go"].append(go.cpu() - go0)
                status = "passing" if status == "critical" else "critical"
        finally:
            raw.close()
            if go is not None:
                go.close()
        # Stalls, in alternated pairs (the raw watcher is gone): the ticker while the mesh
        # applies a change, and while a thread runs the raw decode loop on the same answer.
        ticker = _Ticker()
        other = "passing" if status == "critical" else "critical"
        flips = iter([status, other] * (trials + 1))  # the next status to set, flip after flip

        def lib_stall() -> float:
            state = next(flips)
            want = HealthStatus.CRITICAL if state == "critical" else HealthStatus.PASSING
            time.sleep(0.05)
            ticker.reset()
            catalog.set_status(service, FLIPPED, state)
            deadline = time.monotonic() + 30
            while _health_of(lb, flipped_id) is not want and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.02)
            return ticker.worst

        def raw_stall() -> float:
            time.sleep(0.05)
            ticker.reset()
            thread = threading.Thread(target=raw_decode, args=(body,))
            thread.start()
            thread.join()
            time.sleep(0.02)
            return ticker.worst

        try:
            lib_stall(), raw_stall()  # one pair left out: the first after the CPU trials
            out["stall"], out["raw_stall"] = alternate(lib_stall, raw_stall, max(3, trials // 2))
        finally:
            ticker.close()
    for p in handler_dir.iterdir():
        p.unlink()
    handler_dir.rmdir()
    return out


def _whole_rows(n: int, fig: dict[str, Any]) -> Iterator[Row]:
    ms = 1e3
    lib = statistics.median(fig["lib"])
    raw = statistics.median(fig["raw"])
    trials = len(fig["lib"])
    yield compare(
        f"change.{n}.library_cpu",
        lib * ms,
        raw * ms,
        "ms",
        n=trials,
        baseline_is="raw watcher (http.client + raw decode loop), same change",
    )
    if fig["go"]:
        go = statistics.mean(fig["go"])  # /proc ticks are 10 ms: the mean, not a median
        yield compare(
            f"change.{n}.library_cpu.vs_consul_watch",
            lib * ms,
            go * ms,
            "ms",
            n=trials,
            baseline_is="consul watch process + handler CPU, same change",
            baseline_resolution_ms=1e3 / os.sysconf("SC_CLK_TCK"),
        )
    yield Row(
        f"change.{n}.per_unchanged_instance",
        (lib - raw) / max(1, n - 1) * 1e6,
        "us",
        n=trials,
        extra={"measures": "(library_cpu - raw watcher) / (N - 1)"},
    )
    yield compare(
        f"change.{n}.stall",
        max(fig["stall"]) * ms,
        max(fig["raw_stall"]) * ms,
        "ms",
        n=len(fig["stall"]),
        baseline_is="raw decode loop on a thread over the same answer, alternated pairs "
        "with the mesh open",
        measures="worst lateness of a 1 ms ticker thread",
        median_ms=statistics.median(fig["stall"]) * ms,
        baseline_median_ms=statistics.median(fig["raw_stall"]) * ms,
        paired_ratio=paired_ratio(fig["stall"], fig["raw_stall"]),
    )


def run(ctx: Context) -> Iterator[Row]:
    sizes = (1000,) if ctx.quick else (1000, 10_000)
    rounds = 3 if ctx.quick else 15
    trials = 3 if ctx.quick else 15
    lib_by_n: dict[int, float] = {}
    with Catalog(ctx.consul_address()) as catalog:
        for n in sizes:
            service = f"bench-change-{uuid.uuid4().hex[:6]}"
            catalog.populate(service, n)
            try:
                catalog.wait_count(service, n, timeout=120)
                body_a = catalog.health_body(service)
                catalog.set_status(service, FLIPPED, "critical")
                body_b = catalog.health_body(service)
                catalog.set_status(service, FLIPPED, "passing")
                yield Row(
                    f"change.{n}.answer_bytes_per_instance",
                    len(body_a) / n,
                    "B",
                    extra={"measures": "size of the agent's answer per instance"},
                )
                yield from _stage_rows(n, body_a, body_b, rounds)
                parser = HealthEntryParser(service=service)
                snap_a = parser.parse(json.loads(body_a))
                snap_b = parser.parse(json.loads(body_b))
                yield from _update_rows(n, snap_a, snap_b, parser.changes, rounds)
                fig = _whole_path(ctx, catalog, service, n, trials, body=body_b)
                lib_by_n[n] = statistics.median(fig["lib"])
                yield from _whole_rows(n, fig)
            finally:
                catalog.remove(service, n)
    if len(lib_by_n) == 2:
        (n1, a), (n2, b) = sorted(lib_by_n.items())
        yield Row(
            f"change.growth_{n1}_to_{n2}",
            b / a,
            "x",
            extra={"measures": f"library CPU per change at {n2} over {n1}"},
        )
