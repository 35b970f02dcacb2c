"""The pytest plugin (``pytest11`` entry point): fixtures backed by a real Consul agent.

Fixtures:

* ``consul_agent`` (session): a running agent; see :class:`ConsulAgentHandle`.
* ``dedicated_consul_agent`` (function): a fresh agent of the test's own, for tests that
  stop, restart, wipe or pause it.
* ``consul_acl_agent`` (session): an agent with ACLs on, default deny; ``token`` is its
  management token.
* ``mesh_config``: a MeshConfig pointing at ``consul_agent``.
* ``unique_name``: a service name / KV prefix no other test uses.

Where the agent comes from, in order (``--consul-mode`` or ``LAKE_MESH_TEST_CONSUL`` picks
one: ``auto``, the default, ``container`` or ``binary``; the option wins over the variable):

1. ``--consul-addr`` / ``LAKE_MESH_TEST_CONSUL_ADDR``: an agent someone else started, e.g.
   with ``docker-compose -f docker-compose.test.yml up -d`` (``consul_agent`` only; its token,
   if any, from ``LAKE_MESH_TEST_CONSUL_TOKEN``);
2. a container started through testcontainers with host networking: the image from
   ``CONSUL_TEST_IMAGE`` (default: an official ``hashicorp/consul`` image), falling back to
   the image ``lake-mesh agent provision`` builds from Debian's consul package. In ``auto``
   mode it is tried only where testcontainers is installed *and* a Docker engine already
   answers: the plugin never starts a Docker engine;
3. a ``consul`` binary (``LAKE_MESH_CONSUL_BIN``, PATH, or the provisioning cache) run as
   ``consul agent -dev`` on free loopback ports.

The plugin registers its markers (``integration``, ``container``, ``binary``), so suites run
with ``--strict-markers`` can use them without declaring them. With ``CI=true`` an agent that
cannot be started fails the test instead of skipping it. At the end of the run the plugin
prints how many tests ran against each kind of agent.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary

__all__ = [
    "MARKERS",
    "ConsulAgentHandle",
    "agent_sources",
    "consul_acl_agent",
    "consul_agent",
    "dedicated_consul_agent",
    "mesh_config",
    "resolve_setting",
    "start_agent",
    "unique_name",
]

#: Environment variable choosing where agents come from: auto, container or binary.
MODE_ENV = "LAKE_MESH_TEST_CONSUL"
#: Environment variable naming an agent someone else runs (``host:port`` or a URL).
ADDR_ENV = "LAKE_MESH_TEST_CONSUL_ADDR"
#: Environment variable naming the image for the container path.
IMAGE_ENV = "CONSUL_TEST_IMAGE"
#: The agent sources ``--consul-mode`` accepts.
MODES = ("auto", "container", "binary")
#: The markers this plugin registers (name: description), as ``pytest --markers`` shows them.
MARKERS: Mapping[str, str] = {
    "integration": "needs a real Consul agent (the consul_agent fixture)",
    "container": "starts Consul through testcontainers (the container path)",
    "binary": "starts Consul from the consul binary (the binary path)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--consul-mode`` and ``--consul-addr``, beside their environment variables."""
    group = parser.getgroup("lake-mesh", "lake_mesh_consul: the Consul agent for tests")
    group.addoption(
        "--consul-mode",
        choices=MODES,
        default=None,
        help=f"where agents come from: auto (default), container or binary (overrides ${MODE_ENV})",
    )
    group.addoption(
        "--consul-addr",
        default=None,
        metavar="HOST:PORT",
        help=f"use this running agent for consul_agent (overrides ${ADDR_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers."""
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def resolve_setting(option: str | None, env_name: str, environ: Mapping[str, str]) -> str | None:
    """The command-line ``option`` when given, else the environment variable, else None."""
    if option is not None and option.strip():
        return option.strip()
    value = environ.get(env_name, "").strip()
    return value or None


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


def _mode(option: str | None = None) -> str:
    mode = (resolve_setting(option, MODE_ENV, os.environ) or "auto").lower()
    if mode not in MODES:
        pytest.fail(f"{MODE_ENV}={mode!r}: expected auto, container or binary", pytrace=False)
    return mode


def agent_sources(
    mode: str, *, testcontainers_installed: bool, docker_running: Callable[[], bool]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which paths to try, in order, and why the others are skipped.

    ``docker_running`` is called only when its answer matters (it runs ``docker info``).
    Returns ``(sources, reasons)``; ``sources`` holds ``"container"`` and/or ``"binary"``.
    Nothing here starts a Docker engine.
    """
    if mode == "binary":
        return ("binary",), ()
    if mode == "container":
        return ("container",), ()
    if not testcontainers_installed:
        return ("binary",), ("container: testcontainers is not installed",)
    if not docker_running():
        return ("binary",), ("container: no Docker engine answers (the plugin starts none)",)
    return ("container", "binary"), ()


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


def start_agent(*, acl_token: str | None = None, mode: str | None = None) -> tuple[_Agent, str]:
    """Start an agent the way ``mode`` (``--consul-mode``) or ``LAKE_MESH_TEST_CONSUL`` says.

    Returns the agent and its source (``"container"`` or ``"binary"``).

    Raises:
        ProvisioningError: no agent could be started (the message gives every reason).
    """
    from lake_mesh_consul.errors import ProvisioningError
    from lake_mesh_consul.testing import _provision

    mode = _mode(mode)
    installed = importlib.util.find_spec("testcontainers") is not None
    sources, skipped = agent_sources(
        mode, testcontainers_installed=installed, docker_running=_provision.docker_available
    )
    reasons = list(skipped)
    for source in sources:
        try:
            if source == "container":
                if not installed:
                    raise ProvisioningError(
                        "testcontainers is not installed (pip install testcontainers, "
                        "or --consul-mode binary)"
                    )
                return _container_agent(acl_token), "container"
            return _binary_agent(acl_token), "binary"
        except ProvisioningError as exc:
            if mode != "auto":
                raise
            reasons.append(f"{source}: {exc}")
    raise ProvisioningError("; ".join(reasons))


def _started(config: pytest.Config, acl_token: str | None = None) -> tuple[_Agent, str]:
    from lake_mesh_consul.errors import ProvisioningError

    try:
        return start_agent(acl_token=acl_token, mode=config.getoption("consul_mode"))
    except ProvisioningError as exc:
        result: tuple[_Agent, str] = _fail_or_skip(str(exc))
        return result


@pytest.fixture(scope="session")
def consul_agent(pytestconfig: pytest.Config) -> Iterator[ConsulAgentHandle]:
    """A real Consul agent for the whole test session (ACLs off)."""
    external = resolve_setting(pytestconfig.getoption("consul_addr"), ADDR_ENV, os.environ)
    if external:
        address = external.split("://", 1)[-1].rstrip("/")
        token = os.environ.get("LAKE_MESH_TEST_CONSUL_TOKEN") or None
        yield ConsulAgentHandle(address=address, token=token, source="external")
        return
    agent, source = _started(pytestconfig)
    try:
        yield ConsulAgentHandle(address=agent.address, agent=agent, source=source)
    finally:
        agent.close()


@pytest.fixture(scope="session")
def consul_acl_agent(pytestconfig: pytest.Config) -> Iterator[ConsulAgentHandle]:
    """An agent with ACLs enabled, default deny; ``token`` is its management token."""
    token = str(uuid.uuid4())
    agent, source = _started(pytestconfig, acl_token=token)
    try:
        yield ConsulAgentHandle(address=agent.address, token=token, agent=agent, source=source)
    finally:
        agent.close()


@pytest.fixture
def dedicated_consul_agent(pytestconfig: pytest.Config) -> Iterator[ConsulAgentHandle]:
    """A fresh agent of this test's own, for tests that stop, restart, wipe or pause it."""
    agent, source = _started(pytestconfig)
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

#: Per run (pytester runs nest a run inside another): how many tests used each kind of agent.
_RAN = pytest.StashKey[Counter[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Count the test under each kind of agent it used (container, binary, external)."""
    funcargs = getattr(item, "funcargs", {})
    sources = {v.source for v in funcargs.values() if isinstance(v, ConsulAgentHandle)}
    # Tests that start an agent themselves say which kind with the binary/container markers.
    sources.update(m.name for m in item.iter_markers() if m.name in ("binary", "container"))
    ran = item.config.stash.setdefault(_RAN, Counter())
    for source in sources:
        ran[source] += 1
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print ``lake-mesh consul agents: container=N binary=M external=K``."""
    ran = terminalreporter.config.stash.get(_RAN, None)
    if ran:
        counts = " ".join(f"{k}={ran[k]}" for k in ("container", "binary", "external"))
        terminalreporter.write_line(f"lake-mesh consul agents: tests ran with {counts}")
