"""Rotation: endpoints take turns (``round_robin``, and ``weighted`` on Consul's ``Weights``).

What a reader finds here: :func:`smooth_schedule` (one period of a smooth weighted round
robin, built once per snapshot), :class:`RoundRobin` and :class:`Weighted`. Both pick with
one shared counter (``itertools.count``, atomic under the GIL) and walk with
:func:`~lake_mesh_consul._core.strategies.base.rotation_walker`; a pick never pays for the
schedule, the snapshot's preparation does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint, settings_for
from lake_mesh_consul._core.loadstats import EndpointStats, StatsRegistry
from lake_mesh_consul._core.strategies.base import (
    Key,
    PairedStrategy,
    Prepared,
    constant_pair,
    rotation_walker,
    uniform,
)

__all__ = ["RoundRobin", "Weighted", "smooth_schedule"]

#: Longest smooth weighted round-robin period built for a snapshot (entries).
_SCHEDULE_CAP = 1 << 16
#: Weight resolution when fractional weights must be quantised (smallest weight -> ~100).
_WEIGHT_RESOLUTION = 100


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
    if max(ints) == 1:
        return list(range(len(ints)))  # equal weights: the plain cycle (same order)
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


def _rotation(
    endpoints: tuple[ServiceEndpoint, ...],
    weights: tuple[float, ...],
    turn: Callable[[], int],
) -> Prepared:
    """Pick and walk over one period of turns: the endpoints, or their smooth schedule."""
    if len(endpoints) == 1:
        return constant_pair(endpoints[0])
    if uniform(weights):
        schedule = endpoints
    else:
        schedule = tuple(endpoints[i] for i in smooth_schedule(weights))
    period = len(schedule)

    def pick(key: Key = None) -> ServiceEndpoint:
        return schedule[turn() % period]

    return pick, rotation_walker(schedule, endpoints, turn)


class RoundRobin(PairedStrategy):
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
        self._turn = itertools.count().__next__  # atomic under the GIL

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The cycle (or slow start's schedule) and a walk that continues it."""
        return _rotation(endpoints, weights, self._turn)


class Weighted(PairedStrategy):
    """Smooth weighted round robin on Consul's ``Weights``.

    A passing instance weighs ``Weights.Passing``, a warning one ``Weights.Warning`` (so it
    is down-weighted, not dropped); ``overrides`` replaces the weight of chosen endpoints
    (by setting name, ``<id>@<node>`` or ``<id>``, or a function returning a weight or
    ``None`` to keep Consul's). Slow start scales the weights further. Shares are exact
    over each period of the schedule; one period costs O(total weight), paid by the
    preparation, never by a pick.

    Args:
        overrides: ``{setting_name: weight}`` or ``fn(endpoint) -> weight | None``.

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
        self._turn = itertools.count().__next__

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
                    raise ValueError(f"weight override for {endpoint.instance!r} is negative")
                return float(value)
        return float(endpoint.weight)

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The smooth schedule and a walk that takes its next accepted turn."""
        return _rotation(endpoints, weights, self._turn)
