"""Fixtures of the fault suite: real Consul clusters and agents, started per test or module.

Every fixture here starts ``consul agent`` processes from the binary (never ``-dev`` for the
cluster) and kills them afterwards, whatever the test did to them. Without a binary the
tests skip (or fail with ``CI=true``, like the plugin's ``consul_agent``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lake_mesh_consul.testing._agent import find_consul_binary
from lake_mesh_consul.testing.cluster import ConsulCluster, tls_agent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/faults is a fault scenario."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fault)


def _binary() -> Path:
    binary = find_consul_binary()
    if binary is None:
        reason = "no consul binary (run `lake-mesh agent up` or set LAKE_MESH_CONSUL_BIN)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture
def consul_cluster() -> Iterator[ConsulCluster]:
    """Three servers and one client agent, fresh for this test (which may break them)."""
    with ConsulCluster(servers=3, clients=1, binary=_binary()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def acl_master_token() -> str:
    """The management token of the ACL cluster (random per module)."""
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def acl_cluster(acl_master_token: str) -> Iterator[ConsulCluster]:
    """One server and one client agent with ACLs on, default deny, shared by a module."""
    with ConsulCluster(
        servers=1, clients=1, binary=_binary(), acl_master_token=acl_master_token
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def https_agent() -> Iterator[ConsulCluster]:
    """One agent serving HTTPS only (CA and certs from ``consul tls``); no client cert needed."""
    with tls_agent(binary=_binary()) as agent:
        yield agent


@pytest.fixture(scope="module")
def mtls_agent() -> Iterator[ConsulCluster]:
    """One agent serving HTTPS only that requires a client certificate."""
    with tls_agent(binary=_binary(), verify_incoming=True) as agent:
        yield agent
