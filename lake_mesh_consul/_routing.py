"""Which URLs go through the mesh: the rule shared by the requests and httpx integrations.

URL form::

    http://orders/api/items                 a single-label host without a port
    http://orders.service.consul/api/items  Consul's DNS name of the service
    https://orders/...                      the same over TLS to the picked endpoint

Everything else (``localhost``, IP addresses, dotted names such as ``api.example.com``,
any host with an explicit port, IPv6 literals) is not a mesh URL. With ``services=[...]``
only those single-label names are routed.

Also shared: how the mesh's errors join an HTTP library's own tree (:class:`ErrorTree`,
:func:`in_tree`), so that ``except requests.ConnectionError`` or ``except httpx.ConnectError``
catches them. Pure functions, no I/O, no HTTP library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from lake_mesh_consul.errors import (
    Attempt,
    CircuitOpen,
    DeadlineExceeded,
    DiscoveryTimeout,
    NoEndpointsAvailable,
    RetryExhausted,
)

__all__ = [
    "CONSUL_DNS_SUFFIX",
    "NEVER_ROUTED",
    "ErrorTree",
    "in_tree",
    "service_of",
    "service_of_netloc",
    "split_url",
]

#: The suffix of Consul's DNS names of services.
CONSUL_DNS_SUFFIX = ".service.consul"
#: Host names never routed through the mesh.
NEVER_ROUTED = frozenset({"localhost"})
#: ``scheme://netloc rest``: one C-level match per request instead of a parse in Python.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
#: The schemes the mesh routes.
SCHEMES = frozenset({"http", "https"})


def split_url(url: str) -> tuple[str, str, str] | None:
    """``(scheme, netloc, rest)`` of an http(s) URL (scheme lower-cased), or None."""
    match = _URL.match(url)
    if match is None:
        return None
    scheme, netloc, rest = match.groups()
    if scheme not in SCHEMES:
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            return None
    return scheme, netloc, rest


def service_of_netloc(netloc: str, allowed: frozenset[str] | None) -> str | None:
    """The service a URL's netloc (``[user@]host[:port]``) names, or None.

    ``allowed`` (lower-case names) limits the single-label names routed; Consul DNS names
    (``<service>.service.consul``) are always routed.
    """
    host = netloc.rpartition("@")[2].lower()
    if not host or ":" in host or host.startswith("["):
        return None  # a port, or an IPv6 literal
    if host.endswith(CONSUL_DNS_SUFFIX):
        name = host[: -len(CONSUL_DNS_SUFFIX)]
        return name or None
    if "." in host or host in NEVER_ROUTED:
        return None
    if allowed is not None and host not in allowed:
        return None
    return host


def service_of(url: str, services: Iterable[str] | None = None) -> str | None:
    """The service a URL names for the mesh, or None when the URL is not a mesh URL.

    Example:
        >>> service_of("http://orders/api/items"), service_of("http://orders.service.consul/")
        ('orders', 'orders')
        >>> service_of("http://localhost/"), service_of("http://orders:8080/")
        (None, None)
    """
    parts = split_url(url)
    if parts is None:
        return None
    allowed = frozenset(s.lower() for s in services) if services is not None else None
    return service_of_netloc(parts[1], allowed)


E = TypeVar("E", bound=BaseException)


@dataclass(frozen=True)
class ErrorTree(Generic[E]):
    """One HTTP library's classes for the mesh's errors (each is ours and the library's).

    Attributes:
        no_endpoints, circuit_open, retry_exhausted, retry_timeout, deadline_exceeded,
            discovery_timeout: the classes, called with the arguments of ours.
        timeouts: the attempt errors that make an exhausted retry a timeout.
    """

    no_endpoints: Callable[[str, str], E]
    circuit_open: Callable[[str, float | None], E]
    retry_exhausted: Callable[[Sequence[Attempt], str], E]
    retry_timeout: Callable[[Sequence[Attempt], str], E]
    deadline_exceeded: Callable[[float, Sequence[Attempt]], E]
    discovery_timeout: Callable[[str, float], E]
    timeouts: tuple[type[BaseException], ...]


def in_tree(exc: BaseException, tree: ErrorTree[E]) -> E | None:
    """``exc`` as ``tree``'s class, or None when it is not one of the mesh's errors."""
    if isinstance(exc, NoEndpointsAvailable):
        return tree.no_endpoints(exc.service, exc.reason)
    if isinstance(exc, CircuitOpen):
        return tree.circuit_open(exc.name, exc.retry_after)
    if isinstance(exc, RetryExhausted):
        last = exc.attempts[-1].error if exc.attempts else None
        timed_out = isinstance(last, tree.timeouts)
        build = tree.retry_timeout if timed_out else tree.retry_exhausted
        return build(exc.attempts, exc.reason)
    if isinstance(exc, DeadlineExceeded):
        return tree.deadline_exceeded(exc.deadline, exc.attempts)
    if isinstance(exc, DiscoveryTimeout):
        return tree.discovery_timeout(exc.service, exc.timeout)
    return None
