"""Health status and its aggregation, written as data.

Consul's precedence (``api/health.go``, ``AggregatedStatus``) is
``maintenance > critical > warning > passing``: a set of checks is as bad as its worst
member, and maintenance trumps everything. :data:`PRECEDENCE` is that rule as a table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["PRECEDENCE", "HealthStatus", "aggregate"]


class HealthStatus(str, enum.Enum):
    """The health of a check, an instance or a service, as Consul spells it.

    Compare with :meth:`worse_than`; aggregate a collection with :meth:`aggregate`.
    """

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"

    @classmethod
    def parse(cls, value: str) -> HealthStatus:
        """Parse Consul's spelling (case-insensitive); unknown values count as critical.

        Consul only ever reports the four values, so an unknown one is a corrupt answer and
        the safe reading is "not healthy".
        """
        try:
            return cls(value.strip().lower())
        except ValueError:
            return cls.CRITICAL

    @property
    def rank(self) -> int:
        """Position in :data:`PRECEDENCE` (higher is worse)."""
        return PRECEDENCE[self]

    def worse_than(self, other: HealthStatus) -> bool:
        """Whether this status takes precedence over ``other``."""
        return PRECEDENCE[self] > PRECEDENCE[other]

    @classmethod
    def aggregate(cls, statuses: Iterable[HealthStatus]) -> HealthStatus:
        """The worst of ``statuses``; passing for none (an instance with no checks is healthy)."""
        return aggregate(statuses)

    def __str__(self) -> str:
        return self.value


#: Consul's precedence as data: the higher the number, the more it dominates an aggregate.
PRECEDENCE: dict[HealthStatus, int] = {
    HealthStatus.PASSING: 0,
    HealthStatus.WARNING: 1,
    HealthStatus.CRITICAL: 2,
    HealthStatus.MAINTENANCE: 3,
}


def aggregate(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """Return the status of a set of checks: the one with the highest precedence."""
    worst = HealthStatus.PASSING
    for status in statuses:
        if PRECEDENCE[status] > PRECEDENCE[worst]:
            worst = status
    return worst
