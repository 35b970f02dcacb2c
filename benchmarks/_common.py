"""What benchmark modules share: the Row type, a run context and small timing helpers."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The fewest samples a p99 may be printed from (below it, the "p99" is the maximum).
MIN_P99_SAMPLES = 200


@dataclass
class Row:
    """One printed figure. ``baseline``/``ratio`` are set for side-by-side comparisons.

    ``n`` is the sample size behind the figure (trials, rounds or pairs) for a comparison or
    a percentile; ``baseline_is`` says what the baseline is. Both go into the JSON.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    n: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.baseline is not None:
            out["baseline"] = self.baseline
            out["ratio"] = self.ratio
        if self.n is not None:
            out["n"] = self.n
        out.update(self.extra)
        return out

    def as_text(self) -> str:
        base = f"{self.baseline:>12.4g}" if self.baseline is not None else f"{'':>12}"
        ratio = f"{self.ratio:>8.3g}" if self.ratio is not None else f"{'':>8}"
        return f"{self.name:<58} {self.value:>12.4g} {self.unit:<8} {base} {ratio}"


def compare(
    name: str, value: float, baseline: float, unit: str, *, n: int | None = None, **extra: Any
) -> Row:
    """A row comparing ``value`` with ``baseline`` measured in the same run (``n`` samples)."""
    return Row(name, value, unit, baseline, value / baseline if baseline else None, extra, n)


def quantiles_for(samples: int) -> tuple[int, ...]:
    """The percentiles ``samples`` trials support: p99 only from MIN_P99_SAMPLES on."""
    return (50, 90, 99) if samples >= MIN_P99_SAMPLES else (50, 90)


def percentile_rows(
    name: str,
    values: Sequence[float],
    baseline: Sequence[float] | None,
    unit: str,
    *,
    scale: float = 1.0,
    **extra: Any,
) -> list[Row]:
    """``name.p50``, ``name.p90`` (and ``name.p99`` from 200 samples on), each with ``n``.

    With ``baseline`` (the same trials, measured side by side) each row is a comparison.
    Never prints a p99 from fewer samples: with 20 trials the "p99" is the maximum.
    """
    n = min(len(values), len(baseline)) if baseline is not None else len(values)
    rows = []
    for q in quantiles_for(n):
        ours = percentile(list(values), q) * scale
        if baseline is None:
            rows.append(Row(f"{name}.p{q}", ours, unit, extra=dict(extra), n=n))
        else:
            theirs = percentile(list(baseline), q) * scale
            rows.append(compare(f"{name}.p{q}", ours, theirs, unit, n=n, **extra))
    return rows


def alternate(
    a: Callable[[], float], b: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` in alternated pairs (a-b, b-a, ...); each returns one measurement.

    Drift of a shared machine then hits both sides alike; compare with :func:`paired_ratio`
    or the medians of the two lists.
    """
    xs: list[float] = []
    ys: list[float] = []
    for i in range(rounds):
        if i % 2:
            ys.append(b())
            xs.append(a())
        else:
            xs.append(a())
            ys.append(b())
    return xs, ys


def paired_ratio(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median over pairs of ``x / y``: the ratio of two alternated series."""
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True) if y)


def compare_alternated(
    name: str, xs: Sequence[float], ys: Sequence[float], unit: str, **extra: Any
) -> Row:
    """A comparison row from alternated pairs: medians, and the median of pair ratios."""
    row = compare(name, statistics.median(xs), statistics.median(ys), unit, n=len(xs), **extra)
    row.ratio = paired_ratio(xs, ys)
    row.extra.setdefault("ratio_is", "median of per-pair ratios (alternated pairs)")
    return row


def per_call(fn: Callable[[], object], *, n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` seconds per call of ``fn`` over ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def percentile(values: list[float], q: float) -> float:
    """The ``q`` (0..100) percentile of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def quiet_mesh_options() -> dict[str, Any]:
    """Mesh keyword arguments for a benchmark's mesh: no KV watch, no SIGTERM handler.

    Only the options this version of Mesh accepts (so an older tree can be measured too).
    """
    import inspect

    from lake_mesh_consul.mesh import Mesh

    accepted = inspect.signature(Mesh).parameters
    wanted = {"watch_config": False, "drain_on_sigterm": False, "drain_on_close": False}
    return {k: v for k, v in wanted.items() if k in accepted}


def consul_version() -> str:
    """The version of the consul binary the benchmarks would use, or 'none'."""
    binary = os.environ.get("LAKE_MESH_CONSUL_BIN") or shutil.which("consul")
    if not binary:
        try:
            from lake_mesh_consul.testing import find_consul_binary

            binary = str(find_consul_binary() or "")
        except Exception:
            binary = ""
    if not binary:
        return "none"
    try:
        out = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "none"
    return out.stdout.split("\n", 1)[0].replace("Consul ", "")


class Context:
    """Shared by the benchmark modules of one run: ``quick`` and a lazily started agent."""

    def __init__(self, *, quick: bool) -> None:
        self.quick = quick
        self._closers: list[Callable[[], None]] = []

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def consul_address(self) -> str:
        """``host:port`` of a Consul dev agent for this run, started on first use.

        ``LAKE_MESH_BENCH_CONSUL_ADDR`` names an agent to use instead. Otherwise a DevAgent
        runs the consul binary (see ``lake-mesh agent provision``) on free loopback ports and
        is stopped by :meth:`close`.
        """
        address: str | None = getattr(self, "_consul_address", None)
        if address is not None:
            return address
        address = os.environ.get("LAKE_MESH_BENCH_CONSUL_ADDR")
        if not address:
            from lake_mesh_consul.testing import DevAgent, find_consul_binary

            binary = find_consul_binary()
            if binary is None:
                raise RuntimeError("no consul binary: run `lake-mesh agent provision`")
            agent = DevAgent(binary)
            agent.start()
            self.on_close(agent.close)
            address = agent.address
        self._consul_address = address
        return address

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:
                pass
