"""FailureDetector: classification, accrual, ejection timing/multiplier/cap, outliers."""

from __future__ import annotations

import random
import socket
from dataclasses import replace

import pytest

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState, WindowPolicy
from lake_mesh_consul._core.detector import (
    ClassificationPolicy,
    DetectorPolicy,
    EjectionEvent,
    EjectionPolicy,
    FailureDetector,
    OutcomeKind,
    OutlierPolicy,
    classify,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.ports import EndpointGate, OutcomeRecorder
from lake_mesh_consul.errors import DeadlineExceeded
from lake_mesh_consul.testing.clock import FakeClock

K = OutcomeKind


def eps(n: int, service: str = "web") -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"{service}-{i}", "10.0.0.1", 8000 + i, service=service)
        for i in range(n)
    ]


def make(
    policy: DetectorPolicy | None = None, n: int = 10
) -> tuple[FailureDetector, FakeClock, list[EjectionEvent], list[ServiceEndpoint]]:
    clock = FakeClock()
    events: list[EjectionEvent] = []
    d = FailureDetector(policy, clock=clock, rng=random.Random(1), listeners=[events.append])
    endpoints = eps(n)
    d.update_endpoints("web", endpoints)
    return d, clock, events, endpoints


def fail(d: FailureDetector, ep: ServiceEndpoint, n: int = 5, status: int = 500) -> None:
    for _ in range(n):
        d.record(ep, success=False, duration=0.01, status=status)


# --- classification ----------------------------------------------------------------------


class _ReadTimeout(OSError):
    """Looks like requests.exceptions.ReadTimeout (matched by class name)."""


class ReadTimeout(_ReadTimeout):
    pass


class _HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


def _wrapped_refusal() -> BaseException:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("requests.ConnectionError lookalike") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (None, None, K.SUCCESS),
        (None, 200, K.SUCCESS),
        (None, 404, K.CLIENT_ERROR),
        (None, 429, K.THROTTLED),
        (None, 500, K.SERVER_ERROR),
        (None, 502, K.GATEWAY_ERROR),
        (None, 503, K.GATEWAY_ERROR),
        (None, 504, K.GATEWAY_ERROR),
        (ConnectionRefusedError(), None, K.CONNECT_FAILURE),
        (socket.gaierror(), None, K.CONNECT_FAILURE),
        (ConnectionResetError(), None, K.RESET),
        (BrokenPipeError(), None, K.RESET),
        (TimeoutError(), None, K.TIMEOUT),
        (DeadlineExceeded(1.0), None, K.TIMEOUT),
        (ReadTimeout(), None, K.TIMEOUT),
        (_HTTPError(503), None, K.GATEWAY_ERROR),
        (_wrapped_refusal(), None, K.CONNECT_FAILURE),
        (ValueError("business"), None, K.ERROR),
    ],
)
def test_classify(error: BaseException | None, status: int | None, kind: OutcomeKind) -> None:
    assert classify(error=error, status=status) is kind


def test_classification_is_configurable() -> None:
    policy = ClassificationPolicy(failure_statuses=frozenset({408}), ignore_exceptions=(KeyError,))
    assert classify(status=408, policy=policy) is K.SERVER_ERROR
    assert classify(error=KeyError("x"), policy=policy) is K.IGNORED
    assert K.CLIENT_ERROR not in policy.failure_kinds
    assert K.THROTTLED in policy.failure_kinds


def test_implements_the_ports() -> None:
    d = FailureDetector()
    assert isinstance(d, EndpointGate)
    assert isinstance(d, OutcomeRecorder)


# --- consecutive failures and ejection timing ---------------------------------------------


def test_consecutive_failures_eject_for_base_time() -> None:
    d, clock, events, ep = make()
    fail(d, ep[0], 4)
    d.record(ep[0], success=True, duration=0.01, status=200)
    fail(d, ep[0], 4)
    assert d.is_available(ep[0])
    fail(d, ep[0], 1)
    assert not d.is_available(ep[0])
    ejected = events[-1]
    assert (ejected.kind, ejected.reason) == ("ejected", "consecutive_failures")
    assert ejected.until == pytest.approx(clock.monotonic() + 30)
    clock.advance(29.9)
    assert not d.is_available(ep[0])
    clock.advance(0.1)
    assert d.is_available(ep[0])
    assert events[-1].kind == "returned"


def test_4xx_is_not_a_failure_but_429_is() -> None:
    d, _, _, ep = make()
    fail(d, ep[0], 20, status=404)
    assert d.is_available(ep[0])
    fail(d, ep[0], 5, status=429)
    assert not d.is_available(ep[0])


def test_gateway_only_variant() -> None:
    policy = DetectorPolicy(consecutive_failures=None, consecutive_gateway_failures=3, window=None)
    d, _, events, ep = make(policy)
    fail(d, ep[0], 2, status=503)
    fail(d, ep[0], 1, status=500)  # not a gateway error: resets the gateway count
    fail(d, ep[0], 2, status=502)
    assert d.is_available(ep[0])
    fail(d, ep[0], 1, status=504)
    assert not d.is_available(ep[0])
    assert events[-1].reason == "consecutive_gateway_failures"


def test_ejection_multiplier_and_cap() -> None:
    d, clock, events, ep = make()
    durations = []
    for _ in range(12):
        fail(d, ep[0])
        ejected = events[-1]
        assert ejected.kind == "ejected"
        assert ejected.until is not None
        durations.append(ejected.until - ejected.at)
        clock.advance(durations[-1])
        assert d.is_available(ep[0])
    assert durations[:4] == pytest.approx([30, 60, 90, 120])
    assert max(durations) == pytest.approx(300)  # capped
    assert durations[-1] == pytest.approx(300)


def test_multiplier_decays_while_healthy() -> None:
    d, clock, events, ep = make()
    for _ in range(3):
        fail(d, ep[0])
        clock.advance(events[-1].until - events[-1].at)  # type: ignore[operator]
        d.is_available(ep[0])
    assert events[-1].ejections == 3
    clock.advance(25)  # two full 10 s intervals healthy: 3 -> 1
    fail(d, ep[0])
    assert events[-1].ejections == 2
    assert events[-1].until - events[-1].at == pytest.approx(60)  # type: ignore[operator]


def test_jitter_is_added() -> None:
    policy = DetectorPolicy(ejection=EjectionPolicy(ejection_jitter=5.0))
    d, _, events, ep = make(policy)
    fail(d, ep[0])
    duration = events[-1].until - events[-1].at  # type: ignore[operator]
    assert 30 <= duration <= 35
    assert duration != 30


def test_at_most_ten_percent_ejected() -> None:
    d, clock, events, ep = make(n=20)
    for endpoint in ep[:5]:
        fail(d, endpoint)
    ejected = [e.endpoint for e in events if e.kind == "ejected"]
    assert ejected == ep[:2]  # 10% of 20
    assert [e.endpoint for e in events if e.kind == "overflow"] == ep[2:5]
    assert d.ejected("web") == ep[:2]
    clock.advance(30)
    fail(d, ep[3])  # room again once the first two returned
    assert d.ejected("web") == [ep[3]]


def test_at_least_one_is_ejected_even_in_a_small_service() -> None:
    d, _, events, ep = make(n=3)
    fail(d, ep[0])
    fail(d, ep[1])
    assert [e.kind for e in events] == ["ejected", "overflow"]
    assert not d.is_available(ep[0])
    assert d.is_available(ep[1])


def test_forgotten_endpoints_leave_the_count() -> None:
    d, _, _, ep = make(n=10)
    fail(d, ep[0])
    d.update_endpoints("web", ep[1:])
    assert d.state(ep[0]).requests == 0
    fail(d, ep[1])
    assert not d.is_available(ep[1])


# --- windows -----------------------------------------------------------------------------


def test_failure_rate_window() -> None:
    window = WindowPolicy(size=20, minimum_calls=20, failure_rate_threshold=50.0)
    d, _, events, ep = make(DetectorPolicy(consecutive_failures=None, window=window))
    for i in range(19):
        d.record(ep[0], success=i % 2 == 1, duration=0.01, status=200 if i % 2 else 500)
    assert d.is_available(ep[0])
    state = d.state(ep[0])
    assert state.window_calls == 19
    assert state.failure_rate is None  # below the minimum
    d.record(ep[0], success=True, duration=0.01, status=200)  # 10 of 20 failed
    assert not d.is_available(ep[0])
    assert events[-1].reason == "failure_rate"


def test_resilience4j_defaults() -> None:
    window = DetectorPolicy().window
    assert window is not None
    assert (window.failure_rate_threshold, window.size, window.minimum_calls) == (50.0, 100, 100)
    assert DetectorPolicy().consecutive_failures == 5


def test_slow_call_window() -> None:
    window = WindowPolicy(
        kind="time",
        size=10,
        minimum_calls=10,
        failure_rate_threshold=None,
        slow_call_duration=0.5,
        slow_call_rate_threshold=80.0,
    )
    d, clock, events, ep = make(DetectorPolicy(consecutive_failures=None, window=window))
    for i in range(10):
        d.record(ep[0], success=True, duration=1.0 if i < 7 else 0.1)
    assert d.is_available(ep[0])  # 70% slow
    clock.advance(11)  # the window empties
    for _ in range(10):
        d.record(ep[0], success=True, duration=1.0)
    assert not d.is_available(ep[0])
    assert events[-1].reason == "slow_call_rate"


# --- success-rate outliers ---------------------------------------------------------------


def test_success_rate_outlier_detection() -> None:
    policy = DetectorPolicy(
        consecutive_failures=None,
        window=None,
        outlier=OutlierPolicy(enabled=True),
        ejection=EjectionPolicy(max_ejection_percent=50),
    )
    d, clock, events, ep = make(policy, n=6)
    for i, endpoint in enumerate(ep):
        failures = 30 if i == 0 else (1 if i % 2 else 0)
        for j in range(100):
            d.record(endpoint, success=j >= failures, duration=0.01)
    clock.advance(10)
    d.sweep()
    assert [(e.kind, e.endpoint, e.reason) for e in events] == [("ejected", ep[0], "success_rate")]


def test_success_rate_needs_enough_hosts_and_volume() -> None:
    policy = DetectorPolicy(
        consecutive_failures=None, window=None, outlier=OutlierPolicy(enabled=True)
    )
    d, clock, events, ep = make(policy, n=6)
    for i, endpoint in enumerate(ep[:4]):  # only 4 hosts with volume
        for j in range(100):
            d.record(endpoint, success=i != 0 or j >= 50, duration=0.01)
    for endpoint in ep[4:]:
        for _ in range(99):  # under the request volume
            d.record(endpoint, success=True, duration=0.01)
    clock.advance(10)
    d.sweep()
    assert events == []


# --- breakers owned by the detector ------------------------------------------------------


def test_owned_breakers_gate_availability() -> None:
    policy = DetectorPolicy(
        consecutive_failures=None,
        window=None,
        breaker=BreakerPolicy(consecutive_failures=3, window=None, reset_timeout=5.0),
    )
    d, clock, _, ep = make(policy)
    fail(d, ep[0], 3)
    breaker = d.breaker(ep[0])
    assert breaker is not None
    assert breaker.state is BreakerState.OPEN
    assert not d.is_available(ep[0])
    state = d.state(ep[0])
    assert state.breaker is not None
    assert state.breaker.retry_after == pytest.approx(5.0)
    clock.advance(5)
    assert d.is_available(ep[0])
    permit = breaker.acquire()
    assert not d.is_available(ep[0])  # the single probe slot is taken
    d.record(ep[0], success=True, duration=0.01, status=200, permit=permit)
    assert breaker.snapshot().state is BreakerState.CLOSED


def test_state_for_explain() -> None:
    d, clock, _, ep = make()
    fail(d, ep[0])
    clock.advance(10)
    state = d.state(ep[0])
    assert not state.available
    assert state.ejected_for == pytest.approx(20)
    assert state.ejection_reason == "consecutive_failures"
    assert (state.requests, state.failures, state.ejections) == (5, 5, 1)
    assert state.breaker is None
    assert len(d.states("web")) == 10


def test_policies_are_frozen_and_replaceable() -> None:
    policy = replace(DetectorPolicy(), consecutive_failures=7)
    assert policy.consecutive_failures == 7
    with pytest.raises(AttributeError):
        policy.consecutive_failures = 3  # type: ignore[misc]


# --- live policy changes (configuration reload) --------------------------------------------------


def test_set_policy_reaches_breakers_that_exist_and_keeps_their_state() -> None:
    old = DetectorPolicy(
        consecutive_failures=None,
        window=None,
        breaker=BreakerPolicy(consecutive_failures=5, window=None, reset_timeout=30.0),
        # Breakers count against the ejection cap (issue 13): let both of these open.
        ejection=EjectionPolicy(max_ejection_percent=100.0),
    )
    d, clock, _, endpoints = make(old)
    a, b = endpoints[0], endpoints[1]
    existing = d.breaker(a)
    assert existing is not None
    d.record(a, success=False, duration=0.01, status=503, permit=existing.acquire())
    d.record(b, success=False, duration=0.01, status=503)  # b's breaker: created by record
    new = replace(old, breaker=BreakerPolicy(consecutive_failures=2, window=None))
    d.set_policy(new)
    assert d.breaker(a) is existing  # the same breaker, not a fresh one
    assert existing.policy == new.breaker
    d.record(a, success=False, duration=0.01, status=503, permit=existing.acquire())
    assert existing.state is BreakerState.OPEN  # 2 in a row trips now (was 5)
    assert not d.is_available(a)
    d.record(b, success=False, duration=0.01, status=503)
    assert d.state(b).breaker is not None
    assert d.state(b).breaker.state is BreakerState.OPEN  # type: ignore[union-attr]
    fresh = d.breaker(endpoints[2])
    assert fresh is not None
    assert fresh.policy == new.breaker  # created later: the new policy too
    clock.advance(30.0)
    assert d.is_available(a)  # its reset timeout: the new policy's default


def test_set_policy_changes_accrual_windows_and_classification_at_once() -> None:
    old = DetectorPolicy(consecutive_failures=5, window=WindowPolicy(size=10, minimum_calls=10))
    d, _, events, endpoints = make(old)
    a = endpoints[0]
    fail(d, a, n=2)
    d.policy = replace(old, consecutive_failures=3)  # assignment is set_policy
    assert d.policy.consecutive_failures == 3
    assert d.state(a).consecutive_failures == 2  # counted failures stay
    fail(d, a, n=1)
    assert [e.kind for e in events] == ["ejected"]
    assert events[0].reason == "consecutive_failures"
    assert d.state(a).window_calls == 0  # ejection resets the window
    b = endpoints[1]
    fail(d, b, n=1, status=404)
    assert not d.is_failure_status(404)
    d.set_policy(
        replace(old, classification=ClassificationPolicy(failure_statuses=frozenset({404})))
    )
    assert d.is_failure_status(404)  # the per-status cache follows the policy
    assert d.state(b).window_calls == 1  # same window shape: outcomes kept
    d.set_policy(replace(old, window=WindowPolicy(size=20, minimum_calls=10)))
    assert d.state(b).window_calls == 0  # another shape: starts empty
    d.set_policy(replace(old, window=None, breaker=None))
    assert d.state(b).window_calls == 0
    assert d.breaker(b) is None
