"""What every strategy shares: the protocol, the prepared pick and walk, the walkers.

What a reader finds here:

* :class:`BalancerStrategy`, the one-method protocol (a plain function counts too), and the
  type aliases of a prepared snapshot: :data:`PickFunction` (``fn(key) -> endpoint``) and
  :data:`WalkFunction` (``fn(key, accept) -> endpoint | None``), paired as :data:`Prepared`.
* :class:`PreparedStrategy`, the base of the built-ins, and :class:`PairedStrategy`, the
  base of those that build their pick and walk together from one structure and reuse the
  last preparation when the same snapshot comes again (no rebuild for an unchanged set).
* The walkers, each written once: :func:`rotation_walker` (round robin and the weighted
  schedules), :func:`redraw_walker` (random draws, and any strategy that only picks) and
  :func:`next_owner` (ring hash and Maglev: the key's next distinct owner), plus
  :func:`scan`, the bounded fallback they share.

A *walk* is the pick a retry makes when some endpoints must be avoided (already tried, or
refused by a gate): the strategy's choice among the endpoints ``accept`` accepts. It does
O(1) work per accepted endpoint in the usual case and is bounded by a scan in the worst.
"""

from __future__ import annotations

import abc
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.hashing import hash64
from lake_mesh_consul._core.loadstats import EndpointStats, StatsRegistry
from lake_mesh_consul.errors import NoEndpointsAvailable

__all__ = [
    "Accept",
    "BalancerStrategy",
    "Key",
    "PairedStrategy",
    "PickFunction",
    "Prepared",
    "PreparedStrategy",
    "StrategyFunction",
    "StrategyLike",
    "WalkFunction",
    "constant_pair",
    "extended",
    "next_owner",
    "no_candidates",
    "redraw_walker",
    "rotation_walker",
    "scan",
    "uniform",
    "walk_cap",
]

#: A pick's optional key: hashing strategies hash it; the others ignore it.
Key = bytes | str | None
#: A prepared pick over one fixed set of endpoints: ``fn(key) -> endpoint``. Thread-safe.
PickFunction = Callable[[Key], ServiceEndpoint]
#: Which endpoints a walk may return: ``accept(endpoint) -> bool``.
Accept = Callable[[ServiceEndpoint], bool]
#: ``fn(key, accept)``: the strategy's pick among the endpoints for which ``accept`` is
#: true (hashing strategies: the next distinct owner after the key's position), or ``None``
#: when it accepts none of them. Thread-safe, like a pick function.
WalkFunction = Callable[[Key, Accept], ServiceEndpoint | None]
#: A prepared snapshot: its pick function and its walk function, built from one structure.
Prepared = tuple[PickFunction, WalkFunction]
#: A plain function that counts as a strategy: ``fn(candidates, key) -> endpoint``.
StrategyFunction = Callable[[Sequence[ServiceEndpoint], Key], ServiceEndpoint]

#: Random re-draws a walker makes before it scans (random, P2C, a strategy that only picks).
WALK_DRAWS = 3
#: Schedule, ring or table entries a walker visits per endpoint before it scans instead.
_WALK_STEPS_PER_ENDPOINT = 16
#: ... plus this many (small sets).
_WALK_STEPS_MIN = 64

_T = TypeVar("_T")
_is = operator.is_


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


def no_candidates() -> NoEndpointsAvailable:
    """The error of a pick from nothing."""
    return NoEndpointsAvailable("", "no candidates given to the strategy")


def uniform(weights: Sequence[float]) -> bool:
    """Whether every weight equals the first (a C-level count, no Python loop)."""
    return weights.count(weights[0]) == len(weights)


def extended(items: tuple[_T, ...]) -> tuple[_T, ...]:
    """``items`` plus a copy of its last element.

    ``int(random() * n)`` is ``n`` with probability ~2**-53 (float rounding): the duplicate
    makes that index valid without a bounds check on the hot path.
    """
    return items + items[-1:]  # one C-level copy


def walk_cap(n: int, size: int) -> int:
    """How many of ``size`` schedule/ring/table entries a walk visits before it scans."""
    return min(size, _WALK_STEPS_MIN + _WALK_STEPS_PER_ENDPOINT * n)


def _same_items(a: Sequence[object], b: Sequence[object]) -> bool:
    return len(a) == len(b) and all(map(_is, a, b))


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

    Thread-safety: pick functions and :meth:`pick` are safe from any number of threads
    without a lock; :meth:`prepare` builds a new pick function and never mutates an old one.
    """

    name: str = ""
    uses_weights: bool = False
    slow_start: bool = True

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None) -> None:
        self._clock = clock
        self._stats = stats if stats is not None else StatsRegistry(clock)
        self._cached: (
            tuple[Sequence[ServiceEndpoint], tuple[ServiceEndpoint, ...], PickFunction] | None
        ) = None

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
    ) -> PickFunction:
        """Build a pick function over ``endpoints`` (non-empty, all weights > 0).

        ``weights`` and ``stats`` are aligned with ``endpoints``. The function must not be
        mutated after it is returned; it may read the (live) ``stats`` objects.
        """

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The pick function of :meth:`prepare` and a :data:`WalkFunction` over the same set.

        The default walk (for subclasses that only implement :meth:`prepare`) re-picks a
        few times, then scans ``endpoints`` from a position derived from the key.
        """
        pick = self.prepare(endpoints, weights, stats)
        n = len(endpoints)
        turn = itertools.count().__next__

        def start(key: Key) -> int:
            return hash64(key) % n if key is not None else turn() % n

        return pick, redraw_walker(pick, endpoints, start)

    def prepare_candidates(self, candidates: Sequence[ServiceEndpoint]) -> PickFunction:
        """A pick function over ``candidates`` weighed by this strategy (no balancer).

        Drops candidates of weight 0 and uses :attr:`stats` for load-aware strategies.

        Raises:
            NoEndpointsAvailable: no candidate has a weight above zero.
        """
        weighed = [(e, self.endpoint_weight(e)) for e in candidates]
        weighed = [(e, w) for e, w in weighed if w > 0]
        if not weighed:
            raise no_candidates()
        endpoints = tuple(e for e, _ in weighed)
        return self.prepare(
            endpoints,
            tuple(w for _, w in weighed),
            tuple(self._stats.get(e) for e in endpoints),
        )

    def pick(self, candidates: Sequence[ServiceEndpoint], key: Key = None) -> ServiceEndpoint:
        """Pick from ``candidates`` (prepared once per distinct candidate sequence).

        Raises:
            NoEndpointsAvailable: ``candidates`` is empty or every weight is zero.
        """
        cached = self._cached
        if cached is None or cached[0] is not candidates or type(candidates) is not tuple:
            frozen = tuple(candidates)
            if cached is not None and _same_items(cached[1], frozen):
                pick = cached[2]
            else:
                pick = self.prepare_candidates(frozen)
            self._cached = (candidates, frozen, pick)
        else:
            pick = cached[2]
        return pick(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PairedStrategy(PreparedStrategy):
    """A built-in that builds its pick and its walk together, from one structure.

    They share one ring, table or schedule: subclasses implement :meth:`build`, and
    :meth:`prepare` is the pick half of :meth:`prepare_pair`. :meth:`prepare_pair` returns
    the last preparation again, without rebuilding, when it is given the very same
    endpoint and stats objects with equal weights (an O(N) identity check): a discovery
    answer that changed nothing this strategy uses costs no new ring, table or schedule.
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None) -> None:
        super().__init__(clock=clock, stats=stats)
        self._last: (
            tuple[
                tuple[ServiceEndpoint, ...],
                tuple[float, ...],
                tuple[EndpointStats, ...],
                Prepared,
            ]
            | None
        ) = None

    def prepare(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> PickFunction:
        """The pick half of :meth:`prepare_pair`."""
        return self.prepare_pair(endpoints, weights, stats)[0]

    def prepare_pair(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """:meth:`build`, or the last result when nothing it depends on changed."""
        last = self._last
        if (
            last is not None
            and last[1] == weights
            and _same_items(last[0], endpoints)
            and _same_items(last[2], stats)
        ):
            return last[3]
        prepared = self.build(endpoints, weights, stats)
        self._last = (endpoints, weights, stats, prepared)
        return prepared

    @abc.abstractmethod
    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The pick and walk functions over one newly built structure."""


# --- the walkers ---------------------------------------------------------------------------


def constant_pair(endpoint: ServiceEndpoint) -> Prepared:
    """Pick and walk over a single endpoint."""

    def pick(key: Key = None) -> ServiceEndpoint:
        return endpoint

    def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
        return endpoint if accept(endpoint) else None

    return pick, walk


def scan(
    endpoints: Sequence[ServiceEndpoint], start: int, accept: Accept
) -> ServiceEndpoint | None:
    """The first endpoint ``accept`` accepts, from ``start`` round to ``start - 1``."""
    n = len(endpoints)
    for step in range(n):
        endpoint = endpoints[(start + step) % n]
        if accept(endpoint):
            return endpoint
    return None


def redraw_walker(
    pick: PickFunction, endpoints: Sequence[ServiceEndpoint], start: Callable[[Key], int]
) -> WalkFunction:
    """Pick again a few times; then scan from ``start(key)``.

    For strategies whose picks are independent draws (random, or anything that only
    picks): a refused draw is simply drawn again.
    """

    def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
        for _ in range(WALK_DRAWS):
            endpoint = pick(key)
            if accept(endpoint):
                return endpoint
        return scan(endpoints, start(key), accept)

    return walk


def rotation_walker(
    schedule: Sequence[ServiceEndpoint],
    endpoints: Sequence[ServiceEndpoint],
    turn: Callable[[], int],
) -> WalkFunction:
    """Take the schedule's next turn; a turn of a refused endpoint goes to another turn.

    ``schedule`` is one period of turns (the endpoints themselves for plain round robin)
    and ``turn`` the rotation shared with the pick. A refused turn is handed to another
    turn chosen by a second rotation, then taken in order from there: the next turn in the
    schedule would always be the same endpoint's and double its share, while this keeps
    the others' shares (weights and slow start included) even.
    """
    period = len(schedule)
    n = len(endpoints)
    cap = walk_cap(n, period)
    second = itertools.count().__next__

    def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
        start = turn() % period
        endpoint = schedule[start]
        if accept(endpoint):
            return endpoint
        start += 1 + second() % (period - 1)
        for step in range(cap):
            endpoint = schedule[(start + step) % period]
            if accept(endpoint):
                return endpoint
        return scan(endpoints, start % n, accept) if cap < period else None

    return walk


def next_owner(
    owners: Sequence[ServiceEndpoint],
    start: int,
    cap: int,
    accept: Accept,
    endpoints: Sequence[ServiceEndpoint],
) -> ServiceEndpoint | None:
    """The first accepted owner at or after ``start`` on a ring or Maglev table.

    The slots after a key's own hold the other endpoints in a key-specific,
    process-independent order, so the first accepted owner is the key's next choice in
    every process. Looks at most ``cap`` slots (skipping runs of one owner), then falls
    back to a scan of ``endpoints``: most owners were refused.
    """
    size = len(owners)
    last = None
    for step in range(cap):
        endpoint = owners[(start + step) % size]
        if endpoint is not last:
            if accept(endpoint):
                return endpoint
            last = endpoint
    return scan(endpoints, start % len(endpoints), accept)
