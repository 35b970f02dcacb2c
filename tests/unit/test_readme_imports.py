"""The README's promises that a reader copies: its imports, dotted names, commands and links.

* every ``import`` / ``from ... import`` in a ``python`` block works, and every name exists;
* every dotted name written as code (```lake_mesh_consul.testing.ConsulCluster```) resolves;
* every ``lake-mesh`` command in the command table is a real subcommand;
* every link is absolute and the repository's own links start with the Repository URL in
  pyproject.toml, so the README renders with working links on a package index page.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def _imports() -> list[tuple[str, str | None]]:
    """``(module, name)`` for each import in the python blocks (name None: ``import m``)."""
    found: list[tuple[str, str | None]] = []
    for block in _python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.extend((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((alias.name, None) for alias in node.names)
    return found


def _resolve(dotted: str) -> Any:
    """Import the longest module prefix of ``dotted``, then follow attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


def test_the_readme_has_python_examples_with_imports() -> None:
    assert len(_python_blocks()) >= 2
    assert ("lake_mesh_consul.mesh", "Mesh") in _imports()


#: The README's imports of this package (an example's own imports, e.g. prometheus_client,
#: are the reader's code, not a claim about this package).
_OURS = sorted({(m, n) for m, n in _imports() if m.startswith("lake_mesh_consul")}, key=str)


@pytest.mark.parametrize(("module", "name"), _OURS)
def test_each_documented_import_works(module: str, name: str | None) -> None:
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"from {module} import {name} fails"


DOTTED = sorted(set(re.findall(r"`(lake_mesh_consul(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", README)))


def test_the_readme_names_dotted_paths() -> None:
    assert "lake_mesh_consul.testing.ConsulCluster" in DOTTED


@pytest.mark.parametrize("dotted", DOTTED)
def test_each_dotted_name_resolves(dotted: str) -> None:
    assert _resolve(dotted) is not None


def test_each_command_in_the_table_exists(capsys: pytest.CaptureFixture[str]) -> None:
    from lake_mesh_consul.cli import main

    table = README[README.index("## The command line") :]
    table = table[: table.index("\n## ", 5)]
    documented = set(re.findall(r"^\| `lake-mesh ([a-z]+)", table, flags=re.MULTILINE))
    assert {"agent", "doctor", "endpoints"} <= documented
    for command in sorted(documented):
        assert main([command, "--help"]) == 0, f"lake-mesh {command} is not a command"
    assert main(["no-such-command", "--help"]) == 2
    capsys.readouterr()


def _repository_url() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        urls: dict[str, str] = tomllib.load(handle)["project"]["urls"]
    return urls["Repository"].rstrip("/")


LINKS = re.findall(r"\]\(([^)\s]+)\)", README)


def test_every_link_is_absolute_and_repository_links_use_the_repository_url() -> None:
    repository = _repository_url()
    assert LINKS, "the README links to its examples and documents"
    relative = [link for link in LINKS if not link.startswith(("https://", "#"))]
    assert relative == [], "relative links break on a package index page"
    own = [link for link in LINKS if "/blob/" in link or "/tree/" in link]
    assert own, "the README links to files of the repository"
    assert all(link.startswith(repository + "/") for link in own), own


def test_linked_repository_files_exist() -> None:
    repository = _repository_url()
    for link in LINKS:
        match = re.match(re.escape(repository) + r"/(?:blob|tree)/main/(.+)", link)
        if match:
            assert (ROOT / match.group(1).split("#")[0]).exists(), link
