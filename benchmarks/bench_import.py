"""Import time: ``import lake_mesh_consul`` against the libraries it wraps.

Each figure is the median of several fresh interpreters running ``python -X importtime -c
'import X'``; the value is the cumulative time of the top-level module, as ``-X importtime``
reports it (the interpreter's own start-up is not included). Target for the package: < 15 ms.
The comparison rows show python-consul2 (``consul``) and requests, which the package only
loads when a client is built.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Iterator

from _common import Row, compare

#: The package's import-time budget, in milliseconds.
TARGET_MS = 15.0


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter, in milliseconds."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for line in result.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1000.0
    raise RuntimeError(f"-X importtime printed no line for {module}")


def median_ms(module: str, runs: int) -> float:
    import_ms(module)  # warm the file-system cache and .pyc files first
    return statistics.median(import_ms(module) for _ in range(runs))


def run(ctx) -> Iterator[Row]:
    runs = 5 if ctx.quick else 15
    ours = median_ms("lake_mesh_consul", runs)
    yield Row(
        "import lake_mesh_consul (median, -X importtime)",
        ours,
        "ms",
        extra={"target_ms": TARGET_MS, "within_target": ours < TARGET_MS, "runs": runs},
    )
    for module, label in (("consul", "python-consul2"), ("requests", "requests")):
        theirs = median_ms(module, runs)
        yield compare(f"import lake_mesh_consul vs import {label}", ours, theirs, "ms", runs=runs)
