"""Route.acall: the async retry loop on the route's own admission, state and budget (FakeClock).

Each test runs its coroutines with ``asyncio.run``; waits go through a sleep that advances
the FakeClock, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from lake_mesh_consul._core.breaker import BreakerPolicy, BreakerState
from lake_mesh_consul._core.detector import DetectorPolicy, EjectionPolicy
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.outcome import Classifier
from lake_mesh_consul._core.retry import CallOptions, RetryPolicy
from lake_mesh_consul._core.retry_async import run_call_async
from lake_mesh_consul._core.route import Route, RouteSettings
from lake_mesh_consul.errors import RetryExhausted
from lake_mesh_consul.testing import FakeClock

NO_WAIT = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)


def _route(n: int = 3, **settings: object) -> tuple[Route, FakeClock, list[ServiceEndpoint]]:
    clock = FakeClock()
    endpoints = [
        ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="s") for i in range(n)
    ]
    base = RouteSettings(retry=NO_WAIT)
    route = Route(
        "s", replace(base, **settings), endpoints=endpoints, clock=clock, rng=random.Random(1)
    )
    return route, clock, endpoints


def _sleeper(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """An async sleep in virtual time: advances the clock and yields to the loop once."""

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


def _settled(route: Route) -> None:
    """Nothing in flight: no outstanding request, no breaker permit held."""
    for instance in route.explain().instances:
        assert instance.balancer.outstanding == 0
    for endpoint in route.endpoints:
        breaker = route.detector.breaker(endpoint)
        if breaker is not None:
            assert breaker.snapshot().probes_in_flight == 0


def test_acall_retries_on_untried_endpoints_and_records_each_attempt_once() -> None:
    route, _, _ = _route(3)
    tried: list[ServiceEndpoint] = []

    async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        tried.append(endpoint)
        if len(tried) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert asyncio.run(route.acall(fn, CallOptions(idempotent=True))) == "ok"
    assert len(set(tried)) == 3
    states = route.detector.states("s")
    assert sum(s.requests for s in states) == 3
    assert sum(s.failures for s in states) == 2
    _settled(route)


def test_acall_backs_off_through_the_given_sleep_and_returns_the_last_status() -> None:
    policy = RetryPolicy(attempts=3, backoff_base=0.5, backoff_max=4.0, deadline=None)
    route, clock, _ = _route(3, retry=policy)
    seen: list[float | None] = []

    async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
        seen.append(timeout)
        return 503

    options = CallOptions(idempotent=True, status_of=lambda s: s)
    assert asyncio.run(route.acall(fn, options, sleep=_sleeper(clock))) == 503
    assert len(seen) == 3
    assert len(clock.sleeps) == 2  # backoff between attempts, in virtual time
    assert all(0 <= s <= 4.0 for s in clock.sleeps)
    _settled(route)


def test_acall_does_not_retry_a_sent_non_idempotent_call() -> None:
    route, _, _ = _route(3)
    calls = 0

    async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionResetError("reset after sending")

    with pytest.raises(RetryExhausted, match="not idempotent"):
        asyncio.run(route.acall(fn, CallOptions(idempotent=False)))
    assert calls == 1
    # A connect failure never reached the server: retried for any method.
    calls = 0

    async def refused(endpoint: ServiceEndpoint, timeout: float | None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError
        return 200

    assert asyncio.run(route.acall(refused, CallOptions(idempotent=False))) == 200
    assert calls == 2
    _settled(route)


def test_a_cancelled_acall_releases_permit_and_outstanding_and_records_nothing() -> None:
    route, _, endpoints = _route(1)
    before = route.detector.state(endpoints[0]).requests

    async def main() -> None:
        started = asyncio.Event()

        async def hang(endpoint: ServiceEndpoint, timeout: float | None) -> int:
            started.set()
            await asyncio.Event().wait()  # never set: only cancellation ends it
            return 200

        task = asyncio.ensure_future(route.acall(hang, CallOptions(idempotent=True)))
        await started.wait()
        assert route.explain().instances[0].balancer.outstanding == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _settled(route)
    assert route.detector.state(endpoints[0]).requests == before  # no outcome recorded


def test_the_cancelled_error_reaches_the_caller_unchanged_after_a_retry() -> None:
    route, _, _ = _route(2)
    raised: list[BaseException] = []
    seen: list[BaseException] = []

    async def main() -> None:
        started = asyncio.Event()
        calls = 0

        async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionResetError  # retried: the second attempt hangs
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as exc:
                raised.append(exc)
                raise
            return 200

        async def caller() -> int:
            try:
                return await route.acall(fn, CallOptions(idempotent=True))
            except asyncio.CancelledError as exc:
                seen.append(exc)
                raise

        task = asyncio.ensure_future(caller())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(seen) == 1
    assert seen[0] is raised[0]  # the very exception, not a wrapped or mapped one
    _settled(route)
    assert sum(s.requests for s in route.detector.states("s")) == 1  # the reset only


def test_half_open_admits_exactly_k_probes_among_200_concurrent_tasks() -> None:
    k = 3
    detector = DetectorPolicy(
        consecutive_failures=5,
        window=None,
        ejection=EjectionPolicy(max_ejection_percent=100.0),
        breaker=BreakerPolicy(
            consecutive_failures=5, window=None, reset_timeout=30.0, half_open_max_calls=k
        ),
    )
    route, clock, endpoints = _route(3, detector=detector)
    bad = endpoints[0]
    breaker = route.detector.breaker(bad)
    assert breaker is not None
    for _ in range(5):  # open it through the route's own recording
        attempt = route.request()
        while attempt.endpoint != bad:
            attempt.report(Classifier().of_status(200))
            attempt = route.request()
        attempt.report(Classifier().of_status(503))
    assert breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    to_bad = 0

    async def main() -> None:
        gate = asyncio.Event()
        arrived = 0

        async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
            nonlocal to_bad, arrived
            to_bad += endpoint == bad
            arrived += 1
            await gate.wait()  # every task in flight at once
            return 200

        tasks = [
            asyncio.ensure_future(route.acall(fn, CallOptions(idempotent=True))) for _ in range(200)
        ]
        for _ in range(1000):  # bounded: every task reaches its attempt
            if arrived == 200:
                break
            await asyncio.sleep(0)
        assert arrived == 200
        assert breaker.snapshot().probes_in_flight == k
        gate.set()
        assert await asyncio.gather(*tasks) == [200] * 200

    asyncio.run(main())
    assert to_bad == k
    assert breaker.state is BreakerState.CLOSED  # the probes succeeded
    _settled(route)


def test_run_call_async_over_a_fake_admission() -> None:
    """The loop alone, over a fake of the Admitted port: one report per attempt."""
    clock = FakeClock()
    endpoints = [ServiceEndpoint.create(f"f{i}", "10.0.0.2", 9000 + i) for i in range(2)]
    log: list[tuple[str, str]] = []

    class Fake:
        def __init__(self, endpoint: ServiceEndpoint) -> None:
            self.endpoint = endpoint
            self.started = clock.monotonic()
            self.duration = 0.0

        def report(self, outcome: object) -> None:
            log.append(("report", self.endpoint.id))

        def cancel(self) -> None:
            log.append(("cancel", self.endpoint.id))

    def admit(key: object, *, exclude: frozenset[ServiceEndpoint] = frozenset()) -> Fake:
        return Fake(next(e for e in endpoints if e not in exclude))

    async def fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
        return 503 if endpoint is endpoints[0] else 200

    result = asyncio.run(
        run_call_async(
            admit,
            fn,
            CallOptions(idempotent=True, status_of=lambda s: s),
            policy=NO_WAIT,
            budget=None,
            classifier=Classifier(),
            clock=clock,
            sleep=_sleeper(clock),
        )
    )
    assert result == 200
    assert log == [("report", "f0"), ("report", "f1")]
