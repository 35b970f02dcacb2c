"""Health aggregation, flap damping and HealthMetrics, in virtual time (FakeClock)."""

from __future__ import annotations

import itertools
from typing import Any, cast

import pytest

from lake_mesh_consul._consul.health_checks import HealthCheckManager
from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._core.health import (
    DAMPING,
    PRECEDENCE,
    CheckResult,
    HealthMetrics,
    HealthStatus,
    Transition,
    aggregate,
    damp,
)
from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata, TtlCheck
from lake_mesh_consul.errors import ConsulNotFound, ConsulUnavailable, InvalidSetting
from lake_mesh_consul.testing import FakeClock

P, W, C, M = (
    HealthStatus.PASSING,
    HealthStatus.WARNING,
    HealthStatus.CRITICAL,
    HealthStatus.MAINTENANCE,
)


# --- aggregation -----------------------------------------------------------------------------


def test_precedence_is_consuls() -> None:
    assert sorted(PRECEDENCE, key=PRECEDENCE.__getitem__) == [P, W, C, M]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [((), P), ((P, P), P), ((P, W), W), ((W, C, P), C), ((C, M), M), ((M, P), M)],
)
def test_aggregate_is_the_worst(statuses: tuple[HealthStatus, ...], expected: HealthStatus) -> None:
    assert aggregate(statuses) is expected
    assert HealthStatus.aggregate(statuses) is expected


def test_aggregate_is_order_independent() -> None:
    for combo in itertools.product([P, W, C, M], repeat=3):
        assert aggregate(combo) is max(combo, key=PRECEDENCE.__getitem__)


# --- results -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status", "output"),
    [
        (True, P, ""),
        (None, P, ""),
        (False, C, "check returned False"),
        (W, W, ""),
        ("warning", W, ""),
        ((C, "db down"), C, "db down"),
        (CheckResult(W, "x"), W, "x"),
        (42, C, "check returned 42, not a status"),
    ],
)
def test_check_result_of(value: object, status: HealthStatus, output: str) -> None:
    assert CheckResult.of(value) == CheckResult(status, output)


# --- damping -------------------------------------------------------------------------------


def test_damping_table_covers_every_case() -> None:
    assert set(DAMPING) == set(itertools.product([True, False], repeat=2))


def run_damped(
    results: list[HealthStatus], *, up: int, down: int, start: HealthStatus
) -> list[HealthStatus]:
    reported, successes, failures = start, 0, 0
    out: list[HealthStatus] = []
    for result in results:
        successes = successes + 1 if result is P else 0
        failures = 0 if result is P else failures + 1
        reported = damp(
            reported,
            result,
            consecutive_successes=successes,
            consecutive_failures=failures,
            success_threshold=up,
            failure_threshold=down,
        )
        out.append(reported)
    return out


def test_thresholds_of_one_follow_every_result() -> None:
    seq = [P, C, P, W, C, P]
    assert run_damped(seq, up=1, down=1, start=C) == seq


def test_failures_needed_to_leave_passing() -> None:
    seq = [C, P, C, C, W, C]
    assert run_damped(seq, up=1, down=2, start=P) == [P, P, P, C, W, C]


def test_successes_needed_to_return_to_passing() -> None:
    seq = [P, P, C, P, P, P]
    assert run_damped(seq, up=3, down=1, start=C) == [C, C, C, C, C, P]


def test_maintenance_is_not_damped_away() -> None:
    assert damp(M, P, consecutive_successes=9, consecutive_failures=0) is M


# --- metrics -------------------------------------------------------------------------------


def test_metrics_count_transitions_in_virtual_time() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    metrics = HealthMetrics("web-1", clock=clock, failure_threshold=2, success_threshold=2)
    metrics.subscribe(seen.append)
    metrics.add_check("app", initial=P)
    t0 = clock.time()

    clock.advance(5)
    assert metrics.record("app", CheckResult(C, "db down"), duration=0.2) == []
    clock.advance(5)
    [check_t, service_t] = metrics.record("app", CheckResult(C, "db down"), duration=0.3)
    assert (check_t.check_id, check_t.previous, check_t.current) == ("app", P, C)
    assert (service_t.check_id, service_t.current, service_t.at) == (None, C, t0 + 10)
    clock.advance(5)
    metrics.record("app", CheckResult(P, "ok"))
    clock.advance(5)
    metrics.record("app", CheckResult(P, "ok"), duration=0.1)

    snap = metrics.snapshot()
    app = snap.checks["app"]
    assert app.status is P
    assert app.transitions == 2
    assert app.last_transition == t0 + 20
    assert app.consecutive_successes == 2
    assert app.consecutive_failures == 0
    assert app.results == 4
    assert app.last_output == "ok"
    assert app.last_check_duration == 0.1
    assert snap.service.status is P
    assert snap.service.transitions == 2
    assert [(t.check_id, t.current) for t in seen] == [
        ("app", C),
        (None, C),
        ("app", P),
        (None, P),
    ]


def test_snapshot_is_immutable_and_detached() -> None:
    metrics = HealthMetrics("s", clock=FakeClock())
    metrics.add_check("a")
    snap = metrics.snapshot()
    metrics.record("a", CheckResult(P))
    assert snap.checks["a"].status is C
    assert metrics.snapshot().checks["a"].status is P
    with pytest.raises(TypeError):
        snap.checks["b"] = snap.service  # type: ignore[index]
    assert snap.as_dict()["checks"]["a"]["status"] == "critical"


def test_service_status_aggregates_checks_and_maintenance() -> None:
    metrics = HealthMetrics("s", clock=FakeClock())
    metrics.add_check("a", initial=P)
    metrics.add_check("b", initial=P)
    assert metrics.status() is P
    metrics.record("b", CheckResult(W))
    assert metrics.status() is W
    metrics.set_maintenance(True, "deploy")
    assert metrics.status() is M
    metrics.set_maintenance(False)
    assert metrics.status() is W
    assert metrics.snapshot().service.transitions == 3


def test_ttl_update_counters() -> None:
    metrics = HealthMetrics("s", clock=FakeClock())
    metrics.record_ttl_update("a", ok=True)
    metrics.record_ttl_update("a", ok=True)
    metrics.record_ttl_update("a", ok=False)
    snap = metrics.snapshot()
    assert (snap.checks["a"].ttl_updates_sent, snap.checks["a"].ttl_updates_failed) == (2, 1)
    assert (snap.service.ttl_updates_sent, snap.service.ttl_updates_failed) == (2, 1)


def test_failing_listener_does_not_stop_others() -> None:
    metrics = HealthMetrics("s", clock=FakeClock())
    seen: list[Transition] = []

    def boom(_: Transition) -> None:
        raise RuntimeError("listener bug")

    metrics.subscribe(boom)
    unsubscribe = metrics.subscribe(seen.append)
    metrics.record("a", CheckResult(P))
    assert len(seen) == 1  # the check went critical -> passing; the service stayed passing
    unsubscribe()
    metrics.record("a", CheckResult(C))
    assert len(seen) == 1


def test_thresholds_validated() -> None:
    with pytest.raises(InvalidSetting, match="success_threshold"):
        HealthMetrics("s", success_threshold=0)
    with pytest.raises(InvalidSetting, match="maintenance"):
        HealthMetrics("s").record("a", CheckResult(M))


# --- the manager against a fake of our own registry -------------------------------------------


class FakeRegistry:
    """The part of ServiceRegistry that HealthCheckManager uses, recording TTL updates."""

    def __init__(self) -> None:
        self.registered: tuple[ServiceMetadata, ...] = ()
        self.updates: list[tuple[str, HealthStatus, str]] = []
        self.agent: dict[str, dict[str, Any]] = {}
        self.fail_with: Exception | None = None
        self.maintenance = False

    def register(self, meta: ServiceMetadata) -> ServiceMetadata:
        self.registered = (meta,)
        return meta

    def in_maintenance(self, service_id: str) -> bool:
        return self.maintenance

    def update_ttl(self, check_id: str, status: HealthStatus, output: str = "") -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.updates.append((check_id, status, output))

    def agent_checks(self, service_id: str) -> dict[str, dict[str, Any]]:
        return self.agent


META = ServiceMetadata(
    "web",
    8080,
    id="web-1",
    checks=(TtlCheck(id="app", ttl=15), HttpCheck(id="http", url="http://h:1/", interval=10)),
)


def manager(fake: FakeRegistry, **kw: Any) -> HealthCheckManager:
    return HealthCheckManager(cast(ServiceRegistry, fake), META, clock=FakeClock(), **kw)


def test_manager_default_interval_is_a_third_of_the_ttl() -> None:
    assert manager(FakeRegistry()).interval == 5.0


def test_manager_aggregates_functions_and_damps() -> None:
    fake = FakeRegistry()
    health = manager(fake, failure_threshold=2)
    db = {"ok": True}
    health.add_function(lambda: db["ok"], name="db")
    health.add_function(lambda: (W, "cache slow"), name="cache")
    assert health.run_once()
    assert fake.updates[-1] == ("app", W, "db: passing\ncache: warning: cache slow")

    db["ok"] = False
    health.run_once()  # already failing: warning -> critical needs no streak
    assert fake.updates[-1][1] is C
    snap = health.snapshot()
    assert snap.checks["app"].consecutive_failures == 2
    assert snap.checks["app"].ttl_updates_sent == 2


def test_manager_function_that_raises_is_critical() -> None:
    fake = FakeRegistry()
    health = manager(fake)

    def broken() -> bool:
        raise ValueError("no database")

    health.add_function(broken)
    health.run_once()
    assert fake.updates[-1] == ("app", C, "ValueError: no database")


def test_manager_observes_agent_run_checks() -> None:
    fake = FakeRegistry()
    fake.agent = {"http": {"Status": "passing", "Output": "HTTP GET: 200 OK"}}
    health = manager(fake)
    health.report("app", P, "fine")
    health.run_once()
    snap = health.snapshot()
    assert snap.checks["http"].status is P
    assert snap.checks["app"].last_output == "fine"
    assert snap.service.status is P
    fake.maintenance = True
    health.run_once()
    assert health.snapshot().service.status is M


def test_manager_counts_failed_pushes() -> None:
    fake = FakeRegistry()
    health = manager(fake)
    health.report(None, P)
    fake.fail_with = ConsulUnavailable("http://127.0.0.1:1", "connection refused")
    assert not health.run_once()
    fake.fail_with = ConsulNotFound(404, "unknown check", "update")
    assert not health.run_once()
    fake.fail_with = None
    assert health.run_once()
    app = health.snapshot().checks["app"]
    assert (app.ttl_updates_sent, app.ttl_updates_failed) == (1, 2)


def test_manager_rejects_unknown_ttl_check() -> None:
    health = manager(FakeRegistry())
    with pytest.raises(InvalidSetting, match="not a TTL check"):
        health.add_function(lambda: True, check_id="http")
