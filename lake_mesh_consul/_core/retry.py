"""Retries: :class:`RetryPolicy`, :class:`RetryState`, :class:`RetryBudget`, Retry-After.

* :class:`RetryPolicy` (frozen): how many attempts, which failure kinds, which methods are
  idempotent, per-try timeout and deadline, backoff bounds, Retry-After handling.
* :class:`RetryState` (immutable, urllib3's ``Retry.increment`` model): one call's history;
  ``increment(endpoint, outcome, ...)`` returns the next state, which says how long to wait
  or why to stop. The backoff is the library's one
  :class:`~lake_mesh_consul._core.backoff.Backoff` (full jitter, Envoy's 25 ms .. 250 ms).
* :class:`RetryBudget` (Finagle's): retries bounded to a share of requests plus a reserve;
  :class:`BudgetPolicy` is its settings as a value.
* :func:`parse_retry_after`: a ``Retry-After`` header in seconds.
* :func:`retry_until`: one operation against one target until a deadline (the agent at
  start-up), on tenacity with the equal-jitter :class:`Backoff`.
* :func:`execute`: a thin wrapper running the route's retry loop
  (:func:`lake_mesh_consul._core.route.run_call`) over a pick function and breakers, for
  code without a :class:`~lake_mesh_consul._core.route.Route`.

Retry rules (the loop is in ``route.py``): retry only a failure kind in ``retry_on``; only
when the call is idempotent, or the request was never sent (a connect failure: urllib3
retries connect errors for any method too); while attempts remain, the budget allows it and
the backoff (or the server's longer Retry-After) ends before the deadline. When attempts run
out on a *response* with a retriable status, that response is returned (as Envoy does); on
an *exception*, :class:`~lake_mesh_consul.errors.RetryExhausted` is raised with every
:class:`~lake_mesh_consul.errors.Attempt`, chained to the last error.

tenacity is imported only in this module, by :func:`retry_until` on its first call (the
request path never needs it; importing it costs about 5% of ``import lake_mesh_consul.mesh``).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from lake_mesh_consul._core.backoff import Backoff
from lake_mesh_consul._core.balancer import LoadBalancer, RequestContext
from lake_mesh_consul._core.breaker import CircuitBreaker, Permit, monotonic_of
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.detector import FailureDetector
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.outcome import (
    SUCCESS,
    ClassificationPolicy,
    Classifier,
    Outcome,
    OutcomeKind,
)
from lake_mesh_consul._core.retry_after import parse_retry_after
from lake_mesh_consul._core.strategies import Key
from lake_mesh_consul.errors import (
    Attempt,
    CircuitOpen,
    DeadlineExceeded,
    InvalidSetting,
    NoEndpointsAvailable,
    RetryExhausted,
)

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "DEFAULT_ALLOWED_METHODS",
    "DEFAULT_RETRY_ON",
    "NO_RESULT",
    "Admitted",
    "BudgetPolicy",
    "CallOptions",
    "ExcludingPick",
    "RetryBudget",
    "RetryPolicy",
    "RetryState",
    "after_failure",
    "execute",
    "parse_retry_after",
    "retry_until",
    "run_call",
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
#: The jitter of calls made without an rng of their own.
_RNG = random.Random()


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


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where one call's retries stand: an immutable value, like urllib3's ``Retry``.

    :meth:`increment` takes the outcome of the attempt that just ended and returns the
    next state, which answers "wait how long, or stop, and why": :attr:`stop` is ``None``
    to go on after :attr:`wait` seconds, else the reason. The history of attempts and the
    endpoints already tried travel with it. The backoff is the library's one
    :class:`~lake_mesh_consul._core.backoff.Backoff` (full jitter, ``backoff_base`` ..
    ``backoff_max``).

    Attributes:
        policy: the call's policy.
        started: monotonic time the call started (the deadline counts from it).
        history: every attempt so far (:class:`~lake_mesh_consul.errors.Attempt`).
        tried: the endpoints already tried.
        wait: seconds to wait before the next attempt (when :attr:`stop` is None).
        stop: why no further attempt is made, or None.

    Example:
        >>> import random
        >>> from lake_mesh_consul._core.outcome import Classifier
        >>> ep = ServiceEndpoint.create("w1", "10.0.0.1", 80)
        >>> state = RetryState.begin(RetryPolicy(attempts=2), now=0.0)
        >>> state = state.increment(ep, Classifier().of_status(503), duration=0.1, now=0.1,
        ...                         idempotent=True, rng=random.Random(1))
        >>> state.stop is None, state.wait <= 0.025
        (True, True)
        >>> state.increment(ep, Classifier().of_status(503), duration=0.1, now=0.2,
        ...                 idempotent=True, rng=random.Random(1)).stop
        'attempts exhausted'
    """

    policy: RetryPolicy
    started: float
    history: tuple[Attempt, ...] = ()
    tried: frozenset[ServiceEndpoint] = frozenset()
    wait: float = 0.0
    stop: str | None = None

    @classmethod
    def begin(cls, policy: RetryPolicy, *, now: float) -> RetryState:
        """The state before the first attempt of a call starting at ``now``."""
        return cls(policy, now)

    @property
    def deadline_at(self) -> float:
        """Monotonic time the call's deadline ends (``inf`` without a deadline)."""
        deadline = self.policy.deadline
        return math.inf if deadline is None else self.started + deadline

    @property
    def exclude(self) -> frozenset[ServiceEndpoint]:
        """What the next pick avoids: the endpoints tried (if the policy says so)."""
        return self.tried if self.policy.different_endpoint else _EMPTY

    def timeout(self, now: float, cap: float | None = None) -> float | None:
        """Seconds the next attempt may take: per-try timeout, time left, ``cap``.

        Raises:
            DeadlineExceeded: no time is left.
        """
        remaining = self.deadline_at - now
        if remaining <= 0:
            last = self.history[-1].error if self.history else None
            raise DeadlineExceeded(self.policy.deadline or 0.0, self.history) from last
        per_try = self.policy.per_try_timeout
        timeout: float | None = remaining if per_try is None else min(per_try, remaining)
        if timeout == math.inf:
            timeout = None
        if cap is not None:
            timeout = cap if timeout is None else min(timeout, cap)
        return timeout

    def increment(
        self,
        endpoint: ServiceEndpoint,
        outcome: Outcome,
        *,
        duration: float,
        now: float,
        idempotent: bool,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> RetryState:
        """The state after an attempt to ``endpoint`` that ended with ``outcome``.

        Stops (with the reason) when: the outcome's kind is not retried; the request may
        have been sent and the call is not idempotent; the attempts are used up; the
        server's Retry-After is longer than ``max_retry_after``; or the backoff (at least
        the Retry-After) would end past the deadline (``"deadline"``). The retry budget is
        the caller's to consult (it is shared state, not part of this value).
        """
        p = self.policy
        history = (
            *self.history,
            Attempt(len(self.history) + 1, endpoint.id, outcome.error, duration),
        )
        tried = self.tried | {endpoint}
        reason: str | None = None
        wait = 0.0
        floor = 0.0
        if outcome.kind not in p.retry_on:
            reason = f"{outcome.kind.value} is not retried"
        elif outcome.sent and not idempotent:
            reason = "not idempotent"
        elif p.respect_retry_after and retry_after is not None:
            if retry_after > p.max_retry_after:
                reason = f"Retry-After {retry_after:g}s exceeds {p.max_retry_after:g}s"
            floor = retry_after
        if reason is None and len(history) >= p.attempts:
            reason = "attempts exhausted"
        if reason is None:
            backoff = Backoff(p.backoff_base, p.backoff_max)
            wait = max(backoff.delay(len(history), rng or _RNG), floor)
            if now + wait >= self.deadline_at:
                reason = "deadline"
        return RetryState(p, self.started, history, tried, wait, reason)

    def stopped(self, reason: str) -> RetryState:
        """This state, stopped for ``reason`` (e.g. the retry budget is empty)."""
        return replace(self, stop=reason, wait=0.0)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The settings of a :class:`RetryBudget` (Finagle's), as a value.

    Attributes:
        ttl: seconds deposits and withdrawals count, within [1, 60].
        min_retries_per_sec: retries always allowed per second (the reserve).
        percent_can_retry: share of requests that may be retried, in [0, 1000].
    """

    ttl: float = DEFAULT_BUDGET_TTL
    min_retries_per_sec: int = DEFAULT_BUDGET_MIN_RETRIES_PER_SEC
    percent_can_retry: float = DEFAULT_BUDGET_PERCENT_CAN_RETRY


class RetryBudget:
    """Finagle's retry budget: bounds retries to a share of requests plus a small reserve.

    Retries may be at most ``percent_can_retry`` of requests plus ``min_retries_per_sec``
    per second, both over the last ``ttl`` seconds. Every request deposits
    (:meth:`deposit`); every retry must :meth:`try_withdraw` first. Deposits
    and withdrawals expire after ``ttl`` (one-second buckets), so in any ``ttl`` window
    ``retries <= percent_can_retry * requests + min_retries_per_sec * ttl``: a failure storm
    cannot multiply the load by more than about 1.2.

    Thread-safe: withdrawals take a short lock, deposits none (see :meth:`deposit`); share
    one budget per client or per service.
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
        self._head = -1

    @classmethod
    def from_policy(cls, policy: BudgetPolicy, *, clock: Clock = SYSTEM_CLOCK) -> RetryBudget:
        """A budget with ``policy``'s settings."""
        return cls(
            ttl=policy.ttl,
            min_retries_per_sec=policy.min_retries_per_sec,
            percent_can_retry=policy.percent_can_retry,
            clock=clock,
        )

    @property
    def policy(self) -> BudgetPolicy:
        """The budget's settings as a value."""
        return BudgetPolicy(self.ttl, self.min_retries_per_sec, self.percent_can_retry)

    def _advance(self, now: float) -> None:
        """Expire the buckets of the seconds since the last advance. Lock held."""
        sec = int(now)
        head = self._head
        if sec <= head:
            return
        if head < 0 or sec - head >= self._n:
            self._dep = [0] * self._n
            self._wd = [0] * self._n
        else:
            for s in range(head + 1, sec + 1):
                i = s % self._n
                self._dep[i] = self._wd[i] = 0
        self._head = sec

    def deposit(self) -> None:
        """Count one request (call once per logical request, before its first attempt).

        Takes no lock within a second (the lock only expires old buckets, once a second):
        this is on every request. Two threads depositing at the same instant may count
        one (the list item's ``+=`` is not atomic): the error is a retry fewer, never more.
        """
        sec = int(self._now())
        if sec > self._head:  # a new second: expire old buckets (rare on a busy path)
            with self._lock:
                self._advance(sec)
        self._dep[sec % self._n] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) if it is empty."""
        with self._lock:
            self._advance(self._now())
            if self._scaled_balance() < self._SCALE:
                return False
            self._wd[self._head % self._n] += 1
            return True

    def balance(self) -> int:
        """Retries that could be withdrawn right now."""
        with self._lock:
            self._advance(self._now())
            return max(0, self._scaled_balance() // self._SCALE)

    def _scaled_balance(self) -> int:
        """Deposits' share plus the reserve, less withdrawals, in units of 1/_SCALE retry.

        Call with the lock held, after ``_advance``. Sums the buckets (at most 60): only
        retries and reads come here, so deposits need no running total.
        """
        return sum(self._dep) * self._deposit_weight + self._reserve - sum(self._wd) * self._SCALE

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ttl={self.ttl:g}, min_retries_per_sec={self.min_retries_per_sec}, "
            f"percent_can_retry={self.percent_can_retry:g})"
        )


class CallOptions(NamedTuple):
    """What one ``Route.call`` needs to know about the call itself (an immutable value).

    A named tuple rather than a frozen dataclass: one is built per call, and a tuple is
    built in C (a frozen dataclass sets each field through ``object.__setattr__``).

    Attributes:
        key: the hash key for ``ring_hash`` and ``maglev``.
        idempotent: whether the call is safe to repeat after it may have been sent.
        status_of: the HTTP status of a result (5xx/429 results count as failures).
        retry_after_of: the Retry-After of a result, in seconds.
        replayable: False for a call that cannot be repeated at all (a streamed body).
    """

    key: Key = None
    idempotent: bool = False
    status_of: Callable[[Any], int | None] | None = None
    retry_after_of: Callable[[Any], float | None] | None = None
    replayable: bool = True


class Admitted(Protocol):
    """One admitted attempt as the retry loop needs it (a ``RouteRequest``, typically)."""

    endpoint: ServiceEndpoint
    started: float

    @property
    def duration(self) -> float:
        """Seconds from the start to the finish (to now while in flight)."""
        ...

    def report(self, outcome: Outcome) -> None:
        """Finish with ``outcome`` (balancer figures, detector, breaker), once."""
        ...

    def cancel(self) -> None:
        """End without an outcome (never sent)."""
        ...


_DEFAULT_OPTIONS = CallOptions()

#: Admission as :func:`run_call` uses it: ``admit(key, exclude=...) -> an Admitted``
#: (``Route.request``; :func:`execute`'s pick function and breakers).
Admit = Callable[..., "Admitted"]


def run_call(
    admit: Admit,
    fn: Callable[[ServiceEndpoint, float | None], _T],
    options: CallOptions,
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    classifier: Classifier,
    clock: Clock,
    sleep: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
    cap_of: Callable[[ServiceEndpoint], float | None] | None = None,
    on_retry: Callable[[int, str | None], None] | None = None,
) -> _T:
    """The retry loop of ``Route.call``, over any admission (:func:`execute` uses it too).

    Admit, call, classify once, report, then ask the :class:`RetryState` (and the budget)
    whether to wait and go again. See :meth:`lake_mesh_consul._core.route.Route.call` for
    returns and errors. ``on_retry(attempt, stop)`` hears each decision after a retriable
    failure: ``stop`` is None for a retry, else why not (``"retry budget exhausted"``...).
    """
    if budget is not None:
        budget.deposit()
    # The success path reads no clock here and builds no RetryState: the first failure
    # does, from the first attempt's start (admissions stamp it on ``clock``).
    state: RetryState | None = None
    now = monotonic_of(clock)  # a function: called only once something failed
    first_timeout = _first_timeout(policy)
    key = options.key
    while True:
        if state is None:
            attempt = admit(key)
            timeout = first_timeout
            if cap_of is not None:
                timeout = _capped(timeout, cap_of(attempt.endpoint))
        else:
            attempt, timeout = _retry_attempt(admit, key, state, cap_of, now())
        try:
            result = fn(attempt.endpoint, timeout)
        except Exception as exc:
            outcome = classifier.of_error(exc)
            attempt.report(outcome)
            if outcome.kind not in policy.retry_on:
                raise
            has_result = False
        except BaseException:
            attempt.cancel()
            raise
        else:
            status_of = options.status_of
            status = None if status_of is None else status_of(result)
            outcome = SUCCESS if status is None else classifier.of_status(status)
            attempt.report(outcome)
            if status is None or outcome.kind not in policy.retry_on:
                return result
            has_result = True
        state = after_failure(
            state,
            attempt,
            outcome,
            options,
            result if has_result else NO_RESULT,
            policy=policy,
            budget=budget,
            now=now(),
            rng=rng,
            on_retry=on_retry,
        )
        if state.stop is not None:
            return result  # retries stopped on a response: the last one is the answer
        if state.wait > 0:
            (sleep or clock.sleep)(state.wait)


#: :func:`after_failure`'s ``result`` when the attempt raised (it returned nothing).
NO_RESULT: Any = object()


def after_failure(
    state: RetryState | None,
    attempt: Admitted,
    outcome: Outcome,
    options: CallOptions,
    result: Any,
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    now: float,
    rng: random.Random | None,
    on_retry: Callable[[int, str | None], None] | None,
) -> RetryState:
    """The retry decision after a failed attempt, shared by the sync and async call loops.

    ``result`` is what the attempt returned (a retriable status), or ``NO_RESULT`` when it
    raised. Returns the next state: ``stop`` None means wait ``state.wait`` and go again;
    a stopped state is returned only for a returned result (the caller returns it, as
    Envoy returns the last response). Raises the stop (:func:`_raise_stopped`) when the
    attempt raised.
    """
    returned = result is not NO_RESULT
    state = _next_state(
        state or RetryState.begin(policy, now=attempt.started),
        attempt,
        outcome,
        options,
        result if returned else None,
        budget=budget,
        now=now,
        rng=rng,
    )
    if on_retry is not None:
        on_retry(len(state.history), state.stop)
    if state.stop is not None and not returned:
        _raise_stopped(state, outcome)
    return state


def _capped(timeout: float | None, cap: float | None) -> float | None:
    if cap is None:
        return timeout
    return cap if timeout is None else min(timeout, cap)


def _retry_attempt(
    admit: Admit,
    key: Key,
    state: RetryState,
    cap_of: Callable[[ServiceEndpoint], float | None] | None,
    now: float,
) -> tuple[Admitted, float | None]:
    """Admit a retry and give it its seconds (what the deadline leaves, capped)."""
    attempt = _admit(admit, key, state)
    try:
        return attempt, state.timeout(now, cap_of(attempt.endpoint) if cap_of else None)
    except BaseException:
        attempt.cancel()
        raise


def _next_state(
    state: RetryState,
    attempt: Admitted,
    outcome: Outcome,
    options: CallOptions,
    result: Any,
    *,
    budget: RetryBudget | None,
    now: float,
    rng: random.Random | None,
) -> RetryState:
    """The retry state after ``attempt`` failed with ``outcome``; the budget has the last say."""
    if outcome.error is not None:
        retry_after = _retry_after_of_error(outcome.error)
    elif options.retry_after_of is not None:
        retry_after = options.retry_after_of(result)
    else:
        retry_after = None
    state = state.increment(
        attempt.endpoint,
        outcome,
        duration=attempt.duration,
        now=now,
        idempotent=options.idempotent,
        retry_after=retry_after,
        rng=rng,
    )
    if state.stop is None and budget is not None and not budget.try_withdraw():
        return state.stopped("retry budget exhausted")
    return state


def _first_timeout(policy: RetryPolicy) -> float | None:
    """The first attempt's seconds: the per-try timeout, capped by the deadline."""
    per_try, deadline = policy.per_try_timeout, policy.deadline
    if per_try is None:
        return deadline
    return per_try if deadline is None else min(per_try, deadline)


def _admit(admit: Admit, key: Key, state: RetryState) -> Admitted:
    """Admit the next attempt: untried endpoints first, then any (``reuse_endpoints``)."""
    exclude = state.exclude
    try:
        return admit(key, exclude=exclude)
    except NoEndpointsAvailable as exc:
        if not exclude:
            if state.history:
                raise RetryExhausted(state.history, "no endpoint to retry on") from exc
            raise
        if not state.policy.reuse_endpoints:
            raise RetryExhausted(state.history, "no untried endpoint left") from exc
        return admit(key, exclude=_EMPTY)


def _raise_stopped(state: RetryState, outcome: Outcome) -> None:
    if state.stop == "deadline":
        raise DeadlineExceeded(state.policy.deadline or 0.0, state.history) from outcome.error
    raise RetryExhausted(state.history, state.stop or "") from outcome.error


def _retry_after_of_error(error: BaseException) -> float | None:
    if isinstance(error, CircuitOpen):
        return None
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


class ExcludingPick(Protocol):
    """Picks an endpoint not in ``exclude``; raises NoEndpointsAvailable when none is left."""

    def __call__(self, *, exclude: frozenset[ServiceEndpoint]) -> ServiceEndpoint:
        """Pick one endpoint."""
        ...


class _PickedAttempt:
    """An attempt admitted by :func:`execute`'s pick function and breaker (no route)."""

    __slots__ = ("_ctx", "_detector", "_now", "ended", "endpoint", "permit", "started")

    def __init__(
        self,
        endpoint: ServiceEndpoint,
        permit: Permit | None,
        detector: FailureDetector | None,
        ctx: RequestContext | None,
        now: Callable[[], float],
    ) -> None:
        self.endpoint = endpoint
        self.permit = permit
        self._detector = detector
        self._ctx = ctx
        self._now = now
        self.started = now()
        self.ended: float | None = None

    @property
    def duration(self) -> float:
        """Seconds from the start to the finish (to now while in flight)."""
        return (self.ended if self.ended is not None else self._now()) - self.started

    def report(self, outcome: Outcome) -> None:
        """Finish with ``outcome``: balancer figures, detector, breaker (once each)."""
        if self.ended is not None:
            return
        end = self.ended = self._now()
        ctx = self._ctx
        if ctx is not None:
            if outcome.failure:
                ctx.fail(status=outcome.status, error=outcome.error)
            ctx.finish(None)
        duration = end - self.started
        if self._detector is not None:
            self._detector.record_outcome(self.endpoint, outcome, duration, permit=self.permit)
        elif self.permit is not None:
            if outcome.ignored:
                self.permit.release()
            else:
                self.permit.breaker.report(
                    self.permit, failure=outcome.failure, duration=duration, error=outcome.error
                )

    def cancel(self) -> None:
        """End without an outcome (never sent)."""
        if self.ended is not None:
            return
        self.ended = self._now()
        if self._ctx is not None:
            self._ctx.cancel()
        if self.permit is not None:
            self.permit.release()


def _pick_admission(
    pick: ExcludingPick | None,
    balancer: LoadBalancer | None,
    detector: FailureDetector | None,
    breaker_for: Callable[[ServiceEndpoint], CircuitBreaker | None] | None,
    now: Callable[[], float],
) -> Callable[..., _PickedAttempt]:
    """Admission from a pick function (or a bare balancer) and a breaker lookup."""
    if breaker_for is None and detector is not None:
        breaker_for = detector.breaker

    def admit(key: Key, *, exclude: frozenset[ServiceEndpoint] = _EMPTY) -> _PickedAttempt:
        refused = exclude
        while True:
            if balancer is not None:
                endpoint = balancer.pick(key, exclude=refused)
            else:
                endpoint = pick(exclude=refused)  # type: ignore[misc]  # pick or balancer
            breaker = breaker_for(endpoint) if breaker_for is not None else None
            try:
                permit = breaker.acquire() if breaker is not None else None
            except CircuitOpen as exc:
                if endpoint in refused:  # a pick function that ignores exclude
                    raise NoEndpointsAvailable(endpoint.service, "breakers open") from exc
                refused = refused | {endpoint}
                continue
            ctx = None
            if balancer is not None:
                ctx = RequestContext(balancer, endpoint, balancer.stats_of(endpoint), record=False)
            return _PickedAttempt(endpoint, permit, detector, ctx, now)

    return admit


def execute(
    pick: ExcludingPick | None,
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
    """Run ``call(endpoint, timeout)`` with breakers, detection and retries, without a route.

    A thin wrapper over the route's retry loop
    (:func:`~lake_mesh_consul._core.route.run_call`) for code that has a pick function
    (``pick(exclude=...)``) or a bare balancer, and breakers (``breaker_for``, else the
    detector's) instead of a :class:`~lake_mesh_consul._core.route.Route`. Prefer
    ``Route.call``. Outcomes are classified with ``classification`` (default: the
    detector's) and recorded once to the detector (with the breaker's permit). A breaker
    that refuses its endpoint makes the pick go elsewhere; nothing is sent there.

    Returns and raises as :meth:`~lake_mesh_consul._core.route.Route.call`; ``TypeError``
    without ``pick`` or ``balancer``.
    """
    if pick is None and balancer is None:
        raise TypeError("execute() needs pick or balancer")
    p = policy or _DEFAULT_POLICY
    if classification is not None:
        classifier = Classifier(classification)
    else:
        classifier = detector.classifier if detector is not None else _DEFAULT_CLASSIFIER
    admit = _pick_admission(pick, balancer, detector, breaker_for, monotonic_of(clock))
    options = CallOptions(
        key=key,
        idempotent=p.is_idempotent(method, idempotent),
        status_of=status_of,
        retry_after_of=retry_after_of,
    )
    return run_call(
        admit,
        call,
        options,
        policy=p,
        budget=budget,
        classifier=classifier,
        clock=clock,
        sleep=sleep,
        rng=rng,
        cap_of=(lambda endpoint: per_try.get(endpoint.id)) if per_try else None,
    )


_DEFAULT_POLICY = RetryPolicy()
_DEFAULT_CLASSIFIER = Classifier()


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
    import tenacity  # here, not at the top: only this start-up retry uses it

    jitter = rng or random.Random()
    stop_event = cancel or threading.Event()
    deadline = clock.monotonic() + timeout

    def stop(_: tenacity.RetryCallState) -> bool:
        return stop_event.is_set() or clock.monotonic() >= deadline

    backoff = Backoff(base, max(cap, base), jitter="equal")

    def wait(state: tenacity.RetryCallState) -> float:
        delay = backoff.delay(int(state.attempt_number), jitter)
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
