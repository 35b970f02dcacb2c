"""Nearest first: keep discovery's order (``nearest_first``) and fail over down it.

What a reader finds here: :class:`NearestFirst`. Consul's ``?near=`` sorts health results
by network round-trip time; this strategy sends everything to the first eligible instance
of that order (or round-robins over the ``spread`` first). For zones, see
:mod:`~lake_mesh_consul._core.strategies.zones`.
"""

from __future__ import annotations

import itertools

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.loadstats import EndpointStats, StatsRegistry
from lake_mesh_consul._core.strategies.base import (
    Accept,
    Key,
    PairedStrategy,
    PickFunction,
    Prepared,
    constant_pair,
    scan,
)

__all__ = ["NearestFirst"]


class NearestFirst(PairedStrategy):
    """The first candidate in discovery's order (nearest first when discovery sorted by RTT).

    Consul sorts health results by network round-trip time with ``?near=_agent``; this
    strategy keeps that order, sending everything to the nearest eligible instance and
    failing over down the list as instances become ineligible. ``spread > 1`` round-robins
    over the ``spread`` nearest instead.

    Args:
        spread: how many of the nearest candidates share the traffic (default 1).
    """

    name = "nearest_first"
    slow_start = False

    def __init__(
        self, *, spread: int = 1, clock: Clock = SYSTEM_CLOCK, stats: StatsRegistry | None = None
    ) -> None:
        if spread < 1:
            raise ValueError(f"spread must be >= 1, got {spread}")
        super().__init__(clock=clock, stats=stats)
        self.spread = spread
        self._turn = itertools.count().__next__

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The ``spread`` first candidates, and a walk failing over down the list."""
        spread = self.spread
        head = endpoints[:spread]
        n = len(head)
        turn = self._turn
        pick: PickFunction
        if n == 1:
            pick = constant_pair(head[0])[0]
        else:

            def pick(key: Key = None) -> ServiceEndpoint:
                return head[turn() % n]

        def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
            endpoint = scan(head, turn() % n if n > 1 else 0, accept)
            if endpoint is not None:
                return endpoint
            for i in range(spread, len(endpoints)):  # then the next nearest, in order
                if accept(endpoints[i]):
                    return endpoints[i]
            return None

        return pick, walk

    def __repr__(self) -> str:
        return f"NearestFirst(spread={self.spread})"
