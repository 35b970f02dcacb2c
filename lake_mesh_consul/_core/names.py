"""Names, ids, hosts and text: the validation rules shared by registration, discovery and config.

Split from :mod:`lake_mesh_consul._core.registration` so that what every path needs (a
service name check, a host check, Consul's meta and text limits) loads without the check
and metadata dataclasses, which only registering a service uses (import cost: building
each dataclass runs generated code at import). :mod:`~lake_mesh_consul._core.registration`
re-exports every name here. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "MAX_GO_INT",
    "MAX_HOST_LENGTH",
    "MAX_NAME_LENGTH",
    "META_MAX_KEY_LENGTH",
    "META_MAX_PAIRS",
    "META_MAX_VALUE_LENGTH",
    "check_host",
    "check_id",
    "check_service_id",
    "check_service_name",
    "check_text",
    "is_host",
    "utf8_length",
]

#: Longest service name, id, tag or check id accepted (Consul has no limit; DNS has 63 per label).
MAX_NAME_LENGTH = 255
#: Consul's service meta limits (agent/structs/structs.go: metaMaxKeyPairs, metaKeyMaxLength,
#: metaValueMaxLength, checked in validateMetaPair with Go's len(), which counts bytes).
META_MAX_PAIRS = 64
#: Longest meta key Consul accepts, in bytes (keys are ASCII: also characters).
META_MAX_KEY_LENGTH = 128
#: Longest meta value Consul accepts, in bytes of UTF-8 (512 ``é`` are 1,024 bytes).
META_MAX_VALUE_LENGTH = 512
#: Largest whole number Consul decodes (Go's int, 64-bit); a larger one is an HTTP 400.
MAX_GO_INT = 2**63 - 1
#: Letters, digits, ``-``, ``_`` and ``.``; starts and ends with a letter or digit.
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?\Z")
#: Service ids and check ids also appear in URL paths: no ``/``, ``?``, ``#``, spaces. Every
#: pattern here ends in ``\Z``: ``$`` would also match before a final newline (``"web\n"``).
_ID_RE = re.compile(r"[^/?#%\s]+\Z")
#: Control characters (C0, DEL, C1) and unpaired surrogates (not encodable as UTF-8).
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: One host name label: letters, digits, ``-`` (RFC 1123) and ``_`` (Docker and Consul node
#: names use it, and resolvers accept it); 1..63 characters, no ``-`` at either end.
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\Z")
#: Longest host name (RFC 1123), without a trailing dot.
MAX_HOST_LENGTH = 253
#: The service name rule, as the end of an error message.
_NAME_RULE = (
    "a Consul service name has letters, digits, '-', '_' and '.', starts and ends with a "
    f"letter or digit, and is at most {MAX_NAME_LENGTH} characters"
)


def _fail(field_name: str, reason: str) -> InvalidSetting:
    return InvalidSetting(field_name, reason)


def _unsafe(text: str) -> str | None:
    """A description of the first control character or unpaired surrogate in ``text``."""
    found = _UNSAFE_RE.search(text)
    if found is None:
        return None
    code = ord(found.group())
    what = "an unpaired surrogate" if 0xD800 <= code <= 0xDFFF else "the control character"
    return f"holds {what} U+{code:04X} at position {found.start()}"


def check_text(value: Any, setting: str, *, allow: str = "") -> str:
    """Return ``value`` when it is text without control characters (``allow`` excepted).

    Consul stores any text, but a control character in a name, id, tag or meta value breaks
    what comes after: an id with one cannot be put in the deregistration URL, a header value
    with a CR LF splits the check's request.

    Raises:
        InvalidSetting: naming ``setting``, when ``value`` is not text or holds one.
    """
    if not isinstance(value, str):
        raise _fail(setting, f"must be text, got {type(value).__name__}")
    problem = _unsafe(value.translate(dict.fromkeys(map(ord, allow))) if allow else value)
    if problem is not None:
        raise _fail(setting, problem)
    return value


def utf8_length(text: str) -> int:
    """The length of ``text`` in bytes of UTF-8: how Consul (Go's ``len``) counts it."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_service_name(name: Any, setting: str = "name") -> str:
    """Return ``name`` when it is a valid Consul service name; the one rule for every caller.

    Registration, discovery and the mesh all use it. Letters, digits, ``-``, ``_`` and
    ``.``; starting and ending with a letter or digit; at most :data:`MAX_NAME_LENGTH`
    characters (so the name is safe in a URL path and in DNS).

    Raises:
        InvalidSetting: naming ``setting`` (the argument at fault) and the rule.

    Example:
        >>> check_service_name("web-v2")
        'web-v2'
    """
    if not isinstance(name, str) or not name:
        raise _fail(setting, f"a service name is required; {_NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise _fail(setting, f"{name!r} is not a valid service name: {_NAME_RULE}")
    return name


def is_host(text: str) -> bool:
    """Whether ``text`` is an IPv4 address, an IPv6 address or a host name (RFC 1123).

    IPv6 may be written in brackets (``[::1]``) and carry a zone (``fe80::1%eth0``). Host
    name labels may also hold ``_`` (Docker's and Consul's node names do); a trailing dot is
    allowed. A dotted all-numeric text must be a valid IPv4 address (``999.1.1.1`` is not).
    """
    if not isinstance(text, str) or not text or not text.isascii():
        return False
    if text.startswith("[") and text.endswith("]"):
        return _is_ipv6(text[1:-1])
    if ":" in text:
        return _is_ipv6(text)
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_HOST_LENGTH:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # looks like an IPv4 address but is not one
    return all(_LABEL_RE.match(label) for label in labels)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_host(value: Any, setting: str) -> str:
    """Return ``value`` when :func:`is_host` accepts it.

    Raises:
        InvalidSetting: naming ``setting``, when ``value`` is neither an IP nor a host name.
    """
    if not isinstance(value, str) or not is_host(value):
        raise _fail(setting, f"expected an IPv4 or IPv6 address or a host name, got {value!r}")
    return value


def check_service_id(value: Any, setting: str = "id") -> str:
    """Return ``value`` when it is a valid service instance id (it goes into URL paths).

    No spaces, ``/``, ``?``, ``#``, ``%`` or control characters; at most
    :data:`MAX_NAME_LENGTH` characters.

    Raises:
        InvalidSetting: naming ``setting``.
    """
    return check_id(value, setting, "service id")


def check_id(value: Any, setting: str, what: str) -> str:
    """Return ``value`` when it is a valid ``what`` (a service or check id: in URL paths).

    No spaces, ``/``, ``?``, ``#``, ``%`` or control characters; at most
    :data:`MAX_NAME_LENGTH` characters.

    Raises:
        InvalidSetting: naming ``setting``.
    """
    if not isinstance(value, str) or not _ID_RE.match(value) or len(value) > MAX_NAME_LENGTH:
        raise _fail(
            setting,
            f"{value!r} is not a {what} (no spaces, '/', '?', '#', '%'; at most "
            f"{MAX_NAME_LENGTH} characters)",
        )
    return check_text(value, setting)
