"""The ``Retry-After`` header of a backend's answer, read the way RFC 9110 (10.2.3) writes it.

A value is either delta-seconds (ASCII digits only: ``120``) or an HTTP-date
(``Wed, 21 Oct 2015 07:28:00 GMT``; the obsolete RFC 850 and asctime forms too). Anything
else, whatever a backend or a proxy puts there (``²``, ``-5``, ``1.5``, ``soon``, a date in
the year 99999, a value repeated across two headers), is ignored: :func:`parse_retry_after`
returns ``None`` and never raises, so a malformed header can neither lose the response nor
escape the session as a foreign error.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import timezone

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after"]

#: Longest wait a header can ask for, in seconds (about 31 years): a longer one is clamped,
#: so that a thousand-digit value is a very long wait, not an OverflowError.
MAX_RETRY_AFTER = 1e9

#: delta-seconds: ASCII digits only (``str.isdigit`` also accepts ``²`` and ``٣``).
_DELTA = re.compile(r"[0-9]+", re.ASCII)
#: Digits beyond which a delta is clamped without converting it (int() refuses > 4300).
_MAX_DIGITS = len(str(int(MAX_RETRY_AFTER)))


def parse_retry_after(value: str | bytes | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` when it says nothing.

    Args:
        value: the header's text (``None``: no header). Surrounding whitespace is ignored.
        now: the wall-clock time (``clock.time()``) an HTTP-date is measured against.

    Returns:
        Seconds in ``0..MAX_RETRY_AFTER`` (a date in the past is 0), or ``None`` for a
        missing or malformed value. Never raises.

    Example:
        >>> parse_retry_after("120", now=0.0)
        120.0
        >>> parse_retry_after("²", now=0.0) is None
        True
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # how HTTP/1.1 header bytes map to text
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DELTA.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            return MAX_RETRY_AFTER
        return min(float(int(digits)), MAX_RETRY_AFTER)
    return _seconds_until_date(text, now)


def _seconds_until_date(text: str, now: float) -> float | None:
    if not text or len(text) > 64 or not text.isascii():  # the longest form is 38 characters
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": a time in UTC from an unknown zone (RFC 5322)
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if math.isnan(seconds):  # from a NaN `now`
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
