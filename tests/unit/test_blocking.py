"""The blocking-query rules as pure values, in virtual time (no sleeping, no I/O)."""

from __future__ import annotations

import random

import pytest

from lake_mesh_consul._core.blocking import (
    MAX_WAIT,
    Backoff,
    BlockingIndex,
    TokenBucket,
    read_timeout_for_wait,
    validate_wait,
)
from lake_mesh_consul.testing import FakeClock

# --- index -------------------------------------------------------------------------------


def test_first_answer_is_a_change_and_sets_the_index() -> None:
    step = BlockingIndex().observe(42)
    assert step.index.value == 42
    assert step.changed
    assert not step.reset


def test_no_index_yet_means_a_non_blocking_query() -> None:
    assert BlockingIndex().query_value is None
    assert BlockingIndex(7).query_value == 7


@pytest.mark.parametrize("returned", [0, -5])
def test_index_below_one_is_clamped_to_one(returned: int) -> None:
    step = BlockingIndex().observe(returned)
    assert step.index.value == 1
    # ... and the next zero is "unchanged", not "went backwards": no busy reset loop.
    again = step.index.observe(returned)
    assert again.index.value == 1
    assert not again.changed
    assert not again.reset


def test_unchanged_index_is_no_change() -> None:
    step = BlockingIndex(10).observe(10)
    assert not step.changed
    assert step.index == BlockingIndex(10)


def test_index_moving_forward_is_a_change() -> None:
    step = BlockingIndex(10).observe(11)
    assert step.changed
    assert step.index.value == 11


def test_index_going_backwards_resets_to_zero() -> None:
    step = BlockingIndex(100).observe(12)
    assert step.reset
    assert step.changed
    assert step.index.value == 0
    assert step.index.query_value is None
    # the next answer starts afresh
    after = step.index.observe(12)
    assert after.index.value == 12
    assert after.changed
    assert not after.reset


def test_index_is_an_immutable_value() -> None:
    index = BlockingIndex(5)
    index.observe(9)
    assert index.value == 5
    with pytest.raises(AttributeError):
        index.value = 6  # type: ignore[misc]


# --- backoff -----------------------------------------------------------------------------


def test_backoff_ceiling_grows_exponentially_and_caps() -> None:
    backoff = Backoff()
    assert backoff.ceiling(0) == 0.0
    assert [backoff.ceiling(n) for n in range(1, 8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    )
    assert backoff.ceiling(10_000) == 5.0  # no overflow


def test_backoff_is_full_jitter_within_the_ceiling() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    rng = random.Random(1)
    for failures in range(1, 20):
        samples = [backoff.delay(failures, rng) for _ in range(200)]
        ceiling = backoff.ceiling(failures)
        assert all(0 <= s <= ceiling for s in samples)
        # full jitter spreads over the whole range, not just near the ceiling
        assert min(samples) < ceiling * 0.1
        assert max(samples) > ceiling * 0.9


def test_backoff_uses_the_injected_rng() -> None:
    backoff = Backoff()
    a = [backoff.delay(n, random.Random(3)) for n in range(1, 6)]
    b = [backoff.delay(n, random.Random(3)) for n in range(1, 6)]
    assert a == b


def test_backoff_configurable_cap() -> None:
    assert Backoff(base=1.0, cap=30.0).ceiling(6) == 30.0
    assert Backoff(base=1.0, cap=30.0, multiplier=1.0).ceiling(50) == 1.0


@pytest.mark.parametrize(("base", "cap", "multiplier"), [(-1, 1, 2), (1, 0.5, 2), (0.1, 5, 0.5)])
def test_backoff_rejects_nonsense(base: float, cap: float, multiplier: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=base, cap=cap, multiplier=multiplier)


def test_backoff_bounds_requests_of_a_failing_loop_in_virtual_time() -> None:
    """A loop that fails forever, driven by a fake clock, sends few requests per minute."""
    clock = FakeClock(autojump=True)
    backoff = Backoff()
    rng = random.Random(11)
    start = clock.monotonic()
    requests = failures = 0
    while clock.monotonic() - start < 600:
        requests += 1
        failures += 1
        clock.sleep(backoff.delay(failures, rng))
    # mean pause at the cap is 2.5 s: about 24/min; allow generous slack
    assert requests / 10 < 40


# --- token bucket ------------------------------------------------------------------------------


def test_bucket_allows_a_burst_of_two_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    delays = []
    for _ in range(5):
        bucket, delay = bucket.reserve(0.0)
        delays.append(delay)
    assert delays == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])


def test_bucket_refills_over_time_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    bucket, _ = bucket.reserve(0.0)
    bucket, _ = bucket.reserve(0.0)
    assert bucket.level(0.0) == pytest.approx(0.0)
    assert bucket.level(0.25) == pytest.approx(0.5)
    assert bucket.level(100.0) == 2.0  # capped


def test_bucket_bounds_a_server_that_answers_instantly_forever() -> None:
    """Virtual time: a loop whose every request returns at once is held to the rate."""
    clock = FakeClock(autojump=True)
    bucket = TokenBucket(rate=5.0, burst=2)
    start = clock.monotonic()
    requests = 0
    while clock.monotonic() - start < 60:
        bucket, delay = bucket.reserve(clock.monotonic())
        clock.sleep(delay)
        requests += 1  # the "request" takes no time at all
    assert requests <= 2 + 5 * 60 + 1


def test_bucket_does_not_hoard_while_idle() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket, _ = bucket.reserve(0.0)
    # an hour idle still only allows the burst
    delays = []
    for _ in range(3):
        bucket, d = bucket.reserve(3600.0)
        delays.append(d)
    assert delays == pytest.approx([0.0, 0.0, 1.0])


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 2), (-1.0, 2), (1.0, 0), (float("inf"), 2)])
def test_bucket_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate=rate, burst=burst)


# --- read timeout and wait --------------------------------------------------------------------


def test_read_timeout_covers_consuls_jitter() -> None:
    assert read_timeout_for_wait(16.0) == pytest.approx(16.0 + 1.0 + 5.0)
    assert read_timeout_for_wait(60.0, margin=1.0) == pytest.approx(60 + 60 / 16 + 1)
    assert read_timeout_for_wait(10_000) == pytest.approx(MAX_WAIT * 17 / 16 + 5)
    assert read_timeout_for_wait(-3) == pytest.approx(5.0)


def test_validate_wait() -> None:
    assert validate_wait(60) == 60.0
    assert validate_wait(MAX_WAIT) == MAX_WAIT
    for bad in (0, -1, MAX_WAIT + 1, float("nan"), True):
        with pytest.raises(ValueError, match="wait"):
            validate_wait(bad)
