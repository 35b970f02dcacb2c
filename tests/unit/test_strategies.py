"""Balancer strategies as pure functions of their candidates, stats and a seeded RNG."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.hashing import hash64, hash128, key_bytes
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.loadstats import StatsRegistry
from lake_mesh_consul._core.strategies import (
    STRATEGIES,
    BalancerStrategy,
    LeastRequest,
    Maglev,
    NearestFirst,
    PeakEwma,
    RandomChoice,
    RingHash,
    RoundRobin,
    Weighted,
    ZoneAware,
    prepare_pair,
    resolve_strategy,
    smooth_schedule,
    strategy_by_name,
)
from lake_mesh_consul.errors import InvalidSetting, NoEndpointsAvailable
from lake_mesh_consul.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def make(n: int, **kw: object) -> tuple[ServiceEndpoint, ...]:
    return tuple(
        ServiceEndpoint.create(f"web-{i}", f"10.0.0.{i}", 8080, service="web", **kw)  # type: ignore[arg-type]
        for i in range(n)
    )


def shares(counts: Counter[str], total: int) -> dict[str, float]:
    return {k: v / total for k, v in counts.items()}


# --- registry and protocol ------------------------------------------------------------------


def test_registry_names_and_aliases() -> None:
    assert STRATEGIES == (
        "round_robin",
        "random",
        "weighted",
        "least_request",
        "peak_ewma",
        "ring_hash",
        "maglev",
        "nearest_first",
    )
    for name in STRATEGIES:
        strategy = strategy_by_name(name, rng=random.Random(1))
        assert strategy.name == name
        assert isinstance(strategy, BalancerStrategy)
    assert strategy_by_name("Peak-EWMA").name == "peak_ewma"


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(InvalidSetting, match="choose one of round_robin"):
        strategy_by_name("fastest")
    with pytest.raises(InvalidSetting, match="least_request"):
        strategy_by_name("least_request", choice_count=1)
    with pytest.raises(InvalidSetting, match="maglev"):
        strategy_by_name("maglev", table_size=65536)  # not a prime
    with pytest.raises(InvalidSetting):
        strategy_by_name("round_robin", bogus=1)


def test_plain_function_counts_as_a_strategy() -> None:
    def last(candidates: Sequence[ServiceEndpoint], key: object = None) -> ServiceEndpoint:
        return candidates[-1]

    eps = make(3)
    strategy = resolve_strategy(last)
    assert strategy.pick(eps) is eps[-1]
    with pytest.raises(TypeError):
        resolve_strategy(42)  # type: ignore[arg-type]


def test_empty_candidates_raise() -> None:
    with pytest.raises(NoEndpointsAvailable):
        RoundRobin().pick(())


def test_standalone_pick_follows_a_mutated_list() -> None:
    eps = list(make(3))
    rr = RoundRobin()
    assert {rr.pick(eps).id for _ in range(3)} == {"web-0", "web-1", "web-2"}
    eps.pop()
    assert {rr.pick(eps).id for _ in range(10)} == {"web-0", "web-1"}


# --- round robin, random ----------------------------------------------------------------------


def test_round_robin_is_exactly_fair() -> None:
    eps = make(7)
    rr = RoundRobin()
    counts = Counter(rr.pick(eps).id for _ in range(7 * 1000))
    assert set(counts.values()) == {1000}
    order = [rr.pick(eps).id for _ in range(14)]
    assert order[:7] == order[7:]  # a fixed cycle


def test_random_is_reproducible_with_a_seed_and_roughly_uniform() -> None:
    eps = make(5)
    a = RandomChoice(rng=random.Random(42))
    b = RandomChoice(rng=random.Random(42))
    seq_a = [a.pick(eps).id for _ in range(1000)]
    assert seq_a == [b.pick(eps).id for _ in range(1000)]
    counts = Counter(a.pick(eps).id for _ in range(50_000))
    for share in shares(counts, 50_000).values():
        assert share == pytest.approx(0.2, abs=0.01)


# --- weighted ---------------------------------------------------------------------------------


def test_smooth_schedule_is_exact_and_interleaved() -> None:
    assert smooth_schedule([5, 1, 1]) == [0, 0, 0, 1, 0, 2, 0]
    schedule = smooth_schedule([3, 2, 1])
    assert Counter(schedule) == {0: 3, 1: 2, 2: 1}
    assert smooth_schedule([2, 2]) == [0, 1]  # reduced by the gcd
    with pytest.raises(ValueError, match="positive"):
        smooth_schedule([1, 0])


def test_smooth_schedule_quantises_fractional_weights() -> None:
    schedule = smooth_schedule([1.0, 0.25])
    counts = Counter(schedule)
    assert counts[0] / counts[1] == pytest.approx(4.0, rel=0.02)


def test_weighted_within_one_percent_over_100k_picks() -> None:
    eps = (
        ServiceEndpoint.create("a", "10.0.0.1", 80, weights=Weights(passing=1)),
        ServiceEndpoint.create("b", "10.0.0.2", 80, weights=Weights(passing=2)),
        ServiceEndpoint.create("c", "10.0.0.3", 80, weights=Weights(passing=3)),
        ServiceEndpoint.create(
            "d", "10.0.0.4", 80, weights=Weights(passing=4, warning=1), health=HealthStatus.WARNING
        ),
        ServiceEndpoint.create("e", "10.0.0.5", 80, weights=Weights(passing=3)),
    )
    target = {"a": 1 / 10, "b": 2 / 10, "c": 3 / 10, "d": 1 / 10, "e": 3 / 10}
    strategy = Weighted()
    counts = Counter(strategy.pick(eps).id for _ in range(100_000))
    for name, share in shares(counts, 100_000).items():
        assert share == pytest.approx(target[name], rel=0.01), name


def test_weighted_overrides_by_id_and_by_function() -> None:
    eps = make(2)
    by_id = Weighted(overrides={"web-0": 3})
    assert Counter(by_id.pick(eps).id for _ in range(400)) == {"web-0": 300, "web-1": 100}
    by_fn = Weighted(overrides=lambda e: 0 if e.id == "web-1" else None)
    assert {by_fn.pick(eps).id for _ in range(10)} == {"web-0"}


def test_weighted_smoothness_no_long_bursts() -> None:
    eps = make(3)
    strategy = Weighted(overrides={"web-0": 8, "web-1": 1, "web-2": 1})
    seq = "".join(strategy.pick(eps).id[-1] for _ in range(100))
    longest = max(len(run) for run in seq.replace("1", " ").replace("2", " ").split())
    assert longest <= 5  # interleaved (ideal 4), not 8 in a row


# --- least request, peak EWMA -----------------------------------------------------------------


def test_p2c_never_picks_the_loaded_instance() -> None:
    eps = make(10)
    strategy = LeastRequest(rng=random.Random(3))
    for _ in range(50):
        strategy.stats.get(eps[4]).begin()
    counts = Counter(strategy.pick(eps).id for _ in range(20_000))
    assert "web-4" not in counts  # two distinct choices: the loaded one always loses
    assert len(counts) == 9


def test_least_request_full_scan_for_small_sets() -> None:
    eps = make(3)
    strategy = LeastRequest(rng=random.Random(3))
    strategy.stats.get(eps[0]).begin()
    strategy.stats.get(eps[0]).begin()
    strategy.stats.get(eps[2]).begin()
    assert {strategy.pick(eps).id for _ in range(100)} == {"web-1"}


def test_least_request_k_choices() -> None:
    eps = make(20)
    strategy = LeastRequest(choice_count=5, rng=random.Random(3))
    for e in eps[:10]:
        strategy.stats.get(e).begin()
    counts = Counter(strategy.pick(eps).id for _ in range(5000))
    loaded = sum(counts[e.id] for e in eps[:10])
    # All five sampled from the loaded half: (10/20 choose 5) ~ 1.6%.
    assert loaded / 5000 < 0.03


def test_peak_ewma_prefers_the_fast_instance_and_decays() -> None:
    clock = FakeClock()
    eps = make(10)
    strategy = PeakEwma(rng=random.Random(5), clock=clock)
    stats = {e.id: strategy.stats.get(e) for e in eps}
    for e in eps:
        stats[e.id].begin()
        stats[e.id].end(clock.monotonic(), 0.010)
    stats["web-3"].begin()
    stats["web-3"].end(clock.monotonic(), 2.0)  # one peak makes it expensive at once
    assert stats["web-3"].rtt == 2.0
    counts = Counter(strategy.pick(eps).id for _ in range(5000))
    assert counts["web-3"] == 0
    clock.advance(100.0)  # 10 time constants: 2 s decays to ~0.1 ms ...
    for e in eps:
        if e.id != "web-3":  # ... while the others keep answering in 10 ms
            stats[e.id].begin()
            stats[e.id].end(clock.monotonic(), 0.010)
    counts = Counter(strategy.pick(eps).id for _ in range(5000))
    assert counts["web-3"] > 0


def test_peak_ewma_unseen_instance_costs_default_rtt() -> None:
    clock = FakeClock()
    strategy = PeakEwma(clock=clock, default_rtt=0.030)
    e = make(1)[0]
    assert strategy.stats.get(e).latency(clock.monotonic()) == pytest.approx(0.030)
    clock.advance(10.0)
    assert strategy.stats.get(e).latency(clock.monotonic()) == pytest.approx(0.030 / 2.718281828)


def test_peak_ewma_blends_lower_samples_by_elapsed_time() -> None:
    clock = FakeClock()
    strategy = PeakEwma(clock=clock, decay=10.0, default_rtt=0.1)
    st = strategy.stats.get(make(1)[0])
    clock.advance(10.0)
    st.begin()
    st.end(clock.monotonic(), 0.0)
    # weight exp(-1): 0.1 * e^-1 + 0 * (1 - e^-1)
    assert st.rtt == pytest.approx(0.1 / 2.718281828)


# --- consistent hashing -----------------------------------------------------------------------


def test_hashing_is_stable_and_typed() -> None:
    assert hash64("user-1") == hash64(b"user-1")
    assert hash64("user-1") != hash64("user-2")
    assert key_bytes("é") == "é".encode()
    assert len({hash128("x")[0], hash128("x")[1]}) == 2
    with pytest.raises(TypeError):
        key_bytes(12)  # type: ignore[arg-type]


_MAPPING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lake_mesh_consul._core.endpoint import ServiceEndpoint
    from lake_mesh_consul._core.strategies import strategy_by_name
    eps = tuple(ServiceEndpoint.create(f"web-{i}", f"10.0.0.{i}", 8080) for i in range(10))
    out = {}
    for name in ("ring_hash", "maglev"):
        s = strategy_by_name(name, table_size=5003) if name == "maglev" else strategy_by_name(name)
        out[name] = [s.pick(eps, f"key-{k}").id for k in range(2000)]
    print(json.dumps(out))
    """
)


def _mapping_here() -> dict[str, list[str]]:
    eps = make(10)
    ring = RingHash()
    maglev = Maglev(table_size=5003)
    return {
        "ring_hash": [ring.pick(eps, f"key-{k}").id for k in range(2000)],
        "maglev": [maglev.pick(eps, f"key-{k}").id for k in range(2000)],
    }


def test_hash_strategies_map_keys_alike_across_processes() -> None:
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _MAPPING_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    theirs = json.loads(out.stdout)
    assert theirs == _mapping_here()


def _moved(before: list[str], after: list[str]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


KEYS = [f"session-{i}" for i in range(100_000)]


@pytest.mark.parametrize("factory", [RingHash, Maglev], ids=["ring_hash", "maglev"])
def test_about_one_nth_of_keys_move_when_one_of_n_changes(factory: type) -> None:
    eps = make(11)
    ten, eleven = eps[:10], eps
    without_3 = tuple(e for e in ten if e.id != "web-3")
    before, after_add, after_remove = (
        [pick(k).id for k in KEYS]
        for pick in (factory().prepare_candidates(c) for c in (ten, eleven, without_3))
    )

    moved_add = _moved(before, after_add)  # ideal 1/11 = 0.091
    moved_remove = _moved(before, after_remove)  # ideal 1/10 = 0.1
    assert 0.06 <= moved_add <= 0.13, moved_add
    assert 0.06 <= moved_remove <= 0.14, moved_remove
    # Keys that move on removal are (almost) only those of the removed instance.
    stray = sum(b != a and b != "web-3" for b, a in zip(before, after_remove, strict=True))
    assert stray / len(KEYS) <= (0.0 if factory is RingHash else 0.02)
    # Balance: every instance holds a fair share.
    counts = Counter(before)
    assert min(counts.values()) >= 0.07 * len(KEYS)
    assert max(counts.values()) <= 0.13 * len(KEYS)


def test_maglev_respects_weights() -> None:
    eps = (
        ServiceEndpoint.create("a", "10.0.0.1", 80, weights=Weights(passing=1)),
        ServiceEndpoint.create("b", "10.0.0.2", 80, weights=Weights(passing=3)),
    )
    table = Maglev(table_size=5003).build_table(eps, (1.0, 3.0))
    assert Counter(table)[1] / len(table) == pytest.approx(0.75, abs=0.01)
    ring = RingHash()
    counts = Counter(ring.pick(eps, f"k{i}").id for i in range(20_000))
    assert counts["b"] / 20_000 == pytest.approx(0.75, abs=0.05)


def test_hash_strategies_without_key_pick_randomly() -> None:
    eps = make(4)
    for strategy in (RingHash(rng=random.Random(1)), Maglev(rng=random.Random(1), table_size=211)):
        assert len({strategy.pick(eps).id for _ in range(200)}) == 4


def test_maglev_grows_its_table_beyond_its_size() -> None:
    eps = make(20)
    table = Maglev(table_size=7).build_table(eps, (1.0,) * 20)
    assert len(table) >= 80
    assert set(table) == set(range(20))


# --- order and zones --------------------------------------------------------------------------


def test_nearest_first_keeps_discovery_order() -> None:
    eps = make(4)
    assert {NearestFirst().pick(eps).id for _ in range(10)} == {"web-0"}
    two = NearestFirst(spread=2)
    assert Counter(two.pick(eps).id for _ in range(10)) == {
        "web-0": 5,
        "web-1": 5,
    }


def zoned(spec: dict[str, int]) -> tuple[ServiceEndpoint, ...]:
    out = []
    for zone, count in spec.items():
        for i in range(count):
            out.append(ServiceEndpoint.create(f"{zone}-{i}", "10.0.0.1", 80 + i, zone=zone))
    return tuple(out)


def test_zone_aware_stays_local_with_enough_capacity() -> None:
    eps = zoned({"a": 4, "b": 4})
    strategy = ZoneAware("round_robin", "a", rng=random.Random(1))
    assert {strategy.pick(eps).id[0] for _ in range(100)} == {"a"}


def test_zone_aware_spills_in_proportion_when_local_is_short() -> None:
    eps = zoned({"a": 1, "b": 4, "c": 4})  # local holds 1/9 of capacity, callers 1/3
    strategy = ZoneAware("round_robin", "a", rng=random.Random(1))
    counts = Counter(strategy.pick(eps).id[0] for _ in range(30_000))
    assert counts["a"] / 30_000 == pytest.approx((1 / 9) / (1 / 3), abs=0.02)


def test_zone_aware_falls_back_for_small_clusters_and_missing_zone() -> None:
    small = zoned({"a": 2, "b": 3})  # 5 < min_cluster_size 6
    strategy = ZoneAware("round_robin", "a", rng=random.Random(1))
    assert {strategy.pick(small).id[0] for _ in range(50)} == {"a", "b"}
    elsewhere = zoned({"b": 4, "c": 4})
    assert {strategy.pick(elsewhere).id[0] for _ in range(50)} == {"b", "c"}


def test_zone_aware_with_a_key_is_deterministic() -> None:
    eps = zoned({"a": 1, "b": 4, "c": 4})
    one = ZoneAware("ring_hash", "a", rng=random.Random(1))
    two = ZoneAware("ring_hash", "a", rng=random.Random(99))
    assert [one.pick(eps, f"k{i}").id for i in range(300)] == [
        two.pick(eps, f"k{i}").id for i in range(300)
    ]


# --- walkers: the picks a retry makes among the endpoints it may still use -------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_walker_returns_only_accepted_endpoints(name: str) -> None:
    eps = make(6)
    strategy = strategy_by_name(name, rng=random.Random(4))
    picker, walk = prepare_pair(
        strategy, eps, (1.0,) * 6, tuple(StatsRegistry(FakeClock()).get(e) for e in eps)
    )
    assert picker(None) in eps
    allowed = {eps[1], eps[4]}
    for key in (None, "k", b"k2"):
        for _ in range(50):
            assert walk(key, allowed.__contains__) in allowed
        assert walk(key, lambda e: False) is None
        assert walk(key, eps[5].__eq__) == eps[5]


def test_a_function_strategy_walks_over_the_accepted_candidates_only() -> None:
    seen: list[tuple[str, ...]] = []

    def last(candidates: Sequence[ServiceEndpoint], key: object) -> ServiceEndpoint:
        seen.append(tuple(e.id for e in candidates))
        return candidates[-1]

    eps = make(4)
    _, walk = prepare_pair(resolve_strategy(last), eps, (1.0,) * 4, ())
    assert walk(None, lambda e: e.id != "web-3") == eps[2]
    assert seen == [("web-0", "web-1", "web-2")]
    assert walk(None, lambda e: False) is None


# --- cost of a change ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_an_unchanged_snapshot_is_not_prepared_again(name: str) -> None:
    eps = make(6)
    registry = StatsRegistry(FakeClock())
    stats = tuple(registry.get(e) for e in eps)
    options: dict[str, Any] = {"table_size": 211} if name == "maglev" else {}
    strategy = strategy_by_name(name, **options)
    first = prepare_pair(strategy, eps, (1.0,) * 6, stats)
    assert prepare_pair(strategy, tuple(eps), (1.0,) * 6, stats) is first
    # A new endpoint object (its health changed) is a new snapshot: the pick must return it.
    flipped = (*eps[:5], ServiceEndpoint.create("web-5", "10.0.0.9", 8080, service="web"))
    pick = prepare_pair(strategy, flipped, (1.0,) * 6, stats)[0]
    keys = [f"k{i}" for i in range(200)] if name in {"ring_hash", "maglev"} else [None] * 200
    assert any(pick(k) is flipped[5] for k in keys) or name == "nearest_first"
    assert all(pick(k) in flipped for k in keys)


def _paper_maglev(
    offsets: list[int], skips: list[int], weights: list[float], size: int
) -> list[int]:
    """Maglev's Populate as the paper and Envoy write it (the reference for maglev_fill)."""
    n = len(offsets)
    nexts, earned, table = [0] * n, [0.0] * n, [-1] * size
    filled, turn, heaviest = 0, 0, max(weights)
    while filled < size:
        turn += 1
        for i in range(n):
            if turn * weights[i] < earned[i]:
                continue
            earned[i] += heaviest
            slot = (offsets[i] + skips[i] * nexts[i]) % size
            while table[slot] >= 0:
                nexts[i] += 1
                slot = (offsets[i] + skips[i] * nexts[i]) % size
            table[slot] = i
            nexts[i] += 1
            filled += 1
            if filled == size:
                break
    return table


@pytest.mark.parametrize(
    ("n", "size", "weighted"),
    [(3, 211, False), (7, 1009, True), (40, 5003, False), (40, 5003, True)],
)
def test_maglev_fill_is_the_papers_table(n: int, size: int, weighted: bool) -> None:
    from lake_mesh_consul._core.strategies.consistent import maglev_fill

    rng = random.Random(n * size)
    offsets = [rng.randrange(size) for _ in range(n)]
    skips = [rng.randrange(1, size) for _ in range(n)]
    weights = [float(rng.randint(1, 4)) if weighted else 1.0 for _ in range(n)]
    assert maglev_fill(offsets, skips, weights, size) == _paper_maglev(
        offsets, skips, weights, size
    )
