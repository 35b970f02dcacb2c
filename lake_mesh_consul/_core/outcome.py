"""Outcome classification: how one request ended, decided once, as a value.

* :class:`OutcomeKind`: the kinds failure detection and retries care about.
* :class:`ClassificationPolicy`: which statuses and exceptions are which kind, and which
  kinds count as failures.
* :func:`classify`: the pure rule (exceptions with their causes, or HTTP statuses).
* :class:`Outcome`: the result of classifying one attempt (kind, failure, status, error);
  immutable, so a status's outcome is computed once and shared.
* :class:`Classifier`: a policy with a per-status cache: the request path classifies each
  result exactly once through it and hands the :class:`Outcome` to every listener (balancer
  figures, outlier detection, the breaker).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from lake_mesh_consul.errors import DeadlineExceeded

__all__ = [
    "DEFAULT_FAILURE_KINDS",
    "GATEWAY_STATUSES",
    "MAX_CAUSE_DEPTH",
    "SUCCESS",
    "THROTTLE_STATUSES",
    "ClassificationPolicy",
    "Classifier",
    "Outcome",
    "OutcomeKind",
    "classify",
]

#: The gateway errors: 502, 503, 504 (Envoy's ``consecutive_gateway_failure``).
GATEWAY_STATUSES = frozenset({502, 503, 504})
#: Statuses meaning "throttled": not the endpoint's fault alone, but a failure by default.
THROTTLE_STATUSES = frozenset({429})
#: How far down ``__cause__``/``__context__`` classification looks.
MAX_CAUSE_DEPTH = 8


class OutcomeKind(str, enum.Enum):
    """How a request ended, as far as failure detection and retries care.

    ``CONNECT_FAILURE`` means the request was never sent (refused, unreachable, DNS,
    connect timeout): safe to retry even for non-idempotent methods. ``RESET`` means the
    connection broke after it may have been sent.
    """

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    GATEWAY_ERROR = "gateway_error"
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    ERROR = "error"
    IGNORED = "ignored"


#: The kinds counted as failures by default: 4xx other than 429 are the caller's fault.
DEFAULT_FAILURE_KINDS = frozenset(
    {
        OutcomeKind.THROTTLED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.GATEWAY_ERROR,
        OutcomeKind.CONNECT_FAILURE,
        OutcomeKind.RESET,
        OutcomeKind.TIMEOUT,
        OutcomeKind.ERROR,
    }
)


@dataclass(frozen=True, slots=True)
class ClassificationPolicy:
    """Which outcomes are failures.

    Attributes:
        failure_kinds: kinds counted as failures (default: everything but success,
            client errors and ignored; remove ``THROTTLED`` to not count 429).
        gateway_statuses: statuses classified ``GATEWAY_ERROR``.
        throttle_statuses: statuses classified ``THROTTLED``.
        failure_statuses: further statuses below 500 to classify ``SERVER_ERROR`` (e.g. 408).
        ignore_exceptions: exceptions classified ``IGNORED`` (business errors).
        timeout_exceptions: further exception types classified ``TIMEOUT``.
        connect_exceptions: further exception types classified ``CONNECT_FAILURE``.
    """

    failure_kinds: frozenset[OutcomeKind] = DEFAULT_FAILURE_KINDS
    gateway_statuses: frozenset[int] = GATEWAY_STATUSES
    throttle_statuses: frozenset[int] = THROTTLE_STATUSES
    failure_statuses: frozenset[int] = frozenset()
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    timeout_exceptions: tuple[type[BaseException], ...] = ()
    connect_exceptions: tuple[type[BaseException], ...] = ()

    def is_failure(self, kind: OutcomeKind) -> bool:
        """Whether ``kind`` counts as a failure under this policy."""
        return kind in self.failure_kinds


_DEFAULT_CLASSIFICATION = ClassificationPolicy()


def _classify_status(status: int, p: ClassificationPolicy) -> OutcomeKind:
    if status in p.gateway_statuses:
        return OutcomeKind.GATEWAY_ERROR
    if status in p.throttle_statuses:
        return OutcomeKind.THROTTLED
    if status >= 500 or status in p.failure_statuses:
        return OutcomeKind.SERVER_ERROR
    if status >= 400:
        return OutcomeKind.CLIENT_ERROR
    return OutcomeKind.SUCCESS


def _classify_one(exc: BaseException, p: ClassificationPolicy) -> OutcomeKind | None:
    if p.ignore_exceptions and isinstance(exc, p.ignore_exceptions):
        return OutcomeKind.IGNORED
    if p.connect_exceptions and isinstance(exc, p.connect_exceptions):
        return OutcomeKind.CONNECT_FAILURE
    if p.timeout_exceptions and isinstance(exc, p.timeout_exceptions):
        return OutcomeKind.TIMEOUT
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return OutcomeKind.CONNECT_FAILURE
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return OutcomeKind.RESET
    if isinstance(exc, (TimeoutError, DeadlineExceeded)):
        return OutcomeKind.TIMEOUT
    # Foreign libraries we may not import in the core (requests, urllib3): by class name.
    names = [c.__name__ for c in type(exc).__mro__]
    if "ConnectTimeout" in names or "ConnectTimeoutError" in names:
        return OutcomeKind.CONNECT_FAILURE
    if any("Timeout" in n for n in names):
        return OutcomeKind.TIMEOUT
    if "NewConnectionError" in names or "NameResolutionError" in names:
        return OutcomeKind.CONNECT_FAILURE
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return _classify_status(value, p)
    return None


def classify(
    *,
    error: BaseException | None = None,
    status: int | None = None,
    policy: ClassificationPolicy = _DEFAULT_CLASSIFICATION,
) -> OutcomeKind:
    """Classify one outcome: an exception (with its causes) or an HTTP status.

    Exceptions: refused/unreachable/DNS/connect-timeout -> ``CONNECT_FAILURE``;
    reset/aborted/broken pipe -> ``RESET``; timeouts (also foreign ``*Timeout*`` classes)
    -> ``TIMEOUT``; an exception carrying an HTTP ``status``/``status_code``/``code`` -> by
    status; ``__cause__``/``__context__`` are followed (requests wraps urllib3 wraps the
    socket error); anything else -> ``ERROR``. Statuses: 502/503/504 ->
    ``GATEWAY_ERROR``, 429 -> ``THROTTLED``, other 5xx -> ``SERVER_ERROR``, other 4xx ->
    ``CLIENT_ERROR``, else ``SUCCESS``. Pure function.
    """
    if error is not None:
        seen: set[int] = set()
        exc: BaseException | None = error
        depth = 0
        while exc is not None and depth < MAX_CAUSE_DEPTH and id(exc) not in seen:
            seen.add(id(exc))
            kind = _classify_one(exc, policy)
            if kind is not None:
                return kind
            exc = exc.__cause__ or exc.__context__
            depth += 1
        return OutcomeKind.ERROR
    if status is not None:
        return _classify_status(status, policy)
    return OutcomeKind.SUCCESS


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, classified once.

    Attributes:
        kind: the :class:`OutcomeKind`.
        failure: whether it counts against the endpoint (per the classification policy).
        status: the HTTP status, if the result had one.
        error: the exception, if the attempt raised.
    """

    kind: OutcomeKind
    failure: bool
    status: int | None = None
    error: BaseException | None = None

    @property
    def sent(self) -> bool:
        """False when the request never reached the endpoint (safe to retry for any method)."""
        return self.kind is not OutcomeKind.CONNECT_FAILURE

    @property
    def ignored(self) -> bool:
        """Whether the outcome says nothing about the endpoint (a business error)."""
        return self.kind is OutcomeKind.IGNORED


#: A plain success (no status, no error).
SUCCESS = Outcome(OutcomeKind.SUCCESS, False)


class Classifier:
    """A :class:`ClassificationPolicy` that classifies into :class:`Outcome` values.

    Outcomes of HTTP statuses are cached (one object per status), so the success path
    allocates nothing. Thread-safe: the cache is filled idempotently.

    Example:
        >>> c = Classifier()
        >>> c.of_status(503).kind.value, c.of_status(503).failure
        ('gateway_error', True)
        >>> c.of_error(ConnectionRefusedError()).sent
        False
    """

    __slots__ = ("_by_status", "_failure_kinds", "policy")

    def __init__(self, policy: ClassificationPolicy = _DEFAULT_CLASSIFICATION) -> None:
        #: The policy this classifier applies.
        self.policy = policy
        self._failure_kinds = policy.failure_kinds
        self._by_status: dict[int, Outcome] = {}

    def of_status(self, status: int) -> Outcome:
        """The outcome of an HTTP ``status`` (cached per status)."""
        outcome = self._by_status.get(status)
        if outcome is None:
            kind = _classify_status(status, self.policy)
            outcome = Outcome(kind, kind in self._failure_kinds, status)
            if 100 <= status <= 599:
                self._by_status[status] = outcome
        return outcome

    def of_error(self, error: BaseException, status: int | None = None) -> Outcome:
        """The outcome of an exception (its causes followed, see :func:`classify`)."""
        kind = classify(error=error, status=status, policy=self.policy)
        return Outcome(kind, kind in self._failure_kinds, status, error)

    def of(
        self, *, success: bool, error: BaseException | None = None, status: int | None = None
    ) -> Outcome:
        """The outcome of ``error`` or ``status`` if given, else of ``success`` alone."""
        if error is not None:
            return self.of_error(error, status)
        if status is not None:
            return self.of_status(status)
        return SUCCESS if success else Outcome(OutcomeKind.ERROR, True)

    def is_failure(self, kind: OutcomeKind) -> bool:
        """Whether ``kind`` counts as a failure under this policy."""
        return kind in self._failure_kinds

    def __repr__(self) -> str:
        return f"Classifier({self.policy!r})"
