"""Turn ``run.py --json`` output into the Markdown table BENCHMARKS.md quotes.

Usage::

    python benchmarks/run.py --json > run.jsonl
    python benchmarks/tabulate.py run.jsonl

One line per row: the row's name (what README and BENCHMARKS.md cite), its value and unit,
the baseline, the ratio and the sample size, plus what the baseline is when the row says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 1:
            return f"{value:.3g}"
        return f"{value:.2g}"
    return str(value)


def table(lines: list[str]) -> str:
    """The Markdown table of the rows in ``lines`` (JSON objects; the environment first)."""
    out = [
        "| row | value | baseline | ratio | n | baseline is / notes |",
        "|---|---|---|---|---|---|",
    ]
    for raw in lines:
        text = raw.strip()
        if not text.startswith("{"):
            continue
        row = json.loads(text)
        if row.get("name") == "environment":
            continue
        notes = row.get("baseline_is") or row.get("measures") or ""
        if row.get("censored"):
            notes = f"{notes} (censored at {row.get('cap_s')} s)".strip()
        if "resolved" in row:
            notes = f"{notes} resolved {row['resolved']} of {row.get('watched')}".strip()
        unit = row.get("unit") or ""
        out.append(
            f"| `{row['name']}` | {_num(row['value'])} {unit} | {_num(row.get('baseline'))} "
            f"| {_num(row.get('ratio'))} | {_num(row.get('n'))} | {notes} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Print the table of the JSON lines file named in ``argv`` (or of stdin)."""
    text = Path(argv[0]).read_text() if argv else sys.stdin.read()
    print(table(text.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
