"""Files the library reads back, against a real agent (issue 14.3).

A persisted discovery snapshot or last-known-good config file that does not parse into the
expected shape is ignored with one warning naming the file, never breaks discovery or the
config store, and is replaced on the next good answer from Consul.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from _consul_support import eventually, register

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._consul.kvconfig import LKG_FORMAT, ConfigStore
from lake_mesh_consul._core.config import MeshConfig

pytestmark = pytest.mark.integration

#: What the issue found in snapshot files (each broke every endpoints() call): the good
#: file's text -> the spoilt text.
BAD_SNAPSHOTS: dict[str, Callable[[str], str]] = {
    "empty list": lambda good: "[]",
    "null": lambda good: "null",
    "port 1e400": lambda good: good.replace('"port": 8080', '"port": 1e400'),
    "weights a list": lambda good: good.replace('"weights": {', '"weights": [{').replace(
        '"warning": 1}', '"warning": 1}]'
    ),
    "meta a list": lambda good: good.replace('"meta": {}', '"meta": ["zone"]'),
    "deep nesting": lambda good: "[" * 100_000 + "]" * 100_000,
}


def _warnings_naming(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and str(path) in r.getMessage()
    ]


def _spoil(paths: list[Path], spoil: Callable[[str], str]) -> list[Path]:
    assert paths, "discovery persisted nothing"
    for path in paths:
        good = path.read_text(encoding="utf-8")
        bad = spoil(good)
        assert bad != good
        path.write_text(bad, encoding="utf-8")
    return paths


@pytest.mark.parametrize("label", list(BAD_SNAPSHOTS))
def test_a_bad_snapshot_file_neither_breaks_discovery_nor_survives_the_next_answer(
    mesh_config: MeshConfig,
    unique_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    label: str,
) -> None:
    store = tmp_path / "snapshots"
    with ConsulClient(mesh_config) as client:
        register(client, unique_name, "a")
    with ServiceDiscovery(mesh_config, rng=random.Random(1), persist_dir=store) as d:
        assert eventually(lambda: [e.id for e in d.endpoints(unique_name)] == ["a"])
    (path,) = _spoil(list(store.glob("*.json")), BAD_SNAPSHOTS[label])
    caplog.set_level(logging.WARNING, logger="lake_mesh_consul")
    with ServiceDiscovery(mesh_config, rng=random.Random(2), persist_dir=store) as d:
        for _ in range(5):  # every call works; the file is warned about once
            assert [e.id for e in d.endpoints(unique_name, timeout=5)] == ["a"]
        assert d.snapshot(unique_name).source == "consul"
    assert len(_warnings_naming(caplog, path)) == 1
    doc = json.loads(path.read_text(encoding="utf-8"))  # replaced by the good answer
    assert [e["id"] for e in doc["endpoints"]] == ["a"]
    assert [p.name for p in store.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_bad_last_known_good_file_is_ignored_then_rewritten(
    mesh_config: MeshConfig, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lkg = tmp_path / "lkg.json"
    lkg.write_text(json.dumps({"format": LKG_FORMAT, "keys": ["not", "an", "object"]}))
    dead = MeshConfig(address="127.0.0.1:1", scheme="http", kv_prefix=unique_name)
    caplog.set_level(logging.WARNING, logger="lake_mesh_consul")
    with ConfigStore(
        dead, start_mode="last_known_good", last_known_good=lkg, start_timeout=0.5
    ) as store:  # no exception: starts from the local levels
        assert store.effective("web").strategy == ConfigStore(dead).effective("web").strategy
    assert len(_warnings_naming(caplog, lkg)) == 1
    live = mesh_config.replace(kv_prefix=unique_name)
    with ConfigStore(live, last_known_good=lkg) as store:
        store.set(f"{store.layout.folder}services/web", {"strategy": "maglev"})
        assert eventually(lambda: "maglev" in lkg.read_text())
    assert isinstance(json.loads(lkg.read_text())["keys"], dict)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lkg-")] == []
