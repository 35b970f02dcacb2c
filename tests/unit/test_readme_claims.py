"""Claims follow figures: every benchmark figure the README quotes names a row that exists.

Rows are found by reading the benchmark modules (``benchmarks/bench_*.py``) statically: the
first argument of each ``Row(...)``, ``compare(...)``, ``compare_alternated(...)`` and
``percentile_rows(...)`` call, an f-string's replacement fields standing for any value. No
benchmark runs and no agent is needed. A figure is cited as ``(row `name`)``, or
``rows `a`, `b``; README paragraphs outside the fault-suite list that quote a measured
figure (µs, a percentile, an import time) must cite one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_MAKERS = {"Row": "", "compare": "", "compare_alternated": "", "percentile_rows": r"\.p\d+"}

#: A reference to benchmark rows: "row `a`" or "rows `a`, `b` and `c`".
REFERENCE = re.compile(r"\brows?\s+((?:`[^`]+`(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+)?)+)")
#: A measured figure in prose: microseconds, a percentile, an import time.
FIGURE = re.compile(r"\d\s?µs|\bp(50|90|99)\b[^|]*\d\s?ms|import\S* [^.]*takes [^.]*\d\s?ms")


def _pattern(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(re.escape(value.value))
            else:
                parts.append(r"[\w=-]+")
        return "".join(parts)
    return None


def row_patterns() -> list[re.Pattern[str]]:
    """A regular expression for each row name the benchmark modules can print."""
    patterns = []
    for module in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", None)
            if name not in ROW_MAKERS:
                continue
            pattern = _pattern(node.args[0])
            if pattern is not None:
                patterns.append(re.compile(pattern + ROW_MAKERS[name]))
    return patterns


def cited_rows(text: str) -> list[str]:
    """Every row name cited in ``text``."""
    names = []
    for match in REFERENCE.finditer(text):
        names.extend(re.findall(r"`([^`]+)`", match.group(1)))
    return names


def _exists(name: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def _paragraphs_with_figures(readme: str) -> list[str]:
    """README paragraphs quoting a measured figure, outside the fault-suite list and code."""
    body = re.sub(r"```.*?```", "", readme, flags=re.S)
    start = body.find("What was measured, and what Consul")
    end = body.find("## Benchmarks")
    if start != -1 and end > start:
        body = body[:start] + body[end:]  # the fault suite's own findings, not benchmark rows
    return [p for p in re.split(r"\n\s*\n", body) if FIGURE.search(p)]


def test_the_bench_modules_define_rows() -> None:
    patterns = row_patterns()
    assert len(patterns) > 30
    assert _exists("discovery.propagation.ttl_fail.p99", patterns)
    assert _exists("change.10000.library_cpu", patterns)
    assert not _exists("discovery.scale.1000.parse_and_swap", patterns)  # a retired row


@pytest.mark.parametrize("document", ["README.md", "BENCHMARKS.md"])
def test_every_cited_row_exists(document: str) -> None:
    patterns = row_patterns()
    cited = cited_rows((ROOT / document).read_text(encoding="utf-8"))
    assert cited, f"{document} cites no benchmark row"
    missing = [name for name in cited if not _exists(name, patterns)]
    assert missing == [], f"{document} cites rows no benchmark prints: {missing}"


def test_every_figure_in_the_readme_names_its_row() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    uncited = [p.strip()[:120] for p in _paragraphs_with_figures(readme) if not cited_rows(p)]
    assert uncited == [], f"README figures without a row: {uncited}"


def test_the_checks_catch_a_made_up_row_and_an_uncited_figure() -> None:
    patterns = row_patterns()
    assert not _exists("pick.round_robin.n=10.fastest_ever", patterns)
    assert cited_rows("costs 3 µs (rows `a.b`, `c.d` and `e`)") == ["a.b", "c.d", "e"]
    assert _paragraphs_with_figures("A pick costs 0.1 µs.\n\nBackoff: 25 ms base.") == [
        "A pick costs 0.1 µs."
    ]
