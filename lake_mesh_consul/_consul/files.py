"""Files the library writes and later reads back: atomic writes, bounded wary reads.

Used by discovery's snapshot store and the configuration's last-known-good file. Both
files are written by this library, but read back after crashes, upgrades, full disks and
hand edits, so reading trusts nothing: size is bounded, and every way ``json`` can fail on
hostile text (invalid UTF-8, invalid JSON, nesting deeper than the interpreter's stack)
comes out as one :class:`ValueError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_json_file", "write_atomically"]


def write_atomically(target: Path, text: str, *, prefix: str = ".tmp-") -> None:
    """Write ``text`` to ``target`` through a temporary file in the same directory.

    Readers see the old file or the new one, never a half-written one. The temporary file
    is removed when anything fails (the disk is full, the directory vanished, the write is
    interrupted), so failed writes leave nothing behind.

    Raises:
        OSError: the file could not be written.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json_file(path: Path, max_bytes: int) -> Any:
    """The decoded JSON document in ``path``.

    Raises:
        FileNotFoundError: there is no such file.
        OSError: the file could not be read.
        ValueError: the file is larger than ``max_bytes``, is not UTF-8 JSON, or nests too
            deeply to decode.
    """
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        return json.loads(data)
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise ValueError("nested too deeply") from None
