"""Run every benchmark of the repository and print its figures.

Each ``benchmarks/bench_*.py`` module defines ``run(ctx) -> Iterable[Row]`` (see
:mod:`benchmarks._common`). This script imports each in turn and prints a table, or with
``--json`` one JSON object per line (``name``, ``value``, ``unit``, and ``baseline`` /
``ratio`` for comparisons). ``--quick`` asks each module for a run of under a minute in all.
With ``--json`` the first line describes the run (``name`` "environment", ``value`` null:
Python, Consul, machine).
``--only SUBSTR`` runs the modules whose name contains SUBSTR.

Usage::

    python benchmarks/run.py [--quick] [--json] [--only NAME]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import Context, Row, consul_version  # noqa: E402


def _cpu() -> str:
    """The processor model and core count, e.g. 'AMD EPYC 7B13 x2'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def _print(row: Row, *, as_json: bool) -> None:
    print(json.dumps(row.as_dict()) if as_json else row.as_text(), flush=True)


def _modules(only: str | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if only is None or only in n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="finish in under a minute")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--only", help="run only modules whose name contains this")
    args = parser.parse_args(argv)
    ctx = Context(quick=args.quick)
    header = {
        "name": "environment",
        "value": None,
        "unit": "",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": _cpu(),
        "platform": platform.platform(),
        "consul": consul_version(),
        "quick": args.quick,
    }
    if args.json:
        print(json.dumps(header), flush=True)
    else:
        print(
            f"# Python {header['python']} ({header['implementation']}), "
            f"Consul {header['consul']}, {header['machine']}, {header['platform']}, "
            f"quick={args.quick}"
        )
        print(f"{'name':<58} {'value':>12} {'unit':<8} {'baseline':>12} {'ratio':>8}")
    # Agents and servers the benchmarks start run in sessions of their own, so an interrupted
    # run must still reach ctx.close(): SIGTERM becomes SystemExit, and close() is in finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = 0
    try:
        for name in _modules(args.only):
            started = time.perf_counter()
            try:
                module = importlib.import_module(name)
                # Rows are printed as they come: a module that fails late keeps its figures.
                for row in module.run(ctx):
                    _print(row, as_json=args.json)
            except Exception:
                failed += 1
                print(f"# {name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                continue
            if not args.json:
                print(f"#   ({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    finally:
        ctx.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
