"""Property: whatever bytes or JSON the parser is given, it raises only ConfigValidationError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_mesh_consul._core.config_schema import (
    FIELDS,
    LEVELS,
    SECTIONS,
    Level,
    parse_document,
)
from lake_mesh_consul._core.config_sources import load_file
from lake_mesh_consul.errors import ConfigValidationError

EXAMPLES = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

_names = st.sampled_from(
    [f.name for f in FIELDS] + [f.path for f in FIELDS] + list(SECTIONS) + ["", "x", "strategyy"]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**4000), max_value=10**4000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["10s", "1m30s", "250ms", "-1s", "1e400", "nan", "0s", "11m", "maglev"]),
)
_json: Any = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(_names, st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=30,
)
_documents = st.one_of(
    _json,
    st.dictionaries(_names, _json, max_size=8),
    st.fixed_dictionaries(
        {}, optional={s: st.dictionaries(_names, _json, max_size=5) for s in SECTIONS}
    ),
)
_levels: st.SearchStrategy[Level] = st.sampled_from(LEVELS)


def _parse(data: Any, level: Level, kv: bool) -> None:
    try:
        parse_document(data, level, key="lake-mesh/x", kv=kv)
    except ConfigValidationError:
        pass


@EXAMPLES
@given(data=st.binary(max_size=512), level=_levels, kv=st.booleans())
def test_arbitrary_bytes_only_raise_config_validation_error(
    data: bytes, level: Level, kv: bool
) -> None:
    _parse(data, level, kv)


@EXAMPLES
@given(doc=_documents, level=_levels, kv=st.booleans())
def test_arbitrary_json_only_raises_config_validation_error(
    doc: Any, level: Level, kv: bool
) -> None:
    text = json.dumps(doc)
    _parse(text, level, kv)
    _parse(text.encode("utf-8"), level, kv)
    if isinstance(doc, dict):
        _parse(doc, level, kv)


@EXAMPLES
@given(text=st.text(max_size=200), level=_levels)
def test_arbitrary_text_only_raises_config_validation_error(text: str, level: Level) -> None:
    _parse(text, level, True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(doc=_documents)
def test_arbitrary_local_files_only_raise_config_validation_error(
    doc: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "mesh.json"
    wrapped = {"global": doc, "services": {"web": doc}, "endpoints": {"web": {"w": doc}}}
    for candidate in (doc, wrapped):
        path.write_text(json.dumps(candidate))
        try:
            load_file(path)
        except ConfigValidationError:
            pass


def test_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigValidationError):
        parse_document("[" * 50_000 + "]" * 50_000, "service")
    with pytest.raises(ConfigValidationError):
        parse_document('{"retry": ' * 3000 + "1" + "}" * 3000, "service")


def test_integers_beyond_the_digit_limit_are_a_config_error() -> None:
    with pytest.raises(ConfigValidationError, match="malformed JSON"):
        parse_document('{"retry": {"attempts": 1' + "0" * 5000 + "}}", "service")
