"""Balancer strategies: one-method objects that pick an endpoint from the candidates given.

A strategy does not own discovery, health or breakers: the
:class:`~lake_mesh_consul._core.balancer.LoadBalancer` hands it the eligible endpoints and
it picks one. Anything with ``pick(candidates, key=None)`` is a :class:`BalancerStrategy`,
and so is a plain function ``fn(candidates, key)`` (tenacity's style).

The built-ins are :class:`PreparedStrategy` subclasses: besides ``pick`` they can
``prepare`` a snapshot once (a schedule, a sorted ring, a Maglev table, flat arrays of
per-endpoint stats) and return a *picker*, a closure that picks in O(1) or O(log N) with no
lock. The balancer prepares each discovery snapshot when it arrives, so the cost of a pick
does not grow with the number of endpoints.

With the picker, ``prepare_pair`` builds a *walker* from the same structures: the pick a
retry makes when some endpoints must be avoided (already tried, or refused by a gate).
``walker(key, accept)`` returns the strategy's choice among the endpoints ``accept``
accepts: round robin and the schedules continue from their position, random and P2C draw
again among them, ``nearest_first`` fails over down discovery's order, and ``ring_hash`` and
``maglev`` walk on from the key's position to the next distinct owner (so a retry of a key
goes to the same second choice in every process). It does O(1) work per accepted endpoint in
the usual case and is bounded by a scan of the endpoints in the worst.

==================  ==================================================================
name                what it does
==================  ==================================================================
``round_robin``     each endpoint in turn (exactly fair); honours slow start
``random``          uniform random choice (seedable ``rng``); honours slow start
``weighted``        smooth weighted round robin on Consul ``Weights`` (warning instances
                    get ``Weights.Warning``), overridable per endpoint id
``least_request``   power of two choices on outstanding requests (Envoy; ``choice_count``
                    2; a full scan for small sets)
``peak_ewma``       power of two choices on peak-EWMA latency x (outstanding + 1)
                    (Finagle, Linkerd: decay 10 s, 30 ms for unseen instances)
``ring_hash``       consistent hashing on a ring (Envoy ``RING_HASH``: 1024 entries min)
``maglev``          Maglev consistent hashing (Envoy ``MAGLEV``: table size 65537)
``nearest_first``   the first candidate in discovery's order (Consul ``?near=``)
==================  ==================================================================

:class:`ZoneAware` wraps any of them to prefer the caller's zone (Envoy's zone-aware
routing rules). Hash strategies use :mod:`~lake_mesh_consul._core.hashing` (BLAKE2b),
never the per-process salted :func:`hash`, so every process maps a key alike.
"""

from __future__ import annotations

import abc
import bisect
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint, settings_for
from lake_mesh_consul._core.hashing import endpoint_token, hash64, hash128
from lake_mesh_consul._core.loadstats import (
    DEFAULT_DECAY,
    DEFAULT_RTT,
    EndpointStats,
    StatsRegistry,
)
from lake_mesh_consul.errors import InvalidSetting, NoEndpointsAvailable

__all__ = [
    "STRATEGIES",
    "BalancerStrategy",
    "Key",
    "LeastRequest",
    "Maglev",
    "NearestFirst",
    "PeakEwma",
    "Picker",
    "Prepared",
    "PreparedStrategy",
    "RandomChoice",
    "RingHash",
    "RoundRobin",
    "StrategyFunction",
    "StrategyLike",
    "Walker",
    "Weighted",
    "ZoneAware",
    "prepare_pair",
    "prepare_picker",
    "resolve_strategy",
    "smooth_schedule",
    "strategy_by_name",
    "strategy_name",
]

#: A pick's optional key: hashing strategies hash it; the others ignore it.
Key = bytes | str | None
#: A prepared pick over one fixed set of endpoints: ``picker(key) -> endpoint``. Thread-safe.
Picker = Callable[[Key], ServiceEndpoint]
#: ``walker(key, accept)``: the strategy's pick among the endpoints for which ``accept`` is
#: true (hashing strategies: the next distinct owner after the key's position), or ``None``
#: when it accepts none of them. Thread-safe, like a picker.
Walker = Callable[[Key, Callable[[ServiceEndpoint], bool]], ServiceEndpoint | None]
#: A prepared snapshot: its picker and its walker, built from the same structures.
Prepared = tuple[Picker, Walker]
#: A plain function that counts as a strategy: ``fn(candidates, key) -> endpoint``.
StrategyFunction = Callable[[Sequence[ServiceEndpoint], Key], ServiceEndpoint]

#: Envoy's default number of random choices for least request.
DEFAULT_CHOICE_COUNT = 2
#: At or below this many candidates least_request compares all of them instead of sampling.
DEFAULT_FULL_SCAN_MAX = 4
#: Envoy's ``minimum_ring_size`` for ring hash.
DEFAULT_MIN_RING_SIZE = 1024
#: Upper bound of ring entries (Envoy allows 8M; building that in Python takes seconds).
DEFAULT_MAX_RING_SIZE = 1 << 20
#: Envoy's default Maglev table size (a prime).
DEFAULT_MAGLEV_TABLE_SIZE = 65537
#: Envoy's ``min_cluster_size`` for zone-aware routing.
DEFAULT_MIN_CLUSTER_SIZE = 6
#: Longest smooth weighted round-robin period built for a snapshot (entries).
_SCHEDULE_CAP = 1 << 16
#: Weight resolution when fractional weights must be quantised (smallest weight -> ~100).
_WEIGHT_RESOLUTION = 100
#: Random re-draws a walker makes before it scans (random, P2C, an unknown picker).
_WALK_DRAWS = 3
#: Schedule, ring or table entries a walker visits per endpoint before it scans instead.
_WALK_STEPS_PER_ENDPOINT = 16
#: ... plus this many (small sets).
_WALK_STEPS_MIN = 64

_T = TypeVar("_T")
_exp = math.exp
_bisect_left = bisect.bisect_left
_bisect_right = bisect.bisect_right


@runtime_checkable
class BalancerStrategy(Protocol):
    """Anything that picks one endpoint from the candidates it is given.

    Contract: ``candidates`` is non-empty and already filtered (health, breakers, outlier
    ejection are the balancer's business); ``key`` is ``None`` or the request's hash key
    (``bytes`` or ``str``), which only hashing strategies look at. Return one of the
    candidates. Must be thread-safe: the balancer calls it from many threads at once.

    Example:
        >>> def first(candidates, key=None):
        ...     return candidates[0]
        >>> # LoadBalancer("web", first) accepts a plain function too
    """

    def pick(self, candidates: Sequence[ServiceEndpoint], key: Key = None) -> ServiceEndpoint:
        """Return one of ``candidates``."""
        ...


#: What a strategy may be given as: a built-in's name, a strategy object or a function.
StrategyLike = str | BalancerStrategy | StrategyFunction


def _no_candidates() -> NoEndpointsAvailable:
    return NoEndpointsAvailable("", "no candidates given to the strategy")


def _uniform(weights: Sequence[float]) -> bool:
    first = weights[0]
    return all(w == first for w in weights)


class PreparedStrategy(abc.ABC):
    """Base of the built-in strategies: prepares a snapshot once, then picks cheaply.

    Subclasses implement :meth:`prepare`. :meth:`pick` (the :class:`BalancerStrategy`
    method) prepares the candidates on first sight and reuses that while it is given the
    same candidates again, so it can be used on its own too; pass a tuple for the cheapest
    reuse. Stats-driven strategies used on their own keep outstanding/latency state in
    :attr:`stats` (a balancer passes its own instead).

    Class attributes read by the balancer:
        name: the registry name.
        uses_weights: whether Consul ``Weights`` matter (else every eligible endpoint
            weighs 1 before slow start).
        slow_start: whether slow-start weights apply (hash strategies keep their mapping
            stable instead).

    Thread-safety: pickers and :meth:`pick` are safe from any number of threads without a
    lock; :meth:`prepare` builds a new picker and never mutates an old one.
    """

    name: str = ""
    uses_weights: bool = False
    slow_start: bool = True

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None) -> None:
        self._clock = clock
        self._stats = stats if stats is not None else StatsRegistry(clock)
        self._cached: tuple[Sequence[ServiceEndpoint], tuple[ServiceEndpoint, ...], Picker] | None
        self._cached = None

    @property
    def stats(self) -> StatsRegistry:
        """The registry used when this strategy picks on its own (not via a balancer)."""
        return self._stats

    def endpoint_weight(self, endpoint: ServiceEndpoint) -> float:
        """The endpoint's weight before slow start (1.0 for unweighted strategies)."""
        if self.uses_weights:
            return float(endpoint.weight)
        return 1.0

    @abc.abstractmethod
    def prepare(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Picker:
        """Build a picker over ``endpoints`` (non-empty, all weights > 0).

        ``weights`` and ``stats`` are aligned with ``endpoints``. The picker must not be
        mutated after it is returned; it may read the (live) ``stats`` objects.
        """

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The picker of :meth:`prepare` and a :data:`Walker` over the same snapshot.

        The built-ins override this to share one ring, table or schedule between the two.
        The default walker (for subclasses that only implement :meth:`prepare`) re-picks a
        few times, then scans ``endpoints`` from a position derived from the key.
        """
        picker = self.prepare(endpoints, weights, stats)
        return picker, _generic_walker(picker, endpoints)

    def pick(self, candidates: Sequence[ServiceEndpoint], key: Key = None) -> ServiceEndpoint:
        """Pick from ``candidates`` (prepared once per distinct candidate sequence).

        Raises:
            NoEndpointsAvailable: ``candidates`` is empty or every weight is zero.
        """
        cached = self._cached
        if cached is None or cached[0] is not candidates or type(candidates) is not tuple:
            frozen = tuple(candidates)
            if cached is not None and cached[1] == frozen:
                picker = cached[2]
            else:
                picker = self._prepare_alone(frozen)
            self._cached = (candidates, frozen, picker)
        else:
            picker = cached[2]
        return picker(key)

    def _prepare_alone(self, frozen: tuple[ServiceEndpoint, ...]) -> Picker:
        weighed = [(e, self.endpoint_weight(e)) for e in frozen]
        weighed = [(e, w) for e, w in weighed if w > 0]
        if not weighed:
            raise _no_candidates()
        endpoints = tuple(e for e, _ in weighed)
        return self.prepare(
            endpoints,
            tuple(w for _, w in weighed),
            tuple(self._stats.get(e) for e in endpoints),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _constant(endpoint: ServiceEndpoint) -> Picker:
    def pick(key: Key = None) -> ServiceEndpoint:
        return endpoint

    return pick


def _constant_pair(endpoint: ServiceEndpoint) -> Prepared:
    def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
        return endpoint if accept(endpoint) else None

    return _constant(endpoint), walk


def _scan(
    endpoints: Sequence[ServiceEndpoint], start: int, accept: Callable[[ServiceEndpoint], bool]
) -> ServiceEndpoint | None:
    """The first endpoint ``accept`` accepts, from ``start`` round to ``start - 1``."""
    n = len(endpoints)
    for step in range(n):
        endpoint = endpoints[(start + step) % n]
        if accept(endpoint):
            return endpoint
    return None


def _walk_cap(n: int, size: int) -> int:
    return min(size, _WALK_STEPS_MIN + _WALK_STEPS_PER_ENDPOINT * n)


def _generic_walker(picker: Picker, endpoints: tuple[ServiceEndpoint, ...]) -> Walker:
    """Re-pick a few times, then scan (from the key's hash, or a rotating start)."""
    n = len(endpoints)
    nxt = itertools.count().__next__

    def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
        for _ in range(_WALK_DRAWS):
            endpoint = picker(key)
            if accept(endpoint):
                return endpoint
        start = hash64(key) % n if key is not None else nxt() % n
        return _scan(endpoints, start, accept)

    return walk


def _extended(items: tuple[_T, ...]) -> tuple[_T, ...]:
    # int(random() * n) is n with probability ~2**-53 (float rounding): a duplicate last
    # element makes that index valid without a bounds check on the hot path.
    return (*items, items[-1])


# --- smooth weighted round robin -----------------------------------------------------------


def _integer_weights(weights: Sequence[float]) -> list[int]:
    """Positive integer weights in the same proportions, with a bounded total."""
    cap = max(_SCHEDULE_CAP, 4 * len(weights))
    if all(float(w).is_integer() for w in weights):
        ints = [int(w) for w in weights]
        divisor = 0
        for w in ints:
            divisor = math.gcd(divisor, w)
        ints = [w // divisor for w in ints]
        if sum(ints) <= cap:
            return ints  # exact: the common case of Consul's integer weights
    total = math.fsum(weights)
    scale = min(_WEIGHT_RESOLUTION / min(weights), cap / total)
    return [max(1, round(w * scale)) for w in weights]


def smooth_schedule(weights: Sequence[float]) -> list[int]:
    """One period of a smooth weighted round robin over ``weights``, as endpoint indices.

    Stride scheduling: the ``k``-th turn of endpoint ``i`` of ``n`` falls at
    ``(k + phase_i) / w_i`` with ``phase_i = (i + 0.5) / n``, and turns are served in time
    order (ties by index). Each endpoint appears exactly ``w_i`` times per period (after
    scaling to integers) and its turns are spread evenly, as in nginx's smooth weighted
    round robin and Envoy's EDF scheduler, rather than bunched; the staggered phases keep
    equally weighted endpoints from colliding at the same instant.

    Example:
        >>> smooth_schedule([5, 1, 1])
        [0, 0, 0, 1, 0, 2, 0]

    Raises:
        ValueError: a weight is not positive.
    """
    if not weights or min(weights) <= 0:
        raise ValueError("weights must be non-empty and positive")
    ints = _integer_weights(weights)
    points: list[float] = []
    owners: list[int] = []
    n = len(ints)
    for i, w in enumerate(ints):
        inv = 1.0 / w
        phase = (i + 0.5) / n
        points.extend([(k + phase) * inv for k in range(w)])
        owners.extend([i] * w)
    order = sorted(range(len(points)), key=points.__getitem__)
    return [owners[j] for j in order]


def _schedule_pair(
    endpoints: tuple[ServiceEndpoint, ...],
    weights: tuple[float, ...],
    counter: Callable[[], int],
) -> Prepared:
    schedule = tuple(endpoints[i] for i in smooth_schedule(weights))
    period = len(schedule)
    n = len(endpoints)
    cap = _walk_cap(n, period)
    skip = itertools.count().__next__

    def pick(key: Key = None) -> ServiceEndpoint:
        return schedule[counter() % period]

    def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
        start = counter() % period
        endpoint = schedule[start]
        if accept(endpoint):
            return endpoint
        # A turn of an endpoint not accepted goes to another turn of the schedule, chosen
        # by a second rotation (the following turn would always be the same endpoint's and
        # double its share); from there, in order: weights and slow start still apply.
        start += 1 + skip() % (period - 1)
        for step in range(cap):
            endpoint = schedule[(start + step) % period]
            if accept(endpoint):
                return endpoint
        return _scan(endpoints, start % n, accept)

    return pick, walk


class _PairedStrategy(PreparedStrategy):
    """A built-in that builds its picker and its walker together.

    They share one ring, table or schedule, so :meth:`prepare` is the picker half of
    :meth:`prepare_pair`, which subclasses implement.
    """

    def prepare(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Picker:
        """The picker half of :meth:`prepare_pair`."""
        return self.prepare_pair(endpoints, weights, stats)[0]

    @abc.abstractmethod
    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The picker and a walker over the same prepared snapshot."""


class RoundRobin(_PairedStrategy):
    """Each endpoint in turn: exactly fair, O(1) per pick, lock-free.

    Consul weights are ignored (use ``weighted`` for them); an endpoint in slow start gets
    its reduced share through a smooth weighted schedule (as Envoy's round robin does).
    The position survives snapshot changes, so frequent updates do not favour the first
    endpoints.

    Example:
        >>> rr = RoundRobin()
        >>> eps = tuple(ServiceEndpoint.create(f"w{i}", "10.0.0.1", 80 + i) for i in range(3))
        >>> [rr.pick(eps).id for _ in range(4)]
        ['w0', 'w1', 'w2', 'w0']
    """

    name = "round_robin"

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None) -> None:
        super().__init__(clock=clock, stats=stats)
        self._next = itertools.count().__next__  # atomic under the GIL

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The cycle and a walker that continues it past the endpoints not accepted."""
        if len(endpoints) == 1:
            return _constant_pair(endpoints[0])
        if not _uniform(weights):
            return _schedule_pair(endpoints, weights, self._next)
        eps = endpoints
        n = len(eps)
        nxt = self._next
        skip = itertools.count().__next__

        def pick(key: Key = None) -> ServiceEndpoint:
            return eps[nxt() % n]

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            start = nxt() % n
            endpoint = eps[start]
            if accept(endpoint):
                return endpoint
            # Hand the turn to another endpoint by a second rotation, so the rest keep even
            # shares (the next one in the cycle would get every excluded endpoint's turn).
            return _scan(eps, start + 1 + skip() % (n - 1), accept)

        return pick, walk


class RandomChoice(_PairedStrategy):
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

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The picker and a walker that draws again (then scans from a random start)."""
        if len(endpoints) == 1:
            return _constant_pair(endpoints[0])
        rnd = self._rng.random
        eps = _extended(endpoints)
        n = len(endpoints)
        pick: Picker
        if _uniform(weights):

            def pick(key: Key = None) -> ServiceEndpoint:
                return eps[int(rnd() * n)]

        else:
            cumulative = tuple(itertools.accumulate(weights))
            total = cumulative[-1]

            def pick(key: Key = None) -> ServiceEndpoint:
                return eps[_bisect_right(cumulative, rnd() * total)]

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            for _ in range(_WALK_DRAWS):
                endpoint = pick(key)
                if accept(endpoint):
                    return endpoint
            return _scan(endpoints, int(rnd() * n) % n, accept)

        return pick, walk


class Weighted(_PairedStrategy):
    """Smooth weighted round robin on Consul's ``Weights``.

    A passing instance weighs ``Weights.Passing``, a warning one ``Weights.Warning`` (so it
    is down-weighted, not dropped); ``overrides`` replaces the weight of chosen endpoints
    (by endpoint id, or a function returning a weight or ``None`` to keep Consul's). Slow
    start scales the weights further. Shares are exact over each period of the schedule.

    Args:
        overrides: ``{endpoint_id: weight}`` or ``fn(endpoint) -> weight | None``.

    Example:
        >>> w = Weighted(overrides={"w0": 3})
        >>> eps = tuple(ServiceEndpoint.create(f"w{i}", "10.0.0.1", 80 + i) for i in range(2))
        >>> sorted(w.pick(eps).id for _ in range(4))
        ['w0', 'w0', 'w0', 'w1']
    """

    name = "weighted"
    uses_weights = True

    def __init__(
        self,
        *,
        overrides: Mapping[str, float] | Callable[[ServiceEndpoint], float | None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        super().__init__(clock=clock, stats=stats)
        self._overrides = overrides
        self._next = itertools.count().__next__

    def endpoint_weight(self, endpoint: ServiceEndpoint) -> float:
        """The override if one applies, else Consul's weight for the endpoint's health."""
        overrides = self._overrides
        if overrides is not None:
            if callable(overrides):
                value = overrides(endpoint)
            else:
                value = settings_for(endpoint, overrides)  # "<id>@<node>", then "<id>"
            if value is not None:
                if value < 0:
                    raise ValueError(f"weight override for {endpoint.id!r} is negative")
                return float(value)
        return float(endpoint.weight)

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The smooth schedule and a walker that takes its next accepted turn.

        One period of the schedule costs O(total weight), paid here, never by a pick.
        """
        if len(endpoints) == 1:
            return _constant_pair(endpoints[0])
        return _schedule_pair(endpoints, weights, self._next)


class LeastRequest(_PairedStrategy):
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

    def _cost_fn(self) -> Callable[[EndpointStats, float], float] | None:
        """A cost needing more than outstanding counts (peak EWMA), or None."""
        return None

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The picker and a walker doing the same choice among the accepted endpoints."""
        n = len(endpoints)
        if n == 1:
            return _constant_pair(endpoints[0])
        rnd = self._rng.random
        inverse = None if _uniform(weights) else _extended(tuple(1.0 / w for w in weights))
        full = n <= self.full_scan_max or self.choice_count >= n
        if full:
            picker = self._scan_picker(endpoints, stats, inverse, rnd)
        elif self.choice_count == 2:
            picker = self._p2c_picker(endpoints, stats, inverse, rnd)
        else:
            picker = self._k_picker(endpoints, stats, inverse)
        return picker, self._walker(endpoints, stats, inverse, rnd, full=full)

    def _walker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
        *,
        full: bool,
    ) -> Walker:
        """Sample until ``choice_count`` accepted endpoints are found (or scan them all)."""
        n = len(endpoints)
        k = self.choice_count
        cost = self._cost
        monotonic = self._clock.monotonic
        inv = inverse or (1.0,) * (n + 1)
        draws = 0 if full else _WALK_DRAWS * k

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            now = monotonic()
            best: ServiceEndpoint | None = None
            best_cost = math.inf
            found = 0
            for _ in range(draws):
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

    def _p2c_picker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
    ) -> Picker:
        eps = _extended(endpoints)
        sts = _extended(stats)
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

    def _cost(self, st: EndpointStats, now: float) -> float:
        return float(st.outstanding + 1)

    def _scan_picker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
    ) -> Picker:
        n = len(endpoints)
        cost = self._cost
        monotonic = self._clock.monotonic
        inv = inverse or (1.0,) * (n + 1)

        def pick(key: Key = None) -> ServiceEndpoint:
            now = monotonic()
            start = int(rnd() * n) % n  # random start breaks ties fairly
            best = start
            best_cost = cost(stats[start], now) * inv[start]
            for step in range(1, n):
                i = (start + step) % n
                c = cost(stats[i], now) * inv[i]
                if c < best_cost:
                    best, best_cost = i, c
            return endpoints[best]

        return pick

    def _k_picker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
    ) -> Picker:
        n = len(endpoints)
        k = self.choice_count
        sample = self._rng.sample
        population = range(n)
        cost = self._cost
        monotonic = self._clock.monotonic
        inv = inverse or (1.0,) * (n + 1)

        def pick(key: Key = None) -> ServiceEndpoint:
            now = monotonic()
            best = min(sample(population, k), key=lambda i: cost(stats[i], now) * inv[i])
            return endpoints[best]

        return pick

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
        if stats is None:
            stats = StatsRegistry(clock, default_rtt=default_rtt, decay=decay)
        super().__init__(
            choice_count=choice_count, full_scan_max=full_scan_max, rng=rng, clock=clock,
            stats=stats,
        )  # fmt: skip
        StatsRegistry._check(default_rtt, decay)
        self.decay = decay
        self.default_rtt = default_rtt

    def _cost(self, st: EndpointStats, now: float) -> float:
        elapsed = now - st.stamp
        rtt = st.rtt * _exp(-elapsed / self.decay) if elapsed > 0 else st.rtt
        return rtt * (st.outstanding + 1)

    def _p2c_picker(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        stats: tuple[EndpointStats, ...],
        inverse: tuple[float, ...] | None,
        rnd: Callable[[], float],
    ) -> Picker:
        eps = _extended(endpoints)
        sts = _extended(stats)
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


# --- consistent hashing --------------------------------------------------------------------


class RingHash(_PairedStrategy):
    """Consistent hashing on a ring (Karger et al.; Envoy ``RING_HASH``).

    Each endpoint owns ring points proportional to its weight. As in Envoy the lightest
    endpoint gets at least ``min_ring_size * its_share`` points, but that count is rounded
    up to a power of two, so the others keep their points (and their keys) when an endpoint
    comes or goes; the total is capped by ``max_ring_size``. A key goes to the owner of the
    first point at or after its hash (sorted array + :func:`bisect.bisect_left`: O(log size)
    in C). Adding or removing one of N endpoints moves about 1/N of the keys. Without a key
    a random point is used.

    Points come from the endpoint identity ``(datacenter, id)`` and keys are hashed with
    BLAKE2b, so every process maps a key to the same endpoint. Slow start does not apply
    (it would move keys while an endpoint warms up).

    Args:
        min_ring_size: Envoy's ``minimum_ring_size`` (1024).
        max_ring_size: upper bound of ring points.
        rng: used only for picks without a key.
    """

    name = "ring_hash"
    uses_weights = True
    slow_start = False

    def __init__(
        self,
        *,
        min_ring_size: int = DEFAULT_MIN_RING_SIZE,
        max_ring_size: int = DEFAULT_MAX_RING_SIZE,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if not 1 <= min_ring_size <= max_ring_size:
            raise ValueError("need 1 <= min_ring_size <= max_ring_size")
        super().__init__(clock=clock, stats=stats)
        self.min_ring_size = min_ring_size
        self.max_ring_size = max_ring_size
        self._rng = rng or random.Random()

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The ring's lookup and a walker that goes on to the next distinct owner.

        Building the sorted ring costs O(points log points), paid here, never by a pick.
        """
        total = math.fsum(weights)
        lightest = min(weights)
        relative = [w / lightest for w in weights]
        per_unit = 1 << max(0, math.ceil(math.log2(self.min_ring_size * lightest / total)))
        while per_unit > 1 and per_unit * math.fsum(relative) > self.max_ring_size:
            per_unit >>= 1
        ring: list[tuple[int, int]] = []
        for index, (endpoint, rel) in enumerate(zip(endpoints, relative, strict=True)):
            token = endpoint_token(endpoint.datacenter, endpoint.node, endpoint.id) + b"_"
            count = max(1, round(per_unit * rel))
            ring.extend((hash64(token + str(j).encode()), index) for j in range(count))
        ring.sort()
        points = tuple(h for h, _ in ring)
        ring_owners = tuple(endpoints[i] for _, i in ring)
        owners = (*ring_owners, ring_owners[0])  # past the last point wraps to the first
        size = len(points)
        rnd = self._rng.random
        hash_key = hash64
        n = len(endpoints)
        cap = _walk_cap(n, size)

        def pick(key: Key = None) -> ServiceEndpoint:
            if key is None:
                return owners[int(rnd() * size)]
            return owners[_bisect_left(points, hash_key(key))]

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            # Clockwise from the key's point to the next distinct owner that is accepted.
            if key is None:
                start = int(rnd() * size) % size
            else:
                start = _bisect_left(points, hash_key(key)) % size
            return _next_owner(ring_owners, start, cap, accept, endpoints)

        return pick, walk

    def __repr__(self) -> str:
        return f"RingHash(min_ring_size={self.min_ring_size})"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _next_prime(n: int) -> int:
    while not _is_prime(n):
        n += 1
    return n


class Maglev(_PairedStrategy):
    """Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy ``MAGLEV``).

    At prepare time each endpoint walks its own permutation of a table of ``table_size``
    slots (offset and skip from BLAKE2b of its identity) and the endpoints take turns
    claiming free slots, heavier ones more often (Envoy's weighted variant). A pick is one
    hash and one index: ``table[hash(key) % size]``. Shares are even to within a few percent
    when each endpoint has ~100 slots or more; about 1/N of keys move when one of N
    endpoints changes. Without a key a random slot is used. Slow start does not apply.

    Args:
        table_size: a prime (Envoy's default 65537). When there are more endpoints than
            slots, the next prime above ``4 * N`` is used instead.
        rng: used only for picks without a key.

    Raises:
        ValueError: ``table_size`` is not a prime.
    """

    name = "maglev"
    uses_weights = True
    slow_start = False

    def __init__(
        self,
        *,
        table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if not _is_prime(table_size):
            raise ValueError(f"Maglev table_size must be a prime, got {table_size}")
        super().__init__(clock=clock, stats=stats)
        self.table_size = table_size
        self._rng = rng or random.Random()

    def build_table(
        self, endpoints: tuple[ServiceEndpoint, ...], weights: tuple[float, ...]
    ) -> list[int]:
        """The lookup table as endpoint indices (exposed for tests and ``explain``)."""
        n = len(endpoints)
        size = self.table_size if n <= self.table_size else _next_prime(4 * n)
        offsets: list[int] = []
        skips: list[int] = []
        for endpoint in endpoints:
            h1, h2 = hash128(endpoint_token(endpoint.datacenter, endpoint.node, endpoint.id))
            offsets.append(h1 % size)
            skips.append(h2 % (size - 1) + 1)
        heaviest = max(weights)
        nexts = [0] * n
        targets = [0.0] * n
        table = [-1] * size
        filled = 0
        iteration = 1
        while filled < size:
            for i in range(n):
                # Envoy: an endpoint claims a slot in this round only while its weight
                # "earned" one; the heaviest claims one every round.
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += heaviest
                offset, skip, nxt = offsets[i], skips[i], nexts[i]
                slot = (offset + skip * nxt) % size
                while table[slot] >= 0:
                    nxt += 1
                    slot = (offset + skip * nxt) % size
                table[slot] = i
                nexts[i] = nxt + 1
                filled += 1
                if filled == size:
                    break
            iteration += 1
        return table

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The table's lookup and a walker that goes on to the next distinct owner.

        Building the table takes about 0.1 s for 65537 slots, paid here, never by a pick.
        """
        if len(endpoints) == 1:
            return _constant_pair(endpoints[0])
        table = tuple(endpoints[i] for i in self.build_table(endpoints, weights))
        size = len(table)
        rnd = self._rng.random
        hash_key = hash64
        table_x = _extended(table)
        n = len(endpoints)
        cap = _walk_cap(n, size)

        def pick(key: Key = None) -> ServiceEndpoint:
            if key is None:
                return table_x[int(rnd() * size)]
            return table[hash_key(key) % size]

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            # The slots after the key's own hold the other endpoints in a key-specific,
            # process-independent order: the first accepted owner is the key's next choice.
            start = int(rnd() * size) % size if key is None else hash_key(key) % size
            return _next_owner(table, start, cap, accept, endpoints)

        return pick, walk

    def __repr__(self) -> str:
        return f"Maglev(table_size={self.table_size})"


# --- order and locality --------------------------------------------------------------------


class NearestFirst(_PairedStrategy):
    """The first candidate in discovery's order (nearest first when discovery sorted by RTT).

    Consul sorts health results by network round-trip time with ``?near=_agent``; this
    strategy keeps that order, sending everything to the nearest eligible instance and
    failing over down the list as instances become ineligible. ``spread > 1`` round-robins
    over the ``spread`` nearest instead.

    Args:
        spread: how many of the nearest candidates share the traffic (default 1).
    """

    name = "nearest_first"

    def __init__(
        self, *, spread: int = 1, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None
    ) -> None:
        if spread < 1:
            raise ValueError(f"spread must be >= 1, got {spread}")
        super().__init__(clock=clock, stats=stats)
        self.spread = spread
        self._next = itertools.count().__next__

    slow_start = False

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The ``spread`` first candidates, and a walker failing over down the list."""
        spread = self.spread
        head = endpoints[:spread]
        n = len(head)
        nxt = self._next
        pick: Picker
        if n == 1:
            pick = _constant(head[0])
        else:

            def pick(key: Key = None) -> ServiceEndpoint:
                return head[nxt() % n]

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            endpoint = _scan(head, nxt() % n if n > 1 else 0, accept)
            if endpoint is not None:
                return endpoint
            for i in range(spread, len(endpoints)):  # then the next nearest, in order
                if accept(endpoints[i]):
                    return endpoints[i]
            return None

        return pick, walk

    def __repr__(self) -> str:
        return f"NearestFirst(spread={self.spread})"


class ZoneAware(_PairedStrategy):
    """Prefer endpoints in the caller's zone, after Envoy's zone-aware routing rules.

    Envoy's rules, with the caller's fleet assumed to be spread evenly over the zones it
    sees unless ``local_share`` says otherwise:

    1. fewer than ``min_cluster_size`` candidates, no local zone, or no candidate in it:
       no preference, the inner strategy balances over all candidates;
    2. the local zone holds at least ``local_share`` of the candidates' weight (the share
       of callers in the local zone, default ``1 / number_of_zones``): all traffic stays
       in the zone;
    3. otherwise the zone takes what it can carry (``its share / local_share`` of the
       requests) and the rest spills over the other zones. A local zone that became
       unhealthy therefore spills in proportion, and one with nothing eligible spills all.

    With a key the local/remote decision is made from the key's hash, so key affinity
    holds. The inner strategy picks inside the chosen zone set.

    Args:
        inner: the strategy inside a zone (a name, object or function).
        local_zone: the caller's zone; ``None`` disables the preference.
        min_cluster_size: Envoy's ``min_cluster_size`` (6).
        local_share: share of callers in the local zone, in (0, 1].
        rng: for the local/remote decision without a key.
    """

    name = "zone_aware"

    def __init__(
        self,
        inner: StrategyLike,
        local_zone: str | None,
        *,
        min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE,
        local_share: float | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if local_share is not None and not 0 < local_share <= 1:
            raise ValueError(f"local_share must be in (0, 1], got {local_share}")
        super().__init__(clock=clock, stats=stats)
        self._rng = rng or random.Random()
        self.inner: BalancerStrategy = resolve_strategy(inner, clock=clock, rng=self._rng)
        self.local_zone = local_zone
        self.min_cluster_size = min_cluster_size
        self.local_share = local_share
        self.uses_weights = bool(getattr(self.inner, "uses_weights", False))
        self.slow_start = bool(getattr(self.inner, "slow_start", True))

    def endpoint_weight(self, endpoint: ServiceEndpoint) -> float:
        """The inner strategy's weight."""
        return _endpoint_weight(self.inner, endpoint)

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """Per-zone pickers; the walker tries the chosen side, then the other zones."""
        inner = self.inner
        local = [i for i, e in enumerate(endpoints) if e.zone == self.local_zone]
        if self.local_zone is None or len(endpoints) < self.min_cluster_size or not local:
            return prepare_pair(inner, endpoints, weights, stats)
        zones = {e.zone for e in endpoints}
        expected = self.local_share if self.local_share is not None else 1.0 / len(zones)
        local_weight = math.fsum(weights[i] for i in local)
        actual = local_weight / math.fsum(weights)

        def subset(idx: Sequence[int]) -> Prepared:
            return prepare_pair(
                inner,
                tuple(endpoints[i] for i in idx),
                tuple(weights[i] for i in idx),
                tuple(stats[i] for i in idx),
            )

        local_pick, local_walk = subset(local)
        if len(local) == len(endpoints):
            return local_pick, local_walk
        chosen = set(local)
        remote = [i for i in range(len(endpoints)) if i not in chosen]
        if actual >= expected:
            # Everything stays local; only a walk that finds nothing local spills over, so
            # the remote side is prepared on first need (a Maglev table takes ~0.1 s).
            built: list[Walker] = []

            def remote_walk(
                key: Key, accept: Callable[[ServiceEndpoint], bool]
            ) -> ServiceEndpoint | None:
                if not built:
                    built.append(subset(remote)[1])
                return built[0](key, accept)

            def spill(
                key: Key, accept: Callable[[ServiceEndpoint], bool]
            ) -> ServiceEndpoint | None:
                endpoint = local_walk(key, accept)
                return endpoint if endpoint is not None else remote_walk(key, accept)

            return local_pick, spill
        remote_pick, remote_walk_now = subset(remote)
        p_local = actual / expected
        rnd = self._rng.random

        def pick(key: Key = None) -> ServiceEndpoint:
            draw = rnd() if key is None else (hash64(key) & 0xFFFFFFFF) / 4294967296.0
            return local_pick(key) if draw < p_local else remote_pick(key)

        def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
            draw = rnd() if key is None else (hash64(key) & 0xFFFFFFFF) / 4294967296.0
            first, second = (
                (local_walk, remote_walk_now) if draw < p_local else (remote_walk_now, local_walk)
            )
            endpoint = first(key, accept)
            return endpoint if endpoint is not None else second(key, accept)

        return pick, walk

    def __repr__(self) -> str:
        return f"ZoneAware({self.inner!r}, local_zone={self.local_zone!r})"


# --- plumbing and the registry -------------------------------------------------------------


def _next_owner(
    owners: Sequence[ServiceEndpoint],
    start: int,
    cap: int,
    accept: Callable[[ServiceEndpoint], bool],
    endpoints: tuple[ServiceEndpoint, ...],
) -> ServiceEndpoint | None:
    """The first accepted owner at or after ``start`` on a ring or Maglev table.

    Looks at most ``cap`` slots (skipping runs of the same owner), then falls back to a scan
    of ``endpoints``: most owners were refused.
    """
    size = len(owners)
    last = None
    for step in range(cap):
        endpoint = owners[(start + step) % size]
        if endpoint is not last:
            if accept(endpoint):
                return endpoint
            last = endpoint
    return _scan(endpoints, start % len(endpoints), accept)


class _FunctionStrategy:
    """Adapts a plain function to :class:`BalancerStrategy`."""

    __slots__ = ("fn",)

    def __init__(self, fn: StrategyFunction) -> None:
        self.fn = fn

    def pick(self, candidates: Sequence[ServiceEndpoint], key: Key = None) -> ServiceEndpoint:
        return self.fn(candidates, key)

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def _endpoint_weight(strategy: object, endpoint: ServiceEndpoint) -> float:
    fn = getattr(strategy, "endpoint_weight", None)
    if fn is None:
        return 1.0
    return float(fn(endpoint))


def prepare_picker(
    strategy: BalancerStrategy,
    endpoints: tuple[ServiceEndpoint, ...],
    weights: tuple[float, ...],
    stats: tuple[EndpointStats, ...],
) -> Picker:
    """A picker over ``endpoints`` for any strategy: prepared if it can, else ``pick``.

    ``endpoints`` must be non-empty; ``weights`` and ``stats`` are aligned with it.
    """
    if isinstance(strategy, PreparedStrategy):
        return strategy.prepare(endpoints, weights, stats)
    return prepare_pair(strategy, endpoints, weights, stats)[0]


def prepare_pair(
    strategy: BalancerStrategy,
    endpoints: tuple[ServiceEndpoint, ...],
    weights: tuple[float, ...],
    stats: tuple[EndpointStats, ...],
) -> Prepared:
    """A picker and a :data:`Walker` over ``endpoints`` for any strategy.

    A strategy that is only a ``pick`` method (or a function) walks by picking from the
    accepted candidates: it is given exactly the endpoints it may choose, as its contract
    says. ``endpoints`` must be non-empty; ``weights`` and ``stats`` are aligned with it.
    """
    if isinstance(strategy, PreparedStrategy):
        return strategy.prepare_pair(endpoints, weights, stats)
    pick = strategy.pick

    def picker(key: Key = None) -> ServiceEndpoint:
        return pick(endpoints, key)

    def walk(key: Key, accept: Callable[[ServiceEndpoint], bool]) -> ServiceEndpoint | None:
        candidates = tuple(e for e in endpoints if accept(e))
        return pick(candidates, key) if candidates else None

    return picker, walk


def strategy_name(strategy: object) -> str:
    """A short name for ``strategy``: a built-in's registry name, else its repr."""
    name = getattr(strategy, "name", "")
    if isinstance(name, str) and name:
        return name
    return repr(strategy)


_Factory = Callable[..., PreparedStrategy]


def _f_round_robin(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return RoundRobin(clock=clock, **kw)


def _f_random(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return RandomChoice(clock=clock, rng=rng, **kw)


def _f_weighted(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return Weighted(clock=clock, **kw)


def _f_least_request(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return LeastRequest(clock=clock, rng=rng, **kw)


def _f_peak_ewma(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return PeakEwma(clock=clock, rng=rng, **kw)


def _f_ring_hash(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return RingHash(clock=clock, rng=rng, **kw)


def _f_maglev(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return Maglev(clock=clock, rng=rng, **kw)


def _f_nearest_first(clock: Clock, rng: random.Random | None, **kw: Any) -> PreparedStrategy:
    return NearestFirst(clock=clock, **kw)


_FACTORIES: dict[str, _Factory] = {
    "round_robin": _f_round_robin,
    "random": _f_random,
    "weighted": _f_weighted,
    "least_request": _f_least_request,
    "peak_ewma": _f_peak_ewma,
    "ring_hash": _f_ring_hash,
    "maglev": _f_maglev,
    "nearest_first": _f_nearest_first,
}

#: The names :func:`strategy_by_name` (and service configuration) accept.
STRATEGIES: tuple[str, ...] = tuple(_FACTORIES)


def strategy_by_name(
    name: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    **options: Any,
) -> PreparedStrategy:
    """Build the built-in strategy called ``name`` (one of :data:`STRATEGIES`).

    ``-`` and ``_`` are interchangeable and case is ignored; ``options`` go to the
    strategy's constructor (e.g. ``choice_count=3``, ``table_size=65537``).

    Raises:
        InvalidSetting: unknown name or option (the message lists the valid names).

    Example:
        >>> import random
        >>> strategy_by_name("peak-ewma", rng=random.Random(1)).name
        'peak_ewma'
    """
    factory = _FACTORIES.get(name.strip().lower().replace("-", "_"))
    if factory is None:
        raise InvalidSetting(
            "strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        )
    try:
        return factory(clock, rng, **options)
    except (TypeError, ValueError) as exc:
        raise InvalidSetting("strategy", f"{name}: {exc}") from exc


def resolve_strategy(
    spec: StrategyLike,
    *,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
) -> BalancerStrategy:
    """Turn a name, strategy object or plain function into a :class:`BalancerStrategy`.

    Raises:
        InvalidSetting: an unknown name.
        TypeError: ``spec`` is none of the three.
    """
    if isinstance(spec, str):
        return strategy_by_name(spec, clock=clock, rng=rng)
    if isinstance(spec, BalancerStrategy):
        return spec
    if callable(spec):
        return _FunctionStrategy(spec)
    raise TypeError(f"not a strategy: {spec!r}")
