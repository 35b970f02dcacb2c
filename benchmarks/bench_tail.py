"""Tail latency per strategy when one of ten backends turns slow (Linkerd's experiment).

A discrete-event simulation in virtual time: the real ``LoadBalancer`` driven by a
``FakeClock``, so a minute of traffic runs in about a second and every run is identical
(seeded RNG). Ten backends answer in ~10 ms (log-normal, sigma 0.3); after one second one
of them answers in ~800 ms instead. Requests arrive at a steady 1,000 per second (Poisson);
the client gives up after a 1 s timeout (a failure, observed as 1 s). Each strategy is
scored over the requests that arrive after the backend turned slow: p50, p99, p99.9 of the
client-observed latency and the success rate. ``tail.p99.peak_ewma_vs_round_robin`` is
the headline ratio (lower is better).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from typing import Any

from _common import Row, compare, percentile

from lake_mesh_consul._core.balancer import LoadBalancer, RequestContext
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul.testing import FakeClock

STRATEGIES = ("round_robin", "random", "weighted", "least_request", "peak_ewma")
BACKENDS = 10
RATE = 1000.0  # requests per second
FAST_MEDIAN = 0.010
SLOW_MEDIAN = 0.800
SIGMA = 0.3
TIMEOUT = 1.0
SLOW_AT = 1.0  # seconds into the run
SLOW_ID = "backend-3"


def simulate(strategy: str, duration: float, seed: int = 7) -> dict[str, float]:
    """Run one strategy; return p50/p99/p99.9 (seconds) and the success rate (0..1)."""
    rng = random.Random(seed)
    clock = FakeClock(start=0.0)
    endpoints = [
        ServiceEndpoint.create(f"backend-{i}", f"10.0.0.{i}", 8080) for i in range(BACKENDS)
    ]
    lb = LoadBalancer("sim", strategy, endpoints=endpoints, clock=clock, rng=random.Random(seed))
    pending: list[tuple[float, int, RequestContext, bool]] = []
    latencies: list[float] = []
    successes = 0
    seq = 0
    now = 0.0

    def advance_to(t: float) -> None:
        step = t - clock.monotonic()
        if step > 0:
            clock.advance(step)

    while now < duration:
        now += rng.expovariate(RATE)
        while pending and pending[0][0] <= now:
            done_at, _, ctx, ok = heapq.heappop(pending)
            advance_to(done_at)
            if not ok:
                ctx.fail()  # timed out
            ctx.finish()
        advance_to(now)
        ctx = lb.request()
        slow = ctx.endpoint.id == SLOW_ID and now >= SLOW_AT
        median = SLOW_MEDIAN if slow else FAST_MEDIAN
        service_time = median * math.exp(rng.gauss(0.0, SIGMA))
        observed = min(service_time, TIMEOUT)
        ok = service_time <= TIMEOUT
        seq += 1
        heapq.heappush(pending, (now + observed, seq, ctx, ok))
        if now >= SLOW_AT:
            latencies.append(observed)
            successes += ok
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "p999": percentile(latencies, 99.9),
        "success": successes / len(latencies),
        "requests": float(len(latencies)),
    }


def run(ctx: Any) -> Iterator[Row]:
    duration = 12.0 if ctx.quick else 60.0
    results = {name: simulate(name, duration) for name in STRATEGIES}
    for name, r in results.items():
        n = int(r["requests"])
        yield Row(f"tail.{name}.p50", r["p50"] * 1e3, "ms", n=n)
        yield Row(f"tail.{name}.p99", r["p99"] * 1e3, "ms", n=n)
        yield Row(f"tail.{name}.p99.9", r["p999"] * 1e3, "ms", n=n)
        yield Row(
            f"tail.{name}.success", r["success"] * 100, "%", extra={"requests": r["requests"]}
        )
    rr, ewma = results["round_robin"], results["peak_ewma"]
    n = int(ewma["requests"])
    yield compare(
        "tail.p99.peak_ewma_vs_round_robin", ewma["p99"] * 1e3, rr["p99"] * 1e3, "ms", n=n
    )
    yield compare(
        "tail.p99.9.peak_ewma_vs_round_robin", ewma["p999"] * 1e3, rr["p999"] * 1e3, "ms", n=n
    )
