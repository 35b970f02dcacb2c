"""Every error lake_mesh_consul raises, grouped by what the caller can do about it.

The tree::

    MeshError                          base of everything raised here
    ├── ConfigurationError (ValueError)    fix the input, then try again
    │   ├── InvalidSetting                 a setting (argument, env var, file) is wrong
    │   └── ConfigValidationError          a config document (KV key, file) is wrong
    │       └── AmbiguousInstance          an instance setting's ID is on several nodes
    ├── ConsulError                        talking to Consul failed
    │   ├── ConsulUnavailable              agent unreachable / timed out: retry later
    │   │   ├── ConsulTLSError             TLS handshake failed: fix CA / certificates
    │   │   └── ConsulConnectionLimit      agent refused a new connection: over its
    │   │                                  per-client limit (http_max_conns_per_client)
    │   ├── ConsulProtocolError            the answer is not Consul's: check the address
    │   ├── ConsulAnswerTooLarge           the answer passed max_answer_bytes: raise the cap
    │   ├── PermissionDenied               ACL said no: grant the token a policy
    │   └── ConsulStatusError              any other non-2xx answer (code, body)
    │       ├── ConsulNotFound             404: the object is not there
    │       └── CasConflict                check-and-set lost: re-read, then write
    ├── DiscoveryError                     no usable view of a service
    │   └── DiscoveryTimeout               the first answer did not come in time
    ├── RequestFailed                      a request through the mesh failed
    │   ├── NoEndpointsAvailable           nothing eligible to pick (says why)
    │   ├── CircuitOpen                    the breaker refused the call (fail fast)
    │   ├── DeadlineExceeded               the overall deadline ran out
    │   └── RetryExhausted                 every attempt failed; ``.attempts`` has each
    └── ProvisioningError              no local Consul agent could be set up (says why)

Foreign errors (requests, python-consul2, pybreaker, tenacity) never escape: they are
mapped at the boundary with ``raise ... from exc`` so the cause stays on ``__cause__``.

No message, ``repr`` or attribute of these errors ever contains an ACL token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AmbiguousInstance",
    "Attempt",
    "CasConflict",
    "CircuitOpen",
    "ConfigValidationError",
    "ConfigurationError",
    "ConsulAnswerTooLarge",
    "ConsulConnectionLimit",
    "ConsulError",
    "ConsulNotFound",
    "ConsulProtocolError",
    "ConsulStatusError",
    "ConsulTLSError",
    "ConsulUnavailable",
    "DeadlineExceeded",
    "DiscoveryError",
    "DiscoveryTimeout",
    "InvalidSetting",
    "MeshError",
    "NoEndpointsAvailable",
    "PermissionDenied",
    "ProvisioningError",
    "RequestFailed",
    "RetryExhausted",
]

#: Longest response body quoted in a ConsulStatusError message.
MAX_BODY_IN_MESSAGE = 500


class MeshError(Exception):
    """Base class of every error raised by lake_mesh_consul."""


# --- configuration -------------------------------------------------------------------------


class ConfigurationError(MeshError, ValueError):
    """Input is wrong: fix it and try again. Nothing was changed."""


class InvalidSetting(ConfigurationError):
    """A connection or library setting is invalid.

    Attributes:
        setting: the argument or environment variable name, e.g. ``CONSUL_HTTP_ADDR``.
        reason: what is wrong and what to do.
    """

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}")


class ConfigValidationError(ConfigurationError):
    """A configuration document was rejected; the last good configuration stays in force.

    Attributes:
        key: the KV key or file the document came from (``None`` for code).
        field: the dotted field path inside the document (``None`` for the whole document).
        reason: what is wrong.
    """

    def __init__(self, reason: str, *, key: str | None = None, field: str | None = None) -> None:
        self.key = key
        self.field = field
        self.reason = reason
        where = " ".join(
            part
            for part in (f"key {key!r}" if key else "", f"field {field!r}" if field else "")
            if part
        )
        super().__init__(f"{where}: {reason}" if where else reason)


class AmbiguousInstance(ConfigValidationError):
    """An endpoint-level setting names a service ID that is registered on several nodes.

    Consul keeps service IDs unique per agent only; ``<prefix>/services/<service>/endpoints/
    <id>`` would then reach every one of those instances. Name one as ``<id>@<node>``.

    Attributes:
        service: the service.
        instance_id: the service ID.
        nodes: the nodes it is registered on (sorted).
        suggestions: the keys that name one instance each.
    """

    def __init__(self, key: str, service: str, instance_id: str, nodes: Sequence[str]) -> None:
        self.service = service
        self.instance_id = instance_id
        self.nodes = tuple(nodes)
        base = key[: -len(instance_id)] if key.endswith(instance_id) else key + "/"
        self.suggestions = tuple(f"{base}{instance_id}@{node}" for node in self.nodes)
        super().__init__(
            f"service ID {instance_id!r} of {service!r} is registered on {len(self.nodes)} "
            f"nodes ({', '.join(self.nodes)}); write one key per instance instead: "
            + ", ".join(self.suggestions),
            key=key,
        )


# --- Consul ----------------------------------------------------------------------------------


class ConsulError(MeshError):
    """Talking to Consul failed."""


class ConsulUnavailable(ConsulError):
    """The Consul agent could not be reached or did not answer in time.

    Attributes:
        address: the agent address that was tried (never includes credentials).
    """

    #: What to check, appended to the message.
    hint = "is the agent running? check CONSUL_HTTP_ADDR or `lake-mesh doctor`"

    def __init__(self, address: str, detail: str = "") -> None:
        self.address = address
        self.detail = detail
        msg = f"Consul agent at {address} is unavailable"
        if detail:
            msg += f": {detail}"
        msg += f" ({self.hint})"
        super().__init__(msg)


class ConsulTLSError(ConsulUnavailable):
    """The TLS handshake with the agent failed (wrong CA, missing client certificate...)."""

    hint = "fix the TLS settings above, then check with `lake-mesh doctor`"

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(address, detail)


class ConsulConnectionLimit(ConsulUnavailable):
    """The agent closed a new connection without answering: its per-client limit is reached.

    Consul counts HTTP connections per client IP address (``limits.http_max_conns_per_client``,
    default 200), so every process on a host shares one budget; at the limit Consul 1.8 accepts
    the connection and closes it at once, which clients see as a reset.

    Attributes:
        open_connections: connections this client held to the agent at the time.
    """

    hint = (
        "the agent refuses connections over its per-client limit "
        "limits.http_max_conns_per_client (default 200), counted per client IP across every "
        "process on this host; raise it in the agent's configuration or open fewer connections"
    )

    def __init__(self, address: str, operation: str, open_connections: int) -> None:
        self.open_connections = open_connections
        super().__init__(
            address,
            f"closed a new connection without answering ({operation}); this client holds "
            f"{open_connections} open connection(s) to it",
        )


class ConsulProtocolError(ConsulError):
    """Something answered at the agent's address, but not as Consul does.

    Usually CONSUL_HTTP_ADDR points at another HTTP service (or a proxy's error page).

    Attributes:
        address: the agent address.
        operation: what was attempted.
    """

    def __init__(self, address: str, operation: str, detail: str) -> None:
        self.address = address
        self.operation = operation
        self.detail = detail
        super().__init__(
            f"{operation}: the answer from {address} is not Consul's ({detail}); "
            "check that CONSUL_HTTP_ADDR points at a Consul agent"
        )


class ConsulAnswerTooLarge(ConsulError):
    """An answer was larger than ``MeshConfig.max_answer_bytes``; it was not read further.

    Attributes:
        address: the agent address.
        operation: what was attempted.
        limit: the cap in bytes.
        size: the announced size (``Content-Length``), or ``None`` when the body passed the cap
            while streaming.
    """

    def __init__(self, address: str, operation: str, limit: int, size: int | None = None) -> None:
        self.address = address
        self.operation = operation
        self.limit = limit
        self.size = size
        seen = f"announced {size} bytes, over" if size is not None else "grew past"
        super().__init__(
            f"{operation}: the answer from {address} {seen} the cap of {limit} bytes; "
            "it was not read further (raise max_answer_bytes if the catalog really is that big)"
        )


class PermissionDenied(ConsulError):
    """Consul's ACL system refused an operation.

    Attributes:
        operation: what was attempted, e.g. ``"register service 'web'"``.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"permission denied: {operation} (grant the ACL token a policy that allows it)"
        )


class ConsulStatusError(ConsulError):
    """Consul answered with an unexpected HTTP status.

    Attributes:
        code: the HTTP status code.
        body: the response body (trimmed in the message, complete here).
        operation: what was attempted.
    """

    def __init__(self, code: int, body: str, operation: str = "") -> None:
        self.code = code
        self.body = body
        self.operation = operation
        shown = body if len(body) <= MAX_BODY_IN_MESSAGE else body[:MAX_BODY_IN_MESSAGE] + "..."
        prefix = f"{operation}: " if operation else ""
        super().__init__(f"{prefix}Consul answered HTTP {code}: {shown.strip()}")


class ConsulNotFound(ConsulStatusError):
    """Consul answered 404: the service, check or key does not exist."""


class CasConflict(ConsulStatusError):
    """A check-and-set write lost to a concurrent change; re-read and try again."""

    def __init__(self, key: str, expected_index: int) -> None:
        self.key = key
        self.expected_index = expected_index
        super().__init__(
            409,
            f"key {key!r} changed since index {expected_index}; re-read it and try again",
            operation=f"write {key!r}",
        )


# --- discovery -------------------------------------------------------------------------------


class DiscoveryError(MeshError):
    """No usable view of a service could be had."""


class DiscoveryTimeout(DiscoveryError):
    """The first answer for a service did not arrive within the timeout.

    Attributes:
        service: the service name.
        timeout: seconds waited.
    """

    def __init__(self, service: str, timeout: float, detail: str = "") -> None:
        self.service = service
        self.timeout = timeout
        msg = f"no answer from Consul for service {service!r} within {timeout:g}s"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


# --- the request path ------------------------------------------------------------------------


class RequestFailed(MeshError):
    """A request through the mesh failed."""


class NoEndpointsAvailable(RequestFailed):
    """No endpoint of the service is eligible for a pick.

    Attributes:
        service: the service name.
        reason: why, e.g. ``"none registered"``, ``"all critical"``, ``"all ejected"``.
    """

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"no endpoint available for service {service!r}: {reason}")


class CircuitOpen(RequestFailed):
    """The circuit breaker refused the call without running it.

    Attributes:
        name: the breaker's name (usually the endpoint id).
        retry_after: seconds until the breaker will admit a probe, if known.
    """

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        self.name = name
        self.retry_after = retry_after
        msg = f"circuit {name!r} is open"
        if retry_after is not None:
            msg += f"; next probe in {retry_after:.3g}s"
        super().__init__(msg)


class DeadlineExceeded(RequestFailed):
    """The overall deadline of a call (retries included) ran out."""

    def __init__(self, deadline: float, attempts: Sequence[Attempt] = ()) -> None:
        self.deadline = deadline
        self.attempts = tuple(attempts)
        super().__init__(
            f"deadline of {deadline:g}s exceeded after {len(self.attempts)} attempt(s)"
        )


@dataclass(frozen=True)
class Attempt:
    """One attempt of a retried call: where it went and how it ended."""

    number: int
    endpoint: str | None
    error: BaseException | None
    duration: float


class RetryExhausted(RequestFailed):
    """Every allowed attempt failed.

    Attributes:
        attempts: every attempt in order, each with its endpoint and error.
        reason: why no further attempt was made (attempts used, budget empty, not retriable).
    """

    def __init__(self, attempts: Sequence[Attempt], reason: str = "attempts exhausted") -> None:
        self.attempts = tuple(attempts)
        self.reason = reason
        last = self.attempts[-1].error if self.attempts else None
        super().__init__(f"{len(self.attempts)} attempt(s) failed ({reason}); last error: {last!r}")


# --- provisioning ----------------------------------------------------------------------------


class ProvisioningError(MeshError):
    """A local Consul agent (image, package, binary or Docker engine) could not be set up.

    Raised by ``lake-mesh agent up`` and the test fixtures; the message says which step
    failed and what to do.
    """
