"""The package as a user installs it: wheel, sdist, index checks, a shop with py-consul.

* the wheel holds the package only, with the LICENSE and the metadata an index checks
  (SPDX license, classifiers per Python and typing, project URLs); ``twine check`` passes;
* a clean virtual environment that already has py-consul gets this package through the
  documented install mode (``LAKE_MESH_CONSUL_CLIENT=py-consul``, from the sdist) and keeps a
  working py-consul: ``pip check`` is clean, py-consul's files match its RECORD byte for byte,
  python-consul2 is not installed, py-consul talks to a real agent, and so does our adapter
  on top of it (``lake-mesh doctor`` names py-consul as the client);
* the breakage the issue describes (python-consul2 installed over py-consul) is what
  ``lake-mesh doctor`` then warns about.

These tests build with pip and ``python -m build`` and install from the package index (pip's
cache makes a second run cheap); they are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul._consul.distribution import consul_client_report
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: Seconds any one pip or build step may take (downloads included).
STEP_TIMEOUT = 600


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})},
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and wheel, built as a release would be (``python -m build``)."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _metadata(wheel: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, archive.read(meta).decode("utf-8")


def test_the_wheel_holds_the_package_only(dists: dict[str, Path]) -> None:
    names, _ = _metadata(dists["wheel"])
    info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    outside = [n for n in names if not n.startswith(("lake_mesh_consul/", f"{info}/"))]
    assert outside == []
    assert "lake_mesh_consul/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_the_metadata_is_what_an_index_checks(dists: dict[str, Path]) -> None:
    _, meta = _metadata(dists["wheel"])
    assert "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta
    assert "\nLicense: " not in meta  # the deprecated table form is gone
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in meta
    assert "Classifier: Typing :: Typed" in meta
    assert "Project-URL: Repository, https://" in meta
    assert "Requires-Python: >=3.10" in meta
    assert "Requires-Dist: python-consul2>=" in meta  # the default install keeps it
    assert 'Requires-Dist: tomli>=1.1; python_version < "3.11"' in meta
    assert "Description-Content-Type: text/markdown" in meta


def test_the_sdist_ships_license_readme_and_build_script(dists: dict[str, Path]) -> None:
    listing = _run("tar", "tzf", dists["sdist"]).stdout.split()
    top = listing[0].split("/")[0]
    for name in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "PKG-INFO"):
        assert f"{top}/{name}" in listing


def test_an_unknown_consul_client_choice_stops_the_build() -> None:
    result = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
        env={**os.environ, "LAKE_MESH_CONSUL_CLIENT": "python-consul"},
    )
    assert result.returncode != 0
    assert "LAKE_MESH_CONSUL_CLIENT='python-consul': expected one of py-consul, python-consul2" in (
        result.stderr
    )


def test_twine_check_passes(dists: dict[str, Path]) -> None:
    result = _run(sys.executable, "-m", "twine", "check", "--strict", *dists.values())
    assert result.stdout.count("PASSED") == 2


# --- a shop that already uses py-consul -------------------------------------------------------


class _Venv:
    """A clean virtual environment (no system site-packages) made for this test."""

    def __init__(self, path: Path) -> None:
        _run(sys.executable, "-m", "venv", path)
        self.python = path / "bin" / "python"
        self.site = self.run_python(
            "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).strip()

    def pip(self, *args: str | Path, env: dict[str, str] | None = None) -> str:
        return _run(self.python, "-m", "pip", *args, env=env).stdout

    def run_python(self, code: str, *args: str) -> str:
        return _run(self.python, "-c", code, *args).stdout

    def installed(self) -> dict[str, str]:
        listing = json.loads(self.pip("list", "--format", "json"))
        return {item["name"].lower(): item["version"] for item in listing}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, dists: dict[str, Path]) -> _Venv:
    """py-consul first (the shop's client), then this package in its py-consul mode."""
    venv = _Venv(tmp_path_factory.mktemp("shop") / "venv")
    venv.pip("install", "-q", "py-consul")
    before = consul_client_report([venv.site])
    assert before.summary.startswith("py-consul "), before.warnings
    venv.pip(
        "install",
        "-q",
        "--no-binary",
        "lake-mesh-consul",
        "--no-cache-dir",
        dists["sdist"],
        env={"LAKE_MESH_CONSUL_CLIENT": "py-consul"},
    )
    return venv


#: py-consul's own API against the agent: what the shop's code does, unchanged.
PY_CONSUL_ROUND_TRIP = """
import sys, consul
host, port = sys.argv[1].rsplit(":", 1)
client = consul.Consul(host=host, port=int(port))
client.kv.put("shop/key", "kept")
index, item = client.kv.get("shop/key")
print(item["Value"].decode())
"""

#: Our adapter on py-consul: register, discover through the health API, read agent self.
ADAPTER_ROUND_TRIP = """
import json, sys
from lake_mesh_consul import MeshConfig, ServiceMetadata, ServiceRegistry
from lake_mesh_consul._consul.client import ConsulClient
config = MeshConfig(address=sys.argv[1])
with ConsulClient(config) as client:
    version = client.agent_self()["Config"]["Version"]
    with ServiceRegistry(config) as registry:
        registry.register(ServiceMetadata(sys.argv[2], 9000, address="127.0.0.1"))
        ids = [e["Service"]["ID"] for e in client.request(
            "GET", "/v1/health/service/" + sys.argv[2], operation="read").json()]
print(json.dumps({"version": version, "ids": ids}))
"""


def test_py_consul_stays_intact_and_pip_check_is_clean(shop: _Venv) -> None:
    shop.pip("check")
    installed = shop.installed()
    assert "python-consul2" not in installed
    assert "lake-mesh-consul" in installed
    report = consul_client_report([shop.site])
    assert report.summary == f"py-consul {installed['py-consul']}", report.warnings
    assert not report.mixed  # every file matches py-consul's RECORD hashes
    assert report.claimants[0].recorded > 10


@pytest.mark.integration
def test_py_consul_and_the_adapter_both_work_against_a_real_agent(
    shop: _Venv, consul_agent: ConsulAgentHandle, unique_name: str
) -> None:
    assert shop.run_python(PY_CONSUL_ROUND_TRIP, consul_agent.address).strip() == "kept"
    answer = json.loads(shop.run_python(ADAPTER_ROUND_TRIP, consul_agent.address, unique_name))
    assert answer["version"]
    assert len(answer["ids"]) == 1
    doctor = _run(
        Path(shop.python).parent / "lake-mesh",
        "doctor",
        "--json",
        "--http-addr",
        consul_agent.address,
    )
    client: dict[str, Any] = json.loads(doctor.stdout)["consul_client"]
    assert client["provider"] == "py-consul"
    assert client["warnings"] == []


@pytest.mark.integration
def test_doctor_warns_when_python_consul2_is_installed_over_py_consul(
    shop: _Venv, consul_agent: ConsulAgentHandle
) -> None:
    # The breakage of the issue, done on purpose: pip overwrites py-consul's shared files.
    shop.pip("install", "-q", "python-consul2")
    result = subprocess.run(
        [
            str(Path(shop.python).parent / "lake-mesh"),
            "doctor",
            "--http-addr",
            consul_agent.address,
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert "consul client" in result.stdout
    assert "MIXTURE of py-consul" in result.stdout
    assert "py-consul and python-consul2 are both installed" in result.stderr
