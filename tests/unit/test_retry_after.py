"""Retry-After from a backend: any value either parses or is ignored (issue 14.4).

RFC 9110 10.2.3: delta-seconds (ASCII digits) or an HTTP-date. ``Retry-After: ²`` used to
raise ValueError out of MeshSession.get (``"²".isdigit()`` is true, ``float("²")`` fails);
the session-level regression runs in tests/integration/test_retry_after_header.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake_mesh_consul._core.retry_after import MAX_RETRY_AFTER, parse_retry_after

#: 2015-10-21 07:27:50 UTC: ten seconds before the RFC's example date.
NOW = 1445412470.0

PARSED = [
    ("7", 7.0),
    (" 120 ", 120.0),
    ("007", 7.0),
    ("0", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),  # IMF-fixdate
    ("Wednesday, 21-Oct-15 07:28:00 GMT", 10.0),  # obsolete RFC 850
    ("Wed Oct 21 07:28:00 2015", 10.0),  # obsolete asctime (no zone: UTC)
    ("Wed, 21 Oct 2015 07:28:00 -0000", 10.0),  # "-0000": UTC from an unknown zone
    ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ("9" * 5000, MAX_RETRY_AFTER),  # int() refuses over 4300 digits: clamped, not raised
    ("99999999999", MAX_RETRY_AFTER),
]

IGNORED = [
    None,
    "",
    "   ",
    "²",  # superscript two: str.isdigit() says yes
    "٣",  # Arabic-Indic three
    "\uff11\uff12",  # full-width digits
    "-5",
    "+5",
    "1.5",
    "1e3",
    "5, 7",  # two headers joined by requests
    "soon",
    "Wed, 21 Oct 99999 07:28:00 GMT",  # year out of range
    "Mon, 32 Foo 2015 25:61:61 GMT",
    "Wed, 21 Oct 2015 07:28:00 GMT" + " " * 100 + "x",
    "\x00",
    "Wed, 21 Oct 2015 07:28:00 GMT\udcff",
    "inf",
    "nan",
]


@pytest.mark.parametrize(("value", "seconds"), PARSED)
def test_delta_seconds_and_http_dates_parse(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value", IGNORED)
def test_anything_else_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_header_bytes_are_read_as_latin_1() -> None:
    assert parse_retry_after(b"30", now=NOW) == 30.0
    assert parse_retry_after("²".encode("latin-1"), now=NOW) is None


def test_a_nan_clock_gives_no_wait_instead_of_nan() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=float("nan")) is None


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
def test_fuzz_any_text_gives_seconds_in_range_or_none(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(n=st.integers(min_value=0, max_value=10**12))
def test_fuzz_every_ascii_delta_parses(n: int) -> None:
    assert parse_retry_after(str(n), now=NOW) == min(float(n), MAX_RETRY_AFTER)
