"""Which installed distribution provides the module ``consul``, and are its files intact?

python-consul2 (this package's default client) and py-consul (its maintained fork) both
install the top-level module ``consul``. Installing one into an environment that has the
other overwrites the files they share and leaves the rest behind: a mixture that imports,
half works, and that ``pip check`` does not see (it compares versions, not files). This
module finds out from the installed metadata alone, *without importing* ``consul``:

* the distributions that claim files under ``consul/`` (their ``RECORD``);
* for each, which of its recorded files are missing or differ from their recorded hash;
* the files on disk under ``consul/`` that no claimant recorded.

The provider is the claimant whose recorded files are all intact. ``lake-mesh doctor`` prints
:attr:`ConsulClientReport.summary` and each of :attr:`ConsulClientReport.warnings`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.machinery
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["ClaimantFiles", "ConsulClientReport", "consul_client_report"]

#: The top-level module both client distributions install.
MODULE = "consul"


@dataclass(frozen=True, slots=True)
class ClaimantFiles:
    """One distribution that claims files under ``consul/``, and the state of those files.

    Attributes:
        name: the distribution's name (``python-consul2``, ``py-consul``, ...).
        version: its version.
        recorded: how many of its files under ``consul/`` its RECORD lists.
        changed: recorded files whose content no longer matches the recorded hash.
        missing: recorded files that are gone.
    """

    name: str
    version: str
    recorded: int
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        """Every recorded file is there with its recorded content."""
        return not self.changed and not self.missing


@dataclass(frozen=True, slots=True)
class ConsulClientReport:
    """What provides ``consul`` here.

    Attributes:
        location: the ``consul`` package directory an import would use (None: not installed).
        claimants: every distribution with files under that directory.
        unrecorded: ``.py`` files there that no claimant's RECORD lists.
    """

    location: str | None
    claimants: tuple[ClaimantFiles, ...] = ()
    unrecorded: tuple[str, ...] = field(default=())

    @property
    def provider(self) -> ClaimantFiles | None:
        """The claimant whose files are all intact (None when none is, or none is installed)."""
        intact = [c for c in self.claimants if c.intact]
        return intact[0] if len(intact) == 1 else None

    @property
    def mixed(self) -> bool:
        """The files under ``consul/`` come from more than one distribution (or are altered)."""
        return len(self.claimants) > 1 or bool(self.unrecorded) or self.provider is None

    @property
    def summary(self) -> str:
        """One line: ``python-consul2 0.1.5`` / ``a mixture of ...`` / ``none installed``."""
        if self.location is None:
            return "none installed (the module consul is missing)"
        if not self.mixed and self.provider is not None:
            return f"{self.provider.name} {self.provider.version}"
        names = ", ".join(f"{c.name} {c.version}" for c in self.claimants) or "no distribution"
        return f"a MIXTURE of {names}"

    @property
    def warnings(self) -> tuple[str, ...]:
        """Human-readable warnings; empty when one distribution provides intact files."""
        if self.location is None:
            return (
                "the module consul is not installed: reinstall lake-mesh-consul "
                "(it depends on python-consul2, or py-consul when built with "
                "LAKE_MESH_CONSUL_CLIENT=py-consul)",
            )
        found: list[str] = []
        if len(self.claimants) > 1:
            names = " and ".join(c.name for c in self.claimants)
            found.append(
                f"{names} are both installed and both own the module consul: one overwrote "
                "the other's files. Keep one: pip uninstall both, then reinstall the one "
                "you use (see the README's install section)"
            )
        for claimant in self.claimants:
            if claimant.changed or claimant.missing:
                found.append(
                    f"{claimant.name}: {len(claimant.changed)} file(s) changed and "
                    f"{len(claimant.missing)} missing since it was installed "
                    f"({_sample(claimant.changed + claimant.missing)})"
                )
        if self.unrecorded:
            found.append(
                f"{len(self.unrecorded)} file(s) under consul/ belong to no installed "
                f"distribution ({_sample(self.unrecorded)})"
            )
        if not self.claimants:
            found.append(f"no installed distribution records the files in {self.location}")
        return tuple(found)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``doctor --json``)."""
        provider = self.provider
        return {
            "location": self.location,
            "provider": None if provider is None or self.mixed else provider.name,
            "version": None if provider is None or self.mixed else provider.version,
            "summary": self.summary,
            "mixed": self.mixed,
            "claimants": [
                {
                    "name": c.name,
                    "version": c.version,
                    "recorded": c.recorded,
                    "changed": list(c.changed),
                    "missing": list(c.missing),
                }
                for c in self.claimants
            ],
            "unrecorded": list(self.unrecorded),
            "warnings": list(self.warnings),
        }


def consul_client_report(path: Sequence[str] | None = None) -> ConsulClientReport:
    """Inspect the ``consul`` package found on ``path`` (default ``sys.path``).

    Reads metadata and hashes files; never imports ``consul``. Thread-safe (no shared state).
    """
    search = list(sys.path if path is None else path)
    spec = importlib.machinery.PathFinder.find_spec(MODULE, search)
    if spec is None or not spec.submodule_search_locations:
        return ConsulClientReport(location=None)
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    claimants: list[ClaimantFiles] = []
    recorded_paths: set[Path] = set()
    for dist, record in _distributions(search):
        located = [
            (name, digest, Path(str(dist.locate_file(name))).resolve())
            for name, digest in _record_rows(record)
        ]
        located = [row for row in located if _is_within(row[2], package_dir)]
        if not located:
            continue
        recorded_paths.update(p for _, _, p in located)
        changed = tuple(n for n, d, p in located if p.exists() and not _hash_matches(d, p))
        missing = tuple(n for n, _, p in located if not p.exists())
        claimants.append(
            ClaimantFiles(
                name=dist.metadata["Name"] or "?",
                version=dist.version,
                recorded=len(located),
                changed=changed,
                missing=missing,
            )
        )
    unrecorded = tuple(
        str(p.relative_to(package_dir.parent))
        for p in sorted(package_dir.rglob("*.py"))
        if p.resolve() not in recorded_paths
    )
    claimants.sort(key=lambda c: c.name)
    return ConsulClientReport(
        location=str(package_dir), claimants=tuple(claimants), unrecorded=unrecorded
    )


def _distributions(path: list[str]) -> Iterable[tuple[metadata.Distribution, str]]:
    seen: set[str] = set()
    for dist in metadata.distributions(path=path):
        record = dist.read_text("RECORD") or ""
        if f"\n{MODULE}/" not in f"\n{record}":  # cheap test before parsing every row
            continue
        name = (dist.metadata["Name"] or "").lower()
        if name in seen:  # the same distribution found through two path entries
            continue
        seen.add(name)
        yield dist, record


def _record_rows(record: str) -> Iterable[tuple[str, str]]:
    # RECORD is CSV: path, "algorithm=urlsafe-b64-digest" (empty for .pyc/RECORD), size.
    # Parsed here rather than through Distribution.files, which from Python 3.12 on drops
    # the files that are gone - exactly the ones a mixture report must name.
    for row in csv.reader(record.splitlines()):
        if row and row[0].split("/", 1)[0] == MODULE:
            yield row[0], row[1] if len(row) > 1 else ""


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _hash_matches(recorded: str, path: Path) -> bool:
    mode, _, expected = recorded.partition("=")
    if not expected:  # RECORD lists .pyc files and RECORD itself without a hash
        return True
    try:
        digest = hashlib.new(mode, path.read_bytes()).digest()
    except (OSError, ValueError):
        return False
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii") == expected


def _sample(files: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")
