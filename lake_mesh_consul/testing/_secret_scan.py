"""Find a secret anywhere an exception can show it: the test side of "no token in any error".

:func:`secret_findings` walks an exception's whole chain (``__cause__``, ``__context__``,
exceptions held in ``args`` or in urllib3's ``reason``) and looks for the secret in each
error's ``str``, ``repr``, arguments and plain attributes, and in the chain's formatted
traceback, with and without the frames' local variables (what ``log.exception`` prints, and
what error trackers that capture locals record).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator

__all__ = ["exception_chain", "secret_findings"]


def exception_chain(exc: BaseException, limit: int = 64) -> Iterator[BaseException]:
    """``exc`` and every error reachable from it, each once."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < limit:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        stack.extend(x for x in linked if isinstance(x, BaseException))


def _texts(item: BaseException) -> Iterator[tuple[str, str]]:
    yield "str", str(item)
    yield "repr", repr(item)
    for number, arg in enumerate(item.args):
        yield f"args[{number}]", repr(arg)
    for name, value in vars(item).items():
        yield f".{name}", repr(value)
        if isinstance(value, bytes | bytearray):
            yield f".{name} (bytes)", bytes(value).decode("latin-1")
    for name in ("object", "doc"):  # UnicodeError.object and JSONDecodeError.doc
        value = getattr(item, name, None)
        if isinstance(value, bytes):
            yield f".{name}", value.decode("latin-1")
        elif isinstance(value, str):
            yield f".{name}", value


def secret_findings(exc: BaseException, secret: str, *, frame_locals: bool = True) -> list[str]:
    """Where ``secret`` shows in ``exc``'s chain: ``["ReadTimeout .request", ...]``.

    An empty list means nowhere: not in any message, repr, argument, plain attribute, nor
    in the formatted traceback of the chain, with the frames' local variables included
    unless ``frame_locals`` is false. (Errors raised while the token is being *parsed* pass
    through frames that hold it as a value, the caller's own first: there only the
    traceback as ``log.exception`` prints it can be clean.)
    """
    found: list[str] = []
    for item in exception_chain(exc):
        for where, text in _texts(item):
            if secret in text:
                found.append(f"{type(item).__name__} {where}")
    for capture_locals in (False, True) if frame_locals else (False,):
        formatted = "".join(
            traceback.TracebackException.from_exception(exc, capture_locals=capture_locals).format()
        )
        if secret in formatted:
            found.append(f"formatted traceback (capture_locals={capture_locals})")
    return found
