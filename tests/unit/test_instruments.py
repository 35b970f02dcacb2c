"""Instruments: the route's events, the no-listener fast path, and the log lines (FakeClock)."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any

import pytest

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState, BreakerTransition
from lake_mesh_consul._core.detector import DetectorPolicy, EjectionEvent, EjectionPolicy
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.instruments import (
    BUDGET_EXHAUSTED,
    LOGGER_NAME,
    NO_INSTRUMENTS,
    Instruments,
    LogInstruments,
    MultiInstruments,
    combine,
    listens,
    stop_category,
)
from lake_mesh_consul._core.outcome import Outcome, OutcomeKind
from lake_mesh_consul._core.retry import BudgetPolicy, CallOptions, RetryPolicy
from lake_mesh_consul._core.route import Route, RouteRequest, RouteSettings
from lake_mesh_consul.errors import NoEndpointsAvailable, RetryExhausted
from lake_mesh_consul.testing import FakeClock

NO_WAIT = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)
#: 3 failures in a row open a breaker and eject (30 s); at most half the endpoints out.
TRIPPY = DetectorPolicy(
    consecutive_failures=3,
    window=None,
    ejection=EjectionPolicy(max_ejection_percent=50.0),
    breaker=BreakerPolicy(consecutive_failures=3, window=None, reset_timeout=30.0),
)


class Recorder(Instruments):
    """A fake of our own port: every event, as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def request_finished(
        self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
    ) -> None:
        self.events.append(("request", service, endpoint.id, outcome.kind, duration))

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        self.events.append(("retry", service, attempt, stop))

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        self.events.append(("breaker", service, transition.name, transition.new))

    def ejection(self, service: str, event: EjectionEvent) -> None:
        self.events.append(("ejection", service, event.endpoint.id, event.kind))

    def panic(self, service: str, reason: str | None) -> None:
        self.events.append(("panic", service, reason))

    def no_endpoint(self, service: str, reason: str) -> None:
        self.events.append(("no_endpoint", service, reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def _endpoints(n: int, health: HealthStatus = HealthStatus.PASSING) -> list[ServiceEndpoint]:
    return [
        ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="s", health=health)
        for i in range(n)
    ]


def _route(
    instruments: Instruments, n: int = 2, **settings: Any
) -> tuple[Route, FakeClock, list[ServiceEndpoint]]:
    clock = FakeClock()
    endpoints = _endpoints(n)
    base = RouteSettings(retry=NO_WAIT, detector=TRIPPY)
    route = Route(
        "s",
        replace(base, **settings),
        endpoints=endpoints,
        clock=clock,
        rng=random.Random(1),
        instruments=instruments,
    )
    return route, clock, endpoints


def _fail_on(bad: str, clock: FakeClock | None = None) -> Any:
    def fn(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        if clock is not None:
            clock.advance(0.25)
        if endpoint.id == bad:
            raise ConnectionRefusedError("refused")
        return "ok"

    return fn


# --- the no-listener fast path ---------------------------------------------------------------


def test_a_route_nobody_listens_to_uses_the_plain_request_and_no_retry_hook() -> None:
    route, _, _ = _route(NO_INSTRUMENTS)
    assert type(route.request()) is RouteRequest
    # Instruments that only log (no request_finished override) add nothing per request either.
    logged, _, _ = _route(LogInstruments())
    assert type(logged.request()) is RouteRequest


def test_listens_sees_overrides_only() -> None:
    assert not listens(NO_INSTRUMENTS, "request_finished")
    assert listens(Recorder(), "request_finished")
    assert not listens(LogInstruments(), "request_finished")
    assert listens(LogInstruments(), "retry")
    assert listens(MultiInstruments([LogInstruments(), Recorder()]), "request_finished")


def test_combine_drops_nothing_and_flattens() -> None:
    a, b = Recorder(), Recorder()
    assert combine() is NO_INSTRUMENTS
    assert combine(None, NO_INSTRUMENTS) is NO_INSTRUMENTS
    assert combine(None, a) is a
    both = combine(a, combine(b, None))
    assert isinstance(both, MultiInstruments)
    assert both.members == (a, b)


def test_a_member_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Instruments):
        def panic(self, service: str, reason: str | None) -> None:
            raise RuntimeError("bug")

    rec = Recorder()
    both = combine(Broken(), rec)
    both.panic("s", "why")
    assert rec.of("panic") == [("panic", "s", "why")]
    assert "instruments" in caplog.text


# --- events of the route ---------------------------------------------------------------------


def test_every_attempt_is_reported_with_kind_and_duration() -> None:
    rec = Recorder()
    route, clock, _ = _route(rec)
    fn = _fail_on("e0", clock)
    assert route.call(fn, CallOptions(idempotent=True)) == "ok"
    requests = rec.of("request")
    assert requests[-1][3] is OutcomeKind.SUCCESS
    assert all(r[4] == pytest.approx(0.25) for r in requests)
    kinds = [r[3] for r in requests]
    if len(kinds) == 2:  # round robin began at the bad endpoint
        assert kinds[0] is OutcomeKind.CONNECT_FAILURE
        assert rec.of("retry") == [("retry", "s", 1, None)]


def test_a_failing_backend_opens_its_breaker_ejects_and_retries_are_counted() -> None:
    rec = Recorder()
    route, _, _ = _route(rec)
    fn = _fail_on("e0")
    for _ in range(8):
        route.call(fn, CallOptions(idempotent=True))
    assert ("breaker", "s", "e0", BreakerState.OPEN) in rec.events
    assert ("ejection", "s", "e0", "ejected") in rec.events
    retries = rec.of("retry")
    failures = [r for r in rec.of("request") if r[3] is OutcomeKind.CONNECT_FAILURE]
    assert len(retries) == len(failures) >= 3  # each failure retried (then went to e1)
    assert all(r[3] is None for r in retries)


def test_a_retry_refused_by_the_budget_is_reported_with_the_budget_reason() -> None:
    rec = Recorder()
    budget = BudgetPolicy(min_retries_per_sec=0, percent_can_retry=0.0)
    route, _, _ = _route(rec, budget=budget, detector=DetectorPolicy(breaker=None))

    def fail(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        raise ConnectionRefusedError("refused")

    with pytest.raises(RetryExhausted, match="retry budget exhausted"):
        route.call(fail, CallOptions(idempotent=True))
    assert rec.of("retry") == [("retry", "s", 1, BUDGET_EXHAUSTED)]
    assert stop_category(BUDGET_EXHAUSTED) == "budget"


def test_panic_and_no_endpoint_are_reported() -> None:
    rec = Recorder()
    clock = FakeClock()
    route = Route("s", endpoints=_endpoints(2, HealthStatus.CRITICAL), clock=clock, instruments=rec)
    route.request().cancel()
    ((_, service, reason),) = rec.of("panic")
    assert service == "s"
    assert reason is not None
    assert "critical" in reason
    route.update(_endpoints(2, HealthStatus.MAINTENANCE))
    with pytest.raises(NoEndpointsAvailable):
        route.request()
    assert rec.of("no_endpoint") == [("no_endpoint", "s", "all maintenance")]


@pytest.mark.parametrize(
    ("stop", "category"),
    [
        ("attempts exhausted", "attempts"),
        ("deadline", "deadline"),
        ("not idempotent", "not_idempotent"),
        ("Retry-After 9s exceeds 5s", "retry_after"),
        ("client_error is not retried", "not_retried"),
        ("something new", "other"),
    ],
)
def test_stop_reasons_become_bounded_labels(stop: str, category: str) -> None:
    assert stop_category(stop) == category


# --- log lines -------------------------------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_ejection_breaker_and_return_are_logged_with_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    clock = FakeClock()
    route = Route(
        "s",
        RouteSettings(retry=NO_WAIT, detector=TRIPPY),
        endpoints=_endpoints(2),
        clock=clock,
        rng=random.Random(1),
        instruments=LogInstruments(clock=clock),
    )
    fn = _fail_on("e0")
    for _ in range(8):
        route.call(fn, CallOptions(idempotent=True))
    (ejected,) = _records(caplog, "endpoint_ejected")
    assert ejected.levelno == logging.WARNING
    assert ejected.name == LOGGER_NAME
    assert ejected.getMessage().startswith("service s: ejected e0 (10.0.0.1:8000) for 30.0s")
    assert ejected.__dict__["service"] == "s"
    assert ejected.__dict__["endpoint"] == "e0"
    assert ejected.__dict__["reason"] == "consecutive_failures"
    assert ejected.__dict__["ejections"] == 1
    assert ejected.__dict__["ejected_for"] == pytest.approx(30.0)
    opened = [r for r in _records(caplog, "breaker_transition") if r.new_state == "open"]
    assert len(opened) == 1
    assert opened[0].levelno == logging.WARNING
    assert opened[0].__dict__["old_state"] == "closed"
    assert opened[0].__dict__["endpoint"] == "e0"
    # Time passes: the ejection ends and the breaker lets a probe through (INFO).
    clock.advance(31.0)
    route.call(lambda e, t: "ok", CallOptions(idempotent=True))
    route.call(lambda e, t: "ok", CallOptions(idempotent=True))
    (returned,) = _records(caplog, "endpoint_returned")
    assert returned.levelno == logging.INFO
    assert returned.getMessage() == "service s: e0 returned to rotation"
    states = [r.new_state for r in _records(caplog, "breaker_transition")]
    assert "half_open" in states
    half = next(r for r in _records(caplog, "breaker_transition") if r.new_state == "half_open")
    assert half.levelno == logging.INFO


def test_nothing_is_logged_on_the_success_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    route, _, _ = _route(LogInstruments())
    for _ in range(20):
        route.call(lambda e, t: "ok")
    assert caplog.records == []


def test_budget_exhaustion_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    clock = FakeClock()
    budget = BudgetPolicy(min_retries_per_sec=0, percent_can_retry=0.0)
    route = Route(
        "s",
        RouteSettings(retry=NO_WAIT, budget=budget, detector=DetectorPolicy(breaker=None)),
        endpoints=_endpoints(2),
        clock=clock,
        instruments=LogInstruments(clock=clock, repeat_after=60.0),
    )

    def fail(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        raise ConnectionRefusedError("refused")

    for _ in range(3):
        with pytest.raises(RetryExhausted):
            route.call(fail, CallOptions(idempotent=True))
    (record,) = _records(caplog, "retry_budget_exhausted")
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "service s: retry budget exhausted; retries refused"
    assert record.__dict__["service"] == "s"
    clock.advance(61.0)
    with pytest.raises(RetryExhausted):
        route.call(fail, CallOptions(idempotent=True))
    assert len(_records(caplog, "retry_budget_exhausted")) == 2


def test_no_endpoint_and_config_recovery_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    logs = LogInstruments(clock=FakeClock())
    logs.no_endpoint("s", "all drained")
    logs.no_endpoint("s", "all drained")  # within the repeat interval: once
    (record,) = _records(caplog, "no_endpoint")
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING,
        "service s: no endpoint available (all drained)",
    )
    assert record.__dict__["reason"] == "all drained"
    logs.config_event("recovered", None, None, "KV is readable again")
    (recovered,) = _records(caplog, "config_recovered")
    assert recovered.levelno == logging.INFO


def test_a_faulty_listener_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    class Faulty(Instruments):
        def request_finished(
            self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
        ) -> None:
            raise RuntimeError("bug in request_finished")

        def retry(self, service: str, attempt: int, stop: str | None) -> None:
            raise RuntimeError("bug in retry")

        def panic(self, service: str, reason: str | None) -> None:
            raise RuntimeError("bug in panic")

    route, _, _ = _route(Faulty())
    assert route.call(_fail_on("e0"), CallOptions(idempotent=True)) == "ok"
    assert route.call(_fail_on("e0"), CallOptions(idempotent=True)) == "ok"
    route.update(_endpoints(2, HealthStatus.CRITICAL))
    route.request().cancel()  # panic
    failed = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    assert "instruments: request_finished failed" in failed
    assert any("retry" in m for m in failed)
    assert any("panic" in m for m in failed)


def test_acall_reports_its_requests_and_retries_as_call_does() -> None:
    import asyncio

    rec = Recorder()
    route, _, _ = _route(rec)

    async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        if endpoint.id == "e0":
            raise ConnectionRefusedError("refused")
        return "ok"

    async def calls() -> list[str]:
        return [await route.acall(fn, CallOptions(idempotent=True)) for _ in range(4)]

    assert asyncio.run(calls()) == ["ok"] * 4
    failures = [r for r in rec.of("request") if r[3] is OutcomeKind.CONNECT_FAILURE]
    assert failures  # round robin sends some calls to e0 first
    assert rec.of("retry") == [("retry", "s", 1, None)] * len(failures)
