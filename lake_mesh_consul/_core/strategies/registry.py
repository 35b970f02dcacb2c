"""The registry: strategies by name, and any strategy turned into a pick and a walk.

What a reader finds here: :data:`STRATEGIES` and :func:`strategy_by_name` (the names
service configuration accepts), :func:`resolve_strategy` (a name, object or plain function
becomes a :class:`~lake_mesh_consul._core.strategies.base.BalancerStrategy`), and
:func:`prepare_pair` / :func:`prepare_picker`, which the balancer calls for any strategy,
built-in or not.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.loadstats import EndpointStats
from lake_mesh_consul._core.strategies.base import (
    Accept,
    BalancerStrategy,
    Key,
    PickFunction,
    Prepared,
    PreparedStrategy,
    StrategyFunction,
    StrategyLike,
)
from lake_mesh_consul._core.strategies.consistent import Maglev, RingHash
from lake_mesh_consul._core.strategies.locality import NearestFirst
from lake_mesh_consul._core.strategies.rotation import RoundRobin, Weighted
from lake_mesh_consul._core.strategies.sampling import LeastRequest, PeakEwma, RandomChoice
from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "STRATEGIES",
    "endpoint_weight_of",
    "prepare_pair",
    "prepare_picker",
    "resolve_strategy",
    "strategy_by_name",
    "strategy_name",
]


class _FunctionStrategy:
    """Adapts a plain function to :class:`BalancerStrategy`."""

    __slots__ = ("fn",)

    def __init__(self, fn: StrategyFunction) -> None:
        self.fn = fn

    def pick(self, candidates: Sequence[ServiceEndpoint], key: Key = None) -> ServiceEndpoint:
        return self.fn(candidates, key)

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def endpoint_weight_of(strategy: object, endpoint: ServiceEndpoint) -> float:
    """``strategy.endpoint_weight(endpoint)`` when it has one, else 1.0."""
    fn = getattr(strategy, "endpoint_weight", None)
    if fn is None:
        return 1.0
    return float(fn(endpoint))


def prepare_picker(
    strategy: BalancerStrategy,
    endpoints: tuple[ServiceEndpoint, ...],
    weights: tuple[float, ...],
    stats: tuple[EndpointStats, ...],
) -> PickFunction:
    """A pick function over ``endpoints`` for any strategy: prepared if it can, else ``pick``.

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
    """A pick function and a walk function over ``endpoints`` for any strategy.

    A strategy that is only a ``pick`` method (or a function) walks by picking from the
    accepted candidates: it is given exactly the endpoints it may choose, as its contract
    says. ``endpoints`` must be non-empty; ``weights`` and ``stats`` are aligned with it.
    """
    if isinstance(strategy, PreparedStrategy):
        return strategy.prepare_pair(endpoints, weights, stats)
    pick = strategy.pick

    def picker(key: Key = None) -> ServiceEndpoint:
        return pick(endpoints, key)

    def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
        candidates = tuple(e for e in endpoints if accept(e))
        return pick(candidates, key) if candidates else None

    return picker, walk


def strategy_name(strategy: object) -> str:
    """A short name for ``strategy``: a built-in's registry name, else its repr."""
    name = getattr(strategy, "name", "")
    if isinstance(name, str) and name:
        return name
    return repr(strategy)


#: Builds a named strategy from ``(clock, rng, **options)``.
_Factory = Callable[..., PreparedStrategy]

_FACTORIES: dict[str, _Factory] = {
    "round_robin": lambda clock, rng, **kw: RoundRobin(clock=clock, **kw),
    "random": lambda clock, rng, **kw: RandomChoice(clock=clock, rng=rng, **kw),
    "weighted": lambda clock, rng, **kw: Weighted(clock=clock, **kw),
    "least_request": lambda clock, rng, **kw: LeastRequest(clock=clock, rng=rng, **kw),
    "peak_ewma": lambda clock, rng, **kw: PeakEwma(clock=clock, rng=rng, **kw),
    "ring_hash": lambda clock, rng, **kw: RingHash(clock=clock, rng=rng, **kw),
    "maglev": lambda clock, rng, **kw: Maglev(clock=clock, rng=rng, **kw),
    "nearest_first": lambda clock, rng, **kw: NearestFirst(clock=clock, **kw),
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
