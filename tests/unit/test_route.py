"""The Route: admission, one recording path, retries, availability and explain (FakeClock)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState
from lake_mesh_consul._core.detector import DetectorPolicy, EjectionPolicy
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.outcome import Classifier
from lake_mesh_consul._core.retry import CallOptions, RetryPolicy, RetryState
from lake_mesh_consul._core.route import EndpointSettings, Route, RouteSettings
from lake_mesh_consul.errors import NoEndpointsAvailable, RetryExhausted
from lake_mesh_consul.testing import FakeClock

NO_WAIT = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)


def _endpoints(n: int, health: HealthStatus = HealthStatus.PASSING) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="s", health=health)
        for i in range(n)
    ]


def _route(n: int = 3, **settings: object) -> tuple[Route, FakeClock, list[ServiceEndpoint]]:
    clock = FakeClock()
    endpoints = _endpoints(n)
    base = RouteSettings(retry=NO_WAIT)
    route = Route(
        "s", replace(base, **settings), endpoints=endpoints, clock=clock, rng=random.Random(1)
    )
    return route, clock, endpoints


def _blip_settings(max_percent: float = 10.0) -> dict[str, object]:
    """Default-shaped accrual: 5 in a row open a breaker, 5 in a row eject, 30 s each."""
    return {
        "detector": DetectorPolicy(
            consecutive_failures=5,
            window=None,
            ejection=EjectionPolicy(max_ejection_percent=max_percent),
            breaker=BreakerPolicy(consecutive_failures=5, window=None, reset_timeout=30.0),
        )
    }


# --- one recording path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy", ["round_robin", "random", "least_request", "ring_hash", "maglev", "nearest_first"]
)
def test_retries_repick_untried_endpoints_and_record_each_attempt_once(strategy: str) -> None:
    route, _, _ = _route(3, strategy=strategy)
    for key in ("k1", b"k2", None):
        tried: list[ServiceEndpoint] = []

        def fn(endpoint: ServiceEndpoint, timeout: float | None) -> str:
            tried.append(endpoint)  # noqa: B023 - called within this iteration
            if len(tried) < 3:  # noqa: B023
                raise ConnectionResetError("reset")
            return "ok"

        assert route.call(fn, CallOptions(key=key, idempotent=True)) == "ok"
        assert len(set(tried)) == 3  # each retry went to an endpoint not yet tried
    states = route.detector.states("s")
    assert sum(s.requests for s in states) == 9
    assert sum(s.failures for s in states) == 6
    figures = route.explain().instances
    assert sum(i.balancer.requests for i in figures) == 9
    assert sum(i.balancer.failures for i in figures) == 6
    assert all(i.balancer.outstanding == 0 for i in figures)


def test_a_request_finished_by_the_caller_reaches_balancer_detector_and_breaker() -> None:
    route, _, endpoints = _route(1)
    with route.request() as attempt:
        assert attempt.endpoint == endpoints[0]
        assert attempt.permit is not None
        attempt.fail(status=503)
    state = route.detector.state(endpoints[0])
    assert (state.requests, state.failures) == (1, 1)
    assert state.breaker is not None
    assert state.breaker.consecutive_failures == 1
    assert route.explain().instances[0].balancer.failures == 1


def test_a_cancelled_request_records_nothing_and_frees_the_probe_slot() -> None:
    route, clock, endpoints = _route(1, **_blip_settings())
    breaker = route.detector.breaker(endpoints[0])
    assert breaker is not None
    for _ in range(5):
        with route.request() as attempt:
            attempt.fail(status=503)
    assert breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    attempt = route.request()  # the half-open probe
    assert breaker.state is BreakerState.HALF_OPEN
    attempt.cancel()
    assert breaker.snapshot().probes_in_flight == 0
    assert route.detector.state(endpoints[0]).requests == 5


# --- half-open through every entry point ----------------------------------------------------


@pytest.mark.parametrize("entry", ["route.request", "balancer.request", "route.call"])
def test_half_open_probe_through_every_entry_point(entry: str) -> None:
    route, clock, endpoints = _route(3, **_blip_settings(max_percent=100.0))
    bad = endpoints[0]
    breaker = route.detector.breaker(bad)
    assert breaker is not None
    breaker.force_open()
    breaker.reset()
    for _ in range(5):  # open it through the route's own recording
        attempt = route.request()
        while attempt.endpoint != bad:
            attempt.report(Classifier().of_status(200))
            attempt = route.request()
        attempt.report(Classifier().of_status(503))
    assert breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    sent_to_bad = 0
    for _ in range(30):
        if entry == "route.request":
            with route.request() as attempt:
                status = 503 if attempt.endpoint == bad else 200
                attempt.fail(status=status) if status == 503 else attempt.succeed(status)
                sent_to_bad += attempt.endpoint == bad
        elif entry == "balancer.request":
            with route.balancer.request() as ctx:
                if ctx.endpoint == bad:
                    sent_to_bad += 1
                    ctx.fail(status=503)
        else:

            def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
                nonlocal sent_to_bad
                sent_to_bad += endpoint == bad
                return 503 if endpoint == bad else 200

            route.call(fn, CallOptions(idempotent=True, status_of=lambda s: s))
    # One probe after the reset timeout, which failed and reopened the breaker: the still
    # failing endpoint does not get its share (10 of 30) of the traffic.
    assert sent_to_bad == 1
    assert breaker.state is BreakerState.OPEN


# --- availability ---------------------------------------------------------------------------


def test_a_blip_across_every_instance_leaves_most_of_them_in_rotation() -> None:
    route, clock, _ = _route(10, **_blip_settings())
    failing = True

    def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
        return 503 if failing else 200

    options = CallOptions(idempotent=True, status_of=lambda s: s)
    for _ in range(200):  # the blip: every instance answers 503
        route.call(fn, options)
        clock.advance(0.005)
    out = [i for i in route.explain().instances if not i.eligible]
    assert len(out) <= 1  # 10% of 10: breakers and ejections together
    failing = False
    clock.advance(0.1)
    results = [route.call(fn, options) for _ in range(50)]
    assert results == [200] * 50  # callers succeed at once after the recovery


def test_nothing_eligible_goes_to_the_best_candidate_instead_of_failing() -> None:
    route, _, endpoints = _route(2, **_blip_settings(max_percent=100.0))
    for endpoint in endpoints:
        breaker = route.detector.breaker(endpoint)
        assert breaker is not None
        breaker.force_open()
    state = route.explain()
    assert state.eligible == 0
    assert state.panic
    sent: list[ServiceEndpoint] = []
    for _ in range(4):
        with route.request() as attempt:
            sent.append(attempt.endpoint)
    assert set(sent) == set(endpoints)  # spread over the candidates, not one victim


def test_all_critical_still_routes_to_a_critical_instance() -> None:
    route, _, _ = _route(0)
    critical = _endpoints(2, HealthStatus.CRITICAL)
    route.update(critical)
    assert route.call(lambda e, t: e, CallOptions()) in critical


DRAINED = EndpointSettings(drained=True)
DISABLED = EndpointSettings(disabled=True)
MAINT = HealthStatus.MAINTENANCE
PASS = HealthStatus.PASSING


@pytest.mark.parametrize(
    ("settings", "healths", "reason"),
    [
        ({}, (MAINT, MAINT), "all maintenance"),
        ({"e0": DRAINED, "e1": DRAINED}, (PASS, PASS), "all drained"),
        ({"e0": DISABLED, "e1": DISABLED}, (PASS, PASS), "all disabled"),
        ({"e0": DRAINED}, (PASS, MAINT), r"none routable \(1 (drained|maintenance), 1 "),
    ],
)
def test_a_fast_failure_says_why(
    settings: dict[str, EndpointSettings], healths: tuple[HealthStatus, ...], reason: str
) -> None:
    route, _, _ = _route(0, endpoints=settings)
    route.update([replace(e, health=h) for e, h in zip(_endpoints(2), healths, strict=True)])
    with pytest.raises(NoEndpointsAvailable, match=reason):
        route.request()
    state = route.explain()
    assert state.reason is not None
    assert not state.panic  # nothing to send to: a fast failure, not panic


def test_none_registered() -> None:
    route, _, _ = _route(0)
    with pytest.raises(NoEndpointsAvailable, match="none registered"):
        route.call(lambda e, t: e, CallOptions())


def test_passing_again_after_critical_returns_at_once_through_a_probe() -> None:
    route, clock, endpoints = _route(2, **_blip_settings(max_percent=100.0))
    bad = endpoints[0]
    for _ in range(5):
        route.detector.record(bad, success=False, duration=0.01, status=503)
    assert route.detector.state(bad).ejected_until is not None
    breaker = route.detector.breaker(bad)
    assert breaker is not None
    assert breaker.state is BreakerState.OPEN
    route.update([replace(bad, health=HealthStatus.CRITICAL), endpoints[1]])
    clock.advance(2.0)
    route.update(endpoints)  # Consul says passing again: no waiting out the 30 s
    assert route.detector.state(bad).ejected_until is None
    assert breaker.state is BreakerState.HALF_OPEN
    sent = []
    for _ in range(4):
        with route.request() as attempt:
            sent.append(attempt.endpoint)
    assert bad in sent
    assert breaker.state is BreakerState.CLOSED  # the probe succeeded


# --- settings and explain ----------------------------------------------------------------------


def test_explain_is_the_pick_census_with_the_settings_reasons() -> None:
    route, _, endpoints = _route(
        4,
        endpoints={"e0": EndpointSettings(drained=True), "e1": EndpointSettings(disabled=True)},
        **_blip_settings(max_percent=100.0),
    )
    breaker = route.detector.breaker(endpoints[2])
    assert breaker is not None
    breaker.force_open()
    state = route.explain()
    reasons = {i.endpoint.id: i.reasons for i in state.instances}
    assert reasons["e0"] == ("drained by config",)
    assert reasons["e1"] == ("disabled by config",)
    assert "breaker forced open" in reasons["e2"]
    assert reasons["e3"] == ()
    for _ in range(5):  # and the pick agrees: only e3
        with route.request() as attempt:
            assert attempt.endpoint.id == "e3"


def test_configure_keeps_breaker_state_and_applies_new_weights_and_timeouts() -> None:
    route, _, endpoints = _route(2)
    breaker = route.detector.breaker(endpoints[0])
    assert breaker is not None
    breaker.force_open()
    settings = replace(
        route.settings,
        strategy="least_request",
        endpoints={"e1": EndpointSettings(weight=5, per_try_timeout=0.5)},
    )
    route.configure(settings)
    assert route.detector.breaker(endpoints[0]) is breaker
    assert breaker.state is BreakerState.FORCED_OPEN
    timeouts: list[float | None] = []
    route.call(lambda e, t: timeouts.append(t), CallOptions())
    assert timeouts == [0.5]
    assert route.explain().strategy == "least_request"


def test_non_idempotent_calls_stop_after_a_sent_failure() -> None:
    route, _, _ = _route(3)
    calls = []

    def fn(endpoint: ServiceEndpoint, timeout: float | None) -> None:
        calls.append(endpoint)
        raise ConnectionResetError("reset")

    with pytest.raises(RetryExhausted, match="not idempotent"):
        route.call(fn, CallOptions(idempotent=False))
    assert len(calls) == 1


def test_retry_state_is_a_value() -> None:
    ep = _endpoints(1)[0]
    begun = RetryState.begin(RetryPolicy(attempts=3, deadline=1.0), now=0.0)
    outcome = Classifier().of_status(503)
    after = begun.increment(ep, outcome, duration=0.1, now=0.1, idempotent=True)
    assert begun.history == ()  # unchanged
    assert after.history[0].endpoint == "e0"
    assert after.tried == frozenset({ep})
    assert after.stop is None
    assert 0 <= after.wait <= 0.025
    late = begun.increment(ep, outcome, duration=0.1, now=0.99, idempotent=True, retry_after=0.5)
    assert late.stop == "deadline"
    too_long = begun.increment(ep, outcome, duration=0.1, now=0.1, idempotent=True, retry_after=60)
    assert too_long.stop == "Retry-After 60s exceeds 30s"
    not_retried = begun.increment(
        ep, Classifier().of_status(500), duration=0.1, now=0.1, idempotent=True
    )
    assert not_retried.stop == "server_error is not retried"


def test_the_explanation_table_names_the_node() -> None:
    from lake_mesh_consul.mesh import Explanation, InstanceExplanation

    rows = [
        InstanceExplanation(
            id="web",
            address=f"10.0.0.{n}:80",
            health="passing",
            eligible=True,
            reasons=(),
            breaker="closed",
            breaker_retry_after=None,
            ejected_until=None,
            ejection_reason=None,
            outstanding=0,
            latency_ms=1.0,
            requests=0,
            failures=0,
            weight=1.0,
            slow_start=1.0,
            node=f"node-{n}",
        )
        for n in (1, 2)
    ]
    text = str(
        Explanation(
            service="web",
            strategy="round_robin",
            strategy_source="built-in",
            registered=2,
            eligible=2,
            panic=False,
            panic_threshold=50.0,
            reason=None,
            stale=False,
            age=0.1,
            snapshot_source="consul",
            discovery_error=None,
            retry_budget_left=100,
            retry_attempts=3,
            per_try_timeout=None,
            deadline=15.0,
            config_stale=False,
            config_index=1,
            instances=tuple(rows),
            at=0.0,
        )
    )
    assert "web@node-1" in text
    assert "web@node-2" in text
