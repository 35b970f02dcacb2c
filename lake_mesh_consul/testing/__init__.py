"""Helpers for testing services that use lake_mesh_consul: public API.

* :class:`FakeClock` - virtual time for breakers, ejection, TTLs and backoff.
* The pytest plugin (:mod:`lake_mesh_consul.testing.plugin`, registered through the
  ``pytest11`` entry point) provides a session-wide ``consul_agent`` fixture backed by a
  real Consul agent.

Names load lazily so that importing this package starts nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FakeClock"]

_EXPORTS: dict[str, str] = {
    "FakeClock": "lake_mesh_consul.testing.clock",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lake_mesh_consul.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
