"""Stable hashing for consistent-hash balancing: the same key hashes alike in every process.

Python's built-in :func:`hash` is salted per process (``PYTHONHASHSEED``), so two clients,
or one client before and after a restart, would send the same key to different instances.
Everything here uses BLAKE2b from :mod:`hashlib` (in C, about 0.3 us for a short key),
and SHAKE-128 for a stream of ring points, both stable across processes, machines and
Python versions.
"""

from __future__ import annotations

import hashlib
import sys
from array import array

__all__ = ["HashKey", "endpoint_token", "hash64", "hash128", "key_bytes", "point_stream"]

#: What a hashing strategy accepts as a key: bytes are used as they are, str as UTF-8.
HashKey = bytes | str

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes
_BIG_ENDIAN = sys.byteorder == "big"


def key_bytes(key: HashKey) -> bytes:
    """The bytes that are hashed for ``key`` (``str`` is encoded as UTF-8).

    Raises:
        TypeError: for anything but ``bytes`` or ``str``.
    """
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"hash keys are bytes or str, not {type(key).__name__}")


def hash64(key: HashKey) -> int:
    """A 64-bit unsigned hash of ``key`` that is identical in every process.

    Example:
        >>> hash64("user-42") == hash64(b"user-42")
        True

    Thread-safe (pure function).
    """
    data = key if isinstance(key, bytes) else key_bytes(key)
    return _from_bytes(_blake2b(data, digest_size=8).digest(), "little")


def hash128(key: HashKey) -> tuple[int, int]:
    """Two independent 64-bit hashes of ``key`` (Maglev's offset and skip).

    Thread-safe (pure function).
    """
    digest = _blake2b(key_bytes(key), digest_size=16).digest()
    return _from_bytes(digest[:8], "little"), _from_bytes(digest[8:], "little")


def endpoint_token(datacenter: str, node: str, endpoint_id: str) -> bytes:
    """The bytes that place an endpoint on a ring or in a Maglev table.

    Built from the endpoint's identity ``(datacenter, node, id)`` (not its address), so an
    instance that moves to a new address keeps its keys, and two instances registered with
    the same ID on two nodes get their own places. NUL separates the parts unambiguously.
    """
    return f"{datacenter}\x00{node}\x00{endpoint_id}".encode()


def point_stream(token: bytes, count: int) -> array[int]:
    """The first ``count`` 64-bit points of ``token``'s stream (ring hash's points).

    SHAKE-128 of the token (an extendable-output hash), cut into little-endian unsigned
    64-bit integers: the same in every process, and the first ``k`` points are the same
    whatever ``count >= k`` is asked for. One C call for all of them.
    """
    points = array("Q", hashlib.shake_128(token).digest(8 * count))
    if _BIG_ENDIAN:
        points.byteswap()
    return points
