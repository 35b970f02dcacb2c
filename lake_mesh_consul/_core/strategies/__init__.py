"""Balancer strategies: one-method objects that pick an endpoint from the candidates given.

A strategy does not own discovery, health or breakers: the
:class:`~lake_mesh_consul._core.balancer.LoadBalancer` hands it the eligible endpoints and
it picks one. Anything with ``pick(candidates, key=None)`` is a :class:`BalancerStrategy`,
and so is a plain function ``fn(candidates, key)`` (tenacity's style).

The built-ins *prepare* a snapshot once (a schedule, a ring, a Maglev table, flat arrays
of per-endpoint stats) into a pick function, ``fn(key)``, that picks in O(1) or O(log N)
with no lock, and a walk function, ``fn(key, accept)``, the pick a retry makes when some
endpoints must be avoided. The balancer prepares each discovery snapshot when it arrives,
so the cost of a pick does not grow with the number of endpoints, and a snapshot that
changed nothing a strategy uses is not prepared again.

Where each thing lives (one module per family)::

    base.py        the protocol, the pick/walk types, PreparedStrategy, the shared walkers
    rotation.py    round_robin, weighted, smooth_schedule
    sampling.py    random, least_request, peak_ewma (power of two choices)
    consistent.py  ring_hash, maglev (keys stay where they are)
    locality.py    nearest_first
    zones.py       ZoneAware, around any strategy
    registry.py    STRATEGIES, strategy_by_name, resolve_strategy, prepare_pair

==================  ==================================================================
name                what it does
==================  ==================================================================
``round_robin``     each endpoint in turn (exactly fair); honours slow start
``random``          uniform random choice (seedable ``rng``); honours slow start
``weighted``        smooth weighted round robin on Consul ``Weights`` (warning instances
                    get ``Weights.Warning``), overridable per instance
``least_request``   power of two choices on outstanding requests (Envoy; ``choice_count``
                    2; a full scan for small sets)
``peak_ewma``       power of two choices on peak-EWMA latency x (outstanding + 1)
                    (Finagle, Linkerd: decay 10 s, 30 ms for unseen instances)
``ring_hash``       consistent hashing on a ring: 256 points per unit of weight, about
                    1/N of keys move for any N, none between unchanged instances
``maglev``          Maglev consistent hashing (Envoy ``MAGLEV``: table size 65537)
``nearest_first``   the first candidate in discovery's order (Consul ``?near=``)
==================  ==================================================================

Hash strategies use :mod:`~lake_mesh_consul._core.hashing` (BLAKE2b, SHAKE-128), never the
per-process salted :func:`hash`, so every process maps a key alike.
"""

from lake_mesh_consul._core.strategies.base import (
    BalancerStrategy,
    Key,
    PickFunction,
    Prepared,
    PreparedStrategy,
    StrategyFunction,
    StrategyLike,
    WalkFunction,
)
from lake_mesh_consul._core.strategies.consistent import Maglev, RingHash
from lake_mesh_consul._core.strategies.locality import NearestFirst
from lake_mesh_consul._core.strategies.registry import (
    STRATEGIES,
    prepare_pair,
    prepare_picker,
    resolve_strategy,
    strategy_by_name,
    strategy_name,
)
from lake_mesh_consul._core.strategies.rotation import RoundRobin, Weighted, smooth_schedule
from lake_mesh_consul._core.strategies.sampling import LeastRequest, PeakEwma, RandomChoice
from lake_mesh_consul._core.strategies.zones import ZoneAware

__all__ = [
    "STRATEGIES",
    "BalancerStrategy",
    "Key",
    "LeastRequest",
    "Maglev",
    "NearestFirst",
    "PeakEwma",
    "PickFunction",
    "Prepared",
    "PreparedStrategy",
    "RandomChoice",
    "RingHash",
    "RoundRobin",
    "StrategyFunction",
    "StrategyLike",
    "WalkFunction",
    "Weighted",
    "ZoneAware",
    "prepare_pair",
    "prepare_picker",
    "resolve_strategy",
    "smooth_schedule",
    "strategy_by_name",
    "strategy_name",
]
