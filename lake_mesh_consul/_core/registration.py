"""ServiceMetadata and check definitions: what a service tells Consul about itself.

Pure values with validation and no I/O. Every invalid input is rejected when the value is
built, before any network call, with :class:`~lake_mesh_consul.errors.InvalidSetting` naming
the field (``"port"``, ``"checks[1].interval"``...). How these values are spelled in Consul's
JSON lives in the adapter (:mod:`lake_mesh_consul._consul.registry`).

Check kinds and the options each accepts (Consul 1.8 agent API, ``/v1/agent/service/register``):

=============  =======================================================================
kind           what the agent does
=============  =======================================================================
HttpCheck      requests ``url`` every ``interval`` (2xx passing, 429 warning, else critical)
TcpCheck       opens a TCP connection to ``host:port`` every ``interval``
GrpcCheck      calls the gRPC health protocol on ``target`` every ``interval`` (+TLS)
TtlCheck       nothing: the service reports itself within ``ttl`` (HealthCheckManager)
AliasCheck     mirrors the health of another service (and its node)
ScriptCheck    runs ``args`` every ``interval`` (agent needs enable_script_checks)
=============  =======================================================================

Rules enforced here (the reason, where it is not obvious):

* intervals, timeouts and TTLs are positive; ``deregister_critical_service_after`` is at
  least one minute (Consul's reaper ignores anything shorter);
* ``success_before_passing`` / ``failures_before_critical`` are non-negative and only allowed
  on checks the agent runs itself (Consul ignores them for TTL and alias checks; a TTL check
  is damped locally by the HealthCheckManager instead);
* a service name follows one rule (:func:`check_service_name`), which discovery and the
  mesh apply too; an address is an IPv4 or IPv6 address or a host name (:func:`is_host`),
  which discovery applies to the catalog's addresses;
* check ids are unique within a service; a check without an id gets Consul's own default,
  ``service:<service id>:<n>`` (1-based), so that its id is known before registration.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from lake_mesh_consul._core.durations import NANOSECOND, parse_duration
from lake_mesh_consul._core.endpoint import Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.names import (
    MAX_GO_INT,
    MAX_NAME_LENGTH,
    META_MAX_KEY_LENGTH,
    META_MAX_PAIRS,
    META_MAX_VALUE_LENGTH,
    check_host,
    check_service_id,
    check_service_name,
    check_text,
    is_host,
    utf8_length,
)
from lake_mesh_consul._core.names import check_id as _check_id
from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "MAX_GO_INT",
    "MAX_WEIGHT",
    "MIN_DEREGISTER_AFTER",
    "AliasCheck",
    "Check",
    "GrpcCheck",
    "HttpCheck",
    "ScriptCheck",
    "ServiceMetadata",
    "TcpCheck",
    "TtlCheck",
    "check_host",
    "check_service_id",
    "check_service_name",
    "check_text",
    "default_service_id",
    "is_host",
    "utf8_length",
]

#: Consul's minimum for deregister_critical_service_after, in seconds.
MIN_DEREGISTER_AFTER = 60.0
#: Largest service weight: Consul decodes ``Weights`` into Go ints.
MAX_WEIGHT = MAX_GO_INT

_META_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+\Z")
#: What no script argument may hold: NUL (exec() refuses it), unpaired surrogates (no UTF-8).
_ARG_UNSAFE_RE = re.compile("[\x00\ud800-\udfff]")
#: An HTTP header name (RFC 9110 ``token``).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _fail(field_name: str, reason: str) -> InvalidSetting:
    return InvalidSetting(field_name, reason)


def _duration(field_name: str, value: Any, *, optional: bool) -> float | None:
    """Normalise seconds or a Consul duration; must be positive when given."""
    if value is None:
        if optional:
            return None
        raise _fail(field_name, "is required (seconds or a duration such as '10s')")
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise _fail(field_name, str(exc)) from None
    if seconds <= 0 or not math.isfinite(seconds):
        raise _fail(field_name, f"must be positive, got {value!r}")
    if seconds < NANOSECOND / 2:  # Consul counts whole nanoseconds: this would be 0
        raise _fail(field_name, f"must be at least 1ns (Consul's resolution), got {value!r}")
    return seconds


def _non_negative_int(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GO_INT:
        raise _fail(field_name, f"must be a whole number in 0..2**63-1, got {value!r:.40}")
    return value


def _host_port(field_name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _fail(field_name, "expected host:port, e.g. 127.0.0.1:8080")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(field_name, f"expected host:port with a port in 1..65535, got {value!r}")
    if not is_host(host) or (":" in host and not host.startswith("[")):
        raise _fail(
            field_name,
            f"expected host:port with an IP or host name ([...] around IPv6), got {value!r}",
        )


@dataclass(frozen=True, kw_only=True)
class Check:
    """What every check kind shares: identity, schedule and Consul's check options.

    Do not build a ``Check`` itself; use a kind (:class:`HttpCheck`, :class:`TcpCheck`,
    :class:`GrpcCheck`, :class:`TtlCheck`, :class:`AliasCheck`, :class:`ScriptCheck`).
    Durations are seconds; a Consul duration string (``"10s"``) is accepted and normalised
    to seconds. Immutable and thread-safe.

    Attributes:
        id: the check id (``None``: ``service:<service id>:<n>`` once in a ServiceMetadata).
        name: a human name (``None``: derived from the kind and target).
        interval: how often the agent runs the check (checks the agent runs).
        timeout: how long one run may take (HTTP, TCP, gRPC, script).
        deregister_critical_service_after: Consul removes the service once this check has
            been critical this long (at least one minute).
        success_before_passing: consecutive successes the agent needs before passing.
        failures_before_critical: consecutive failures the agent needs before critical.
        status: the initial status (Consul's default is critical).
        notes: free text shown with the check.

    Raises:
        InvalidSetting: naming the field, for any value Consul would reject or ignore.
    """

    #: Consul's name for the kind (``http``, ``tcp``, ``grpc``, ``ttl``, ``alias``, ``script``).
    kind: ClassVar[str] = ""
    #: Whether the agent runs the check itself on an interval.
    agent_run: ClassVar[bool] = True

    id: str | None = None
    name: str | None = None
    interval: float | None = None
    timeout: float | None = None
    deregister_critical_service_after: float | None = None
    success_before_passing: int = 0
    failures_before_critical: int = 0
    status: HealthStatus | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if type(self) is Check:
            raise TypeError("Check is abstract: use HttpCheck, TcpCheck, TtlCheck, ...")
        if self.id is not None:
            _check_id(self.id, "id", "check id")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise _fail("name", "is empty")
        if self.name is not None:
            check_text(self.name, "name")
        if self.agent_run:
            set_(self, "interval", _duration("interval", self.interval, optional=False))
        elif self.interval is not None:
            raise _fail("interval", f"{self.kind} checks have no interval")
        set_(self, "timeout", _duration("timeout", self.timeout, optional=True))
        if self.timeout is not None and not self.agent_run:
            raise _fail("timeout", f"{self.kind} checks have no timeout")
        after = _duration(
            "deregister_critical_service_after",
            self.deregister_critical_service_after,
            optional=True,
        )
        if after is not None and after < MIN_DEREGISTER_AFTER:
            raise _fail(
                "deregister_critical_service_after",
                f"must be at least 1m (Consul's minimum), got {after:g}s",
            )
        set_(self, "deregister_critical_service_after", after)
        for name in ("success_before_passing", "failures_before_critical"):
            value = _non_negative_int(name, getattr(self, name))
            if value and not self.agent_run:
                raise _fail(
                    name,
                    f"has no effect on {self.kind} checks (the agent does not run them); "
                    "use HealthCheckManager's success/failure thresholds",
                )
        status: Any = self.status
        if status is not None:
            if not isinstance(status, HealthStatus):
                try:
                    set_(self, "status", HealthStatus(str(status).strip().lower()))
                except ValueError:
                    raise _fail("status", f"unknown status {status!r}") from None
            if self.status is HealthStatus.MAINTENANCE:
                raise _fail("status", "initial status must be passing, warning or critical")
        check_text(self.notes, "notes", allow="\t\n\r")  # free text: lines are fine
        self._validate_kind()

    def _validate_kind(self) -> None:
        """Validate the kind's own fields (overridden by each kind)."""

    def describe(self) -> str:
        """A short human description of the target, e.g. ``"http GET http://.../health"``."""
        return self.kind

    @property
    def display_name(self) -> str:
        """``name`` when given, else :meth:`describe`."""
        return self.name or self.describe()

    def with_id(self, check_id: str) -> Check:
        """A copy with ``id`` set."""
        return dataclasses.replace(self, id=check_id)


@dataclass(frozen=True, kw_only=True)
class HttpCheck(Check):
    """The agent requests ``url`` every ``interval``: 2xx passing, 429 warning, else critical.

    Attributes:
        url: the URL to request.
        method: the HTTP method (default GET).
        headers: header name -> values.
        body: the request body.
        tls_skip_verify: do not verify the certificate of an ``https`` URL.
        tls_server_name: SNI / verification name (Consul >= 1.10; 1.8 answers 400).

    Example:
        >>> HttpCheck(url="http://127.0.0.1:8080/health", interval="10s", timeout="2s")
        HttpCheck(id=None, ..., url='http://127.0.0.1:8080/health', method='GET', ...)
    """

    kind: ClassVar[str] = "http"

    url: str
    method: str = "GET"
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY)
    body: str | None = None
    tls_skip_verify: bool = False
    tls_server_name: str | None = None

    def _validate_kind(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"^https?://[^\s/]+", self.url):
            raise _fail("url", f"expected an http:// or https:// URL, got {self.url!r}")
        check_text(self.url, "url")  # urlsplit() would silently drop a tab or newline
        try:
            parts = urlsplit(self.url)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise _fail("url", f"{self.url!r} is not a valid URL: {exc}") from None
        try:
            port = parts.port  # ValueError for a port outside 0..65535
        except ValueError:
            port = 0
        if port == 0:
            raise _fail("url", f"expected a port in 1..65535 in {self.url!r}")
        if not parts.hostname or not is_host(parts.hostname):
            raise _fail("url", f"the host of {self.url!r} is neither an IP nor a host name")
        method = self.method.upper() if isinstance(self.method, str) else ""
        if method not in _HTTP_METHODS:
            raise _fail("method", f"expected one of {sorted(_HTTP_METHODS)}, got {self.method!r}")
        object.__setattr__(self, "method", method)
        headers: dict[str, tuple[str, ...]] = {}
        raw: dict[Any, Any] = dict(self.headers)
        for key, value in raw.items():
            if not isinstance(key, str) or not _TOKEN_RE.match(key):
                raise _fail("headers", f"{key!r} is not a header name")
            values = (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(v, str) for v in values):
                raise _fail(f"headers[{key!r}]", "values must be text")
            for v in values:  # a CR LF would start a header of its own in the agent's request
                check_text(v, f"headers[{key!r}]", allow="\t")
            headers[key] = values
        object.__setattr__(self, "headers", MappingProxyType(headers))
        if self.tls_server_name is not None and not self.tls_server_name.strip():
            raise _fail("tls_server_name", "is empty")
        if self.tls_server_name is not None:
            check_text(self.tls_server_name, "tls_server_name")

    def describe(self) -> str:
        """``http METHOD URL``."""
        return f"http {self.method} {self.url}"


@dataclass(frozen=True, kw_only=True)
class TcpCheck(Check):
    """The agent opens a TCP connection to ``address`` (``host:port``) every ``interval``.

    Example:
        >>> TcpCheck(address="127.0.0.1:5432", interval=10).describe()
        'tcp 127.0.0.1:5432'
    """

    kind: ClassVar[str] = "tcp"

    address: str

    def _validate_kind(self) -> None:
        _host_port("address", self.address)

    def describe(self) -> str:
        """``tcp host:port``."""
        return f"tcp {self.address}"


@dataclass(frozen=True, kw_only=True)
class GrpcCheck(Check):
    """The agent calls the standard gRPC health protocol on ``target`` every ``interval``.

    Attributes:
        target: ``host:port`` or ``host:port/service`` (the service to ask about).
        use_tls: connect with TLS.
        tls_skip_verify: do not verify the server's certificate.
    """

    kind: ClassVar[str] = "grpc"

    target: str
    use_tls: bool = False
    tls_skip_verify: bool = False

    def _validate_kind(self) -> None:
        address = self.target.split("/", 1)[0] if isinstance(self.target, str) else self.target
        _host_port("target", address)

    def describe(self) -> str:
        """``grpc target`` (``grpcs`` with TLS)."""
        return f"{'grpcs' if self.use_tls else 'grpc'} {self.target}"


@dataclass(frozen=True, kw_only=True)
class TtlCheck(Check):
    """A check the service reports itself: critical unless updated within ``ttl``.

    :class:`~lake_mesh_consul.HealthCheckManager` runs local check functions every
    ``ttl / 3`` and pushes the result. Example: ``TtlCheck(id="app", ttl="15s")``.
    """

    kind: ClassVar[str] = "ttl"
    agent_run: ClassVar[bool] = False

    ttl: float

    def _validate_kind(self) -> None:
        ttl = _duration("ttl", self.ttl, optional=False)
        assert ttl is not None
        object.__setattr__(self, "ttl", ttl)

    def describe(self) -> str:
        """``ttl 15s``."""
        return f"ttl {self.ttl:g}s"


@dataclass(frozen=True, kw_only=True)
class AliasCheck(Check):
    """Mirror the health of another service instance (and, optionally, of a node).

    Attributes:
        service_id: the aliased service instance id (on this agent unless ``node`` is set).
        node: the node the aliased service runs on (``None``: this agent's node).
    """

    kind: ClassVar[str] = "alias"
    agent_run: ClassVar[bool] = False

    service_id: str
    node: str | None = None

    def _validate_kind(self) -> None:
        _check_id(self.service_id, "service_id", "service id")
        if self.node is not None and (not isinstance(self.node, str) or not self.node.strip()):
            raise _fail("node", "is empty")
        if self.node is not None:
            check_text(self.node, "node")

    def describe(self) -> str:
        """``alias <service id>``."""
        return f"alias {self.service_id}"


@dataclass(frozen=True, kw_only=True)
class ScriptCheck(Check):
    """The agent runs ``args`` every ``interval``: exit 0 passing, 1 warning, else critical.

    The agent must allow it (``enable_script_checks``; ``enable_local_script_checks`` does
    not cover registrations over the HTTP API), otherwise registration fails with HTTP 500.
    """

    kind: ClassVar[str] = "script"

    args: tuple[str, ...]

    def _validate_kind(self) -> None:
        given: Any = self.args
        if isinstance(given, str) or not given:
            raise _fail("args", "expected a non-empty list of arguments, e.g. ['/bin/true']")
        args = tuple(given)
        if not all(isinstance(a, str) and a for a in args):
            raise _fail("args", "every argument must be non-empty text")
        for i, arg in enumerate(args):  # exec() refuses a NUL; the rest is the script's own
            if _ARG_UNSAFE_RE.search(arg):
                raise _fail(f"args[{i}]", "holds a NUL character or an unpaired surrogate")
        object.__setattr__(self, "args", args)

    def describe(self) -> str:
        """``script <command>``."""
        return f"script {' '.join(self.args)}"


def default_service_id(name: str, address: str | None, port: int) -> str:
    """The id of an instance that does not choose one: ``<name>-<host>-<port>``.

    ``host`` is ``address`` when given, else this machine's host name, with every
    character that may not appear in an id replaced by ``-``. The same instance gets the same
    id on every start, so re-registering replaces the old entry instead of adding a twin.
    """
    host = address or socket.gethostname() or "localhost"
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", host).strip("-") or "localhost"
    return f"{name}-{host}-{port}"


@dataclass(frozen=True)
class ServiceMetadata:
    """One service instance as registered with the local Consul agent. Immutable.

    Validation happens here, before anything is sent: each problem raises
    :class:`~lake_mesh_consul.errors.InvalidSetting` naming the field. Checks without an id
    get Consul's default id ``service:<id>:<n>``; ``id`` defaults to
    :func:`default_service_id` (stable across restarts of the same instance).

    Attributes:
        name: the service name (letters, digits, ``-``, ``_``, ``.``).
        port: the TCP port, 1..65535.
        id: the instance id, unique on this agent.
        address: the address to advertise: an IPv4 or IPv6 address or a host name
            (``None``: the agent's node address).
        tags: tags, in order.
        meta: string key/value metadata (Consul's limits: 64 pairs, keys up to 128
            characters of letters, digits, ``-`` and ``_``, values up to 512; the
            ``consul-`` prefix is reserved).
        weights: Consul's ``Weights`` (passing/warning shares, default 1/1).
        enable_tag_override: let others (e.g. consul-template) change tags in the catalog.
        checks: the service's checks (any kinds, several allowed).

    Example:
        >>> meta = ServiceMetadata(
        ...     "web", 8080, address="10.0.0.5", tags=("v1",),
        ...     checks=(HttpCheck(url="http://10.0.0.5:8080/health", interval="10s"),),
        ... )
        >>> meta.id, meta.checks[0].id
        ('web-10.0.0.5-8080', 'service:web-10.0.0.5-8080:1')
    """

    name: str
    port: int
    id: str = ""
    address: str | None = None
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    weights: Weights = field(default_factory=Weights)
    enable_tag_override: bool = False
    checks: tuple[Check, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_service_name(self.name, "name")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise _fail("port", f"must be a whole number in 1..65535, got {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise _fail("port", f"{self.port} is outside 1..65535")
        if self.address is not None:
            if not isinstance(self.address, str) or not self.address.strip():
                raise _fail("address", "is empty (leave it out to use the agent's address)")
            check_host(self.address, "address")
        if not self.id:
            set_(self, "id", default_service_id(self.name, self.address, self.port))
        else:
            _check_id(self.id, "id", "service id")
        set_(self, "tags", self._valid_tags(self.tags))
        set_(self, "meta", self._valid_meta(self.meta))
        if not isinstance(self.weights, Weights):
            raise _fail("weights", "expected lake_mesh_consul.Weights(passing=..., warning=...)")
        for part in ("passing", "warning"):
            weight = getattr(self.weights, part)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight > MAX_WEIGHT:
                raise _fail(
                    f"weights.{part}", f"must be a whole number up to 2**63-1, got {weight!r}"
                )
        if not isinstance(self.enable_tag_override, bool):
            raise _fail("enable_tag_override", "must be true or false")
        set_(self, "checks", self._valid_checks(self.checks))

    @staticmethod
    def _valid_tags(tags: Iterable[str]) -> tuple[str, ...]:
        if isinstance(tags, str):
            raise _fail("tags", "expected a list of tags, got a single string")
        out = tuple(tags)
        for i, tag in enumerate(out):
            if not isinstance(tag, str) or not tag.strip():
                raise _fail(f"tags[{i}]", "is empty")
            if len(tag) > MAX_NAME_LENGTH:
                raise _fail(f"tags[{i}]", f"is longer than {MAX_NAME_LENGTH} characters")
            check_text(tag, f"tags[{i}]")
        return out

    @staticmethod
    def _valid_meta(meta: Mapping[str, str]) -> Mapping[str, str]:
        if not isinstance(meta, Mapping):
            raise _fail("meta", "expected a mapping of text to text")
        if len(meta) > META_MAX_PAIRS:
            raise _fail("meta", f"has {len(meta)} keys; Consul allows {META_MAX_PAIRS}")
        out: dict[str, str] = {}
        for key, value in meta.items():
            if not isinstance(key, str) or not _META_KEY_RE.match(key) or not key.isascii():
                raise _fail("meta", f"key {key!r} may hold only letters, digits, '-' and '_'")
            if len(key) > META_MAX_KEY_LENGTH:
                raise _fail(f"meta[{key!r}]", f"key longer than {META_MAX_KEY_LENGTH} characters")
            if key.startswith("consul-"):
                raise _fail(f"meta[{key!r}]", "the 'consul-' prefix is reserved by Consul")
            if not isinstance(value, str):
                raise _fail(f"meta[{key!r}]", f"value must be text, got {type(value).__name__}")
            check_text(value, f"meta[{key!r}]")
            size = utf8_length(value)
            if size > META_MAX_VALUE_LENGTH:
                raise _fail(
                    f"meta[{key!r}]",
                    f"value is {size} bytes of UTF-8; Consul allows {META_MAX_VALUE_LENGTH} "
                    "(it counts bytes, not characters)",
                )
            out[key] = value
        return MappingProxyType(out)

    def _valid_checks(self, checks: Sequence[Check]) -> tuple[Check, ...]:
        if isinstance(checks, Check):
            checks = (checks,)
        out: list[Check] = []
        seen: dict[str, int] = {}
        for i, given in enumerate(checks):
            if not isinstance(given, Check):
                raise _fail(f"checks[{i}]", f"expected a check definition, got {given!r}")
            check = given if given.id is not None else given.with_id(f"service:{self.id}:{i + 1}")
            assert check.id is not None
            if check.id in seen:
                raise _fail(
                    f"checks[{i}].id",
                    f"duplicate check id {check.id!r} (also checks[{seen[check.id]}])",
                )
            seen[check.id] = i
            if isinstance(check, AliasCheck) and check.service_id == self.id and not check.node:
                raise _fail(f"checks[{i}].service_id", "an alias check cannot alias itself")
            out.append(check)
        return tuple(out)

    # -- derived -------------------------------------------------------------------------

    @property
    def check_ids(self) -> tuple[str, ...]:
        """The id of every check, in order."""
        return tuple(c.id or "" for c in self.checks)

    @property
    def ttl_checks(self) -> tuple[TtlCheck, ...]:
        """The checks the service reports itself."""
        return tuple(c for c in self.checks if isinstance(c, TtlCheck))

    def check(self, check_id: str) -> Check:
        """The check with ``check_id``.

        Raises:
            InvalidSetting: naming ``check_id`` when the service has no such check.
        """
        for c in self.checks:
            if c.id == check_id:
                return c
        raise _fail("check_id", f"service {self.id!r} has no check {check_id!r}")

    def replace(self, **changes: Any) -> ServiceMetadata:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)
