"""Shared by the mesh's integration tests: loopback HTTP instances registered through a Mesh."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul._demo import DemoInstance
from lake_mesh_consul.mesh import Mesh


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


@contextmanager
def mesh_with_instances(
    config: MeshConfig, name: str, count: int = 3, **mesh_kwargs: Any
) -> Iterator[tuple[Mesh, list[DemoInstance]]]:
    """A started Mesh (KV prefix = ``name``) with ``count`` instances of ``name`` registered.

    Each instance has one TTL check, passing from the start (report critical through
    ``mesh.health(id).report(None, HealthStatus.CRITICAL)``). The mesh closes without drain
    grace; the instances are killed at the end.
    """
    instances = [DemoInstance(f"{name}-{i}") for i in range(1, count + 1)]
    mesh_kwargs.setdefault("drain_grace", 0.0)
    mesh = Mesh(config.replace(kv_prefix=name), **mesh_kwargs)
    try:
        with mesh:
            for inst in instances:
                mesh.register(
                    ServiceMetadata(name, inst.port, id=inst.name, address=inst.host),
                    TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
                )
            wait_for(
                lambda: mesh.balancer(name).stats().eligible == count,
                what=f"{count} eligible instances of {name}",
            )
            yield mesh, instances
    finally:
        for inst in instances:
            inst.kill()
