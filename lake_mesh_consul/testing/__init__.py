"""Helpers for testing services that use lake_mesh_consul: public API.

* :class:`FakeClock` - virtual time for breakers, ejection, TTLs and backoff.
* :class:`ConsulCluster` - several real agents (servers and clients) on loopback addresses
  that a test can kill, wipe, pause and partition; :func:`tls_agent` for an HTTPS agent.
* :class:`DevAgent` - a ``consul agent -dev`` process on free loopback ports that a test can
  stop, restart, pause and resume; :func:`find_consul_binary` finds the binary it runs.
* :class:`ConsulAgentHandle` - what the pytest plugin's fixtures hand a test.
* The pytest plugin (:mod:`lake_mesh_consul.testing.plugin`, registered through the
  ``pytest11`` entry point) provides the session-wide ``consul_agent`` fixture backed by a
  real Consul agent (an external address, a container, or the binary), plus
  ``dedicated_consul_agent``, ``consul_acl_agent``, ``mesh_config`` and ``unique_name``.

Names load lazily so that importing this package starts nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary
    from lake_mesh_consul.testing.clock import FakeClock
    from lake_mesh_consul.testing.cluster import ConsulCluster, tls_agent
    from lake_mesh_consul.testing.plugin import ConsulAgentHandle

__all__ = [
    "ConsulAgentHandle",
    "ConsulCluster",
    "DevAgent",
    "FakeClock",
    "find_consul_binary",
    "tls_agent",
]

#: Where each public name lives. Loaded on first attribute access (PEP 562).
_EXPORTS: dict[str, str] = {
    "ConsulAgentHandle": "lake_mesh_consul.testing.plugin",
    "ConsulCluster": "lake_mesh_consul.testing.cluster",
    "DevAgent": "lake_mesh_consul.testing._agent",
    "FakeClock": "lake_mesh_consul.testing.clock",
    "find_consul_binary": "lake_mesh_consul.testing._agent",
    "tls_agent": "lake_mesh_consul.testing.cluster",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lake_mesh_consul.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
