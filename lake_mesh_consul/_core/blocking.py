"""Blocking-query rules that need no I/O: index, backoff, rate limit, read timeout.

Consul's blocking queries (https://developer.hashicorp.com/consul/api-docs/features/blocking,
"Implementation Details") come with rules a client must follow itself. They are written
here as small immutable values so that they can be tested in virtual time:

==========================  ==================================================================
rule                        value / function
==========================  ==================================================================
index >= 1                  :meth:`BlockingIndex.observe` clamps a returned index below 1 to 1
                            (index 0 is a server bug that makes every query return at once)
reset when it goes back     a returned index below the current one (raft snapshot restore,
                            agent restarted with its state wiped) resets the index to 0: the
                            next query does not block and re-reads the whole result
a return is no change       an unchanged index is not a change (:attr:`IndexStep.changed` is
                            false); the caller also compares results, so an equal result
                            notifies nobody
errors back off             :class:`~lake_mesh_consul._core.backoff.Backoff` (re-exported):
                            full-jitter exponential backoff (AWS architecture blog,
                            "Exponential Backoff And Jitter"), from 100 ms, capped at 5 s by
                            default
a refused connection waits  :data:`CONNECTION_LIMIT_BACKOFF`: when the agent closed a new
                            connection for its per-client limit, the next attempt waits 30-60
                            s (at most two a minute per watch: every process on the host
                            shares that limit, and sooner retries only keep it exhausted)
success is rate-limited     :class:`TokenBucket`: burst 2, a configurable refill rate, so a
                            server that answers at once forever cannot drive a busy loop
HTTP read timeout           :func:`read_timeout_for_wait`: ``wait + wait/16 + margin``, since
                            Consul adds up to ``wait/16`` of jitter to the wait
==========================  ==================================================================

Consul's own Go ``api/watch`` (``plan.go``) accepts whatever index comes back and only
resets when it goes backwards; go-kit's ``sd/consul`` instancer clamps to 1 but never rate
limits. We follow all of the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lake_mesh_consul._core.backoff import Backoff

__all__ = [
    "CONNECTION_LIMIT_BACKOFF",
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "Backoff",
    "BlockingIndex",
    "IndexStep",
    "TokenBucket",
    "read_timeout_for_wait",
    "validate_wait",
]

#: Consul caps a blocking query's wait at ten minutes.
MAX_WAIT = 600.0

#: The wait we ask for by default: at most one request per minute per idle watch, and a
#: dead connection noticed within about a minute (Consul's own default is five minutes).
DEFAULT_WAIT = 60.0

#: Added on top of ``wait + wait/16`` for network and scheduling delay.
DEFAULT_WAIT_MARGIN = 5.0


def read_timeout_for_wait(wait: float, margin: float = DEFAULT_WAIT_MARGIN) -> float:
    """The HTTP read timeout for a blocking query that waits ``wait`` seconds.

    It exceeds ``wait + wait/16`` (Consul's jitter) by ``margin``. ``wait`` is clamped to
    ``0..MAX_WAIT`` first.

    Example:
        >>> read_timeout_for_wait(16.0)
        22.0
    """
    wait = min(max(wait, 0.0), MAX_WAIT)
    return wait + wait / 16.0 + margin


def validate_wait(wait: float) -> float:
    """Return ``wait`` if it is a usable blocking wait (``0 < wait <= MAX_WAIT``).

    Raises:
        ValueError: the wait is not a finite number in ``(0, 600]`` seconds.
    """
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not math.isfinite(wait):
        raise ValueError(f"wait must be a number of seconds, got {wait!r}")
    if not 0 < wait <= MAX_WAIT:
        raise ValueError(f"wait must be in (0, {MAX_WAIT:g}] seconds (Consul's cap), got {wait:g}")
    return float(wait)


# --- the index ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexStep:
    """What one answer did to the index.

    Attributes:
        index: the index to use for the next query.
        changed: whether the answer may carry a new result (the index moved, or this was
            the first answer). False means "nothing happened": notify nobody, skip decoding.
        reset: whether the index went backwards and was reset to 0.
    """

    index: BlockingIndex
    changed: bool
    reset: bool


@dataclass(frozen=True, slots=True)
class BlockingIndex:
    """The ``X-Consul-Index`` state of one blocking query, as an immutable value.

    ``value`` 0 means "no index yet": the next query is not a blocking one. Every answer is
    fed to :meth:`observe`, which returns the next state and whether the answer may carry a
    change. The rules (Consul's "Implementation Details" for blocking queries):

    ====================================  ===========  =========  =======
    answer's index ``r`` (clamped to 1)   next value   changed    reset
    ====================================  ===========  =========  =======
    current is 0 (first answer)           ``r``        yes        no
    ``r`` > current                       ``r``        yes        no
    ``r`` == current                      current      **no**     no
    ``r`` < current (went backwards)      **0**        yes        yes
    ====================================  ===========  =========  =======

    Thread-safety: immutable.

    Example:
        >>> step = BlockingIndex().observe(0)   # a buggy server answering index 0
        >>> step.index.value, step.changed
        (1, True)
        >>> step.index.observe(1).changed
        False
    """

    value: int = 0

    @property
    def query_value(self) -> int | None:
        """The ``index`` query parameter to send, or ``None`` for a non-blocking read."""
        return self.value if self.value > 0 else None

    def observe(self, returned: int) -> IndexStep:
        """Apply the rules to the ``X-Consul-Index`` of one answer."""
        effective = max(int(returned), 1)
        if self.value == 0:
            return IndexStep(BlockingIndex(effective), changed=True, reset=False)
        if effective < self.value:
            return IndexStep(BlockingIndex(0), changed=True, reset=True)
        if effective == self.value:
            return IndexStep(self, changed=False, reset=False)
        return IndexStep(BlockingIndex(effective), changed=True, reset=False)


# --- errors: backoff -----------------------------------------------------------------------
#
# The pause after a failed attempt is the library's one Backoff (full jitter by default),
# re-exported here because it is one of the blocking-query rules.


#: The pause after the agent refused a connection for its per-client connection limit
#: (``limits.http_max_conns_per_client``): 30-60 s after the first refusal, then 60-120 s.
CONNECTION_LIMIT_BACKOFF = Backoff(base=60.0, cap=120.0, jitter="equal")


# --- success: the token bucket ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A token bucket as an immutable value: ``burst`` requests at once, then ``rate``/s.

    :meth:`reserve` takes one token at time ``now`` and returns the new bucket with the
    delay to wait before the request may be sent. Tokens may go negative (a debt), so
    concurrent reservations queue up fairly; the delay is ``debt / rate``.

    Attributes:
        rate: tokens added per second (> 0).
        burst: the bucket's capacity (>= 1).
        tokens: tokens held at ``at`` (starts full).
        at: the clock reading ``tokens`` refers to (``None``: not used yet).

    Thread-safety: immutable.

    Example:
        >>> bucket = TokenBucket(rate=10.0)
        >>> bucket, d1 = bucket.reserve(0.0)
        >>> bucket, d2 = bucket.reserve(0.0)
        >>> bucket, d3 = bucket.reserve(0.0)
        >>> d1, d2, round(d3, 3)
        (0.0, 0.0, 0.1)
    """

    rate: float = 10.0
    burst: int = 2
    tokens: float | None = None
    at: float | None = None

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1; got {self!r}")

    def level(self, now: float) -> float:
        """The tokens available at ``now`` (refilled, capped at ``burst``)."""
        if self.tokens is None or self.at is None:
            return float(self.burst)
        elapsed = max(0.0, now - self.at)
        return min(float(self.burst), self.tokens + elapsed * self.rate)

    def reserve(self, now: float) -> tuple[TokenBucket, float]:
        """Take one token at ``now``: the new bucket and the seconds to wait before sending."""
        tokens = self.level(now) - 1.0
        delay = 0.0 if tokens >= 0 else -tokens / self.rate
        return TokenBucket(self.rate, self.burst, tokens, now), delay
