"""RequestTally: the request figures both exporters share, kept without their libraries.

A metrics library's own instruments cost more per request than the route itself on a slow
machine (prometheus_client's histogram takes a lock per bucket; the OpenTelemetry SDK's
``record`` builds a measurement, reads the context and samples exemplars: tens of
microseconds, see ``benchmarks/bench_instruments.py``). So the success path only adds to a
cell here (one dict lookup, one short lock, three increments) and the exporters read the
cells when scraped or collected: Prometheus builds its families from them, OpenTelemetry
replays the kept durations into its histogram at collection time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.instruments import endpoint_name
from lake_mesh_consul._core.outcome import Outcome

__all__ = ["CellKey", "RequestTally", "TallyCell"]

#: ``(service, outcome kind, failure, HTTP status or None, endpoint name or None)``.
CellKey = tuple[str, str, bool, "int | None", "str | None"]


class _Cell:
    __slots__ = ("buckets", "count", "lock", "samples", "sum")

    def __init__(self, buckets: int) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * buckets
        self.samples: list[float] = []


@dataclass(frozen=True, slots=True)
class TallyCell:
    """One cell's figures at a scrape.

    Attributes:
        key: ``(service, outcome kind, failure, status, endpoint)``.
        count: attempts.
        sum: their seconds.
        buckets: attempts per bucket (not cumulative; the last is above every bound).
    """

    key: CellKey
    count: int
    sum: float
    buckets: tuple[int, ...]


class RequestTally:
    """Attempts by service and outcome: counts, seconds, histogram buckets.

    Args:
        bounds: the histogram's upper bounds (seconds, ascending; ``+Inf`` implied).
        per_endpoint: key cells by endpoint too.
        keep_samples: keep up to this many durations per cell for :meth:`drain_samples`
            (0: none). Beyond it durations are dropped from the samples, never from counts.

    Thread-safety: :meth:`add` from any thread; readers take each cell's lock briefly.
    """

    def __init__(
        self, bounds: Sequence[float], *, per_endpoint: bool = False, keep_samples: int = 0
    ) -> None:
        self.bounds = tuple(bounds)
        self.per_endpoint = per_endpoint
        self.keep_samples = keep_samples
        self._cells: dict[CellKey, _Cell] = {}
        # The success path's lookup: service -> id(outcome) -> (outcome, cell), for outcomes
        # without an error (SUCCESS, and the classifier's cached one-per-status outcomes):
        # ints and strings hash in C, an Outcome or an enum member in Python. Holding the
        # outcome keeps its id from being reused.
        self._fast: dict[str, dict[int, tuple[Outcome, _Cell]]] = {}
        self._lock = threading.Lock()

    def add(
        self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
    ) -> None:
        """Count one attempt (the exporters' ``request_finished``)."""
        by_outcome = self._fast.get(service)
        entry = None if by_outcome is None else by_outcome.get(id(outcome))
        if entry is not None and entry[0] is outcome:
            cell = entry[1]
        else:
            cell = self._cell(service, endpoint, outcome)
        i = bisect_left(self.bounds, duration)  # Prometheus' "le": the first bound >= it
        with cell.lock:
            cell.count += 1
            cell.sum += duration
            cell.buckets[i] += 1
            if self.keep_samples and len(cell.samples) < self.keep_samples:
                cell.samples.append(duration)

    def _cell(self, service: str, endpoint: ServiceEndpoint, outcome: Outcome) -> _Cell:
        key: CellKey = (
            service,
            outcome.kind.value,
            outcome.failure,
            outcome.status,
            endpoint_name(endpoint) if self.per_endpoint else None,
        )
        with self._lock:
            cell = self._cells.setdefault(key, _Cell(len(self.bounds) + 1))
            if outcome.error is None and not self.per_endpoint:
                self._fast.setdefault(service, {})[id(outcome)] = (outcome, cell)
        return cell

    def cells(self) -> list[TallyCell]:
        """Every cell's figures now, in key order."""
        out = []
        for key, cell in sorted(self._cells.items(), key=lambda kv: repr(kv[0])):
            with cell.lock:
                out.append(TallyCell(key, cell.count, cell.sum, tuple(cell.buckets)))
        return out

    def drain_samples(self) -> list[tuple[CellKey, list[float]]]:
        """The durations kept since the last drain, per cell (and forget them)."""
        out = []
        for key, cell in list(self._cells.items()):
            with cell.lock:
                samples, cell.samples = cell.samples, []
            if samples:
                out.append((key, samples))
        return out
