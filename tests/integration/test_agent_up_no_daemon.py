"""``lake-mesh agent up`` starts no system daemon unless told to.

The machine's ``docker`` and ``dockerd`` are replaced on PATH by two sentinel scripts: a
``docker`` whose ``info`` fails (no engine runs) and a ``dockerd`` that only records that it
was started. The Consul agent itself is the real binary, really started and stopped.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lake_mesh_consul.cli import main
from lake_mesh_consul.testing import find_consul_binary
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.binary


def _sentinels(bin_dir: Path, started: Path) -> None:
    bin_dir.mkdir()
    scripts = {
        # no engine answers: `docker info` fails, as it does when dockerd is not running
        "docker": "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n",
        # record the start and exit at once, as a daemon that cannot run here would
        "dockerd": f"#!/bin/sh\necho started >> '{started}'\nexit 1\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH has sentinel docker/dockerd; the cache is the test's own; returns the start log."""
    binary = find_consul_binary()
    if binary is None:
        pytest.fail("no consul binary: run `lake-mesh agent provision`")
    started = tmp_path / "dockerd-started"
    _sentinels(tmp_path / "bin", started)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("LAKE_MESH_CONSUL_BIN", str(binary))
    monkeypatch.setenv("LAKE_MESH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAKE_MESH_START_DOCKER", raising=False)
    return started


def _up(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[dict[str, object], str]:
    port = free_port()
    try:
        code = main(["agent", "up", "--port", str(port), "--json", *flags])
        captured = capsys.readouterr()
        assert code == 0, captured.out + captured.err
        return json.loads(captured.out), captured.err
    finally:
        main(["agent", "down", "--keep-docker"])
        capsys.readouterr()


def test_agent_up_without_an_engine_runs_the_binary_and_says_so(
    no_engine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, err = _up(capsys)
    assert state["mode"] == "binary"
    assert "binary: no Docker engine running" in state["notes"]  # type: ignore[operator]
    assert "no Docker engine is running" in err
    assert "--start-docker" in err
    assert not no_engine.exists(), "agent up started dockerd without being told to"


def test_agent_provision_without_the_flag_starts_no_engine(
    no_engine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "provision", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["docker_engine"] is False
    assert not no_engine.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="dockerd is started only as root")
def test_start_docker_from_the_environment_is_the_only_way_it_starts(
    no_engine: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_MESH_START_DOCKER", "1")
    state, err = _up(capsys)
    # Told to: the (sentinel) dockerd was started, exited, and the binary took over.
    assert no_engine.read_text().split() == ["started"]
    assert "dockerd exited" in err
    assert state["mode"] == "binary"
