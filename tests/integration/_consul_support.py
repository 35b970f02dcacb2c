"""Helpers shared by the integration tests that drive Consul's agent API directly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lake_mesh_consul._consul.client import ConsulClient


def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` every 10 ms until it is truthy or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def register(client: ConsulClient, name: str, sid: str, port: int = 8080, **extra: Any) -> None:
    """Register an instance through the raw agent API (no ServiceRegistry involved)."""
    body = {"Name": name, "ID": sid, "Port": port, "Address": "127.0.0.1", **extra}
    client.request("PUT", "/v1/agent/service/register", operation="register", json=body)


def deregister(client: ConsulClient, sid: str) -> None:
    """Deregister an instance through the raw agent API."""
    client.request("PUT", f"/v1/agent/service/deregister/{sid}", operation="deregister")
