"""Health check definitions for :class:`~lake_mesh_consul.ServiceMetadata`.

Agent-run checks (:class:`HttpCheck`, :class:`TcpCheck`, :class:`GrpcCheck`,
:class:`AliasCheck`, :class:`ScriptCheck`) are declared to the Consul agent, which runs them;
:class:`TtlCheck` is reported by the service itself (see
:class:`~lake_mesh_consul.HealthCheckManager`). Every check validates its fields at
construction, before any network call.

Example:
    >>> from lake_mesh_consul import ServiceMetadata
    >>> from lake_mesh_consul.checks import HttpCheck, TtlCheck
    >>> meta = ServiceMetadata("web", 8080, checks=(
    ...     HttpCheck(url="http://127.0.0.1:8080/health", interval="10s", timeout="2s"),
    ...     TtlCheck(id="web-app", ttl="15s"),
    ... ))
"""

from __future__ import annotations

from lake_mesh_consul._core.registration import (
    AliasCheck,
    Check,
    GrpcCheck,
    HttpCheck,
    ScriptCheck,
    TcpCheck,
    TtlCheck,
)

__all__ = [
    "AliasCheck",
    "Check",
    "GrpcCheck",
    "HttpCheck",
    "ScriptCheck",
    "TcpCheck",
    "TtlCheck",
]
