"""The pytest plugin's options, markers and choice of agent source (no agent is started).

The choice is a pure function (``agent_sources``) tested with fakes of the two facts it
needs; the options and markers are tested through pytest itself (pytester) with settings
that never reach the network: ``--consul-addr`` points at an agent the fixture does not call.
"""

from __future__ import annotations

import pytest

from lake_mesh_consul.testing.plugin import MARKERS, agent_sources, resolve_setting

pytest_plugins = ["pytester"]

#: Inner runs skip the cache and hypothesis' plugin (most of an inner run's start-up).
_QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


class _Docker:
    """A stand-in for ``docker info`` that records whether it was asked."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.running


def test_option_beats_environment_and_blank_means_unset() -> None:
    env = {"LAKE_MESH_TEST_CONSUL": "container"}
    assert resolve_setting("binary", "LAKE_MESH_TEST_CONSUL", env) == "binary"
    assert resolve_setting(None, "LAKE_MESH_TEST_CONSUL", env) == "container"
    assert resolve_setting(None, "LAKE_MESH_TEST_CONSUL", {"LAKE_MESH_TEST_CONSUL": " "}) is None
    assert resolve_setting("  ", "X", {}) is None


def test_auto_without_testcontainers_takes_the_binary_and_never_asks_docker() -> None:
    docker = _Docker(running=True)
    sources, reasons = agent_sources("auto", testcontainers_installed=False, docker_running=docker)
    assert sources == ("binary",)
    assert reasons == ("container: testcontainers is not installed",)
    assert docker.asked == 0


def test_auto_without_a_running_engine_takes_the_binary_and_says_so() -> None:
    docker = _Docker(running=False)
    sources, reasons = agent_sources("auto", testcontainers_installed=True, docker_running=docker)
    assert sources == ("binary",)
    assert "no Docker engine answers" in reasons[0]
    assert docker.asked == 1


def test_auto_with_engine_and_testcontainers_tries_the_container_first() -> None:
    docker = _Docker(running=True)
    sources, reasons = agent_sources("auto", testcontainers_installed=True, docker_running=docker)
    assert sources == ("container", "binary")
    assert reasons == ()


@pytest.mark.parametrize("mode", ["container", "binary"])
def test_a_forced_mode_is_the_only_source(mode: str) -> None:
    docker = _Docker(running=False)
    sources, _ = agent_sources(mode, testcontainers_installed=False, docker_running=docker)
    assert sources == (mode,)
    assert docker.asked == 0


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.integration
        @pytest.mark.container
        @pytest.mark.binary
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", *_QUIET)
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest("--markers", *_QUIET).stdout.str()
    for name in MARKERS:
        assert f"@pytest.mark.{name}:" in listed


def test_consul_addr_option_beats_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_MESH_TEST_CONSUL_ADDR", "127.0.0.2:8500")
    pytester.makepyfile(
        """
        def test_external(consul_agent):
            assert consul_agent.source == "external"
            assert consul_agent.address == "127.0.0.1:18500"
            assert consul_agent.agent is None
        """
    )
    result = pytester.runpytest("--consul-addr", "http://127.0.0.1:18500/", *_QUIET)
    result.assert_outcomes(passed=1)


def test_consul_mode_rejects_an_unknown_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--consul-mode", "docker", *_QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--consul-mode*invalid choice*"])


def test_environment_mode_is_validated(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_MESH_TEST_CONSUL", "docker")
    monkeypatch.delenv("LAKE_MESH_TEST_CONSUL_ADDR", raising=False)
    pytester.makepyfile("def test_agent(dedicated_consul_agent):\n    pass\n")
    result = pytester.runpytest(*_QUIET)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*LAKE_MESH_TEST_CONSUL='docker': expected auto, container*"])
