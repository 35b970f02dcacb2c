"""Property: whatever a blocking answer holds, parsing it skips bad entries and never raises.

Issue 14 (tests): hypothesis-based fuzzing of the blocking-answer parser. The contract
(:func:`~lake_mesh_consul._consul.discovery.parse_health_entries`): malformed entries are
skipped and logged, the answer never raises for bad content; one entry alone
(:func:`parse_health_entry`) raises only ValueError. Inputs are decoded JSON, as the watch
hands them over: Consul-shaped entries whose every field may be replaced by any JSON value
(numbers beyond float range such as ``1e400`` decode to ``inf``; integers of any size).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_mesh_consul._consul.discovery import parse_health_entries, parse_health_entry

EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # inf, -inf and nan included: json.loads gives them for 1e400, Infinity, NaN
    st.text(max_size=10),
    st.sampled_from(["passing", "warning", "critical", "maintenance", "127.0.0.1", "::1"]),
)
_json: Any = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


#: Numbers at the edges of what JSON decodes to (1e400 is inf; integers have no bound).
_edge_numbers = st.sampled_from([math.inf, -math.inf, math.nan, 10**400, -1, 0, 2**63, 1.5])


def _maybe(good: Any) -> st.SearchStrategy[Any]:
    """The well-formed value (mostly), or any JSON value in its place."""
    return st.one_of(st.just(good), st.just(good), st.just(good), _json)


_check = st.fixed_dictionaries(
    {},
    optional={
        "CheckID": _maybe("service:a"),
        "Status": _maybe("passing"),
        "ModifyIndex": _maybe(5),
    },
)
_service = st.fixed_dictionaries(
    {},
    optional={
        "ID": _maybe("a"),
        "Service": _maybe("web"),
        "Address": _maybe("127.0.0.1"),
        "Port": _maybe(8080),
        "Tags": _maybe(["v1"]),
        "Meta": _maybe({"zone": "z1"}),
        "Weights": st.one_of(
            _json,
            st.fixed_dictionaries({}, optional={"Passing": _json, "Warning": _json}),
        ),
        "ModifyIndex": _maybe(3),
    },
)
_node = st.fixed_dictionaries(
    {},
    optional={
        "Node": _maybe("node-1"),
        "Address": _maybe("127.0.0.2"),
        "Datacenter": _maybe("dc1"),
        "ModifyIndex": _maybe(2),
    },
)
_entry = st.one_of(
    _json,
    st.fixed_dictionaries(
        {},
        optional={
            "Node": st.one_of(_node, _json),
            "Service": st.one_of(_service, _json),
            "Checks": st.one_of(st.lists(st.one_of(_check, _json), max_size=3), _json),
        },
    ),
)
#: Entries that are well-formed but for one or two fields, so that the parser gets far.
_nearly_good_entry = st.fixed_dictionaries(
    {
        "Node": st.fixed_dictionaries({"Node": _maybe("n1"), "Address": _maybe("127.0.0.1")}),
        "Service": st.fixed_dictionaries(
            {
                "ID": _maybe("a"),
                "Service": _maybe("web"),
                "Port": st.one_of(_maybe(8080), _edge_numbers),
                "Weights": st.fixed_dictionaries(
                    {},
                    optional={
                        "Passing": st.one_of(_maybe(1), _edge_numbers),
                        "Warning": st.one_of(_maybe(1), _edge_numbers),
                    },
                ),
                "Meta": _maybe({"zone": "z1"}),
                "Tags": _maybe(["v1"]),
            }
        ),
        "Checks": st.lists(st.one_of(_check, _json), max_size=2),
    }
)
_answers = st.one_of(_json, st.lists(st.one_of(_entry, _nearly_good_entry), max_size=5))


@EXAMPLES
@given(answer=_answers, keep_order=st.booleans())
def test_fuzz_an_answer_never_raises(answer: Any, keep_order: bool) -> None:
    endpoints = parse_health_entries(answer, service="web", keep_order=keep_order)
    assert isinstance(endpoints, tuple)
    for e in endpoints:  # whatever survives is usable
        assert 1 <= e.port <= 65535
        assert e.id
        assert e.weights.passing >= 1
        assert e.weights.warning >= 0


@EXAMPLES
@given(entry=st.one_of(_entry, _nearly_good_entry))
def test_fuzz_one_entry_raises_only_value_error(entry: Any) -> None:
    try:
        parse_health_entry(entry)
    except ValueError:
        pass


@EXAMPLES
@given(text=st.text(alphabet='[]{}",:0123456789.eE-+ntrufalsIinyN', max_size=60))
def test_fuzz_any_decodable_text_as_an_answer(text: str) -> None:
    try:
        data = json.loads(text)
    except ValueError:
        return
    parse_health_entries(data, service="web")


@pytest.mark.parametrize(
    "weights",
    [
        {"Passing": math.inf},  # what 1e400 decodes to
        {"Warning": -math.inf},
        {"Passing": math.nan},
        {"Passing": 10**400},
        {"Passing": "1e400"},
        {"Passing": [1]},
    ],
)
def test_hostile_weights_never_break_the_answer(weights: dict[str, Any]) -> None:
    entry = {
        "Node": {"Node": "n1", "Address": "127.0.0.1"},
        "Service": {"ID": "a", "Service": "web", "Port": 8080, "Weights": weights},
        "Checks": [],
    }
    (endpoint,) = parse_health_entries([entry], service="web")
    assert endpoint.id == "a"
