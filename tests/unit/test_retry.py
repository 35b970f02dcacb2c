"""Retries: policy, budget, Retry-After, idempotency, re-picking and the deadline."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from lake_mesh_consul._core.detector import DetectorPolicy, FailureDetector, OutcomeKind
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import (
    RetryBudget,
    RetryPolicy,
    execute,
    parse_retry_after,
    retry_until,
)
from lake_mesh_consul.errors import (
    DeadlineExceeded,
    InvalidSetting,
    NoEndpointsAvailable,
    RetryExhausted,
)
from lake_mesh_consul.testing.clock import FakeClock

EPS = [ServiceEndpoint.create(f"web-{i}", "10.0.0.1", 8000 + i, service="web") for i in range(3)]


class Picker:
    """Picks the first endpoint not excluded, and remembers each pick."""

    def __init__(self, endpoints: Sequence[ServiceEndpoint] = EPS) -> None:
        self.endpoints = list(endpoints)
        self.picks: list[ServiceEndpoint] = []

    def __call__(self, *, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        for ep in self.endpoints:
            if ep not in exclude:
                self.picks.append(ep)
                return ep
        raise NoEndpointsAvailable("web", "all excluded")


@dataclass
class Response:
    status: int
    retry_after: float | None = None


def failing(exc: BaseException) -> Callable[[ServiceEndpoint, float | None], object]:
    def call(endpoint: ServiceEndpoint, timeout: float | None) -> object:
        raise exc

    return call


def clock_and_sleep() -> tuple[FakeClock, list[float]]:
    clock = FakeClock(autojump=True)
    return clock, clock.sleeps


def test_success_needs_no_retry_state() -> None:
    clock, sleeps = clock_and_sleep()
    pick = Picker()
    assert execute(pick, lambda ep, t: ep.id, clock=clock, method="GET") == "web-0"
    assert sleeps == []
    assert pick.picks == EPS[:1]


def test_different_endpoint_on_each_attempt_and_every_attempt_reported() -> None:
    clock, sleeps = clock_and_sleep()
    pick = Picker()
    with pytest.raises(RetryExhausted) as info:
        execute(pick, failing(ConnectionResetError()), clock=clock, method="GET")
    assert pick.picks == EPS
    err = info.value
    assert [a.number for a in err.attempts] == [1, 2, 3]
    assert [a.endpoint for a in err.attempts] == ["web-0", "web-1", "web-2"]
    assert all(isinstance(a.error, ConnectionResetError) for a in err.attempts)
    assert err.reason == "attempts exhausted"
    assert isinstance(err.__cause__, ConnectionResetError)
    assert len(sleeps) == 2


def test_full_jitter_backoff_within_envoy_bounds() -> None:
    clock, sleeps = clock_and_sleep()
    policy = RetryPolicy(attempts=6)
    with pytest.raises(RetryExhausted):
        execute(
            Picker(),
            failing(TimeoutError()),
            policy=policy,
            clock=clock,
            method="GET",
            rng=random.Random(3),
        )
    caps = [0.025, 0.05, 0.1, 0.2, 0.25]
    assert len(sleeps) == 5
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 5  # jittered


def test_reuses_endpoints_when_all_were_tried() -> None:
    clock, _ = clock_and_sleep()
    pick = Picker(EPS[:1])
    with pytest.raises(RetryExhausted):
        execute(pick, failing(TimeoutError()), clock=clock, method="GET")
    assert pick.picks == [EPS[0]] * 3
    pick = Picker(EPS[:1])
    with pytest.raises(RetryExhausted, match="no untried endpoint"):
        execute(
            pick,
            failing(TimeoutError()),
            clock=clock,
            method="GET",
            policy=RetryPolicy(reuse_endpoints=False),
        )


def test_non_idempotent_is_not_retried() -> None:
    clock, sleeps = clock_and_sleep()
    pick = Picker()
    with pytest.raises(RetryExhausted) as info:
        execute(pick, failing(TimeoutError()), clock=clock, method="POST")
    assert info.value.reason == "not idempotent"
    assert len(info.value.attempts) == 1
    assert sleeps == []
    # No method, no flag: not idempotent either.
    with pytest.raises(RetryExhausted):
        execute(Picker(), failing(TimeoutError()), clock=clock)
    # The call can say it is idempotent.
    with pytest.raises(RetryExhausted) as info:
        execute(Picker(), failing(TimeoutError()), clock=clock, method="POST", idempotent=True)
    assert len(info.value.attempts) == 3


def test_non_idempotent_retried_when_never_sent() -> None:
    clock, _ = clock_and_sleep()
    pick = Picker()
    calls: list[str] = []

    def call(ep: ServiceEndpoint, timeout: float | None) -> str:
        calls.append(ep.id)
        if ep.id == "web-0":
            raise ConnectionRefusedError()
        return "ok"

    assert execute(pick, call, clock=clock, method="POST") == "ok"
    assert calls == ["web-0", "web-1"]


def test_business_errors_are_reraised_unchanged() -> None:
    clock, _ = clock_and_sleep()
    with pytest.raises(KeyError):
        execute(Picker(), failing(KeyError("x")), clock=clock, method="GET")


def test_retriable_status_then_last_response_returned() -> None:
    clock, _ = clock_and_sleep()
    pick = Picker()
    result = execute(
        pick,
        lambda ep, t: Response(503),
        clock=clock,
        method="GET",
        status_of=lambda r: r.status,
    )
    assert result == Response(503)
    assert len(pick.picks) == 3
    # A non-retriable status is returned at once.
    pick = Picker()
    assert execute(
        pick,
        lambda ep, t: Response(500),
        clock=clock,
        method="GET",
        status_of=lambda r: r.status,
    ) == Response(500)
    assert len(pick.picks) == 1


def test_retry_after_is_honoured() -> None:
    clock, sleeps = clock_and_sleep()
    answers = iter([Response(429, retry_after=2.0), Response(200)])
    result = execute(
        Picker(),
        lambda ep, t: next(answers),
        clock=clock,
        method="GET",
        status_of=lambda r: r.status,
        retry_after_of=lambda r: r.retry_after,
    )
    assert result.status == 200
    assert sleeps == [2.0]


def test_retry_after_too_long_stops() -> None:
    clock, sleeps = clock_and_sleep()
    pick = Picker()
    result = execute(
        pick,
        lambda ep, t: Response(503, retry_after=120.0),
        clock=clock,
        method="GET",
        status_of=lambda r: r.status,
        retry_after_of=lambda r: r.retry_after,
    )
    assert result.status == 503
    assert len(pick.picks) == 1
    assert sleeps == []


def test_retry_after_from_an_exception_attribute() -> None:
    class Throttled(Exception):
        status = 429
        retry_after = 1.5

    clock, sleeps = clock_and_sleep()
    with pytest.raises(RetryExhausted):
        execute(Picker(), failing(Throttled()), clock=clock, method="GET")
    assert sleeps == [1.5, 1.5]


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", now=0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


def test_deadline_includes_retries() -> None:
    clock = FakeClock(autojump=True)
    timeouts: list[float | None] = []

    def slow_fail(ep: ServiceEndpoint, timeout: float | None) -> object:
        timeouts.append(timeout)
        clock.advance(0.4)
        raise TimeoutError()

    policy = RetryPolicy(attempts=10, deadline=1.0, per_try_timeout=0.5)
    with pytest.raises(DeadlineExceeded) as info:
        execute(Picker(), slow_fail, policy=policy, clock=clock, method="GET")
    assert len(info.value.attempts) in (2, 3)
    assert timeouts[0] == 0.5
    assert all(t is not None and t <= 0.5 for t in timeouts)
    assert clock.monotonic() - 1000.0 <= 1.0 + 0.4


def test_per_try_timeout_is_capped_by_the_deadline() -> None:
    clock = FakeClock(autojump=True)
    seen: list[float | None] = []
    execute(
        Picker(),
        lambda ep, t: seen.append(t),
        clock=clock,
        method="GET",
        policy=RetryPolicy(deadline=2.0, per_try_timeout=5.0),
    )
    assert seen == [2.0]


def test_no_endpoints_on_first_attempt_is_raised_as_is() -> None:
    clock, _ = clock_and_sleep()
    with pytest.raises(NoEndpointsAvailable):
        execute(Picker([]), lambda ep, t: None, clock=clock, method="GET")


# --- budget ------------------------------------------------------------------------------


def test_budget_arithmetic() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock, min_retries_per_sec=0, percent_can_retry=0.2)
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.balance() == 2
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(10)  # deposits and withdrawals expire
    assert budget.balance() == 0


def test_budget_reserve() -> None:
    budget = RetryBudget(clock=FakeClock())
    assert budget.balance() == 100  # 10/s over 10 s


def test_budget_under_a_total_failure_storm() -> None:
    clock = FakeClock(autojump=True)
    budget = RetryBudget(clock=clock)
    calls = 0
    requests = 2000

    def down(ep: ServiceEndpoint, timeout: float | None) -> object:
        nonlocal calls
        calls += 1
        raise ConnectionResetError()

    reasons: dict[str, int] = {}
    for _ in range(requests):
        with pytest.raises(RetryExhausted) as info:
            execute(
                Picker(),
                down,
                clock=clock,
                budget=budget,
                method="GET",
                policy=RetryPolicy(backoff_base=0.0, backoff_max=0.0, deadline=None),
            )
        reasons[info.value.reason] = reasons.get(info.value.reason, 0) + 1
    retries = calls - requests
    assert retries <= 0.2 * requests + 10 * 10
    assert retries >= 0.2 * requests  # the budget is used, not just refused
    assert reasons["retry budget exhausted"] > 0


def test_budget_validation() -> None:
    with pytest.raises(InvalidSetting):
        RetryBudget(ttl=0.5)
    with pytest.raises(InvalidSetting):
        RetryPolicy(attempts=0)


# --- composition with breakers and the detector --------------------------------------------


def test_breaker_open_endpoint_is_skipped_without_a_call() -> None:
    clock, _ = clock_and_sleep()
    breakers = {ep: CircuitBreaker(ep.id, clock=clock) for ep in EPS}
    breakers[EPS[0]].force_open()
    called: list[str] = []

    def call(ep: ServiceEndpoint, timeout: float | None) -> str:
        called.append(ep.id)
        return ep.id

    result = execute(Picker(), call, clock=clock, method="POST", breaker_for=breakers.get)
    assert result == "web-1"  # POST is fine: nothing was sent to web-0
    assert called == ["web-1"]


def test_detector_and_its_breakers_see_every_attempt() -> None:
    clock, _ = clock_and_sleep()
    detector = FailureDetector(
        DetectorPolicy(breaker=BreakerPolicy(consecutive_failures=2, window=None)), clock=clock
    )

    def call(ep: ServiceEndpoint, timeout: float | None) -> Response:
        return Response(502 if ep.id == "web-0" else 200)

    for _ in range(3):
        execute(
            Picker(),
            call,
            clock=clock,
            method="GET",
            detector=detector,
            status_of=lambda r: r.status,
        )
    b0 = detector.breaker(EPS[0])
    assert b0 is not None
    assert b0.state is BreakerState.OPEN
    state = detector.state(EPS[1])
    assert (state.requests, state.failures) == (3, 0)  # the third request skipped web-0
    assert detector.state(EPS[0]).failures == 2
    assert detector.classify(status=502) is OutcomeKind.GATEWAY_ERROR


def test_base_exceptions_release_the_permit() -> None:
    clock, _ = clock_and_sleep()
    breaker = CircuitBreaker("x", BreakerPolicy(window=None), clock=clock)
    breaker.force_open()
    breaker.reset()

    def interrupted(ep: ServiceEndpoint, timeout: float | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(Picker(), interrupted, clock=clock, breaker_for=lambda ep: breaker)
    assert breaker.snapshot().consecutive_failures == 0


# --- retry_until: one operation against one target, until a deadline ------------------------


def _flaky(failures: int, error: type[Exception] = ConnectionError) -> Callable[[], str]:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error(f"failure {calls['n']}")
        return f"ok after {calls['n']}"

    return fn


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def test_retry_until_retries_until_success_with_capped_equal_jitter() -> None:
    clock = FakeClock(autojump=True)
    start = clock.monotonic()
    seen: list[tuple[int, float]] = []
    result = retry_until(
        _flaky(6),
        timeout=60.0,
        retriable=_is_connection_error,
        clock=clock,
        rng=random.Random(1),
        base=0.1,
        cap=1.0,
        on_retry=lambda n, _e, delay: seen.append((n, delay)),
    )
    assert result == "ok after 7"
    assert [n for n, _ in seen] == [1, 2, 3, 4, 5, 6]
    for n, delay in seen:
        step = min(1.0, 0.1 * 2 ** (n - 1))
        assert step / 2 <= delay <= step  # equal jitter: half fixed, half random
    # Each wait is exactly the delay announced (virtual time, no real sleep).
    assert clock.monotonic() - start == pytest.approx(sum(d for _, d in seen))


def test_retry_until_gives_up_at_the_deadline_with_the_last_error() -> None:
    clock = FakeClock(autojump=True)
    start = clock.monotonic()
    with pytest.raises(ConnectionError, match="failure"):
        retry_until(
            _flaky(10_000), timeout=5.0, retriable=_is_connection_error, clock=clock, cap=0.5
        )
    assert 5.0 <= clock.monotonic() - start <= 5.0 + 1e-9  # never waits past the deadline


def test_retry_until_raises_a_non_retriable_error_at_once() -> None:
    clock = FakeClock(autojump=True)
    start = clock.monotonic()
    with pytest.raises(ValueError, match="failure 1"):
        retry_until(_flaky(3, ValueError), timeout=60, retriable=_is_connection_error, clock=clock)
    assert clock.monotonic() == start


def test_retry_until_stops_when_cancelled() -> None:
    import threading

    clock = FakeClock(autojump=True)
    cancel = threading.Event()
    attempts: list[int] = []

    def on_retry(number: int, _error: BaseException, _delay: float) -> None:
        attempts.append(number)
        if number == 2:
            cancel.set()

    with pytest.raises(ConnectionError):
        retry_until(
            _flaky(100),
            timeout=600,
            retriable=_is_connection_error,
            clock=clock,
            cancel=cancel,
            on_retry=on_retry,
        )
    assert attempts == [1, 2]


def _balanced(clock: FakeClock) -> tuple[object, FailureDetector]:
    from lake_mesh_consul._core.balancer import LoadBalancer

    detector = FailureDetector(
        DetectorPolicy(
            consecutive_failures=None,
            window=None,
            breaker=BreakerPolicy(consecutive_failures=100, window=None),
        ),
        clock=clock,
    )
    lb = LoadBalancer("web", "round_robin", endpoints=EPS, gates=(detector,), clock=clock)
    return lb, detector


def test_balancer_path_tracks_each_attempt_and_records_each_outcome_once() -> None:
    clock = FakeClock()
    lb, detector = _balanced(clock)
    seen: list[tuple[ServiceEndpoint, float | None]] = []

    def call(endpoint: ServiceEndpoint, timeout: float | None) -> Response:
        seen.append((endpoint, timeout))
        return Response(503 if len(seen) == 1 else 200)

    result = execute(
        None,
        call,
        balancer=lb,  # type: ignore[arg-type]
        detector=detector,
        policy=RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0, per_try_timeout=5.0),
        per_try=dict.fromkeys((e.id for e in EPS), 2.0),
        clock=clock,
        method="GET",
        status_of=lambda r: r.status,
    )
    assert result.status == 200
    assert len({e for e, _ in seen}) == 2  # the retry went elsewhere
    assert [t for _, t in seen] == [2.0, 2.0]  # each endpoint's own per-try timeout caps it
    figures = lb.stats().endpoints  # type: ignore[attr-defined]
    assert sum(s.requests for s in figures) == 2
    assert sum(s.failures for s in figures) == 1  # the 503 failed the balancer's context
    assert all(s.outstanding == 0 for s in figures)
    states = detector.states("web")
    assert sum(s.requests for s in states) == 2
    assert sum(s.failures for s in states) == 1


def test_balancer_path_finishes_a_refused_pick_without_an_outcome() -> None:
    clock = FakeClock()
    lb, detector = _balanced(clock)
    for ep in EPS[:2]:
        breaker = detector.breaker(ep)
        assert breaker is not None
        breaker.force_open()
    outstanding: list[int] = []

    def call(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        figures = lb.stats().endpoints  # type: ignore[attr-defined]
        outstanding.append(sum(s.outstanding for s in figures))
        return endpoint.id

    # The gates refuse the forced-open endpoints; a pick that races a breaker's opening
    # is refused by acquire() and must not stay outstanding or count as a request.
    refused = EPS[0]
    breaker = detector.breaker(refused)
    assert breaker is not None
    breaker.reset()
    original = breaker.allows
    breaker.allows = lambda: True  # type: ignore[method-assign]  # the gate still admits it
    breaker.force_open()
    try:
        result = execute(
            None,
            call,
            balancer=lb,  # type: ignore[arg-type]
            detector=detector,
            policy=RetryPolicy(backoff_base=0.0, backoff_max=0.0),
            clock=clock,
            sleep=lambda seconds: None,
            method="POST",  # not idempotent: only a request never sent is retried
        )
    finally:
        breaker.allows = original  # type: ignore[method-assign]
    assert result == EPS[2].id
    assert outstanding == [1]  # only the attempt in flight: the refused pick was finished
    figures = {s.endpoint.id: s for s in lb.stats().endpoints}  # type: ignore[attr-defined]
    assert figures[refused.id].requests == 0
    assert figures[EPS[2].id].requests == 1
    assert all(s.outstanding == 0 for s in figures.values())


def test_execute_needs_pick_or_balancer() -> None:
    with pytest.raises(TypeError):
        execute(None, lambda endpoint, timeout: None)
