"""The retry loop for coroutines: :func:`run_call_async`, the sibling of ``run_call``.

Same admission (``Route.request``: pick + breaker permit, synchronous, so no other task runs
between the pick and the permit), same :class:`~lake_mesh_consul._core.retry.RetryState`,
budget, classifier and backoff as :func:`lake_mesh_consul._core.retry.run_call`; the
decisions are that module's helpers, called from here. Only the two places that wait differ:
the attempt is awaited and the backoff is an ``await sleep(seconds)``.

Cancellation: a cancelled attempt (``asyncio.CancelledError`` while the attempt runs) is
ended with ``cancel()``: its breaker permit and outstanding count are released and no outcome
is recorded. The CancelledError propagates unchanged, so ``asyncio.timeout`` and
``asyncio.wait_for`` around a call work as they do around any coroutine. A cancellation
during the backoff has no attempt in flight to release.

No I/O and no event loop is touched here besides ``asyncio.sleep`` (the default ``sleep``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from lake_mesh_consul._core.breaker import monotonic_of
from lake_mesh_consul._core.clock import Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.outcome import SUCCESS, Classifier
from lake_mesh_consul._core.retry import (
    NO_RESULT,
    Admit,
    CallOptions,
    RetryBudget,
    RetryPolicy,
    RetryState,
    _capped,
    _first_timeout,
    _retry_attempt,
    after_failure,
)

__all__ = ["AsyncSleep", "run_call_async"]

_T = TypeVar("_T")

#: Waiting in a coroutine: ``await sleep(seconds)`` (``asyncio.sleep`` by default).
AsyncSleep = Callable[[float], Awaitable[None]]


async def run_call_async(
    admit: Admit,
    fn: Callable[[ServiceEndpoint, float | None], Awaitable[_T]],
    options: CallOptions,
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    classifier: Classifier,
    clock: Clock,
    sleep: AsyncSleep | None = None,
    rng: random.Random | None = None,
    cap_of: Callable[[ServiceEndpoint], float | None] | None = None,
    on_retry: Callable[[int, str | None], None] | None = None,
) -> _T:
    """The retry loop of ``Route.acall``: ``run_call`` with the attempt and backoff awaited.

    Admit, ``await fn(endpoint, timeout)``, classify once, report, then ask the
    :class:`~lake_mesh_consul._core.retry.RetryState` (and the budget) whether to wait and
    go again. Returns and raises as ``Route.call``; an ``asyncio.CancelledError`` (or any
    other BaseException) during an attempt cancels that attempt (permit and outstanding
    count released, no outcome) and propagates unchanged. ``on_retry`` as for ``run_call``.
    """
    if budget is not None:
        budget.deposit()
    state: RetryState | None = None
    now = monotonic_of(clock)
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
            result = await fn(attempt.endpoint, timeout)
        except Exception as exc:
            outcome = classifier.of_error(exc)
            attempt.report(outcome)
            if outcome.kind not in policy.retry_on:
                raise
            has_result = False
        except BaseException:  # CancelledError: no outcome, the permit goes back
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
            await (sleep or asyncio.sleep)(state.wait)
