"""Retries: :class:`RetryPolicy`, :class:`RetryBudget` and the composed call path :func:`execute`.

The request path is ``retry( pick(exclude=tried) -> breaker( call(endpoint) ) )``:

1. Deposit one request in the budget; pick an endpoint, excluding those already tried.
2. Acquire the endpoint's breaker permit (``CircuitOpen`` -> re-pick, nothing was sent).
3. Run the call with no lock held, with a timeout of ``min(per_try_timeout, time left)``.
4. Record the outcome (detector and breaker). Done unless it failed in a retriable way.
5. Retry only if: the failure kind is in ``retry_on``; the call is idempotent, or the
   request was never sent (connect failure, open breaker: urllib3 retries connect errors for
   any method too); attempts remain; the budget allows a retry; and the backoff (full
   jitter, or the server's Retry-After if longer) ends before the deadline.

The first attempt runs without tenacity, so the success path does not pay its set-up cost
(about 10-15 us). On the first failure a fresh ``tenacity.Retrying`` and ``RetryCallState``
are built for this call alone (never shared between calls or threads, unlike a decorated
function: tenacity issues #93 and #701); its ``stop`` and ``wait`` strategies compute when to
give up and how long to back off, on the injected clock.

When attempts run out on a *response* with a retriable status, that last response is
returned (as Envoy does); when they run out on an *exception*,
:class:`~lake_mesh_consul.errors.RetryExhausted` is raised with every
:class:`~lake_mesh_consul.errors.Attempt`, chained to the last error. Exceptions that are not
a retriable kind at all (a business error) are re-raised unchanged.

tenacity is imported only in this module.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import tenacity

from lake_mesh_consul._core.breaker import CircuitBreaker, Permit, monotonic_of
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from lake_mesh_consul._core.detector import (
    ClassificationPolicy,
    FailureDetector,
    OutcomeKind,
    classify,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul.errors import (
    Attempt,
    CircuitOpen,
    DeadlineExceeded,
    InvalidSetting,
    NoEndpointsAvailable,
    RetryExhausted,
)

if TYPE_CHECKING:
    from lake_mesh_consul._core.balancer import LoadBalancer, RequestContext

__all__ = [
    "DEFAULT_ALLOWED_METHODS",
    "DEFAULT_RETRY_ON",
    "Picker",
    "RetryBudget",
    "RetryPolicy",
    "execute",
    "parse_retry_after",
    "retry_until",
]

_T = TypeVar("_T")

#: urllib3's ``Retry.DEFAULT_ALLOWED_METHODS``: the idempotent methods retried by default.
DEFAULT_ALLOWED_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE"})
#: Failure kinds retried by default: transport failures, gateway errors and 429. A plain
#: 500 is not retried by default: it is usually a bug that will happen again.
DEFAULT_RETRY_ON = frozenset(
    {
        OutcomeKind.CONNECT_FAILURE,
        OutcomeKind.RESET,
        OutcomeKind.TIMEOUT,
        OutcomeKind.GATEWAY_ERROR,
        OutcomeKind.THROTTLED,
    }
)
#: Attempts in total, the first included.
DEFAULT_ATTEMPTS = 3
#: Envoy's retry back-off base interval (seconds).
DEFAULT_BACKOFF_BASE = 0.025
#: Envoy's default back-off cap: ten times the base (seconds).
DEFAULT_BACKOFF_MAX = 0.25
#: Overall deadline, retries and back-off included (Envoy's default route timeout).
DEFAULT_DEADLINE = 15.0
#: Longest Retry-After honoured; a longer one ends the retries.
DEFAULT_MAX_RETRY_AFTER = 30.0
#: Finagle's retry budget: deposits expire after this many seconds.
DEFAULT_BUDGET_TTL = 10.0
#: Finagle's retry budget: retries always allowed per second (the reserve).
DEFAULT_BUDGET_MIN_RETRIES_PER_SEC = 10
#: Finagle's retry budget: share of requests that may be retried.
DEFAULT_BUDGET_PERCENT_CAN_RETRY = 0.2

_EMPTY: frozenset[ServiceEndpoint] = frozenset()
#: No attempt yet (never appended to: the first failure makes the call's own list).
_NO_ATTEMPTS: list[Attempt] = []
_RNG = random.Random()
#: Outcomes where the request never reached the endpoint: safe to retry for any method.
_NOT_SENT = frozenset({OutcomeKind.CONNECT_FAILURE})


class _Cancelled(BaseException):
    """Ends a RequestContext without an outcome (the endpoint was picked but not used)."""


#: Finishing a balancer context with this records nothing (a pick the breaker refused).
_CANCELLED = _Cancelled()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried. Frozen: derive variants with :func:`dataclasses.replace`.

    Attributes:
        attempts: attempts in total (1 disables retries).
        per_try_timeout: seconds for one attempt (``None``: whatever the deadline leaves);
            passed to the call, which must honour it.
        deadline: seconds for the whole call, retries and back-off included (``None``: none).
        backoff_base: full-jitter exponential back-off: attempt n waits a uniform random
            time in ``[0, min(backoff_max, backoff_base * 2**(n-1))]``.
        backoff_max: cap of the back-off interval.
        retry_on: failure kinds that may be retried.
        allowed_methods: methods considered idempotent when ``idempotent`` is not given.
        respect_retry_after: wait at least the server's Retry-After on 429/503.
        max_retry_after: a longer Retry-After stops the retries instead.
        different_endpoint: exclude already-tried endpoints from each re-pick.
        reuse_endpoints: when every endpoint was tried, allow picking one again.
    """

    attempts: int = DEFAULT_ATTEMPTS
    per_try_timeout: float | None = None
    deadline: float | None = DEFAULT_DEADLINE
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_on: frozenset[OutcomeKind] = DEFAULT_RETRY_ON
    allowed_methods: frozenset[str] = DEFAULT_ALLOWED_METHODS
    respect_retry_after: bool = True
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    different_endpoint: bool = True
    reuse_endpoints: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidSetting("retry.attempts", f"must be >= 1, got {self.attempts!r}")
        for name in ("per_try_timeout", "deadline"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidSetting(f"retry.{name}", f"must be > 0 or None, got {value!r}")
        if self.backoff_base < 0 or self.backoff_max < self.backoff_base:
            raise InvalidSetting("retry.backoff_max", "need 0 <= backoff_base <= backoff_max")

    def is_idempotent(self, method: str | None, idempotent: bool | None) -> bool:
        """``idempotent`` if given, else whether ``method`` is allowed; unknown -> False."""
        if idempotent is not None:
            return idempotent
        return method is not None and method.upper() in self.allowed_methods


class RetryBudget:
    """Finagle's retry budget: bounds retries to a share of requests plus a small reserve.

    Retries may be at most ``percent_can_retry`` of requests plus ``min_retries_per_sec``
    per second, both over the last ``ttl`` seconds. Every request deposits
    (:meth:`deposit`); every retry must :meth:`try_withdraw` first. Deposits
    and withdrawals expire after ``ttl`` (one-second buckets), so in any ``ttl`` window
    ``retries <= percent_can_retry * requests + min_retries_per_sec * ttl``: a failure storm
    cannot multiply the load by more than about 1.2.

    Thread-safe (a short lock); share one budget per client or per service.
    """

    _SCALE = 1000

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_BUDGET_TTL,
        min_retries_per_sec: int = DEFAULT_BUDGET_MIN_RETRIES_PER_SEC,
        percent_can_retry: float = DEFAULT_BUDGET_PERCENT_CAN_RETRY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not 1 <= ttl <= 60:
            raise InvalidSetting("budget.ttl", "must be within [1, 60] seconds (Finagle)")
        if min_retries_per_sec < 0:
            raise InvalidSetting("budget.min_retries_per_sec", "must be >= 0")
        if not 0 <= percent_can_retry <= 1000:
            raise InvalidSetting("budget.percent_can_retry", "must be within [0, 1000]")
        self.ttl = ttl
        self.min_retries_per_sec = min_retries_per_sec
        self.percent_can_retry = percent_can_retry
        self._now = monotonic_of(clock)
        self._lock = threading.Lock()
        self._n = math.ceil(ttl)
        self._deposit_weight = round(percent_can_retry * self._SCALE)
        self._reserve = round(min_retries_per_sec * ttl * self._SCALE)
        self._dep = [0] * self._n
        self._wd = [0] * self._n
        self._deposits = 0
        self._withdrawals = 0
        self._head = -1

    def _advance(self, now: float) -> None:
        sec = int(now)
        head = self._head
        if sec <= head:
            return
        if head < 0 or sec - head >= self._n:
            self._dep = [0] * self._n
            self._wd = [0] * self._n
            self._deposits = self._withdrawals = 0
        else:
            for s in range(head + 1, sec + 1):
                i = s % self._n
                self._deposits -= self._dep[i]
                self._withdrawals -= self._wd[i]
                self._dep[i] = self._wd[i] = 0
        self._head = sec

    def deposit(self) -> None:
        """Count one request (call once per logical request, before its first attempt)."""
        sec = int(self._now())
        with self._lock:
            if sec > self._head:  # a new second: expire old buckets (rare on a busy path)
                self._advance(sec)
            self._dep[self._head % self._n] += 1
            self._deposits += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) if it is empty."""
        with self._lock:
            self._advance(self._now())
            if self._scaled_balance() < self._SCALE:
                return False
            self._wd[self._head % self._n] += 1
            self._withdrawals += 1
            return True

    def balance(self) -> int:
        """Retries that could be withdrawn right now."""
        with self._lock:
            self._advance(self._now())
            return max(0, self._scaled_balance() // self._SCALE)

    def _scaled_balance(self) -> int:
        """Deposits' share plus the reserve, less withdrawals, in units of 1/_SCALE retry.

        Call with the lock held, after ``_advance``.
        """
        return (
            self._deposits * self._deposit_weight + self._reserve - self._withdrawals * self._SCALE
        )

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ttl={self.ttl:g}, min_retries_per_sec={self.min_retries_per_sec}, "
            f"percent_can_retry={self.percent_can_retry:g})"
        )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (delta-seconds or an HTTP-date).

    ``now`` is the wall-clock time (``clock.time()``) to measure an HTTP-date against.
    Returns ``None`` for a missing or malformed value; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


class Picker(Protocol):
    """Picks an endpoint not in ``exclude``; raises NoEndpointsAvailable when none is left."""

    def __call__(self, *, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        """Pick one endpoint."""
        ...


class _FullJitter(tenacity.wait_exponential):
    """tenacity's exponential interval, then AWS "full jitter" with an injected RNG."""

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        super().__init__(multiplier=base, max=cap)
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self._rng.uniform(0.0, super().__call__(retry_state))


class _RetryState:
    """One call's tenacity state: built on the first failure, never shared."""

    __slots__ = ("_attempts", "_deadline", "_state", "_wait")

    def __init__(self, policy: RetryPolicy, start: float, rng: random.Random) -> None:
        self._attempts = tenacity.stop_after_attempt(policy.attempts)
        self._deadline: tenacity.stop.stop_base | None = (
            tenacity.stop_before_delay(policy.deadline) if policy.deadline is not None else None
        )
        self._wait = _FullJitter(policy.backoff_base, policy.backoff_max, rng)
        retrying = tenacity.Retrying(
            stop=self._attempts | self._deadline if self._deadline else self._attempts,
            wait=self._wait,
            reraise=True,
        )
        self._state = tenacity.RetryCallState(retrying, None, (), {})
        self._state.start_time = start

    def decide(self, number: int, now: float, floor: float) -> tuple[str | None, float]:
        """After failed attempt ``number``: ``(stop reason or None, seconds to wait)``."""
        state = self._state
        state.attempt_number = number
        state.outcome_timestamp = now
        if self._attempts(state):
            return "attempts exhausted", 0.0
        delay = max(self._wait(state), floor)
        state.upcoming_sleep = delay
        if self._deadline is not None and self._deadline(state):
            return "deadline", delay
        return None, delay


def _retry_after_from(error: BaseException | None) -> float | None:
    if error is None or isinstance(error, CircuitOpen):
        return None
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def execute(
    pick: Picker | None,
    call: Callable[[ServiceEndpoint, float | None], _T],
    *,
    policy: RetryPolicy | None = None,
    budget: RetryBudget | None = None,
    detector: FailureDetector | None = None,
    breaker_for: Callable[[ServiceEndpoint], CircuitBreaker | None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
    method: str | None = None,
    idempotent: bool | None = None,
    status_of: Callable[[_T], int | None] | None = None,
    retry_after_of: Callable[[_T], float | None] | None = None,
    classification: ClassificationPolicy | None = None,
    balancer: LoadBalancer | None = None,
    key: str | bytes | None = None,
    per_try: Mapping[str, float] | None = None,
) -> _T:
    """Run ``call(endpoint, timeout)`` on picked endpoints with breakers, detection and retries.

    Args:
        pick: ``pick(exclude=...)`` returns an endpoint; ``None`` with ``balancer``.
        call: does the request; ``timeout`` is the seconds it may take (or ``None``).
        policy: the retry policy (default :class:`RetryPolicy`).
        budget: a shared :class:`RetryBudget`; ``None`` means unlimited.
        detector: records every outcome; its per-endpoint breakers are used unless
            ``breaker_for`` is given.
        breaker_for: the breaker of an endpoint (or ``None`` for none).
        clock: time for the deadline and durations.
        sleep: how to wait between attempts (default ``clock.sleep``).
        rng: randomness for the back-off jitter.
        method: the HTTP method, to decide idempotency per ``policy.allowed_methods``.
        idempotent: overrides ``method``; with neither, the call is not idempotent.
        status_of: the HTTP status of a result (then 5xx/429 results are failures).
        retry_after_of: the Retry-After of a result, in seconds.
        classification: how outcomes are classified (default: the detector's).
        balancer: pick through ``balancer.request(key, exclude=..., record=False)``
            instead of ``pick``: each attempt is tracked by the balancer (outstanding
            count, latency, request and failure counts; a status the classification counts
            as a failure fails it) and its outcome is still recorded once, here, to the
            detector and the breaker's permit. A pick the breaker refuses is finished
            without an outcome. This is the mesh's request path, with no wrapper calls.
        key: the hash key for ``balancer`` (ring hash, Maglev).
        per_try: per-endpoint timeouts by endpoint id, each capping that endpoint's
            attempts.

    Returns:
        The first successful (or non-retriable) result, or the last response when attempts
        ran out on a retriable status.

    Raises:
        RetryExhausted: attempts, budget or idempotency stopped the retries after an
            exception; ``.attempts`` has every attempt; chained to the last error.
        DeadlineExceeded: the deadline ran out; ``.attempts`` has every attempt.
        NoEndpointsAvailable: nothing could be picked for the first attempt.
        Exception: an error of a kind not in ``retry_on`` is re-raised unchanged.

    Thread-safe if ``pick``, ``call`` and the shared objects are; keeps no state between
    calls.
    """
    if pick is None and balancer is None:
        raise TypeError("execute() needs pick or balancer")
    p = policy or _DEFAULT_POLICY
    now = time.monotonic if clock.__class__ is SystemClock else monotonic_of(clock)
    start = now()
    deadline_at = start + p.deadline if p.deadline is not None else math.inf
    # With the detector's own classification, a status is classified once, by the
    # detector's per-status cache, and the detector records it without classifying again.
    status_outcome = None
    by_status: dict[int, tuple[OutcomeKind, bool]] = {}
    # The detector's breaker of an endpoint, read from its dict (no call) when it exists.
    breakers_get: Callable[[ServiceEndpoint], CircuitBreaker | None] | None = None
    if classification is None:
        if detector is not None:
            # The detector's own fields, read directly: the request path is measured in
            # function calls (same package; see FailureDetector.status_outcome/.breaker).
            dpolicy = detector._policy
            classification = dpolicy.classification
            status_outcome = detector.status_outcome
            by_status = detector._by_status
            if breaker_for is None and dpolicy.breaker is not None:
                breaker_for = detector.breaker
                breakers_get = detector._breakers.get
        else:
            classification = _DEFAULT_CLASSES
    elif breaker_for is None and detector is not None and detector.policy.breaker is not None:
        breaker_for = detector.breaker
    if budget is not None:
        budget.deposit()
    # The detector may take our clock reading of an attempt's end instead of its own.
    same_clock = detector is not None and detector._clock is clock
    request = balancer.request if balancer is not None else None
    ctx: RequestContext | None = None
    retry_on = p.retry_on
    # Created on the first failure: the success path allocates neither.
    attempts: list[Attempt] = _NO_ATTEMPTS
    tried: set[ServiceEndpoint] | None = None
    retry_state: _RetryState | None = None
    last_result: _T | None = None
    has_result = False
    number = 0
    while True:
        number += 1
        remaining = deadline_at - (now() if number > 1 else start)
        error: BaseException | None = None
        if remaining <= 0:
            raise DeadlineExceeded(p.deadline or 0.0, list(attempts)) from _last_error(attempts)
        exclude = frozenset(tried) if (tried and p.different_endpoint) else _EMPTY
        try:
            if request is not None:
                ctx = request(key, exclude=exclude, record=False)
                endpoint = ctx.endpoint
            else:
                endpoint = pick(exclude=exclude)  # type: ignore[misc]  # pick or balancer
        except NoEndpointsAvailable as exc:
            if not exclude:
                if attempts:
                    raise RetryExhausted(attempts, "no endpoint to retry on") from exc
                raise
            if not p.reuse_endpoints:
                raise RetryExhausted(attempts, "no untried endpoint left") from exc
            if request is not None:
                ctx = request(key, exclude=_EMPTY, record=False)
                endpoint = ctx.endpoint
            else:
                endpoint = pick(exclude=_EMPTY)  # type: ignore[misc]
        permit: Permit | None = None
        try:
            if breakers_get is not None:
                breaker = breakers_get(endpoint) or breaker_for(endpoint)  # type: ignore[misc]
            else:
                breaker = breaker_for(endpoint) if breaker_for is not None else None
            t0 = now()
            if breaker is not None:
                try:
                    permit = breaker.acquire()
                except CircuitOpen as exc:
                    error = exc
                    kind = OutcomeKind.CONNECT_FAILURE  # never sent: re-pick elsewhere
                    if ctx is not None:
                        ctx.finish(_CANCELLED)  # picked, not sent: no outcome
            if error is None:
                timeout: float | None = (
                    remaining if p.per_try_timeout is None else min(p.per_try_timeout, remaining)
                )
                if timeout == math.inf:
                    timeout = None
                if per_try:
                    override = per_try.get(endpoint.id)
                    if override is not None:
                        timeout = override if timeout is None else min(timeout, override)
        except BaseException:
            if ctx is not None:
                ctx.finish(_CANCELLED)
            raise
        if error is None:
            try:
                result = call(endpoint, timeout)
            except Exception as exc:
                if ctx is not None:
                    ctx.finish(exc)
                duration = now() - t0
                error = exc
                kind = classify(error=exc, policy=classification)
                _record(
                    detector,
                    permit,
                    endpoint,
                    classification,
                    kind,
                    duration=duration,
                    error=exc,
                    status=None,
                )
            except BaseException as exc:
                if ctx is not None:
                    ctx.finish(exc)
                if permit is not None:
                    permit.release()
                raise
            else:
                status = status_of(result) if status_of is not None else None
                if status is None:
                    if ctx is not None:
                        ctx.finish(None)
                    end = now()
                    duration = end - t0
                    kind = OutcomeKind.SUCCESS
                    if detector is not None:
                        detector.record(
                            endpoint,
                            success=True,
                            duration=duration,
                            permit=permit,
                            now=end if same_clock else None,
                        )
                    elif permit is not None:
                        permit.success(duration)
                    return result
                if status_outcome is not None:  # detector is not None
                    kind, failed = by_status.get(status) or status_outcome(status)
                    if ctx is not None:
                        if failed:
                            ctx.fail(status=status)
                        ctx.finish(None)
                    end = now()
                    duration = end - t0
                    detector.record(  # type: ignore[union-attr]
                        endpoint,
                        success=not failed,
                        duration=duration,
                        status=status,
                        permit=permit,
                        now=end if same_clock else None,
                    )
                    if kind not in retry_on:
                        return result
                    last_result, has_result = result, True
                else:
                    kind = classify(status=status, policy=classification)
                    if ctx is not None:
                        if classification.is_failure(kind):
                            ctx.fail(status=status)
                        ctx.finish(None)
                    duration = now() - t0
                    _record(
                        detector,
                        permit,
                        endpoint,
                        classification,
                        kind,
                        duration=duration,
                        error=None,
                        status=status,
                    )
                    if kind not in retry_on:
                        return result
                    last_result, has_result = result, True
        if tried is None:  # the first failure: only failures get here
            tried = set()
            attempts = []
        tried.add(endpoint)
        attempts.append(Attempt(number, endpoint.id, error, now() - t0))
        if error is not None:
            has_result = False
            if kind not in p.retry_on and not isinstance(error, CircuitOpen):
                raise error
        # Decide whether to try again.
        if not (kind in _NOT_SENT or p.is_idempotent(method, idempotent)):
            reason: str | None = "not idempotent"
        else:
            reason = None
        floor = 0.0
        if reason is None and p.respect_retry_after:
            after = _retry_after_from(error)
            if after is None and has_result and retry_after_of is not None:
                after = retry_after_of(last_result)  # type: ignore[arg-type]
            if after is not None:
                if after > p.max_retry_after:
                    reason = f"Retry-After {after:g}s exceeds {p.max_retry_after:g}s"
                floor = after
        delay = 0.0
        if reason is None:
            if retry_state is None:
                retry_state = _RetryState(p, start, rng or _RNG)
            reason, delay = retry_state.decide(number, now(), floor)
            if reason == "deadline":
                if has_result:
                    return last_result  # type: ignore[return-value]
                raise DeadlineExceeded(p.deadline or 0.0, attempts) from error
        if (
            reason is None
            and budget is not None
            and not isinstance(error, CircuitOpen)
            and not budget.try_withdraw()
        ):
            reason = "retry budget exhausted"
        if reason is not None:
            if has_result:
                return last_result  # type: ignore[return-value]
            raise RetryExhausted(attempts, reason) from error
        if delay > 0:
            (sleep or clock.sleep)(delay)


def _record(
    detector: FailureDetector | None,
    permit: Permit | None,
    endpoint: ServiceEndpoint,
    classification: ClassificationPolicy,
    kind: OutcomeKind,
    *,
    duration: float,
    error: BaseException | None,
    status: int | None,
) -> None:
    if detector is not None:
        detector.record(
            endpoint,
            success=not classification.is_failure(kind),
            duration=duration,
            error=error,
            status=status,
            permit=permit,
        )
    elif permit is not None:
        if kind is OutcomeKind.IGNORED:
            permit.release()
        elif classification.is_failure(kind):
            permit.failure(error, duration)
        else:
            permit.success(duration)


def _last_error(attempts: list[Attempt]) -> BaseException | None:
    return attempts[-1].error if attempts else None


_DEFAULT_POLICY = RetryPolicy()
_DEFAULT_CLASSES = ClassificationPolicy()


def retry_until(
    fn: Callable[[], _T],
    *,
    timeout: float,
    retriable: Callable[[BaseException], bool],
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    base: float = 0.1,
    cap: float = 2.0,
    cancel: threading.Event | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> _T:
    """Call ``fn`` until it succeeds, retrying ``retriable`` errors for ``timeout`` seconds.

    For one operation against one target (the agent at start-up), where :func:`execute`'s
    endpoint picking does not apply. Waits use equal-jitter exponential backoff
    (``base * 2**n`` capped at ``cap``, half of it random) and never run past the deadline;
    they go through ``clock.wait(cancel, ...)``, so setting ``cancel`` stops the retries at
    once and a FakeClock makes them instantaneous.

    Args:
        fn: the operation.
        timeout: seconds from now after which the last error is raised.
        retriable: whether an error is worth another attempt; others are raised at once.
        clock: time and waiting.
        rng: randomness for the jitter.
        base: the first backoff step, in seconds.
        cap: the largest backoff step.
        cancel: set it to give up (the last error is raised).
        on_retry: called with ``(attempt_number, error, delay)`` before each wait.

    Returns:
        What ``fn`` returned.

    Raises:
        BaseException: the last error, when it is not retriable, the deadline passed or
            ``cancel`` was set.

    Thread-safe: keeps no state between calls (a fresh tenacity ``Retrying`` per call).
    """
    jitter = rng or random.Random()
    stop_event = cancel or threading.Event()
    deadline = clock.monotonic() + timeout

    def stop(_: tenacity.RetryCallState) -> bool:
        return stop_event.is_set() or clock.monotonic() >= deadline

    def wait(state: tenacity.RetryCallState) -> float:
        step = min(cap, base * 2.0 ** (int(state.attempt_number) - 1))
        delay = step / 2 + jitter.uniform(0, step / 2)
        return max(0.0, min(delay, deadline - clock.monotonic()))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if on_retry is not None and error is not None:
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            on_retry(int(state.attempt_number), error, float(delay))

    def sleep(seconds: float) -> None:
        clock.wait(stop_event, seconds)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retriable),
        stop=stop,
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
