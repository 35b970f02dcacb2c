"""Blocking-query rules that need no I/O.

Consul's blocking queries (https://developer.hashicorp.com/consul/api-docs/features/blocking)
add jitter of up to ``wait/16`` to the wait, so an HTTP read timeout of exactly ``wait``
turns a healthy long poll into a failure. :func:`read_timeout_for_wait` gives the timeout to
use for a given wait.
"""

from __future__ import annotations

__all__ = ["MAX_WAIT", "read_timeout_for_wait"]

#: Consul caps a blocking query's wait at ten minutes.
MAX_WAIT = 600.0

#: Added on top of ``wait + wait/16`` for network and scheduling delay.
DEFAULT_WAIT_MARGIN = 5.0


def read_timeout_for_wait(wait: float, margin: float = DEFAULT_WAIT_MARGIN) -> float:
    """The HTTP read timeout for a blocking query that waits ``wait`` seconds.

    It exceeds ``wait + wait/16`` (Consul's jitter) by ``margin``.
    """
    wait = min(max(wait, 0.0), MAX_WAIT)
    return wait + wait / 16.0 + margin
