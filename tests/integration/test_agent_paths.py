"""Both ways of getting an agent, exercised directly whatever LAKE_MESH_TEST_CONSUL says."""

from __future__ import annotations

import os

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import ConsulUnavailable
from lake_mesh_consul.testing import _provision
from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary

pytestmark = pytest.mark.integration


def _exercise(agent, unique_name):
    config = MeshConfig(address=agent.address)
    with ConsulClient(config) as client:
        assert client.leader()
        client.request("PUT", f"/v1/kv/{unique_name}", operation="write", data=b"1")
        agent.pause()
        with (
            ConsulClient(config.replace(read_timeout=0.5)) as impatient,
            pytest.raises(ConsulUnavailable),
        ):
            impatient.leader()
        agent.resume()
        assert client.leader()
        agent.restart(wipe=True)
        assert client.leader()
        # -dev keeps everything in memory: a restart forgets the key.
        gone = client.request("GET", f"/v1/kv/{unique_name}", operation="read", allow_404=True)
        assert gone.status == 404


@pytest.mark.binary
def test_binary_agent_controls(unique_name):
    binary = find_consul_binary()
    if binary is None:
        pytest.fail("no consul binary: run `lake-mesh agent provision`")
    # A loopback address of its own, as ConsulCluster's members have: in CI this agent starts
    # right after other suites' agents stop, and once lost every UDP bind on 127.0.0.1 for
    # seconds (see retry_on_bind_conflict's diagnostics if it happens again).
    with DevAgent(binary, host="127.0.0.2") as agent:
        _exercise(agent, unique_name)


@pytest.mark.container
def test_container_agent_controls(unique_name):
    if not _provision.docker_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no Docker engine answers")
        pytest.skip("no Docker engine")
    image = _provision.ensure_image()
    with _provision.ContainerAgent(image) as agent:
        _exercise(agent, unique_name)
