"""CircuitBreaker: every transition of the table, half-open admission, windows, listeners."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from lake_mesh_consul._core.breaker import (
    TRANSITIONS,
    BreakerEvent,
    BreakerPolicy,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    SlidingWindow,
    WindowPolicy,
)
from lake_mesh_consul.errors import CircuitOpen, InvalidSetting
from lake_mesh_consul.testing.clock import FakeClock

S = BreakerState
E = BreakerEvent

NO_WINDOW = BreakerPolicy(window=None, reset_timeout=30.0)


def make(
    policy: BreakerPolicy = NO_WINDOW,
) -> tuple[CircuitBreaker, FakeClock, list[BreakerTransition]]:
    clock = FakeClock()
    seen: list[BreakerTransition] = []
    return CircuitBreaker("ep-1", policy, clock=clock, listeners=[seen.append]), clock, seen


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, through a call (so mypy does not narrow it across actions)."""
    return breaker.state


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.acquire().failure(RuntimeError("boom"))


def drive_to(breaker: CircuitBreaker, clock: FakeClock, state: BreakerState) -> None:
    """Bring a fresh breaker into ``state`` through its public API."""
    if state is S.CLOSED:
        return
    if state is S.FORCED_OPEN:
        breaker.force_open()
    elif state is S.DISABLED:
        breaker.disable()
    elif state is S.METRICS_ONLY:
        breaker.metrics_only()
    else:
        fail(breaker, 5)
        if state is S.HALF_OPEN:
            clock.advance(30)
            breaker.acquire().release()  # the timeout is noticed on acquire
    assert state_of(breaker) is state


def fire(breaker: CircuitBreaker, clock: FakeClock, event: BreakerEvent) -> None:
    """Cause ``event`` through the public API (where the state allows it)."""
    actions: dict[BreakerEvent, Callable[[], None]] = {  # by event
        E.FORCE_OPEN: breaker.force_open,
        E.DISABLE: breaker.disable,
        E.METRICS_ONLY: breaker.metrics_only,
        E.RESET: breaker.reset,
    }
    actions[event]()


# --- the table ---------------------------------------------------------------------------


def test_table_covers_the_documented_rules() -> None:
    assert TRANSITIONS[(S.CLOSED, E.TRIP)] is S.OPEN
    assert TRANSITIONS[(S.OPEN, E.TIMEOUT_ELAPSED)] is S.HALF_OPEN
    assert TRANSITIONS[(S.HALF_OPEN, E.PROBE_FAILED)] is S.OPEN
    assert TRANSITIONS[(S.HALF_OPEN, E.PROBES_SUCCEEDED)] is S.CLOSED
    for state in BreakerState:
        assert TRANSITIONS[(state, E.RESET)] is S.CLOSED
        assert TRANSITIONS[(state, E.FORCE_OPEN)] is S.FORCED_OPEN
    # Ignored events: no key.
    assert (S.DISABLED, E.TRIP) not in TRANSITIONS
    assert (S.METRICS_ONLY, E.TRIP) not in TRANSITIONS
    assert (S.OPEN, E.PROBE_FAILED) not in TRANSITIONS
    assert len(TRANSITIONS) == 4 + 4 * len(BreakerState)


OPERATOR_CASES = [
    (state, event, TRANSITIONS[(state, event)])
    for state in BreakerState
    for event in (E.FORCE_OPEN, E.DISABLE, E.METRICS_ONLY, E.RESET)
]


@pytest.mark.parametrize(("start", "event", "end"), OPERATOR_CASES)
def test_operator_commands_follow_the_table(
    start: BreakerState, event: BreakerEvent, end: BreakerState
) -> None:
    breaker, clock, seen = make()
    drive_to(breaker, clock, start)
    seen.clear()
    fire(breaker, clock, event)
    assert state_of(breaker) is end
    if start is end:
        assert seen == []  # self-loops notify nobody
    else:
        assert [(t.old, t.new, t.event) for t in seen] == [(start, end, event)]


def test_closed_trips_on_consecutive_failures() -> None:
    breaker, _, seen = make()
    fail(breaker, 4)
    breaker.acquire().success()  # a success resets the count
    fail(breaker, 4)
    assert state_of(breaker) is S.CLOSED
    fail(breaker)
    assert state_of(breaker) is S.OPEN
    assert [(t.old, t.new, t.event, t.reason) for t in seen] == [
        (S.CLOSED, S.OPEN, E.TRIP, "consecutive_failures")
    ]


def test_open_refuses_with_retry_after_then_half_opens_on_timeout() -> None:
    breaker, clock, seen = make()
    fail(breaker, 5)
    clock.advance(10)
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(20.0)
    assert not breaker.allows()
    clock.advance(20)
    assert breaker.allows()
    permit = breaker.acquire()
    assert permit.probe
    assert state_of(breaker) is S.HALF_OPEN
    assert seen[-1].event is E.TIMEOUT_ELAPSED


def test_half_open_probe_success_closes_and_failure_reopens() -> None:
    breaker, clock, seen = make()
    drive_to(breaker, clock, S.HALF_OPEN)
    breaker.acquire().success()
    assert state_of(breaker) is S.CLOSED
    assert seen[-1].event is E.PROBES_SUCCEEDED
    drive_to(breaker, clock, S.HALF_OPEN)
    breaker.acquire().failure(RuntimeError("still down"))
    assert state_of(breaker) is S.OPEN
    assert [t.event for t in seen][-1] is E.PROBE_FAILED
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(30.0)  # a fresh reset timeout


def test_half_open_needs_the_configured_successes() -> None:
    breaker, clock, _ = make(BreakerPolicy(window=None, half_open_successes=3))
    drive_to(breaker, clock, S.HALF_OPEN)
    for _ in range(2):
        breaker.acquire().success()
        assert state_of(breaker) is S.HALF_OPEN
    breaker.acquire().success()
    assert state_of(breaker) is S.CLOSED


def test_forced_open_disabled_metrics_only() -> None:
    breaker, _, _ = make()
    breaker.force_open()
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    assert info.value.retry_after is None
    breaker.disable()
    fail(breaker, 50)
    assert state_of(breaker) is S.DISABLED
    assert breaker.snapshot().consecutive_failures == 0  # disabled records nothing
    breaker.metrics_only()
    fail(breaker, 50)
    assert state_of(breaker) is S.METRICS_ONLY
    assert breaker.snapshot().consecutive_failures == 50
    breaker.reset()
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_stale_outcomes_are_ignored() -> None:
    breaker, clock, _ = make()
    slow = breaker.acquire()  # admitted while closed
    fail(breaker, 5)
    clock.advance(30)
    probe = breaker.acquire()
    slow.success()  # from the earlier epoch: must not close the half-open breaker
    assert state_of(breaker) is S.HALF_OPEN
    probe.success()
    assert state_of(breaker) is S.CLOSED


def test_reporting_twice_counts_once() -> None:
    breaker, _, _ = make()
    permit = breaker.acquire()
    permit.failure()
    permit.failure()
    assert breaker.snapshot().consecutive_failures == 1


# --- windows -----------------------------------------------------------------------------


def test_failure_rate_window_trips_after_minimum_calls() -> None:
    window = WindowPolicy(size=10, minimum_calls=10, failure_rate_threshold=50.0)
    breaker, _, seen = make(BreakerPolicy(consecutive_failures=None, window=window))
    for i in range(9):  # 5 failures of 9: under the minimum, no trip
        permit = breaker.acquire()
        permit.failure() if i % 2 == 0 else permit.success()
    assert state_of(breaker) is S.CLOSED
    breaker.acquire().success()  # 5 of 10 = 50%
    assert state_of(breaker) is S.OPEN
    assert seen[-1].reason == "failure_rate"


def test_slow_call_window_trips() -> None:
    window = WindowPolicy(
        size=4,
        minimum_calls=4,
        failure_rate_threshold=None,
        slow_call_duration=1.0,
        slow_call_rate_threshold=75.0,
    )
    breaker, _, seen = make(BreakerPolicy(consecutive_failures=None, window=window))
    for duration in (2.0, 0.1, 2.0):
        breaker.acquire().success(duration)
    assert state_of(breaker) is S.CLOSED
    breaker.acquire().success(5.0)
    assert state_of(breaker) is S.OPEN
    assert seen[-1].reason == "slow_call_rate"


def test_slow_call_duration_measured_on_the_clock() -> None:
    window = WindowPolicy(
        size=1, minimum_calls=1, failure_rate_threshold=None, slow_call_duration=1.0
    )
    breaker, clock, _ = make(BreakerPolicy(consecutive_failures=None, window=window))
    with breaker.acquire():
        clock.advance(2.0)
    assert state_of(breaker) is S.OPEN


def test_count_window_slides() -> None:
    w = SlidingWindow(WindowPolicy(size=3, minimum_calls=3))
    for failure in (True, True, False, False, False):
        w.record(failure, False, 0.0)
    assert w.counts(0.0) == (3, 0, 0)


def test_time_window_expires_old_buckets() -> None:
    w = SlidingWindow(WindowPolicy(kind="time", size=10, minimum_calls=1))
    w.record(True, False, 100.0)
    w.record(True, True, 105.5)
    assert w.counts(105.9) == (2, 2, 1)
    assert w.counts(110.0) == (1, 1, 1)  # the bucket of second 100 left the window
    assert w.counts(200.0) == (0, 0, 0)
    assert w.rates(200.0) == (None, None)


def test_time_window_breaker_trips() -> None:
    window = WindowPolicy(kind="time", size=10, minimum_calls=4)
    breaker, clock, _ = make(BreakerPolicy(consecutive_failures=None, window=window))
    for _ in range(4):
        breaker.acquire().success()
    clock.advance(11)  # the successes expire
    fail(breaker, 3)
    assert state_of(breaker) is S.CLOSED
    fail(breaker)
    assert state_of(breaker) is S.OPEN


# --- call and context manager ------------------------------------------------------------


def test_call_and_context_manager() -> None:
    breaker, _, _ = make(BreakerPolicy(window=None, ignore_exceptions=(KeyError,)))
    assert breaker.call(lambda x: x + 1, 1) == 2
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        breaker.call(lambda: empty["missing"])
    assert breaker.snapshot().consecutive_failures == 0  # ignored exception
    for _ in range(5):
        with pytest.raises(ValueError, match="bad"), breaker.acquire():
            raise ValueError("bad")
    assert state_of(breaker) is S.OPEN
    ran = []
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: ran.append(1))
    assert ran == []


def test_no_lock_is_held_while_the_call_runs() -> None:
    breaker, _, _ = make()
    inside = threading.Barrier(2, timeout=5)

    def work() -> None:
        inside.wait()  # both calls must be inside at once

    threads = [threading.Thread(target=breaker.call, args=(work,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken


@pytest.mark.parametrize("k", [1, 3])
def test_half_open_admits_exactly_k_concurrent_probes(k: int) -> None:
    breaker, clock, _ = make(BreakerPolicy(window=None, half_open_max_calls=k))
    fail(breaker, 5)
    clock.advance(30)
    barrier = threading.Barrier(32, timeout=10)
    admitted: list[object] = []
    refused: list[CircuitOpen] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            permit = breaker.acquire()
        except CircuitOpen as exc:
            with lock:
                refused.append(exc)
            return
        with lock:
            admitted.append(permit)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(admitted) == k
    assert len(refused) == 32 - k
    assert all(exc.retry_after is not None for exc in refused)
    assert breaker.snapshot().probes_in_flight == k


def test_released_probe_frees_its_slot() -> None:
    breaker, clock, _ = make()
    drive_to(breaker, clock, S.HALF_OPEN)
    permit = breaker.acquire()
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    permit.release()
    breaker.acquire()


def test_listener_errors_do_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    breaker, _, _ = make()

    def bad(_: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(bad)
    fail(breaker, 5)
    assert state_of(breaker) is S.OPEN
    breaker.remove_listener(bad)
    assert "listener failed" in caplog.text


def test_observe_counts_only_while_closed() -> None:
    breaker, clock, _ = make()
    for _ in range(5):
        breaker.observe(success=False)
    assert state_of(breaker) is S.OPEN
    clock.advance(30)
    breaker.acquire()
    breaker.observe(success=True)  # not a probe: half-open is decided by probes only
    assert state_of(breaker) is S.HALF_OPEN


def test_policy_validation() -> None:
    with pytest.raises(InvalidSetting):
        BreakerPolicy(half_open_max_calls=0)
    with pytest.raises(InvalidSetting):
        WindowPolicy(failure_rate_threshold=0)
    with pytest.raises(InvalidSetting):
        BreakerPolicy(reset_timeout=0)


# --- live policy changes (configuration reload) --------------------------------------------------


def test_set_policy_keeps_state_and_counts_and_trips_at_the_new_threshold() -> None:
    breaker, clock, seen = make(BreakerPolicy(window=None, consecutive_failures=5))
    fail(breaker, 1)
    breaker.set_policy(BreakerPolicy(window=None, consecutive_failures=2, reset_timeout=10.0))
    assert seen == []  # a new policy is no transition
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().consecutive_failures == 1  # the count survived
    fail(breaker, 1)
    assert state_of(breaker) is S.OPEN  # 2 in a row: the new threshold, not the old 5
    assert [t.reason for t in seen] == ["consecutive_failures"]
    clock.advance(9.9)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(0.1)  # the new reset timeout, measured from the trip
    breaker.acquire().success()
    assert state_of(breaker) is S.CLOSED


def test_set_policy_while_open_measures_the_new_timeout_from_the_trip() -> None:
    breaker, clock, _ = make(BreakerPolicy(window=None, consecutive_failures=1, reset_timeout=60))
    fail(breaker)
    clock.advance(20.0)
    breaker.policy = BreakerPolicy(window=None, consecutive_failures=1, reset_timeout=15.0)
    assert breaker.policy.reset_timeout == 15.0
    assert breaker.allows()  # 20 s open > 15 s: the next acquire is a probe
    permit = breaker.acquire()
    assert state_of(breaker) is S.HALF_OPEN
    permit.success()
    assert state_of(breaker) is S.CLOSED


def test_set_policy_half_open_and_operator_states_are_kept() -> None:
    policy = BreakerPolicy(window=None, consecutive_failures=1, reset_timeout=1.0)
    breaker, clock, _ = make(policy)
    fail(breaker)
    clock.advance(1.0)
    probe = breaker.acquire()
    breaker.set_policy(replace(policy, half_open_max_calls=2, half_open_successes=2))
    second = breaker.acquire()  # the new K admits a second probe
    probe.success()
    assert state_of(breaker) is S.HALF_OPEN  # two successes needed now
    second.success()
    assert state_of(breaker) is S.CLOSED
    breaker.force_open()
    breaker.set_policy(policy)
    assert state_of(breaker) is S.FORCED_OPEN


def test_set_policy_keeps_a_window_of_the_same_shape_and_resets_another() -> None:
    window = WindowPolicy(size=10, minimum_calls=10, failure_rate_threshold=90.0)
    policy = BreakerPolicy(consecutive_failures=None, window=window)
    breaker, _, _ = make(policy)
    for i in range(10):
        permit = breaker.acquire()
        permit.failure() if i < 6 else permit.success()
    assert state_of(breaker) is S.CLOSED  # 60% < 90%
    breaker.set_policy(replace(policy, window=replace(window, failure_rate_threshold=50.0)))
    assert breaker.snapshot().calls == 10  # same shape: outcomes kept
    fail(breaker)  # 70% of the last 10 >= 50%
    assert state_of(breaker) is S.OPEN
    breaker.reset()
    fail(breaker, 3)
    breaker.set_policy(replace(policy, window=replace(window, size=20, minimum_calls=5)))
    assert breaker.snapshot().calls == 0  # another size: starts empty
    breaker.set_policy(replace(policy, window=None))
    assert breaker.snapshot().calls == 0


def test_a_success_after_the_window_filled_skips_the_rate_check() -> None:
    def quiet(window: SlidingWindow) -> bool:
        return window.quiet  # through a call: mypy does not narrow it across records

    window = SlidingWindow(WindowPolicy(size=4, minimum_calls=4, failure_rate_threshold=50.0))
    for failure in (True, True, True):
        window.record(failure, False, 0.0)
        assert not quiet(window)
    window.record(False, False, 0.0)  # reaches the minimum: must be evaluated
    assert not quiet(window)
    assert window.exceeded(0.0) == "failure_rate"
    window.record(False, False, 0.0)  # full, no growth, a success: cannot raise a rate
    assert quiet(window)
    window.record(True, False, 0.0)
    assert not quiet(window)
