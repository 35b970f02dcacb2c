"""LoadBalancer: eligibility, panic threshold, slow start, request tracking, gates, threads."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from lake_mesh_consul._core.balancer import LoadBalancer, slow_start_factor
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.ports import EndpointGate, OutcomeRecorder
from lake_mesh_consul._core.strategies import STRATEGIES, Maglev, RoundRobin
from lake_mesh_consul.errors import InvalidSetting, NoEndpointsAvailable
from lake_mesh_consul.testing import FakeClock

CRITICAL = HealthStatus.CRITICAL
WARNING = HealthStatus.WARNING
MAINTENANCE = HealthStatus.MAINTENANCE


def make(n: int, start: int = 0, **kw: object) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"web-{i}", f"10.0.0.{i}", 8080, service="web", **kw)  # type: ignore[arg-type]
        for i in range(start, start + n)
    ]


def with_health(eps: Sequence[ServiceEndpoint], health: HealthStatus) -> list[ServiceEndpoint]:
    return [replace(e, health=health) for e in eps]


class Recorder:
    """A fake OutcomeRecorder that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def record(
        self,
        endpoint: ServiceEndpoint,
        *,
        success: bool,
        duration: float,
        error: BaseException | None = None,
        status: int | None = None,
    ) -> None:
        with self._lock:
            self.calls.append(
                {
                    "endpoint": endpoint.id,
                    "success": success,
                    "duration": duration,
                    "error": error,
                    "status": status,
                }
            )


class Gate:
    """A fake EndpointGate refusing the endpoint ids in ``refused``."""

    def __init__(self, refused: set[str] | None = None) -> None:
        self.refused = refused if refused is not None else set()

    def is_available(self, endpoint: ServiceEndpoint) -> bool:
        return endpoint.id not in self.refused


def test_fakes_satisfy_the_ports() -> None:
    assert isinstance(Recorder(), OutcomeRecorder)
    assert isinstance(Gate(), EndpointGate)


# --- reasons -------------------------------------------------------------------------------------


def test_pick_says_why_nothing_is_available() -> None:
    lb = LoadBalancer("web")
    with pytest.raises(NoEndpointsAvailable, match="none registered") as info:
        lb.pick()
    assert info.value.service == "web"
    lb.update(with_health(make(3), CRITICAL))
    with pytest.raises(NoEndpointsAvailable, match="all critical"):
        lb.pick()
    lb.update(with_health(make(2), MAINTENANCE))
    with pytest.raises(NoEndpointsAvailable, match="all maintenance"):
        lb.pick()
    lb.update(with_health(make(2), CRITICAL) + with_health(make(1, 5), MAINTENANCE))
    with pytest.raises(NoEndpointsAvailable, match=r"none eligible \(2 critical, 1 maintenance\)"):
        lb.pick()
    gate = Gate({"web-0", "web-1"})
    lb = LoadBalancer("web", gates=[gate], endpoints=make(2))
    with pytest.raises(NoEndpointsAvailable, match="all ejected or circuit open"):
        lb.pick()
    assert lb.stats().reason == "all ejected or circuit open"


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(InvalidSetting, match="panic_threshold"):
        LoadBalancer("web", panic_threshold=1.5)
    with pytest.raises(InvalidSetting, match="slow_start_min_weight"):
        LoadBalancer("web", slow_start_min_weight=0)
    with pytest.raises(InvalidSetting, match="strategy"):
        LoadBalancer("web", "fastest")


# --- eligibility ---------------------------------------------------------------------------------


def test_critical_and_maintenance_are_skipped_warning_is_kept() -> None:
    eps = make(4)
    eps[1] = replace(eps[1], health=CRITICAL)
    eps[2] = replace(eps[2], health=WARNING)
    eps[3] = replace(eps[3], health=MAINTENANCE)
    extra = make(4, 10)  # keep the healthy share above the panic threshold
    lb = LoadBalancer("web", endpoints=eps + extra)
    picked = {lb.pick().id for _ in range(50)}
    assert picked == {"web-0", "web-2"} | {e.id for e in extra}
    by_id = {s.endpoint.id: s for s in lb.stats().endpoints}
    assert by_id["web-1"].reason == "critical"
    assert by_id["web-3"].reason == "maintenance"
    assert by_id["web-2"].eligible


def test_warning_is_down_weighted_by_weighted_and_dropped_at_weight_zero() -> None:
    eps = [
        ServiceEndpoint.create("a", "10.0.0.1", 80, weights=Weights(passing=3, warning=1)),
        ServiceEndpoint.create(
            "b", "10.0.0.2", 80, weights=Weights(passing=3, warning=1), health=WARNING
        ),
    ]
    lb = LoadBalancer("web", "weighted", endpoints=eps)
    assert Counter(lb.pick().id for _ in range(400)) == {"a": 300, "b": 100}
    eps[1] = replace(eps[1], weights=Weights(passing=3, warning=0))
    lb.update(eps + make(1))
    assert "b" not in {lb.pick().id for _ in range(40)}
    assert {s.endpoint.id: s.reason for s in lb.stats().endpoints}["b"] == "warning weight 0"


# --- request tracking ---------------------------------------------------------------------------


def test_request_records_success_latency_and_outstanding() -> None:
    clock = FakeClock()
    recorder = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[recorder], clock=clock)
    with lb.request() as ctx:
        assert lb.stats().endpoints[0].outstanding == 1
        clock.advance(0.25)
        assert ctx.elapsed == pytest.approx(0.25)
    state = lb.stats().endpoints[0]
    assert (state.outstanding, state.requests, state.failures) == (0, 1, 0)
    assert state.latency == pytest.approx(0.25)
    assert recorder.calls == [
        {"endpoint": "web-0", "success": True, "duration": 0.25, "error": None, "status": None}
    ]


def test_exception_is_a_failure_and_propagates() -> None:
    recorder = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[recorder], clock=FakeClock())
    boom = ConnectionError("reset")
    with pytest.raises(ConnectionError), lb.request():
        raise boom
    assert recorder.calls[0]["success"] is False
    assert recorder.calls[0]["error"] is boom
    assert lb.stats().endpoints[0].failures == 1


def test_explicit_outcomes_win() -> None:
    recorder = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[recorder], clock=FakeClock())
    with lb.request() as ctx:
        ctx.fail(status=503)

    def not_found() -> None:
        with lb.request() as ctx:
            ctx.succeed(status=404)
            raise KeyError("application error, not the endpoint's fault")

    with pytest.raises(KeyError):
        not_found()
    assert [(c["success"], c["status"]) for c in recorder.calls] == [(False, 503), (True, 404)]
    assert recorder.calls[1]["error"] is None


def test_cancellation_is_not_recorded() -> None:
    recorder = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[recorder], clock=FakeClock())
    with pytest.raises(asyncio.CancelledError), lb.request():
        raise asyncio.CancelledError
    assert recorder.calls == []
    state = lb.stats().endpoints[0]
    assert (state.outstanding, state.requests) == (0, 0)


def test_finish_is_idempotent_and_manual_use_works() -> None:
    recorder = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[recorder], clock=FakeClock())
    ctx = lb.request()
    ctx.finish()
    ctx.finish()
    with ctx:
        pass
    assert len(recorder.calls) == 1
    assert lb.stats().endpoints[0].outstanding == 0


def test_a_failing_recorder_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, endpoint: ServiceEndpoint, **kw: object) -> None:
            raise RuntimeError("bug in a recorder")

    good = Recorder()
    lb = LoadBalancer("web", endpoints=make(1), recorders=[Broken(), good], clock=FakeClock())
    with caplog.at_level(logging.ERROR), lb.request():
        pass
    assert len(good.calls) == 1
    assert "outcome recorder" in caplog.text


def test_stats_survive_snapshots_and_strategy_swaps() -> None:
    clock = FakeClock()
    eps = make(3)
    lb = LoadBalancer("web", endpoints=eps, clock=clock)
    held = [lb.request() for _ in range(3)]
    lb.update([replace(e, health=WARNING) for e in eps])  # same identity, new health
    lb.set_strategy("peak_ewma")
    assert lb.stats().strategy == "peak_ewma"
    assert sum(s.outstanding for s in lb.stats().endpoints) == 3
    for ctx in held:
        ctx.finish()
    assert sum(s.outstanding for s in lb.stats().endpoints) == 0
    assert sum(s.requests for s in lb.stats().endpoints) == 3
    lb.update(eps[:2])  # web-2 left: forgotten
    assert {s.endpoint.id for s in lb.stats().endpoints} == {"web-0", "web-1"}


def test_request_to_an_endpoint_that_left_still_finishes() -> None:
    lb = LoadBalancer("web", endpoints=make(1), clock=FakeClock())
    ctx = lb.request()
    lb.update(make(1, 5))
    ctx.finish()
    assert lb.stats().endpoints[0].outstanding == 0


# --- load-aware strategies through the balancer -------------------------------------------------


def test_least_request_avoids_an_instance_that_holds_requests() -> None:
    lb = LoadBalancer("web", "least_request", endpoints=make(10), rng=random.Random(7))
    stuck = []
    for _ in range(5000):
        ctx = lb.request()
        if ctx.endpoint.id == "web-0":
            stuck.append(ctx)  # web-0 never answers
        else:
            ctx.finish()
    assert len(stuck) <= 2


def _drive(
    lb: LoadBalancer,
    clock: FakeClock,
    requests: int,
    latency: Callable[[ServiceEndpoint], float],
) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(requests):
        with lb.request() as ctx:
            counts[ctx.endpoint.id] += 1
            clock.advance(latency(ctx.endpoint))
    return counts


def test_peak_ewma_moves_traffic_away_from_a_slow_instance_and_back() -> None:
    clock = FakeClock()
    rng = random.Random(11)
    lb = LoadBalancer("web", "peak_ewma", endpoints=make(10), clock=clock, rng=rng)
    slow = {"web-3"}

    def latency(e: ServiceEndpoint) -> float:
        base = 0.010 + rng.random() * 0.002
        return 1.0 if e.id in slow else base

    warm = _drive(lb, clock, 500, latency)
    assert warm["web-3"] <= 5  # avoided after its first slow answers
    during = _drive(lb, clock, 3000, latency)
    assert during["web-3"] / 3000 < 0.01
    slow.clear()  # it recovers
    _drive(lb, clock, 10_000, latency)  # ~100 s: decay brings it back to probing
    after = _drive(lb, clock, 3000, latency)
    assert after["web-3"] / 3000 > 0.05  # back near its fair 10%


# --- panic threshold ------------------------------------------------------------------------------


def test_panic_threshold_balances_over_all_when_few_are_healthy() -> None:
    eps = make(10)
    six_bad = with_health(eps[:6], CRITICAL) + eps[6:]
    lb = LoadBalancer("web", endpoints=six_bad)
    assert lb.stats().panic
    assert len({lb.pick().id for _ in range(100)}) == 10  # 4/10 < 50%: everyone
    five_bad = with_health(eps[:5], CRITICAL) + eps[5:]
    lb.update(five_bad)
    assert not lb.stats().panic
    assert {lb.pick().id for _ in range(100)} == {e.id for e in eps[5:]}  # 5/10 is not < 50%


def test_panic_never_includes_maintenance_and_can_be_disabled() -> None:
    eps = make(10)
    mixed = with_health(eps[:3], MAINTENANCE) + with_health(eps[3:7], CRITICAL) + eps[7:]
    lb = LoadBalancer("web", endpoints=mixed)
    picked = {lb.pick().id for _ in range(100)}
    assert picked == {e.id for e in eps[3:]}  # 3/7 routable healthy: panic without maintenance
    off = LoadBalancer("web", endpoints=mixed, panic_threshold=0.0)
    assert {off.pick().id for _ in range(100)} == {e.id for e in eps[7:]}


def test_panic_counts_gated_endpoints_too() -> None:
    gate = Gate({f"web-{i}" for i in range(6)})
    lb = LoadBalancer("web", endpoints=make(10), gates=[gate], clock=FakeClock())
    assert len({lb.pick().id for _ in range(200)}) == 10
    assert lb.stats().panic


# --- slow start ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "window", "aggression", "min_weight", "expected"),
    [
        (0.0, 60.0, 1.0, 0.1, 0.1),  # max(age, 1) / window = 1/60 < 10% floor
        (6.0, 60.0, 1.0, 0.1, 0.1),
        (30.0, 60.0, 1.0, 0.1, 0.5),
        (45.0, 60.0, 1.0, 0.1, 0.75),
        (15.0, 60.0, 2.0, 0.1, 0.5),  # sqrt(1/4)
        (15.0, 60.0, 0.5, 0.01, 0.0625),  # (1/4)^2
        (60.0, 60.0, 1.0, 0.1, 1.0),
        (5.0, 0.0, 1.0, 0.1, 1.0),
    ],
)
def test_slow_start_factor_is_envoys_formula(
    age: float, window: float, aggression: float, min_weight: float, expected: float
) -> None:
    got = slow_start_factor(age, window, aggression=aggression, min_weight=min_weight)
    assert got == pytest.approx(expected)


def test_new_endpoint_ramps_up_over_the_window() -> None:
    clock = FakeClock()
    old = make(9)
    lb = LoadBalancer("web", endpoints=old, slow_start_window=60.0, clock=clock)
    assert all(s.slow_start == 1.0 for s in lb.stats().endpoints)  # initial set: no ramp
    new = make(1, 9)[0]
    lb.update([*old, new])

    def share() -> float:
        picks = Counter(lb.pick().id for _ in range(9100))
        return picks[new.id] / 9100

    assert {s.endpoint.id: s.weight for s in lb.stats().endpoints}[new.id] == pytest.approx(0.1)
    assert share() == pytest.approx(0.1 / 9.1, abs=0.002)
    clock.advance(30.0)
    assert {s.endpoint.id: s.slow_start for s in lb.stats().endpoints}[new.id] == pytest.approx(0.5)
    assert share() == pytest.approx(0.5 / 9.5, abs=0.003)
    clock.advance(30.0)
    assert share() == pytest.approx(0.1, abs=0.001)
    assert all(s.slow_start == 1.0 for s in lb.stats().endpoints)


def test_endpoint_back_from_critical_slow_starts_again() -> None:
    clock = FakeClock()
    eps = make(4)
    lb = LoadBalancer("web", endpoints=eps, slow_start_window=10.0, clock=clock, panic_threshold=0)
    lb.update([replace(eps[0], health=CRITICAL), *eps[1:]])
    clock.advance(5.0)
    lb.update(eps)
    state = {s.endpoint.id: s for s in lb.stats().endpoints}["web-0"]
    assert state.slow_start == pytest.approx(0.1)


def test_hash_strategies_ignore_slow_start() -> None:
    clock = FakeClock()
    old = make(4)
    lb = LoadBalancer("web", "maglev", endpoints=old, slow_start_window=60.0, clock=clock)
    lb.update([*old, *make(1, 4)])
    assert all(s.slow_start == 1.0 for s in lb.stats().endpoints)


# --- gates ---------------------------------------------------------------------------------------


def test_refused_endpoints_are_skipped_and_come_back_after_refresh() -> None:
    clock = FakeClock()
    gate = Gate({"web-2"})
    lb = LoadBalancer("web", endpoints=make(5), gates=[gate], clock=clock)
    counts = Counter(lb.pick().id for _ in range(400))
    assert "web-2" not in counts
    assert max(counts.values()) - min(counts.values()) <= 2  # the census keeps it fair
    assert {s.endpoint.id: s.reason for s in lb.stats().endpoints}["web-2"] == "refused by Gate"
    gate.refused.clear()
    clock.advance(1.0)  # gate_refresh
    assert "web-2" in {lb.pick().id for _ in range(10)}


def test_maglev_keeps_keys_of_admitted_endpoints_when_one_is_refused() -> None:
    gate = Gate()
    lb = LoadBalancer("web", "maglev", endpoints=make(8), gates=[gate], clock=FakeClock())
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: lb.pick(k).id for k in keys}
    gate.refused.add("web-5")
    after = {k: lb.pick(k).id for k in keys}
    assert "web-5" not in after.values()
    kept = sum(before[k] == after[k] for k in keys if before[k] != "web-5")
    assert kept / sum(1 for k in keys if before[k] != "web-5") > 0.97


# --- configuration at run time -------------------------------------------------------------------


def test_plain_function_and_zone_preference() -> None:
    lb = LoadBalancer("web", lambda candidates, key: candidates[-1], endpoints=make(3))
    assert lb.pick().id == "web-2"
    zoned = [
        ServiceEndpoint.create(f"{zone}-{i}", "10.0.0.1", 80 + i, zone=zone)
        for zone in ("a", "b")
        for i in range(4)
    ]
    local = LoadBalancer("web", endpoints=zoned, local_zone="b", rng=random.Random(1))
    assert {local.pick().zone for _ in range(50)} == {"b"}
    local.set_strategy(RoundRobin())
    assert {local.pick().zone for _ in range(50)} == {"b"}  # still zone-aware


def test_follow_a_source() -> None:
    class Source:
        def __init__(self) -> None:
            self.listeners: list[Callable[[Sequence[ServiceEndpoint]], None]] = []

        def snapshot(self) -> Sequence[ServiceEndpoint]:
            return make(2)

        def subscribe(
            self, listener: Callable[[Sequence[ServiceEndpoint]], None]
        ) -> Callable[[], None]:
            self.listeners.append(listener)
            return lambda: self.listeners.remove(listener)

    source = Source()
    lb = LoadBalancer("web")
    unsubscribe = lb.follow(source)
    assert lb.stats().registered == 2
    source.listeners[0](make(5))
    assert lb.stats().registered == 5
    unsubscribe()
    assert source.listeners == []


def test_duplicates_are_dropped_keeping_discovery_order() -> None:
    eps = make(3)
    lb = LoadBalancer("web", "nearest_first", endpoints=[eps[2], eps[0], eps[2], eps[1]])
    assert [e.id for e in lb.endpoints] == ["web-2", "web-0", "web-1"]
    assert lb.pick().id == "web-2"


# --- exclude: a retry re-picks elsewhere ----------------------------------------------------------


def _first_fit(candidates: Sequence[ServiceEndpoint], key: object) -> ServiceEndpoint:
    return candidates[0]


EXCLUDABLE: list[object] = [*STRATEGIES, _first_fit, "zone_aware"]


def _excluding_lb(strategy: object, eps: Sequence[ServiceEndpoint], **kw: object) -> LoadBalancer:
    if strategy == "zone_aware":
        return LoadBalancer("web", "round_robin", endpoints=eps, local_zone="a", **kw)  # type: ignore[arg-type]
    return LoadBalancer("web", strategy, endpoints=eps, rng=random.Random(5), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", EXCLUDABLE, ids=lambda s: getattr(s, "__name__", str(s)))
@pytest.mark.parametrize("key", [None, "user-7", b"user-8"])
def test_every_strategy_repicks_a_different_endpoint_until_all_are_tried(
    strategy: object, key: str | bytes | None
) -> None:
    eps = [
        ServiceEndpoint.create(f"web-{i}", "10.0.0.1", 80 + i, service="web", zone="ab"[i % 2])
        for i in range(7)
    ]
    lb = _excluding_lb(strategy, eps)
    tried: set[ServiceEndpoint] = set()
    for _ in range(len(eps)):
        endpoint = lb.pick(key, exclude=frozenset(tried))
        assert endpoint not in tried
        tried.add(endpoint)
    assert tried == set(eps)
    with pytest.raises(NoEndpointsAvailable, match="all tried") as info:
        lb.pick(key, exclude=frozenset(tried))
    assert info.value.service == "web"
    assert lb.pick(key, exclude=frozenset()) in eps  # a new empty frozenset is "nothing"


def test_ring_hash_retry_goes_to_the_keys_next_distinct_owner() -> None:
    eps = make(6)
    lb = LoadBalancer("web", "ring_hash", endpoints=eps)
    for i in range(300):
        key = f"user-{i}"
        first = lb.pick(key)
        second = lb.pick(key, exclude=frozenset({first}))
        # Walking past the owner's points is the ring without that owner: every process
        # with the same endpoints sends the retry to the same place.
        without = LoadBalancer("web", "ring_hash", endpoints=[e for e in eps if e != first])
        assert second == without.pick(key)
        assert lb.pick(key, exclude=frozenset({first})) == second


def test_maglev_retry_is_deterministic_and_spreads_the_excluded_keys() -> None:
    eps = make(5)
    lb = LoadBalancer("web", Maglev(table_size=1009), endpoints=eps)
    other = LoadBalancer("web", Maglev(table_size=1009), endpoints=make(5))  # another process
    down = eps[2]
    moved: Counter[str] = Counter()
    for i in range(2000):
        key = f"user-{i}"
        again = lb.pick(key, exclude=frozenset({down}))
        assert again != down
        assert again == other.pick(key, exclude=frozenset({down}))  # same in every process
        if lb.pick(key) == down:
            moved[again.id] += 1
        else:
            assert again == lb.pick(key)  # keys of other endpoints stay where they are
    assert set(moved) == {e.id for e in eps if e != down}  # spread, not one hot successor
    assert min(moved.values()) > 0.1 * sum(moved.values())


def test_round_robin_and_weighted_keep_their_shares_among_the_rest() -> None:
    eps = make(4)
    lb = LoadBalancer("web", endpoints=eps)
    picks = Counter(lb.pick(exclude=frozenset({eps[0]})).id for _ in range(300))
    assert picks == {"web-1": 100, "web-2": 100, "web-3": 100}
    weighted = [replace(e, weights=Weights(w, 1)) for e, w in zip(eps, (5, 3, 1, 1), strict=True)]
    lb = LoadBalancer("web", "weighted", endpoints=weighted)
    picks = Counter(lb.pick(exclude=frozenset({eps[0]})).id for _ in range(5000))
    assert picks["web-1"] / 5000 == pytest.approx(0.6, abs=0.02)
    assert picks["web-2"] / 5000 == pytest.approx(0.2, abs=0.02)


def test_least_request_prefers_the_less_loaded_of_the_untried() -> None:
    eps = make(3)
    lb = LoadBalancer("web", "least_request", endpoints=eps, rng=random.Random(2))
    busy = [lb.request() for _ in range(6)]
    for ctx in busy:
        ctx.finish()
    held = [lb.request() for _ in range(3)]  # one outstanding on each
    extra = lb.request(exclude=frozenset({eps[0]}))  # now two on one of web-1/web-2
    assert extra.endpoint != eps[0]
    other = ({eps[1], eps[2]} - {extra.endpoint}).pop()
    assert all(lb.pick(exclude=frozenset({eps[0]})) == other for _ in range(20))
    for ctx in [*held, extra]:
        ctx.finish()


def test_nearest_first_fails_over_down_the_list() -> None:
    eps = make(4)
    lb = LoadBalancer("web", "nearest_first", endpoints=eps)
    assert lb.pick(exclude=frozenset({eps[0]})) == eps[1]
    assert lb.pick(exclude=frozenset({eps[0], eps[1]})) == eps[2]
    assert lb.pick(exclude=frozenset({eps[1]})) == eps[0]


def test_exclude_respects_gates_and_says_all_tried() -> None:
    clock = FakeClock()
    eps = make(5)
    gate = Gate({"web-4"})
    for strategy in ("round_robin", "ring_hash", "maglev", "peak_ewma"):
        lb = LoadBalancer(
            "web", strategy, endpoints=eps, gates=[gate], clock=clock, panic_threshold=0
        )
        for key in (None, "user-1"):
            tried = frozenset(eps[:3])
            assert lb.pick(key, exclude=tried) == eps[3]
            with pytest.raises(NoEndpointsAvailable, match="all tried"):
                lb.pick(key, exclude=frozenset(eps[:4]))
    gate.refused = {e.id for e in eps}
    lb = LoadBalancer("web", endpoints=eps, gates=[gate], clock=clock)
    with pytest.raises(NoEndpointsAvailable, match="all ejected or circuit open"):
        lb.pick(exclude=frozenset(eps[:1]))


def test_exclude_in_panic_mode_uses_every_routable_endpoint() -> None:
    eps = make(10)
    lb = LoadBalancer("web", endpoints=with_health(eps[:6], CRITICAL) + eps[6:])
    assert lb.stats().panic
    tried = frozenset(eps[:9])
    assert all(lb.pick(exclude=tried) == eps[9] for _ in range(5))
    gate = Gate({f"web-{i}" for i in range(6)})  # panic from the gates' census
    gated = LoadBalancer("web", endpoints=eps, gates=[gate], clock=FakeClock())
    seen = {gated.pick(exclude=frozenset(eps[6:])).id for _ in range(100)}
    assert seen == {f"web-{i}" for i in range(6)}  # health ignored, gates too, tried not


def test_exclude_keeps_slow_start_weights() -> None:
    clock = FakeClock()
    old = make(3)
    lb = LoadBalancer("web", endpoints=old, slow_start_window=60.0, clock=clock)
    new = make(1, 3)[0]
    lb.update([*old, new])
    picks = Counter(lb.pick(exclude=frozenset({old[0]})).id for _ in range(2100))
    assert picks[new.id] / 2100 == pytest.approx(0.1 / 2.1, abs=0.01)  # still ramping


def test_request_with_exclude_and_without_recording() -> None:
    recorder = Recorder()
    eps = make(2)
    lb = LoadBalancer("web", endpoints=eps, recorders=[recorder])
    with lb.request(exclude=frozenset({eps[0]}), record=False) as ctx:
        assert ctx.endpoint == eps[1]
        ctx.fail(status=503)
    assert recorder.calls == []  # the caller reports the outcome itself
    state = {s.endpoint.id: s for s in lb.stats().endpoints}["web-1"]
    assert (state.requests, state.failures, state.outstanding) == (1, 1, 0)
    with lb.request(exclude=frozenset({eps[1]})):
        pass
    assert [c["endpoint"] for c in recorder.calls] == ["web-0"]


# --- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["round_robin", "least_request", "peak_ewma", "maglev"])
def test_32_threads_pick_while_snapshots_churn(strategy: str) -> None:
    recorder = Recorder()
    gate = Gate()
    lb = LoadBalancer(
        "web",
        strategy,
        endpoints=make(20),
        recorders=[recorder],
        gates=[gate],
        slow_start_window=0.5,
        rng=random.Random(3),
    )
    if strategy == "maglev":
        lb.set_strategy(Maglev(table_size=1009))
    per_thread = 1000
    errors: list[BaseException] = []
    done = threading.Event()
    start = threading.Barrier(33)

    def worker(n: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                with lb.request(f"key-{n}-{i}") as ctx:
                    if i % 7 == 0:
                        ctx.fail(status=503)
        except BaseException as exc:
            errors.append(exc)

    flips = [0]

    def churn() -> None:
        start.wait()
        while not done.is_set():
            flips[0] += 1
            flip = flips[0]
            lb.update(make(20) if flip % 2 else make(15) + make(10, 30))
            gate.refused = {"web-1"} if flip % 3 == 0 else set()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    churner = threading.Thread(target=churn)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often to shake out races
    try:
        for t in [*threads, churner]:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        done.set()
        churner.join(timeout=10)
        sys.setswitchinterval(interval)
    assert errors == []
    assert flips[0] >= 10
    assert len(recorder.calls) == 32 * per_thread
    assert sum(1 for c in recorder.calls if not c["success"]) == 32 * ((per_thread + 6) // 7)
    assert all(s.outstanding == 0 for s in lb.stats().endpoints)
