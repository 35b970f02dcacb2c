"""Random draws: ``random``, and power of two choices on load (``least_request``, ``peak_ewma``).

What a reader finds here: :class:`RandomChoice` (uniform or weighted by slow start),
:class:`LeastRequest` (P2C on outstanding requests, Envoy ``LEAST_REQUEST``) and
:class:`PeakEwma` (P2C on peak-EWMA latency x load, Finagle/Linkerd). The two P2C
strategies differ only in their *cost* of an endpoint (:meth:`LeastRequest.cost`); they
share the full-scan, k-choices and walk code, and each keeps one hand-inlined two-choice
pick, the hot path. Every draw comes from an injectable :class:`random.Random`.
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Callable

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.loadstats import (
    DEFAULT_DECAY,
    DEFAULT_RTT,
    EndpointStats,
    StatsRegistry,
)
from lake_mesh_consul._core.strategies.base import (
    WALK_DRAWS,
    Accept,
    Key,
    PairedStrategy,
    PickFunction,
    Prepared,
    WalkFunction,
    constant_pair,
    extended,
    redraw_walker,
    uniform,
)

__all__ = [
    "DEFAULT_CHOICE_COUNT",
    "DEFAULT_FULL_SCAN_MAX",
    "LeastRequest",
    "PeakEwma",
    "RandomChoice",
]

#: Envoy's default number of random choices for least request.
DEFAULT_CHOICE_COUNT = 2
#: At or below this many candidates least_request compares all of them instead of sampling.
DEFAULT_FULL_SCAN_MAX = 4

_exp = math.exp
#: An endpoint's cost given its stats and the time: lower wins.
_Cost = Callable[[EndpointStats, float], float]


class RandomChoice(PairedStrategy):
    """A uniformly random endpoint (weighted by slow start), from an injectable RNG.

    Args:
        rng: a :class:`random.Random`; seed it for reproducible picks.

    Example:
        >>> import random
        >>> eps = tuple(ServiceEndpoint.create(f"w{i}", "10.0.0.1", 80 + i) for i in range(3))
        >>> RandomChoice(rng=random.Random(7)).pick(eps) in eps
        True
    """

    name = "random"

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        super().__init__(clock=clock, stats=stats)
        self._rng = rng or random.Random()

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """A draw, and a walk that draws again (then scans from a random start)."""
        if len(endpoints) == 1:
            return constant_pair(endpoints[0])
        rnd = self._rng.random
        eps = extended(endpoints)
        n = len(endpoints)
        pick: PickFunction
        if uniform(weights):

            def pick(key: Key = None) -> ServiceEndpoint:
                return eps[int(rnd() * n)]

        else:
            cumulative = tuple(itertools.accumulate(weights))
            total = cumulative[-1]

            def pick(key: Key = None) -> ServiceEndpoint:
                return eps[bisect_right(cumulative, rnd() * total)]

        def start(key: Key) -> int:
            return int(rnd() * n) % n

        return pick, redraw_walker(pick, endpoints, start)


class LeastRequest(PairedStrategy):
    """Power of two choices on outstanding requests (Envoy ``LEAST_REQUEST``).

    Samples ``choice_count`` distinct endpoints at random and takes the one with the fewest
    outstanding requests (divided by its weight when weights differ, e.g. in slow start);
    at or below ``full_scan_max`` candidates it compares them all. P2C avoids the herd
    behaviour of a full "least loaded" scan across many clients (Mitzenmacher, "The Power
    of Two Choices in Randomized Load Balancing").

    Args:
        choice_count: endpoints sampled per pick (Envoy's default 2).
        full_scan_max: compare every candidate at or below this many.
        rng: a :class:`random.Random` for the sampling.
    """

    name = "least_request"

    def __init__(
        self,
        *,
        choice_count: int = DEFAULT_CHOICE_COUNT,
        full_scan_max: int = DEFAULT_FULL_SCAN_MAX,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if choice_count < 2:
            raise ValueError(f"choice_count must be >= 2, got {choice_count}")
        super().__init__(clock=clock, stats=stats)
        self.choice_count = choice_count
        self.full_scan_max = full_scan_max
        self._rng = rng or random.Random()

    def cost(self, st: EndpointStats, now: float) -> float:
        """The load an endpoint would carry with this request: ``outstanding + 1``."""
        return float(st.outstanding + 1)

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The choice, and a walk doing the same choice among the accepted endpoints."""
        n = len(endpoints)
        if n == 1:
            return constant_pair(endpoints[0])
        rnd = self._rng.random
        inverse = None if uniform(weights) else extended(tuple(1.0 / w for w in weights))
        inv = inverse or (1.0,) * (n + 1)
        full = n <= self.full_scan_max or self.choice_count >= n
        pick: PickFunction
        if full:
            pick = self._scan_pick(endpoints, stats, inv, rnd)
        elif self.choice_count == 2:
            pick = self._two_choices(endpoints, stats, inverse, rnd)
        else:
            pick = self._k_choices(endpoints, stats, inv)
        return pick, self._walker(endpoints, stats, inv, rnd, draws=0 if full else WALK_DRAWS)

    def _walker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inv: tuple[float, ...],
        rnd: Callable[[], float],
        *,
        draws: int,
    ) -> WalkFunction:
        """Sample until ``choice_count`` accepted endpoints are found (or scan them all)."""
        n = len(endpoints)
        k = self.choice_count
        cost = self.cost
        monotonic = self._clock.monotonic
        samples = draws * k

        def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
            now = monotonic()
            best: ServiceEndpoint | None = None
            best_cost = math.inf
            found = 0
            for _ in range(samples):
                i = int(rnd() * n) % n
                endpoint = endpoints[i]
                if accept(endpoint):
                    c = cost(stats[i], now) * inv[i]
                    if best is None or c < best_cost:
                        best, best_cost = endpoint, c
                    found += 1
                    if found == k:
                        return best
            if best is not None:
                return best  # most endpoints refused: the one accepted sample will do
            start = int(rnd() * n) % n
            for step in range(n):
                i = (start + step) % n
                endpoint = endpoints[i]
                if accept(endpoint):
                    c = cost(stats[i], now) * inv[i]
                    if best is None or c < best_cost:
                        best, best_cost = endpoint, c
            return best

        return walk

    def _scan_pick(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inv: tuple[float, ...],
        rnd: Callable[[], float],
    ) -> PickFunction:
        """Compare every endpoint (small sets), from a random start that breaks ties."""
        n = len(endpoints)
        cost = self.cost
        monotonic = self._clock.monotonic

        def pick(key: Key = None) -> ServiceEndpoint:
            now = monotonic()
            start = int(rnd() * n) % n
            best = start
            best_cost = cost(stats[start], now) * inv[start]
            for step in range(1, n):
                i = (start + step) % n
                c = cost(stats[i], now) * inv[i]
                if c < best_cost:
                    best, best_cost = i, c
            return endpoints[best]

        return pick

    def _k_choices(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inv: tuple[float, ...],
    ) -> PickFunction:
        """The cheapest of ``choice_count`` distinct random endpoints."""
        k = self.choice_count
        sample = self._rng.sample
        population = range(len(endpoints))
        cost = self.cost
        monotonic = self._clock.monotonic

        def pick(key: Key = None) -> ServiceEndpoint:
            now = monotonic()
            best = min(sample(population, k), key=lambda i: cost(stats[i], now) * inv[i])
            return endpoints[best]

        return pick

    def _two_choices(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
    ) -> PickFunction:
        """The hot path: the less loaded of two distinct random endpoints, inlined."""
        eps = extended(endpoints)
        sts = extended(stats)
        n = len(endpoints)
        m = n - 1
        if inverse is None:

            def pick(key: Key = None) -> ServiceEndpoint:
                i = int(rnd() * n)
                j = int(rnd() * m)
                if j >= i:
                    j += 1
                return eps[i] if sts[i].outstanding <= sts[j].outstanding else eps[j]

            return pick
        inv = inverse

        def pick_weighted(key: Key = None) -> ServiceEndpoint:
            i = int(rnd() * n)
            j = int(rnd() * m)
            if j >= i:
                j += 1
            ci = (sts[i].outstanding + 1) * inv[i]
            return eps[i] if ci <= (sts[j].outstanding + 1) * inv[j] else eps[j]

        return pick_weighted

    def __repr__(self) -> str:
        return f"{type(self).__name__}(choice_count={self.choice_count})"


class PeakEwma(LeastRequest):
    """Latency-aware power of two choices (Finagle ``P2CPeakEwma``, Linkerd's balancer).

    The cost of an endpoint is its peak-EWMA round-trip time decayed to now, times
    ``outstanding + 1`` (the load it would have with this request), divided by its weight
    when weights differ; of two random endpoints the cheaper wins. A slow instance becomes
    expensive on its first slow answer, is avoided, and is probed again as its estimate
    decays, so traffic returns when it recovers. See
    :mod:`~lake_mesh_consul._core.loadstats` for the estimator.

    Args:
        decay: the EWMA time constant in seconds (Finagle/Linkerd: 10 s).
        default_rtt: the estimate of an unseen endpoint in seconds (Linkerd: 30 ms).
        choice_count, full_scan_max, rng: as for :class:`LeastRequest`.
        clock: read once per pick to decay the estimates.
    """

    name = "peak_ewma"

    def __init__(
        self,
        *,
        decay: float = DEFAULT_DECAY,
        default_rtt: float = DEFAULT_RTT,
        choice_count: int = DEFAULT_CHOICE_COUNT,
        full_scan_max: int = DEFAULT_FULL_SCAN_MAX,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        own = StatsRegistry(clock, default_rtt=default_rtt, decay=decay)  # checks both
        if stats is None:
            stats = own
        super().__init__(
            choice_count=choice_count, full_scan_max=full_scan_max, rng=rng, clock=clock,
            stats=stats,
        )  # fmt: skip
        self.decay = decay
        self.default_rtt = default_rtt

    def cost(self, st: EndpointStats, now: float) -> float:
        """The estimate decayed to ``now``, times ``outstanding + 1``."""
        elapsed = now - st.stamp
        rtt = st.rtt * _exp(-elapsed / self.decay) if elapsed > 0 else st.rtt
        return rtt * (st.outstanding + 1)

    def _two_choices(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
    ) -> PickFunction:
        """The hot path: the cheaper of two distinct random endpoints, cost inlined."""
        eps = extended(endpoints)
        sts = extended(stats)
        inv = inverse or (1.0,) * (len(endpoints) + 1)
        n = len(endpoints)
        m = n - 1
        monotonic = self._clock.monotonic
        neg_rate = -1.0 / self.decay
        exp = _exp

        def pick(key: Key = None) -> ServiceEndpoint:
            i = int(rnd() * n)
            j = int(rnd() * m)
            if j >= i:
                j += 1
            now = monotonic()
            a = sts[i]
            b = sts[j]
            # The estimate decays towards zero while idle: exp(-(now - stamp) / decay).
            # (A stamp a hair in the future, written by another thread, is harmless.)
            ca = a.rtt * exp((now - a.stamp) * neg_rate) * (a.outstanding + 1) * inv[i]
            cb = b.rtt * exp((now - b.stamp) * neg_rate) * (b.outstanding + 1) * inv[j]
            return eps[i] if ca <= cb else eps[j]

        return pick

    def __repr__(self) -> str:
        return f"PeakEwma(decay={self.decay:g}, default_rtt={self.default_rtt:g})"
