"""Files the library reads back: discovery snapshots (the store alone, no agent).

Promise (issue 14.3): a persisted file that does not parse into the expected shape is
ignored with one warning naming the file, never raises into discovery, and a failed write
leaves no temporary file behind. The loader is fuzzed with hypothesis: whatever the file
holds, ``load`` returns a snapshot or ``None``. With a real agent:
tests/integration/test_files_read_back.py.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_mesh_consul._consul import files
from lake_mesh_consul._consul.snapshot_store import (
    SNAPSHOT_VERSION,
    SnapshotStore,
    endpoint_from_dict,
    endpoint_to_dict,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint, Weights
from lake_mesh_consul._core.health import HealthStatus

EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,  # the working tree is shared: no .hypothesis directory
)


@dataclass(frozen=True)
class Query:
    """Stands in for discovery's ServiceQuery: a name and a stable repr."""

    name: str
    tags: tuple[str, ...] = ()


QUERY = Query("web")


def _endpoint(n: int = 1) -> ServiceEndpoint:
    return ServiceEndpoint.create(
        f"web-{n}",
        f"10.0.0.{n}",
        8080 + n,
        service="web",
        tags=("v1",),
        meta={"zone": "a"},
        weights=Weights(3, 1),
        health=HealthStatus.WARNING,
        node="node-1",
        datacenter="dc1",
    )


def _good_doc(endpoints: list[Any] | None = None) -> dict[str, Any]:
    return {
        "version": SNAPSHOT_VERSION,
        "query": repr(QUERY),
        "saved_at": 1_700_000_000.0,
        "endpoints": endpoints if endpoints is not None else [endpoint_to_dict(_endpoint())],
    }


def _write(store: SnapshotStore, text: str | bytes) -> Path:
    path = store.path(QUERY)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def test_a_saved_snapshot_loads_back_field_for_field(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(QUERY, [_endpoint(1), _endpoint(2)], 123.5)
    loaded = store.load(QUERY)
    assert loaded is not None
    endpoints, saved_at = loaded
    assert saved_at == 123.5
    assert [e.id for e in endpoints] == ["web-1", "web-2"]
    assert all(a.same_as(b) for a, b in zip(endpoints, [_endpoint(1), _endpoint(2)], strict=True))


def _endpoint_dict(**changes: Any) -> dict[str, Any]:
    d = endpoint_to_dict(_endpoint())
    d.update(changes)
    return d


#: Each hostile file from the issue and its neighbours: the text written, and why it is bad.
HOSTILE_FILES: list[tuple[str, str]] = [
    ("empty list", "[]"),
    ("null", "null"),
    ("a number", "1e400"),
    ("empty file", ""),
    ("not JSON", "{version: 1"),
    ("not UTF-8", "\udcff"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000),
    ("deep nesting in an object", '{"a":' * 50_000 + "1" + "}" * 50_000),
    ("port 1e400", json.dumps(_good_doc([_endpoint_dict(port="P")])).replace('"P"', "1e400")),
    ("huge integer port", json.dumps(_good_doc([_endpoint_dict(port=10**400)]))),
    ("port as text", json.dumps(_good_doc([_endpoint_dict(port="8080")]))),
    ("port 0", json.dumps(_good_doc([_endpoint_dict(port=0)]))),
    ("port true", json.dumps(_good_doc([_endpoint_dict(port=True)]))),
    ("weights a list", json.dumps(_good_doc([_endpoint_dict(weights=[1, 2])]))),
    (
        "weights 1e400",
        json.dumps(_good_doc([_endpoint_dict(weights={"passing": "W"})])).replace('"W"', "1e400"),
    ),
    (
        "weights Infinity",
        json.dumps(_good_doc([_endpoint_dict(weights={"warning": "W"})])).replace(
            '"W"', "Infinity"
        ),
    ),
    ("weights negative", json.dumps(_good_doc([_endpoint_dict(weights={"warning": -1})]))),
    ("weights passing 0", json.dumps(_good_doc([_endpoint_dict(weights={"passing": 0})]))),
    ("meta a list", json.dumps(_good_doc([_endpoint_dict(meta=["a", "b"])]))),
    ("meta value an object", json.dumps(_good_doc([_endpoint_dict(meta={"a": {"b": 1}})]))),
    ("tags a string", json.dumps(_good_doc([_endpoint_dict(tags="v1")]))),
    ("tags of numbers", json.dumps(_good_doc([_endpoint_dict(tags=[1])]))),
    (
        "id missing",
        json.dumps(_good_doc([{k: v for k, v in _endpoint_dict().items() if k != "id"}])),
    ),
    ("id a number", json.dumps(_good_doc([_endpoint_dict(id=7)]))),
    ("address no host", json.dumps(_good_doc([_endpoint_dict(address="not a host!")]))),
    ("address null", json.dumps(_good_doc([_endpoint_dict(address=None)]))),
    ("health a list", json.dumps(_good_doc([_endpoint_dict(health=["passing"])]))),
    ("zone a number", json.dumps(_good_doc([_endpoint_dict(zone=3)]))),
    ("endpoint null", json.dumps(_good_doc([None]))),
    ("endpoints an object", json.dumps({**_good_doc(), "endpoints": {"a": 1}})),
    ("endpoints missing", json.dumps({k: v for k, v in _good_doc().items() if k != "endpoints"})),
    ("saved_at text", json.dumps({**_good_doc(), "saved_at": "yesterday"})),
    ("saved_at NaN", json.dumps({**_good_doc(), "saved_at": float("nan")})),
    ("saved_at huge", json.dumps({**_good_doc(), "saved_at": 10**400})),
    ("saved_at negative", json.dumps({**_good_doc(), "saved_at": -1})),
]


@pytest.mark.parametrize(("label", "text"), HOSTILE_FILES, ids=[h[0] for h in HOSTILE_FILES])
def test_a_hostile_snapshot_is_ignored_with_one_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, label: str, text: str
) -> None:
    store = SnapshotStore(tmp_path)
    data = text.encode("utf-8", "surrogateescape")
    path = _write(store, data)
    with caplog.at_level(logging.WARNING, logger="lake_mesh_consul"):
        for _ in range(3):  # every endpoints() call of a new view loads again
            assert store.load(QUERY) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, label
    assert str(path) in warnings[0].getMessage()


def test_the_next_good_answer_replaces_a_hostile_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = _write(store, "[]")
    assert store.load(QUERY) is None
    store.save(QUERY, [_endpoint()], 5.0)
    loaded = store.load(QUERY)
    assert loaded is not None
    assert [e.id for e in loaded[0]] == ["web-1"]
    assert json.loads(path.read_text())["version"] == SNAPSHOT_VERSION


def test_an_oversized_snapshot_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("lake_mesh_consul._consul.snapshot_store.MAX_SNAPSHOT_BYTES", 1000)
    store = SnapshotStore(tmp_path)
    store.save(QUERY, [_endpoint(n) for n in range(1, 20)], 1.0)
    with caplog.at_level(logging.WARNING, logger="lake_mesh_consul"):
        assert store.load(QUERY) is None
    assert "larger than 1000 bytes" in caplog.text


def test_another_querys_or_versions_file_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path)
    _write(store, json.dumps({**_good_doc(), "version": 0}))
    with caplog.at_level(logging.WARNING, logger="lake_mesh_consul"):
        assert store.load(QUERY) is None
    assert not caplog.records


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    for _ in range(11):
        store.save(QUERY, [_endpoint()], 1.0)
    assert list(tmp_path.iterdir()) == []


def test_write_atomically_removes_its_temporary_file_on_an_interrupted_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdopen = os.fdopen

    class Interrupted(BaseException):
        pass

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, *args, **kwargs)
        handle.close()
        raise Interrupted

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    with pytest.raises(Interrupted):
        files.write_atomically(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_endpoint_from_dict_round_trips_and_raises_only_value_error() -> None:
    e = _endpoint()
    assert endpoint_from_dict(endpoint_to_dict(e)).same_as(e)
    for bad in (None, [], "x", {"id": "a"}, {**endpoint_to_dict(e), "port": 1e400}):
        with pytest.raises(ValueError, match=r"not|is empty|port"):
            endpoint_from_dict(bad)


# --- fuzzing the loader --------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(),
    st.text(max_size=12),
)
_json: Any = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_fields = st.fixed_dictionaries(
    {},
    optional={k: st.one_of(_json, st.just(v)) for k, v in endpoint_to_dict(_endpoint()).items()},
)
_documents = st.one_of(
    _json,
    st.builds(_good_doc, st.lists(st.one_of(_fields, _json), max_size=4)),
    st.fixed_dictionaries(
        {},
        optional={k: st.one_of(_json, st.just(v)) for k, v in _good_doc().items()},
    ),
)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


@EXAMPLES
@given(doc=_documents)
def test_fuzz_the_loader_returns_a_snapshot_or_none(tmp_path: Path, doc: Any) -> None:
    store = SnapshotStore(tmp_path)
    _write(store, _dump(doc))
    loaded = store.load(QUERY)  # anything but a return is a failure
    if loaded is not None:
        endpoints, saved_at = loaded
        assert saved_at >= 0
        assert all(1 <= e.port <= 65535 and e.weights.passing >= 1 for e in endpoints)


@EXAMPLES
@given(data=st.binary(max_size=200))
def test_fuzz_the_loader_with_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    store = SnapshotStore(tmp_path)
    _write(store, data)
    assert store.load(QUERY) is None  # random bytes never make this query's snapshot
