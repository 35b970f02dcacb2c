"""The pytest plugin (``pytest11`` entry point): fixtures backed by a real Consul agent.

Fixtures:

* ``consul_agent`` (session): a running agent; see :class:`ConsulAgentHandle`. Found, in
  order: ``LAKE_MESH_TEST_CONSUL_ADDR`` (an agent someone else started), then a
  ``consul`` binary (``LAKE_MESH_CONSUL_BIN``, PATH, or the provisioning cache) run as
  ``consul agent -dev`` on free loopback ports.
* ``mesh_config``: a MeshConfig pointing at that agent.
* ``unique_name``: a service name / KV prefix no other test uses.

With ``CI=true`` an agent that cannot be started fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary

__all__ = [
    "ConsulAgentHandle",
    "consul_agent",
    "dedicated_consul_agent",
    "mesh_config",
    "unique_name",
]


@dataclass
class ConsulAgentHandle:
    """What a test knows about the agent: address, datacenter, token, and controls.

    ``agent`` is the DevAgent when this plugin started the agent (``None`` for an external
    one, which cannot be stopped or paused from here).
    """

    address: str
    datacenter: str = "dc1"
    token: str | None = None
    agent: DevAgent | None = None
    source: str = "binary"

    @property
    def http_addr(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def _need_agent(self) -> DevAgent:
        if self.agent is None:
            pytest.skip("this test controls the agent process; the agent here is external")
        return self.agent

    def stop(self) -> None:
        """Stop the agent."""
        self._need_agent().stop()

    def start(self) -> None:
        """Start the agent again on the same address."""
        self._need_agent().start(wipe=False)

    def restart(self, *, wipe: bool = True) -> None:
        """Restart the agent; ``wipe`` forgets every registration and key."""
        self._need_agent().restart(wipe=wipe)

    def pause(self) -> None:
        """SIGSTOP the agent."""
        self._need_agent().pause()

    def resume(self) -> None:
        """SIGCONT the agent."""
        self._need_agent().resume()


def _fail_or_skip(reason: str) -> Any:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no Consul agent could be started: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgentHandle]:
    """A real Consul agent for the whole test session."""
    external = os.environ.get("LAKE_MESH_TEST_CONSUL_ADDR")
    if external:
        address = external.split("://", 1)[-1]
        yield ConsulAgentHandle(address=address, source="external")
        return
    binary = find_consul_binary()
    if binary is None:
        _fail_or_skip("no consul binary (run `lake-mesh agent up` or set LAKE_MESH_CONSUL_BIN)")
        return
    agent = DevAgent(binary)
    try:
        agent.start()
    except (RuntimeError, OSError) as exc:
        _fail_or_skip(str(exc))
        return
    try:
        yield ConsulAgentHandle(address=agent.address, agent=agent, source="binary")
    finally:
        agent.close()


@pytest.fixture
def dedicated_consul_agent() -> Iterator[ConsulAgentHandle]:
    """A fresh agent of this test's own, for tests that stop, restart, wipe or pause it."""
    binary = find_consul_binary()
    if binary is None:
        _fail_or_skip("no consul binary (run `lake-mesh agent up` or set LAKE_MESH_CONSUL_BIN)")
        return
    agent = DevAgent(binary)
    try:
        agent.start()
    except (RuntimeError, OSError) as exc:
        _fail_or_skip(str(exc))
        return
    try:
        yield ConsulAgentHandle(address=agent.address, agent=agent, source="binary")
    finally:
        agent.close()


@pytest.fixture
def mesh_config(consul_agent: ConsulAgentHandle) -> Any:
    """A MeshConfig for the session's agent (token set when ACLs are on)."""
    from lake_mesh_consul import MeshConfig

    return MeshConfig(address=consul_agent.address, token=consul_agent.token)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, usable as a service name or KV prefix."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    return f"t-{base.strip('-')}-{uuid.uuid4().hex[:8]}"
