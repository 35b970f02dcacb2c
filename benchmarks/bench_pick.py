"""Pick cost per strategy at N = 10 ... 10,000 endpoints, against a bare ``next()`` on a cycle.

Every figure is ``LoadBalancer.pick`` (the public path: snapshot read, strategy picker, no
gates) timed in the same loop shape as the baseline, ``next()`` on an
``itertools.cycle`` over N items, measured in the same run. Targets on CPython 3.11:
round robin <= 0.5 us, least_request <= 1 us, peak_ewma / ring_hash / maglev <= 1.5 us,
and at most 20% growth from N = 10 to N = 10,000 (``growth`` rows). ``update`` rows show
what a new snapshot costs to prepare (ring, Maglev table, schedule), paid by the discovery
thread, never by a pick.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import Row, compare

from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.strategies import STRATEGIES

SIZES = (10, 100, 1000, 10_000)
HASHED = {"ring_hash", "maglev"}


def _endpoints(n: int) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"web-{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 8080)
        for i in range(n)
    ]


def _loop(fn: Callable[[Any], object], keys: list[Any], repeat: int) -> float:
    """Best-of-``repeat`` seconds per call of ``fn(key)`` over ``keys``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for key in keys:
            fn(key)
        best = min(best, (time.perf_counter() - start) / len(keys))
    return best


def run(ctx: Any) -> Iterator[Row]:
    calls = 20_000 if ctx.quick else 200_000
    repeat = 3 if ctx.quick else 7
    plain_keys: list[Any] = [None] * calls
    hash_keys: list[Any] = [f"user-{i}" for i in range(calls)]
    per_strategy: dict[str, dict[int, float]] = {name: {} for name in STRATEGIES}
    for n in SIZES:
        endpoints = _endpoints(n)
        nxt: Callable[[], int] = itertools.cycle(range(n)).__next__
        for name in STRATEGIES:
            started = time.perf_counter()
            lb = LoadBalancer("bench", name, endpoints=endpoints, rng=random.Random(1))
            built = time.perf_counter() - started
            keys = hash_keys if name in HASHED else plain_keys
            base = _loop(lambda _k, nxt=nxt: nxt(), keys, repeat)  # type: ignore[misc]
            cost = _loop(lb.pick, keys, repeat)
            per_strategy[name][n] = cost
            yield compare(f"pick.{name}.n={n}", cost * 1e6, base * 1e6, "us")
            yield Row(f"update.{name}.n={n}", built * 1e3, "ms")
    for name, by_n in per_strategy.items():
        yield Row(
            f"pick.{name}.growth_10_to_10000",
            by_n[10_000] / by_n[10],
            "x",
            extra={"us_at_10": by_n[10] * 1e6, "us_at_10000": by_n[10_000] * 1e6},
        )
