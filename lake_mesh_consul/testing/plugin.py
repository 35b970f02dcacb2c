"""The pytest plugin (``pytest11`` entry point): fixtures backed by a real Consul agent.

Fixtures:

* ``consul_agent`` (session): a running agent; see :class:`ConsulAgentHandle`.
* ``dedicated_consul_agent`` (function): a fresh agent of the test's own, for tests that
  stop, restart, wipe or pause it.
* ``consul_acl_agent`` (session): an agent with ACLs on, default deny; ``token`` is its
  management token.
* ``mesh_config``: a MeshConfig pointing at ``consul_agent``.
* ``unique_name``: a service name / KV prefix no other test uses.

Where the agent comes from, in order (``LAKE_MESH_TEST_CONSUL`` picks one: ``auto``, the
default, ``container`` or ``binary``):

1. ``LAKE_MESH_TEST_CONSUL_ADDR``: an agent someone else started, e.g. with
   ``docker-compose -f docker-compose.test.yml up -d`` (``consul_agent`` only; its token, if
   any, from ``LAKE_MESH_TEST_CONSUL_TOKEN``);
2. a container started through testcontainers with host networking: the image from
   ``CONSUL_TEST_IMAGE`` (default: an official ``hashicorp/consul`` image), falling back to
   the image ``lake-mesh agent provision`` builds from Debian's consul package (tried in
   ``auto`` mode only where a Docker engine answers);
3. a ``consul`` binary (``LAKE_MESH_CONSUL_BIN``, PATH, or the provisioning cache) run as
   ``consul agent -dev`` on free loopback ports.

With ``CI=true`` an agent that cannot be started fails the test instead of skipping it. At
the end of the run the plugin prints how many tests ran against each kind of agent.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary

__all__ = [
    "ConsulAgentHandle",
    "consul_acl_agent",
    "consul_agent",
    "dedicated_consul_agent",
    "mesh_config",
    "unique_name",
]

#: Environment variable choosing where agents come from: auto, container or binary.
MODE_ENV = "LAKE_MESH_TEST_CONSUL"
#: Environment variable naming an agent someone else runs (``host:port`` or a URL).
ADDR_ENV = "LAKE_MESH_TEST_CONSUL_ADDR"
#: Environment variable naming the image for the container path.
IMAGE_ENV = "CONSUL_TEST_IMAGE"


class _Agent(Protocol):
    """What a handle can control: DevAgent and ContainerAgent both fit."""

    @property
    def address(self) -> str: ...

    def start(self, *, wipe: bool = True, timeout: float = ...) -> None: ...

    def stop(self, *, kill: bool = False) -> None: ...

    def restart(self, *, wipe: bool = True) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class ConsulAgentHandle:
    """What a test knows about the agent: address, datacenter, token, and controls.

    ``agent`` is the DevAgent or ContainerAgent when this plugin started the agent (``None``
    for an external one, which cannot be stopped or paused from here: those controls skip
    the test). ``source`` is ``"container"``, ``"binary"`` or ``"external"``.

    ``token`` is the management token when ACLs are on (ACL tests only): it is a test
    credential, but keep it out of assertions' messages all the same.
    """

    address: str
    datacenter: str = "dc1"
    token: str | None = None
    agent: Any = None
    source: str = "binary"

    @property
    def http_addr(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def _need_agent(self) -> _Agent:
        if self.agent is None:
            pytest.skip("this test controls the agent process; the agent here is external")
        agent: _Agent = self.agent
        return agent

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

    def __repr__(self) -> str:
        token = ", token='***'" if self.token else ""
        return f"ConsulAgentHandle({self.address!r}, source={self.source!r}{token})"


def _fail_or_skip(reason: str) -> Any:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no Consul agent could be started: {reason}", pytrace=False)
    pytest.skip(reason)


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "container", "binary"):
        pytest.fail(f"{MODE_ENV}={mode!r}: expected auto, container or binary", pytrace=False)
    return mode


_IMAGE: list[str] = []  # the image resolved for this session (resolving costs docker calls)


def _container_agent(acl_token: str | None) -> _Agent:
    from lake_mesh_consul.testing import _provision

    if not _IMAGE:
        wanted = os.environ.get(IMAGE_ENV) or _provision.DEFAULT_OFFICIAL_IMAGE
        _IMAGE.append(_provision.ensure_image(image=wanted))
    agent = _provision.ContainerAgent(_IMAGE[0], acl_master_token=acl_token)
    agent.start()
    return agent


def _binary_agent(acl_token: str | None) -> _Agent:
    from lake_mesh_consul.errors import ProvisioningError

    binary = find_consul_binary()
    if binary is None:
        raise ProvisioningError(
            "no consul binary (run `lake-mesh agent provision` or set LAKE_MESH_CONSUL_BIN)"
        )
    agent = DevAgent(binary, acl_master_token=acl_token)
    try:
        agent.start()
    except (RuntimeError, OSError) as exc:
        agent.close()
        raise ProvisioningError(str(exc)) from exc
    return agent


def start_agent(*, acl_token: str | None = None) -> tuple[_Agent, str]:
    """Start an agent the way ``LAKE_MESH_TEST_CONSUL`` says; return it and its source.

    Raises:
        ProvisioningError: no agent could be started (the message gives every reason).
    """
    from lake_mesh_consul.errors import ProvisioningError
    from lake_mesh_consul.testing import _provision

    mode = _mode()
    reasons: list[str] = []
    if mode == "container" or (mode == "auto" and _provision.docker_available()):
        try:
            return _container_agent(acl_token), "container"
        except ProvisioningError as exc:
            if mode == "container":
                raise
            reasons.append(f"container: {exc}")
    elif mode == "auto":
        reasons.append("container: no Docker engine answers")
    try:
        return _binary_agent(acl_token), "binary"
    except ProvisioningError as exc:
        reasons.append(f"binary: {exc}")
    raise ProvisioningError("; ".join(reasons))


def _started(acl_token: str | None = None) -> tuple[_Agent, str]:
    from lake_mesh_consul.errors import ProvisioningError

    try:
        return start_agent(acl_token=acl_token)
    except ProvisioningError as exc:
        result: tuple[_Agent, str] = _fail_or_skip(str(exc))
        return result


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgentHandle]:
    """A real Consul agent for the whole test session (ACLs off)."""
    external = os.environ.get(ADDR_ENV)
    if external:
        address = external.split("://", 1)[-1].rstrip("/")
        token = os.environ.get("LAKE_MESH_TEST_CONSUL_TOKEN") or None
        yield ConsulAgentHandle(address=address, token=token, source="external")
        return
    agent, source = _started()
    try:
        yield ConsulAgentHandle(address=agent.address, agent=agent, source=source)
    finally:
        agent.close()


@pytest.fixture(scope="session")
def consul_acl_agent() -> Iterator[ConsulAgentHandle]:
    """An agent with ACLs enabled, default deny; ``token`` is its management token."""
    token = str(uuid.uuid4())
    agent, source = _started(acl_token=token)
    try:
        yield ConsulAgentHandle(address=agent.address, token=token, agent=agent, source=source)
    finally:
        agent.close()


@pytest.fixture
def dedicated_consul_agent() -> Iterator[ConsulAgentHandle]:
    """A fresh agent of this test's own, for tests that stop, restart, wipe or pause it."""
    agent, source = _started()
    try:
        yield ConsulAgentHandle(address=agent.address, agent=agent, source=source)
    finally:
        agent.close()


@pytest.fixture
def mesh_config(consul_agent: ConsulAgentHandle) -> Any:
    """A MeshConfig for the session's agent (token set when ACLs are on)."""
    from lake_mesh_consul._core.config import MeshConfig, Secret

    token = Secret(consul_agent.token) if consul_agent.token else None
    return MeshConfig(address=consul_agent.address, token=token)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, usable as a service name or KV prefix."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    return f"t-{base.strip('-')}-{uuid.uuid4().hex[:8]}"


# --- how many tests ran on each path -------------------------------------------------------

_RAN: Counter[str] = Counter()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Count the test under each kind of agent it used (container, binary, external)."""
    funcargs = getattr(item, "funcargs", {})
    sources = {v.source for v in funcargs.values() if isinstance(v, ConsulAgentHandle)}
    # Tests that start an agent themselves say which kind with the binary/container markers.
    sources.update(m.name for m in item.iter_markers() if m.name in ("binary", "container"))
    for source in sources:
        _RAN[source] += 1
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print ``lake-mesh consul agents: container=N binary=M external=K``."""
    if _RAN:
        counts = " ".join(f"{k}={_RAN[k]}" for k in ("container", "binary", "external"))
        terminalreporter.write_line(f"lake-mesh consul agents: tests ran with {counts}")
