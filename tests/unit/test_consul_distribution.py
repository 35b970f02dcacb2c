"""Which distribution provides ``consul``: built site-packages directories, no imports.

Each test lays out a site-packages directory the way pip leaves it (package files plus a
``.dist-info`` with METADATA and a hashed RECORD), including the mixture pip leaves when
python-consul2 is installed over py-consul.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from lake_mesh_consul._consul.distribution import consul_client_report

PY_CONSUL = {
    "consul/__init__.py": "# py-consul\n",
    "consul/base.py": "# py-consul base\n",
    "consul/std.py": "# py-consul std\n",
    "consul/exceptions.py": "# py-consul exceptions\n",
    "consul/api/__init__.py": "",
    "consul/api/agent.py": "# py-consul agent\n",
}
PYTHON_CONSUL2 = {
    "consul/__init__.py": "# python-consul2\n",
    "consul/base.py": "# python-consul2 base\n",
    "consul/std.py": "# python-consul2 std\n",
    "consul/tornado.py": "# python-consul2 tornado\n",
}


def _hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _install(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """What pip does: write the files (over whatever is there) and a dist-info with RECORD."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        lines.append(f"{relative},{_hash(text.encode())},{len(text.encode())}")
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")


def test_one_client_intact_is_reported_by_name_and_version(tmp_path: Path) -> None:
    _install(tmp_path, "py-consul", "1.8.0", PY_CONSUL)
    report = consul_client_report([str(tmp_path)])
    assert report.summary == "py-consul 1.8.0"
    assert not report.mixed
    assert report.warnings == ()
    assert report.to_json()["provider"] == "py-consul"


def test_python_consul2_over_py_consul_is_a_mixture(tmp_path: Path) -> None:
    # The install: py-consul first, then python-consul2 overwrites the shared files
    # and leaves consul/api/ and consul/exceptions.py behind.
    _install(tmp_path, "py-consul", "1.8.0", PY_CONSUL)
    _install(tmp_path, "python-consul2", "0.1.5", PYTHON_CONSUL2)
    report = consul_client_report([str(tmp_path)])
    assert report.mixed
    assert report.summary == "a MIXTURE of py-consul 1.8.0, python-consul2 0.1.5"
    by_name = {c.name: c for c in report.claimants}
    assert by_name["python-consul2"].intact
    assert set(by_name["py-consul"].changed) == {
        "consul/__init__.py",
        "consul/base.py",
        "consul/std.py",
    }
    text = " ".join(report.warnings)
    assert "py-consul and python-consul2 are both installed" in text
    assert "3 file(s) changed" in text
    assert report.to_json()["provider"] is None


def test_files_no_distribution_recorded_are_named(tmp_path: Path) -> None:
    # py-consul uninstalled after the overwrite: its leftovers belong to nobody.
    _install(tmp_path, "python-consul2", "0.1.5", PYTHON_CONSUL2)
    (tmp_path / "consul" / "api").mkdir()
    (tmp_path / "consul" / "api" / "agent.py").write_text("# left behind\n")
    report = consul_client_report([str(tmp_path)])
    assert report.mixed
    assert report.unrecorded == ("consul/api/agent.py",)
    assert "belong to no installed distribution (consul/api/agent.py)" in report.warnings[0]


def test_a_deleted_file_is_missing(tmp_path: Path) -> None:
    _install(tmp_path, "python-consul2", "0.1.5", PYTHON_CONSUL2)
    (tmp_path / "consul" / "tornado.py").unlink()
    report = consul_client_report([str(tmp_path)])
    assert report.claimants[0].missing == ("consul/tornado.py",)
    assert report.provider is None
    assert report.summary.startswith("a MIXTURE")


def test_no_consul_module(tmp_path: Path) -> None:
    report = consul_client_report([str(tmp_path)])
    assert report.location is None
    assert report.summary.startswith("none installed")
    assert "LAKE_MESH_CONSUL_CLIENT=py-consul" in report.warnings[0]


def test_the_running_environment_has_exactly_one_intact_client() -> None:
    # Whichever client this environment was built with (CI runs both), it is not a mixture.
    report = consul_client_report()
    assert report.provider is not None, report.warnings
    assert report.provider.name in ("python-consul2", "py-consul")
    assert not report.mixed, report.warnings
