"""The one backoff: ceilings, jitter modes and validation (pure, no clock)."""

from __future__ import annotations

import random

import pytest

from lake_mesh_consul._core.backoff import Backoff
from lake_mesh_consul.errors import InvalidSetting


def test_ceiling_doubles_then_caps() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.8, 1.0])
    assert backoff.ceiling(10_000) == 1.0  # no overflow


@pytest.mark.parametrize("jitter", ["full", "equal", "none"])
def test_delays_stay_within_their_band(jitter: str) -> None:
    backoff = Backoff(0.2, 2.0, jitter=jitter)  # type: ignore[arg-type]
    rng = random.Random(3)
    for n in range(1, 12):
        ceiling = backoff.ceiling(n)
        low = {"full": 0.0, "equal": ceiling / 2, "none": ceiling}[jitter]
        for _ in range(50):
            assert low <= backoff.delay(n, rng) <= ceiling


def test_full_jitter_spreads_over_the_whole_band() -> None:
    rng = random.Random(5)
    delays = [Backoff(1.0, 1.0).delay(1, rng) for _ in range(500)]
    assert min(delays) < 0.1
    assert max(delays) > 0.9


def test_zero_base_never_pauses() -> None:
    assert Backoff(0.0, 0.0).delay(5, random.Random()) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": -1.0}, {"base": 2.0, "cap": 1.0}, {"multiplier": 0.5}, {"jitter": "half"}],
)
def test_invalid_backoffs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSetting):
        Backoff(**kwargs)  # type: ignore[arg-type]
