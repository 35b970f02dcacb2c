"""The policy types: every constructor argument of the exported request-path classes.

``lake_mesh_consul`` exports fifteen names; the values you pass to them live here, so that
``from lake_mesh_consul.policies import BreakerPolicy, DetectorPolicy, RetryPolicy`` works
without reaching into private modules and without growing the top-level namespace.

==================================== ==========================================================
what you configure                   types
==================================== ==========================================================
``CircuitBreaker(name, policy, ...)`` :class:`BreakerPolicy`, :class:`WindowPolicy`,
                                     ``BreakerListener`` (called with :class:`BreakerTransition`)
``FailureDetector(policy, ...)``     :class:`DetectorPolicy`, :class:`EjectionPolicy`,
                                     :class:`OutlierPolicy`, :class:`ClassificationPolicy`,
                                     :class:`OutcomeKind`, ``EjectionListener``
                                     (called with :class:`EjectionEvent`)
retries                              :class:`RetryPolicy`, :class:`RetryBudget`,
                                     :class:`BudgetPolicy`, :class:`Backoff`
a service's request path             :class:`Route`, :class:`RouteSettings`,
                                     :class:`EndpointSettings`, :class:`CallOptions`
time (every ``clock=`` argument)     :class:`Clock` (the protocol), :class:`SystemClock`
==================================== ==========================================================

Every policy is a frozen dataclass: derive variants with :func:`dataclasses.replace`.
Names load on first use (PEP 562), so importing this module imports neither pybreaker nor
tenacity until a breaker or retry type is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lake_mesh_consul._core.backoff import Backoff
    from lake_mesh_consul._core.breaker import (
        BreakerListener,
        BreakerPolicy,
        BreakerTransition,
        WindowPolicy,
    )
    from lake_mesh_consul._core.clock import Clock, SystemClock
    from lake_mesh_consul._core.detector import (
        DetectorPolicy,
        EjectionEvent,
        EjectionListener,
        EjectionPolicy,
        OutlierPolicy,
    )
    from lake_mesh_consul._core.outcome import ClassificationPolicy, OutcomeKind
    from lake_mesh_consul._core.retry import BudgetPolicy, CallOptions, RetryBudget, RetryPolicy
    from lake_mesh_consul._core.route import EndpointSettings, Route, RouteSettings

__all__ = [
    "Backoff",
    "BreakerListener",
    "BreakerPolicy",
    "BreakerTransition",
    "BudgetPolicy",
    "CallOptions",
    "ClassificationPolicy",
    "Clock",
    "DetectorPolicy",
    "EjectionEvent",
    "EjectionListener",
    "EjectionPolicy",
    "EndpointSettings",
    "OutcomeKind",
    "OutlierPolicy",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "RouteSettings",
    "SystemClock",
    "WindowPolicy",
]

_BREAKER = "lake_mesh_consul._core.breaker"
_DETECTOR = "lake_mesh_consul._core.detector"
_RETRY = "lake_mesh_consul._core.retry"
_ROUTE = "lake_mesh_consul._core.route"

#: Where each name lives (its one home).
_EXPORTS: dict[str, str] = {
    "Backoff": "lake_mesh_consul._core.backoff",
    "BreakerListener": _BREAKER,
    "BreakerPolicy": _BREAKER,
    "BreakerTransition": _BREAKER,
    "BudgetPolicy": _RETRY,
    "CallOptions": _RETRY,
    "ClassificationPolicy": "lake_mesh_consul._core.outcome",
    "Clock": "lake_mesh_consul._core.clock",
    "DetectorPolicy": _DETECTOR,
    "EjectionEvent": _DETECTOR,
    "EjectionListener": _DETECTOR,
    "EjectionPolicy": _DETECTOR,
    "EndpointSettings": _ROUTE,
    "OutcomeKind": "lake_mesh_consul._core.outcome",
    "OutlierPolicy": _DETECTOR,
    "RetryBudget": _RETRY,
    "RetryPolicy": _RETRY,
    "Route": _ROUTE,
    "RouteSettings": _ROUTE,
    "SystemClock": "lake_mesh_consul._core.clock",
    "WindowPolicy": _BREAKER,
}


def __getattr__(name: str) -> Any:
    """Load a policy type on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names."""
    return sorted(__all__)
