"""Durations written the way Consul writes them: ``10s``, ``1m30s``, ``250ms``, ``1h``.

Go's ``time.ParseDuration`` grammar: a sequence of decimal numbers, each with a unit
(``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``). A bare number is taken as seconds,
which is what people mean when they write ``"timeout": 5`` in a JSON document.

Consul decodes every duration into Go's ``time.Duration``, a signed 64-bit count of
nanoseconds, so :func:`parse_duration` refuses anything longer than
:data:`MAX_DURATION` (about 292 years) and :func:`format_duration` writes whole
nanoseconds in Go's own units (``1ns``, ``1.5us``, ``250ms``, ``1m30.5s``), never a
float's exponent (``1e-06ms`` is not a Go duration).
"""

from __future__ import annotations

import math
import re

__all__ = ["MAX_DURATION", "NANOSECOND", "format_duration", "parse_duration"]

#: Longest duration Go's ``time.Duration`` holds, in seconds: (2**63 - 1) nanoseconds.
MAX_DURATION = (2**63 - 1) / 1e9
#: One nanosecond, in seconds: the resolution of Go's ``time.Duration``.
NANOSECOND = 1e-9

_MAX_NANOS = 2**63 - 1
_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN, what Go writes
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU, which Go also reads
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
#: One number-with-unit, ASCII digits only (``\\d`` would take ``٣`` and ``²``).
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
#: A bare number of seconds (``5``, ``2.5``, ``1e3``), ASCII only.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?")
_EXAMPLE = "expected a duration such as '10s', '1m30s' or '250ms'"


def parse_duration(value: str | float | int) -> float:
    """Return ``value`` in seconds.

    Accepts a number of seconds (int or float, or its text) or Go's duration text.

    Raises:
        ValueError: the text is not a duration (the message shows an example), or it is
            negative, not finite, or longer than :data:`MAX_DURATION` (Go's range).
    """
    if isinstance(value, bool):
        raise ValueError(f"{_EXAMPLE}, got {value!r}")
    if isinstance(value, int):
        if value > MAX_DURATION:  # compared as an int: 10**400 does not fit a float
            raise ValueError(_too_long(value))
        seconds = float(value)
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"{_EXAMPLE}, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {_shown(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(_too_long(value))
    return seconds


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _too_long(value: object) -> str:
    return (
        f"a duration can be at most {int(MAX_DURATION)}s (about 292 years, Go's "
        f"time.Duration), got {_shown(value)}"
    )


def _parse_text(value: str) -> float:
    text = value.strip()
    if not text:
        raise ValueError(f"{_EXAMPLE}, got ''")
    if text.startswith("-"):
        raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
    if _NUMBER.fullmatch(text):
        return float(text)  # may be inf ("1e400"): refused by the caller
    if text.lower() in ("inf", "infinity", "nan"):
        raise ValueError(f"expected a finite duration, got {_shown(value)}")
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"{_EXAMPLE}, got {_shown(value)}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def _decimal(whole: int, frac: int, digits: int) -> str:
    """``whole.frac`` with ``frac`` zero-padded to ``digits`` and trailing zeros dropped."""
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Format seconds as Go's ``time.ParseDuration`` reads them, to the nanosecond.

    ``90`` -> ``"1m30s"``, ``0.25`` -> ``"250ms"``, ``1e-9`` -> ``"1ns"``, ``1.5e-6`` ->
    ``"1.5us"``, ``0`` or less -> ``"0s"``. Values are rounded to whole nanoseconds.

    Raises:
        ValueError: ``seconds`` is not finite or exceeds :data:`MAX_DURATION`.
    """
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(_too_long(seconds))
    nanos = min(round(seconds * 1e9), _MAX_NANOS) if seconds > 0 else 0
    if nanos == 0:
        return "0s"
    if nanos < 1_000:
        return f"{nanos}ns"
    if nanos < 1_000_000:
        return _decimal(nanos // 1_000, nanos % 1_000, 3) + "us"
    if nanos < 1_000_000_000:
        return _decimal(nanos // 1_000_000, nanos % 1_000_000, 6) + "ms"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = f"{hours}h" if hours else ""
    if minutes:
        out += f"{minutes}m"
    if rest or not out:
        out += _decimal(rest // 1_000_000_000, rest % 1_000_000_000, 9) + "s"
    return out
