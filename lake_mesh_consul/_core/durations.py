"""Durations written the way Consul writes them: ``10s``, ``1m30s``, ``250ms``, ``1h``.

Go's ``time.ParseDuration`` grammar: a sequence of decimal numbers, each with a unit
(``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``). A bare number is taken as seconds,
which is what people mean when they write ``"timeout": 5`` in a JSON document.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str | float | int) -> float:
    """Return ``value`` in seconds.

    Raises:
        ValueError: the text is not a duration (the message shows an example), or it is
            negative.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '10s' or '1m30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            raise ValueError("expected a duration such as '10s' or '1m30s', got ''")
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_units(text)
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _parse_units(text: str) -> float:
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"expected a duration such as '10s', '1m30s' or '250ms', got {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way Consul accepts them (``"1m30s"``, ``"250ms"``, ``"0s"``)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    whole = int(seconds)
    frac = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs or frac or not out:
        out += f"{secs + frac:g}s"
    return out
