"""lake_mesh_consul: a client-side service mesh for Python services on top of HashiCorp Consul.

Register a service with health checks, discover healthy instances of others from a local
cache kept current by Consul blocking queries, balance requests over them, and fail safely
with per-endpoint circuit breakers, outlier ejection and budgeted retries.

The public names are exported here. Public modules beside them: :mod:`lake_mesh_consul.errors`
(the error tree), :mod:`lake_mesh_consul.checks` (health check definitions),
:mod:`lake_mesh_consul.mesh` (``Mesh``, the composition root), :mod:`lake_mesh_consul.http`
(a ``requests`` session that routes through the mesh) and :mod:`lake_mesh_consul.testing`
(a pytest plugin with a real Consul agent, FakeClock, ConsulCluster).

Importing this package is cheap: each name is loaded from its private module on first use,
so requests, python-consul2, tenacity and pybreaker are not imported until needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lake_mesh_consul._version import __version__ as __version__

if TYPE_CHECKING:
    from lake_mesh_consul._consul.discovery import ServiceDiscovery
    from lake_mesh_consul._consul.health_checks import HealthCheckManager
    from lake_mesh_consul._consul.registry import ServiceRegistry
    from lake_mesh_consul._core.balancer import LoadBalancer
    from lake_mesh_consul._core.breaker import BreakerState, CircuitBreaker
    from lake_mesh_consul._core.config import EndpointConfig, MeshConfig, ServiceConfig
    from lake_mesh_consul._core.detector import FailureDetector
    from lake_mesh_consul._core.endpoint import ServiceEndpoint
    from lake_mesh_consul._core.health import HealthMetrics, HealthStatus
    from lake_mesh_consul._core.registration import ServiceMetadata
    from lake_mesh_consul._core.strategies import BalancerStrategy

__all__ = [
    "BalancerStrategy",
    "BreakerState",
    "CircuitBreaker",
    "EndpointConfig",
    "FailureDetector",
    "HealthCheckManager",
    "HealthMetrics",
    "HealthStatus",
    "LoadBalancer",
    "MeshConfig",
    "ServiceConfig",
    "ServiceDiscovery",
    "ServiceEndpoint",
    "ServiceMetadata",
    "ServiceRegistry",
]

#: Where each public name lives. Loaded on first attribute access (PEP 562).
_EXPORTS: dict[str, str] = {
    "BalancerStrategy": "lake_mesh_consul._core.strategies",
    "BreakerState": "lake_mesh_consul._core.breaker",
    "CircuitBreaker": "lake_mesh_consul._core.breaker",
    "EndpointConfig": "lake_mesh_consul._core.config",
    "FailureDetector": "lake_mesh_consul._core.detector",
    "HealthCheckManager": "lake_mesh_consul._consul.health_checks",
    "HealthMetrics": "lake_mesh_consul._core.health",
    "HealthStatus": "lake_mesh_consul._core.health",
    "LoadBalancer": "lake_mesh_consul._core.balancer",
    "MeshConfig": "lake_mesh_consul._core.config",
    "ServiceConfig": "lake_mesh_consul._core.config",
    "ServiceDiscovery": "lake_mesh_consul._consul.discovery",
    "ServiceEndpoint": "lake_mesh_consul._core.endpoint",
    "ServiceMetadata": "lake_mesh_consul._core.registration",
    "ServiceRegistry": "lake_mesh_consul._consul.registry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lake_mesh_consul' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    # Only the API and the version; the lazy-loading machinery stays out of sight.
    return sorted([*__all__, "__version__"])
