"""RequestTally: the request figures both exporters share, kept without their libraries.

A metrics library's own instruments cost more per request than the route itself on a slow
machine (prometheus_client's histogram takes a lock per bucket; the OpenTelemetry SDK's
``record`` builds a measurement, reads the context and samples exemplars: tens of
microseconds, see ``benchmarks/bench_instruments.py``). So the success path only appends
the duration to its cell here (a dict lookup by outcome identity and one ``list.append``, no
lock); the durations are folded into counts, sums and buckets every :data:`FOLD_AT` requests
and at each scrape. Prometheus builds its families from the cells, OpenTelemetry replays
the kept durations into its histogram at collection time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.instruments import Instruments, endpoint_name
from lake_mesh_consul._core.outcome import Outcome

__all__ = ["FOLD_AT", "CellKey", "RequestTally", "TallyCell"]

#: ``(service, outcome kind, failure, HTTP status or None, endpoint name or None)``.
CellKey = tuple[str, str, bool, "int | None", "str | None"]


#: Durations a cell collects before the request path folds them into its figures.
FOLD_AT = 1024


class _Cell:
    """One key's figures: ``fresh`` durations, appended lock-free, and the folded totals.

    ``list.append`` is atomic (the request path's only write); folding copies the first n
    durations and deletes exactly those (``del fresh[:n]``), so an append racing with it
    lands after them and is folded next time. ``count``, ``sum``, ``buckets`` and
    ``kept`` change under ``fold_lock`` only.
    """

    __slots__ = ("buckets", "count", "fold_lock", "fresh", "kept", "sum")

    def __init__(self, buckets: int) -> None:
        self.fresh: list[float] = []
        self.fold_lock = threading.Lock()
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * buckets
        self.kept: list[float] = []


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


class RequestTally(Instruments):
    """Attempts by service and outcome: counts, seconds, histogram buckets.

    The exporters subclass it, so their ``request_finished`` is this class's: the success
    path runs one method of ours.

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
        self._tally_cells: dict[CellKey, _Cell] = {}
        # The success path's lookup: service -> id(outcome) -> (outcome, cell), for outcomes
        # without an error (SUCCESS, and the classifier's cached one-per-status outcomes):
        # ints and strings hash in C, an Outcome or an enum member in Python. Holding the
        # outcome keeps its id from being reused.
        self._fast: dict[str, dict[int, tuple[Outcome, _Cell]]] = {}
        self._tally_lock = threading.Lock()

    def request_finished(
        self, service: str, endpoint: ServiceEndpoint, outcome: Outcome, duration: float
    ) -> None:
        """Count one attempt (lock-free: one ``list.append``)."""
        by_outcome = self._fast.get(service)
        entry = None if by_outcome is None else by_outcome.get(id(outcome))
        if entry is not None and entry[0] is outcome:
            cell = entry[1]
        else:
            cell = self._cell(service, endpoint, outcome)
        fresh = cell.fresh
        fresh.append(duration)
        if len(fresh) >= FOLD_AT:
            self._fold(cell, blocking=False)  # another thread folding it: it takes ours too

    #: The same, by its own name.
    add = request_finished

    def _fold(self, cell: _Cell, *, blocking: bool = True) -> None:
        """Move the cell's fresh durations into its figures (and ``kept``, up to the cap)."""
        if not cell.fold_lock.acquire(blocking=blocking):
            return
        try:
            fresh = cell.fresh
            n = len(fresh)
            batch = fresh[:n]
            del fresh[:n]  # only those: a racing append is at index n or later
            cell.count += n
            cell.sum += sum(batch)
            bounds, buckets = self.bounds, cell.buckets
            for seconds in batch:
                buckets[bisect_left(bounds, seconds)] += 1  # Prometheus' "le": first >= it
            room = self.keep_samples - len(cell.kept)
            if room > 0:
                cell.kept.extend(batch[:room])
        finally:
            cell.fold_lock.release()

    def _cell(self, service: str, endpoint: ServiceEndpoint, outcome: Outcome) -> _Cell:
        key: CellKey = (
            service,
            outcome.kind.value,
            outcome.failure,
            outcome.status,
            endpoint_name(endpoint) if self.per_endpoint else None,
        )
        with self._tally_lock:
            cell = self._tally_cells.setdefault(key, _Cell(len(self.bounds) + 1))
            if outcome.error is None and not self.per_endpoint:
                self._fast.setdefault(service, {})[id(outcome)] = (outcome, cell)
        return cell

    def cells(self) -> list[TallyCell]:
        """Every cell's figures now, in key order."""
        out = []
        for key, cell in sorted(self._tally_cells.items(), key=lambda kv: repr(kv[0])):
            self._fold(cell)
            with cell.fold_lock:
                out.append(TallyCell(key, cell.count, cell.sum, tuple(cell.buckets)))
        return out

    def drain_samples(self) -> list[tuple[CellKey, list[float]]]:
        """The durations kept since the last drain, per cell (and forget them)."""
        out = []
        for key, cell in list(self._tally_cells.items()):
            self._fold(cell)
            with cell.fold_lock:
                kept, cell.kept = cell.kept, []
            if kept:
                out.append((key, kept))
        return out
