"""Zone-aware routing: prefer the caller's zone around any strategy (:class:`ZoneAware`).

What a reader finds here: :class:`ZoneAware` and Envoy's zone-aware routing rules it
follows (in its docstring). It composes: the inner strategy, named or given, picks inside
the zone set it chooses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.hashing import hash64
from lake_mesh_consul._core.loadstats import EndpointStats, StatsRegistry
from lake_mesh_consul._core.strategies.base import (
    Accept,
    BalancerStrategy,
    Key,
    PairedStrategy,
    Prepared,
    StrategyLike,
    WalkFunction,
)
from lake_mesh_consul._core.strategies.registry import (
    endpoint_weight_of,
    prepare_pair,
    resolve_strategy,
)

__all__ = ["DEFAULT_MIN_CLUSTER_SIZE", "ZoneAware"]

#: Envoy's ``min_cluster_size`` for zone-aware routing.
DEFAULT_MIN_CLUSTER_SIZE = 6


class ZoneAware(PairedStrategy):
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
        return endpoint_weight_of(self.inner, endpoint)

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """Per-zone picks; the walk tries the chosen side, then the other zones."""
        local = [i for i, e in enumerate(endpoints) if e.zone == self.local_zone]
        if self.local_zone is None or len(endpoints) < self.min_cluster_size or not local:
            return prepare_pair(self.inner, endpoints, weights, stats)
        if len(local) == len(endpoints):
            return self._subset(local, endpoints, weights, stats)
        chosen = set(local)
        remote = [i for i in range(len(endpoints)) if i not in chosen]
        zones = {e.zone for e in endpoints}
        expected = self.local_share if self.local_share is not None else 1.0 / len(zones)
        actual = math.fsum(weights[i] for i in local) / math.fsum(weights)
        local_pick, local_walk = self._subset(local, endpoints, weights, stats)
        if actual >= expected:
            # Everything stays local; only a walk that finds nothing local spills over, so
            # the remote side is prepared on first need (a Maglev table is not free).
            built: list[WalkFunction] = []

            def spill(key: Key, accept: Accept) -> ServiceEndpoint | None:
                endpoint = local_walk(key, accept)
                if endpoint is not None:
                    return endpoint
                if not built:
                    built.append(self._subset(remote, endpoints, weights, stats)[1])
                return built[0](key, accept)

            return local_pick, spill
        remote_pick, remote_walk = self._subset(remote, endpoints, weights, stats)
        p_local = actual / expected
        rnd = self._rng.random

        def draw(key: Key) -> float:
            return rnd() if key is None else (hash64(key) & 0xFFFFFFFF) / 4294967296.0

        def pick(key: Key = None) -> ServiceEndpoint:
            return local_pick(key) if draw(key) < p_local else remote_pick(key)

        def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
            first, second = (
                (local_walk, remote_walk) if draw(key) < p_local else (remote_walk, local_walk)
            )
            endpoint = first(key, accept)
            return endpoint if endpoint is not None else second(key, accept)

        return pick, walk

    def _subset(
        self,
        idx: Sequence[int],
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        return prepare_pair(
            self.inner,
            tuple(endpoints[i] for i in idx),
            tuple(weights[i] for i in idx),
            tuple(stats[i] for i in idx),
        )

    def __repr__(self) -> str:
        return f"ZoneAware({self.inner!r}, local_zone={self.local_zone!r})"
