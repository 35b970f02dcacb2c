"""The benchmark harness: rows say their baseline and sample size, percentiles need samples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    MIN_P99_SAMPLES,
    Row,
    alternate,
    compare,
    compare_alternated,
    percentile,
    percentile_rows,
)


def test_a_comparison_row_carries_baseline_ratio_and_sample_size_in_its_json() -> None:
    row = compare("x.p50", 2.0, 4.0, "ms", n=200, baseline_is="consul watch")
    out = json.loads(json.dumps(row.as_dict()))
    assert out == {
        "name": "x.p50",
        "value": 2.0,
        "unit": "ms",
        "baseline": 4.0,
        "ratio": 0.5,
        "n": 200,
        "baseline_is": "consul watch",
    }


def test_a_plain_row_has_no_baseline_keys() -> None:
    assert set(Row("y", 1.0, "us").as_dict()) == {"name", "value", "unit"}


def test_no_p99_is_printed_from_fewer_than_200_samples() -> None:
    twenty = [float(i) for i in range(20)]
    names = [r.name for r in percentile_rows("prop", twenty, twenty, "ms")]
    assert names == ["prop.p50", "prop.p90"]
    enough = [float(i) for i in range(MIN_P99_SAMPLES)]
    rows = percentile_rows("prop", enough, None, "ms")
    assert [r.name for r in rows] == ["prop.p50", "prop.p90", "prop.p99"]
    assert all(r.n == MIN_P99_SAMPLES for r in rows)
    assert rows[2].value == percentile(enough, 99) < max(enough)


def test_percentile_rows_compare_the_same_quantile_of_both_sides() -> None:
    ours = [1.0, 2.0, 3.0, 4.0, 5.0]
    theirs = [10.0, 20.0, 30.0, 40.0, 50.0]
    (p50, p90) = percentile_rows("p", ours, theirs, "ms", scale=1000.0)
    assert (p50.value, p50.baseline) == (3000.0, 30000.0)
    assert p90.ratio == pytest.approx(0.1)
    assert p90.n == 5


def test_alternate_runs_the_two_sides_in_abba_order() -> None:
    order: list[str] = []
    xs, ys = alternate(lambda: order.append("a") or 1.0, lambda: order.append("b") or 2.0, 4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert (xs, ys) == ([1.0] * 4, [2.0] * 4)


def test_an_alternated_ratio_is_the_median_of_pair_ratios() -> None:
    # pairs drift together (a noisy machine): the per-pair ratio stays 2
    xs = [2.0, 4.0, 8.0]
    ys = [1.0, 2.0, 4.0]
    row = compare_alternated("r", xs, ys, "ms")
    assert row.ratio == 2.0
    assert (row.value, row.baseline, row.n) == (4.0, 2.0, 3)
