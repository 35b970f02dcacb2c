"""Pick cost per strategy with the gates Mesh uses, and key movement when an instance leaves.

* ``pick.<strategy>.n=<N>``: ``mesh.balancer(service).pick()`` on the balancer a ``Mesh``
  builds for a service of N instances registered in a real agent (so its gates: the
  service's FailureDetector with its breakers, and whatever else Mesh adds), in
  microseconds per pick; the strategy set with ``mesh.set_strategy``. Baseline: ``next()``
  on an ``itertools.cycle`` of N items in the same loop shape, alternated round by round
  (``n`` rounds; the ratio is the median of per-round ratios). Hashing strategies get a
  distinct key per pick. N = 10 and 1,000 in the quick run; 10, 100, 1,000, 10,000 in full.
* ``pick.<strategy>.growth_10_to_<N>``: pick cost at the largest N over N = 10.
* ``keys.<strategy>.moved.n=<N>``: the share of 20,000 keys whose endpoint changes when one
  of N instances leaves (``LoadBalancer.pick(key)`` before and after), against the ideal 1/N
  (baseline); ``.between_unchanged``: the share of keys that moved from one remaining
  instance to another (ideal 0). N = 4, 8, 64, for the strategies that hash a key.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from _catalog import Catalog
from _common import Context, Row, alternate, compare, compare_alternated, quiet_mesh_options

from lake_mesh_consul._core.balancer import LoadBalancer
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.strategies import STRATEGIES  # every built-in, timed each
from lake_mesh_consul.mesh import Mesh

HASHED = ("ring_hash", "maglev")


def _loop(fn: Callable[[Any], object], keys: list[Any]) -> float:
    """Seconds per call of ``fn(key)`` over ``keys``."""
    start = time.perf_counter()
    for key in keys:
        fn(key)
    return (time.perf_counter() - start) / len(keys)


def _wait_size(mesh: Mesh, service: str, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(mesh.balancer(service).endpoints) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service}: the mesh never saw {n} instances")
        time.sleep(0.05)


def _picks(ctx: Context) -> Iterator[Row]:
    sizes = (10, 1000) if ctx.quick else (10, 100, 1000, 10_000)
    calls = 5_000 if ctx.quick else 50_000
    rounds = 3 if ctx.quick else 9
    plain_keys: list[Any] = [None] * calls
    hash_keys: list[Any] = [f"user-{i}" for i in range(calls)]
    per_strategy: dict[str, dict[int, float]] = {name: {} for name in STRATEGIES}
    address = ctx.consul_address()
    with Catalog(address) as catalog:
        for n in sizes:
            service = f"bench-pick-{uuid.uuid4().hex[:6]}"
            catalog.populate(service, n)
            try:
                with Mesh(
                    MeshConfig(address=address),
                    **quiet_mesh_options(),
                    rng=random.Random(1),
                ) as mesh:
                    _wait_size(mesh, service, n)
                    nxt: Callable[[], int] = itertools.cycle(range(n)).__next__
                    for name in STRATEGIES:
                        mesh.set_strategy(service, name)
                        lb = mesh.balancer(service)
                        keys = hash_keys if name in HASHED else plain_keys
                        ours, base = alternate(
                            lambda lb=lb, keys=keys: _loop(lb.pick, keys) * 1e6,
                            lambda keys=keys, nxt=nxt: _loop(lambda _k: nxt(), keys) * 1e6,
                            rounds,
                        )
                        per_strategy[name][n] = statistics.median(ours)
                        yield compare_alternated(
                            f"pick.{name}.n={n}",
                            ours,
                            base,
                            "us",
                            baseline_is="next() on itertools.cycle of N items",
                            picks_per_round=calls,
                        )
            finally:
                catalog.remove(service, n)
    top = max(sizes)
    for name, by_n in per_strategy.items():
        yield Row(
            f"pick.{name}.growth_10_to_{top}",
            by_n[top] / by_n[10],
            "x",
            extra={"us_at_10": by_n[10], f"us_at_{top}": by_n[top]},
        )


def _endpoints(n: int) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"web-{i}", f"10.0.{i // 250}.{i % 250}", 8080, node=f"node-{i}")
        for i in range(n)
    ]


def _moved(name: str, n: int, keys: list[str]) -> tuple[float, float]:
    """Share of keys that moved, and share that moved between two remaining instances."""
    endpoints = _endpoints(n)
    before = LoadBalancer("keys", name, endpoints=endpoints, rng=random.Random(1))
    owners = [before.pick(k).id for k in keys]
    leaving = endpoints[n // 2]
    after = LoadBalancer(
        "keys", name, endpoints=[e for e in endpoints if e is not leaving], rng=random.Random(1)
    )
    moved = between = 0
    for key, owner in zip(keys, owners, strict=True):
        now = after.pick(key).id
        if now != owner:
            moved += 1
            if owner != leaving.id:
                between += 1
    return moved / len(keys), between / len(keys)


def _key_movement() -> Iterator[Row]:
    keys = [f"user-{i}" for i in range(20_000)]
    for name in HASHED:
        for n in (4, 8, 64):
            moved, between = _moved(name, n, keys)
            yield compare(
                f"keys.{name}.moved.n={n}",
                moved,
                1 / n,
                "share",
                n=len(keys),
                baseline_is="1/N (only the leaving instance's keys move)",
            )
            yield Row(
                f"keys.{name}.moved.n={n}.between_unchanged",
                between,
                "share",
                n=len(keys),
                extra={"ideal": 0},
            )


def run(ctx: Context) -> Iterator[Row]:
    yield from _key_movement()
    yield from _picks(ctx)
