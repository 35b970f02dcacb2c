"""Mesh wiring of instruments: what Mesh(instruments=..., log_events=...) builds (no I/O)."""

from __future__ import annotations

from lake_mesh_consul._core.instruments import (
    NO_INSTRUMENTS,
    Instruments,
    LogInstruments,
    MultiInstruments,
    Readings,
    ReadingsSource,
)
from lake_mesh_consul.mesh import Mesh

#: Nothing listens there: the constructor does no I/O and close() reaches no agent.
NOWHERE = "127.0.0.1:1"


class Attached(Instruments):
    def __init__(self) -> None:
        self.source: ReadingsSource | None = None
        self.closed = 0

    def attach(self, readings: ReadingsSource) -> None:
        self.source = readings

    def close(self) -> None:
        self.closed += 1


def _mesh(**kwargs: object) -> Mesh:
    return Mesh(address=NOWHERE, drain_on_sigterm=False, watch_config=False, **kwargs)


def test_the_mesh_logs_events_by_default_and_adds_the_given_instruments() -> None:
    ours = Attached()
    mesh = _mesh(instruments=ours)
    try:
        assert isinstance(mesh.instruments, MultiInstruments)
        log, given = mesh.instruments.members
        assert isinstance(log, LogInstruments)
        assert given is ours
        for kwargs, expected in (
            ({}, LogInstruments),
            ({"log_events": False}, type(NO_INSTRUMENTS)),
            ({"log_events": False, "instruments": ours}, Attached),
        ):
            other = _mesh(**kwargs)
            assert type(other.instruments) is expected
            other.close()
        assert _mesh_without_logs_is_silent()
    finally:
        mesh.close()


def _mesh_without_logs_is_silent() -> bool:
    mesh = _mesh(log_events=False)
    try:
        return mesh.instruments is NO_INSTRUMENTS
    finally:
        mesh.close()


def test_exporters_read_the_mesh_gauges_and_are_closed_with_it() -> None:
    ours = Attached()
    mesh = _mesh(instruments=ours)
    assert ours.source is not None
    readings = ours.source()
    assert isinstance(readings, Readings)
    assert readings.services == ()  # no service called yet
    assert (readings.registered, readings.reregistrations) == (0, 0)
    assert readings.config_stale is False  # watch_config=False: nothing to be stale
    mesh.close()
    mesh.close()
    assert ours.closed == 1
