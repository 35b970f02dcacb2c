"""``loads_yielding``: the same value and the same errors as ``json.loads``, for any input.

The threshold is lowered so that small documents take the element-by-element path; the
property is checked on generated JSON and on generated (mostly malformed) byte strings.
"""

from __future__ import annotations

import gc
import itertools
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake_mesh_consul._consul import client
from lake_mesh_consul._consul.client import loads_yielding

_SCALARS = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_SPACES = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


def _outcome(fn: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "value", fn(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        return "error", type(exc)
    except RecursionError:
        return "error", RecursionError


@pytest.fixture(autouse=True)
def _small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "YIELDING_DECODE_FROM", 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON, max_size=8), _SPACES, _SPACES, st.booleans())
def test_any_json_array_decodes_as_json_loads(
    items: list[Any], before: str, between: str, pretty: bool
) -> None:
    separator = "," + between
    text = before + "[" + between + separator.join(json.dumps(i) for i in items) + "]" + before
    if pretty:
        text = json.dumps(items, indent=2)
    body = text.encode()
    assert _outcome(loads_yielding, body) == _outcome(json.loads, body)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=64)
    | st.text(alphabet='[]{},:" \n0123456789tfnaeul-.', max_size=40).map(str.encode)
)
def test_any_bytes_give_the_same_value_or_the_same_kind_of_error(body: bytes) -> None:
    assert _outcome(loads_yielding, body) == _outcome(json.loads, body)


@pytest.mark.parametrize(
    "text",
    [
        "[1,]",
        "[1 2]",
        "[,1]",
        "[1]]",
        "[1] x",
        "[",
        "[[]",
        " [ ] ",
        "[]",
        "[1,\n 2 ]\n",
        '{"a": [1]}',
    ],
)
def test_edge_cases_match_json_loads(text: str) -> None:
    body = text.encode()
    assert _outcome(loads_yielding, body) == _outcome(json.loads, body)


def test_utf16_and_a_bom_decode_as_json_loads() -> None:
    for body in ('[1, "é"]'.encode("utf-16"), '[1, "é"]'.encode("utf-8-sig")):
        assert _outcome(loads_yielding, body) == _outcome(json.loads, body)


def _worst_gap(decode: Any, body: bytes) -> float:
    """The longest another (spinning) thread went without running while ``decode(body)`` ran."""
    ticks: list[float] = []
    running, done = threading.Event(), threading.Event()

    def tick() -> None:  # bounded: spins only until the decode below ends
        running.set()
        while not done.is_set():
            ticks.append(time.perf_counter())

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        assert running.wait(5)
        decode(body)
    finally:
        done.set()
        ticker.join(5)
    return max(b - a for a, b in itertools.pairwise(ticks))


def test_other_threads_run_while_a_large_array_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the element-by-element path is for: the interpreter runs between elements, so a
    # thread waiting for the GIL gets it every switch interval (5 ms), where one json.loads
    # holds it for the whole decode. Compared side by side in one test (a loaded machine
    # stretches both).
    monkeypatch.setattr(client, "YIELDING_DECODE_FROM", 1024)
    items = [{"Service": {"ID": f"i{n}", "Tags": ["a"] * 20}} for n in range(60_000)]
    body = json.dumps(items).encode()
    assert loads_yielding(body) == items
    # The collector's full passes are single C stretches of their own (70-195 ms seen on a
    # 26 MB answer): they are the process's, not the decoder's, so they are kept out here.
    gc.disable()
    try:
        stall = _worst_gap(json.loads, body)
        yielding = _worst_gap(loads_yielding, body)
    finally:
        gc.enable()
    assert yielding < stall / 2, f"worst gap {yielding * 1e3:.1f} ms vs {stall * 1e3:.1f} ms"
