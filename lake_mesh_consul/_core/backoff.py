"""The one backoff of the library: how long to pause after the n-th consecutive failure.

Every loop that waits after a failure uses :class:`Backoff`: the watch engine between
failed blocking queries, the health-check manager between failed TTL pushes, and the
request path between retries (:class:`~lake_mesh_consul._core.retry.RetryState`).

``ceiling(n) = min(cap, base * multiplier ** (n - 1))`` for ``n >= 1`` (0 for ``n <= 0``),
then a jitter mode (AWS architecture blog, "Exponential Backoff And Jitter"):

======== ====================================== ==========================================
jitter   delay(n)                               used by
======== ====================================== ==========================================
full     ``uniform(0, ceiling(n))``             watch errors, request retries (Envoy)
equal    ``ceiling(n)/2 + uniform(0, ceiling/2)`` heartbeats (never retry at once)
none     ``ceiling(n)``                         tests, deterministic schedules
======== ====================================== ==========================================

Pure: the randomness is the caller's ``rng``; no clock, no sleeping.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from lake_mesh_consul.errors import InvalidSetting

__all__ = ["DEFAULT_BACKOFF_BASE", "DEFAULT_BACKOFF_CAP", "Backoff", "Jitter"]

#: The first ceiling (seconds) when none is given: 100 ms suits a local agent.
DEFAULT_BACKOFF_BASE = 0.1
#: The largest ceiling (seconds) when none is given.
DEFAULT_BACKOFF_CAP = 5.0

#: The jitter modes (see the module docstring's table).
Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: the pause after the n-th consecutive failure.

    Attributes:
        base: the ceiling of the first pause (seconds, >= 0; 0 never pauses).
        cap: the largest ceiling (seconds, >= base).
        multiplier: growth of the ceiling per failure (>= 1).
        jitter: ``"full"`` (default), ``"equal"`` or ``"none"``.

    Raises:
        InvalidSetting: on construction, for values outside the ranges above (it is a
            ``ValueError`` too).

    Thread-safety: immutable; the ``rng`` given to :meth:`delay` is the caller's.

    Example:
        >>> import random
        >>> Backoff().ceiling(1), Backoff().ceiling(10)
        (0.1, 5.0)
        >>> 0 <= Backoff().delay(3, random.Random(7)) <= 0.4
        True
        >>> Backoff(0.2, 2.0, jitter="none").delay(2, random.Random())
        0.4
    """

    base: float = DEFAULT_BACKOFF_BASE
    cap: float = DEFAULT_BACKOFF_CAP
    multiplier: float = 2.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= self.base and self.multiplier >= 1):
            raise InvalidSetting(
                "backoff", f"needs 0 <= base <= cap and multiplier >= 1; got {self!r}"
            )
        if self.jitter not in ("full", "equal", "none"):
            raise InvalidSetting("backoff.jitter", f"must be full, equal or none: {self.jitter!r}")

    def ceiling(self, failures: int) -> float:
        """The upper bound of the pause after ``failures`` consecutive failures (0 for 0)."""
        if failures <= 0 or self.base == 0:
            return 0.0
        exponent = failures - 1
        if self.multiplier == 1:
            return min(self.cap, self.base)
        # Compare exponents rather than compute a power that can overflow.
        if exponent <= math.log(self.cap / self.base, self.multiplier):
            return min(self.cap, self.base * self.multiplier**exponent)
        return self.cap

    def delay(self, failures: int, rng: random.Random) -> float:
        """The pause after ``failures`` consecutive failures, jittered per :attr:`jitter`."""
        ceiling = self.ceiling(failures)
        if self.jitter == "full":
            return rng.uniform(0.0, ceiling)
        if self.jitter == "equal":
            return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
        return ceiling
