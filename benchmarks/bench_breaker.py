"""Failing safely: the cost of one breaker around a call, and throughput through it.

1. Overhead per call of ``CircuitBreaker.call`` (ours, the breaker alone) over a bare call;
   for scale ``pybreaker.CircuitBreaker.call`` and a tenacity-wrapped call. The whole
   request path (pick, breaker, detector, budget, retry) is measured where users meet it,
   through ``Mesh.call`` on real endpoints: see ``mesh.call.*`` in bench_session.
2. Throughput of 8 threads each doing 10 ms of I/O (a sleep) through ONE breaker: ours
   against the unwrapped call and ``pybreaker.CircuitBreaker.call``, which holds its lock
   across the call (pybreaker #3/#55). Target: >= 95% of unwrapped.

Usage::

    python benchmarks/run.py --only breaker [--quick]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pybreaker
import tenacity
from _common import Context, Row, compare, per_call

from lake_mesh_consul._core.breaker import CircuitBreaker

THREADS = 8
IO_SECONDS = 0.010


def _work() -> int:
    return 1


def _overhead(n: int, repeat: int) -> Iterator[Row]:
    breaker = CircuitBreaker("bench")
    pb = pybreaker.CircuitBreaker()
    retrying = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none())(_work)

    bare = per_call(_work, n=n, repeat=repeat)
    ours = per_call(lambda: breaker.call(_work), n=n, repeat=repeat)  # the breaker alone
    theirs = per_call(lambda: pb.call(_work), n=n, repeat=repeat)
    wrapped = per_call(retrying, n=n, repeat=repeat)
    extra = {"measures": "over a bare call"}
    yield Row("breaker.bare_call", bare * 1e6, "us", n=n)
    yield Row("breaker.overhead.circuit_breaker_call", (ours - bare) * 1e6, "us", n=n, extra=extra)
    yield Row("breaker.overhead.pybreaker_call", (theirs - bare) * 1e6, "us", n=n, extra=extra)
    yield Row("breaker.overhead.tenacity_retry", (wrapped - bare) * 1e6, "us", n=n, extra=extra)


def _throughput(wrap: Callable[[Callable[[], None]], object], seconds: float) -> float:
    """Calls/s completed by THREADS threads each doing IO_SECONDS of sleep through ``wrap``."""
    stop = threading.Event()
    counts = [0] * THREADS
    start_line = threading.Barrier(THREADS + 1)

    def io() -> None:
        time.sleep(IO_SECONDS)

    def worker(i: int) -> None:
        start_line.wait()
        while not stop.is_set():
            wrap(io)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    start_line.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(5)
    return sum(counts) / (time.perf_counter() - started)


def _throughputs(seconds: float) -> Iterator[Row]:
    breaker = CircuitBreaker("bench-io")
    pb = pybreaker.CircuitBreaker()
    unwrapped = _throughput(lambda fn: fn(), seconds)
    ours = _throughput(breaker.call, seconds)
    theirs = _throughput(pb.call, seconds)
    unit = "calls/s"
    label = f"{THREADS} threads x {IO_SECONDS * 1000:g} ms I/O"
    base = {"baseline_is": f"the unwrapped call ({label})"}
    yield Row("breaker.throughput.unwrapped", unwrapped, unit, extra={"measures": label})
    yield compare("breaker.throughput.circuit_breaker_call", ours, unwrapped, unit, **base)
    yield compare("breaker.throughput.pybreaker_call", theirs, unwrapped, unit, **base)


def run(ctx: Context) -> Iterator[Row]:
    """Yield the overhead and throughput rows (quick: about 8 s in all)."""
    if ctx.quick:
        yield from _overhead(n=20_000, repeat=3)
        yield from _throughputs(seconds=1.0)
    else:
        yield from _overhead(n=100_000, repeat=5)
        yield from _throughputs(seconds=3.0)
