"""The one Consul client: python-consul2 built from MeshConfig, with our transport and errors.

Everything that talks to Consul goes through :class:`ConsulClient`. It

* builds python-consul2's client *without* letting it read the environment (python-consul2
  lets ``CONSUL_HTTP_TOKEN`` override an explicit token; MeshConfig already merged the
  environment with the right precedence);
* sends the ACL token in the ``X-Consul-Token`` header only (python-consul2 would put it in
  the query string, where it ends up in exception messages and access logs);
* derives each request's read timeout from its blocking-query ``wait``
  (:func:`~lake_mesh_consul._core.blocking.read_timeout_for_wait`), and gives every call an
  overall deadline as well (:meth:`ConsulClient.deadline_for`): an agent that trickles one
  byte a second cannot hold a call past it (:mod:`~lake_mesh_consul._consul.client_transport`);
* never follows a redirect (Consul's API never redirects, and the token, a session header,
  would follow it to the other host): a 3xx is ConsulProtocolError naming the status and host;
* streams each answer and stops at ``MeshConfig.max_answer_bytes`` (ConsulAnswerTooLarge);
* maps every failure to :mod:`lake_mesh_consul.errors` at the boundary, keeping the cause:
  unreachable or timed out -> ConsulUnavailable, a new connection closed unanswered ->
  ConsulConnectionLimit, bad TLS -> ConsulTLSError, 403 -> PermissionDenied, 404 ->
  ConsulNotFound, any other status -> ConsulStatusError. The foreign cause is kept for its
  type and message only: its traceback (whose frames hold the request headers, the token
  among them, and the failed answer) and its request/response are dropped, and any echo of
  the token in it or in a quoted body is masked;
* offers :meth:`ConsulClient.request` for the HTTP endpoints python-consul2 does not cover
  well (service Weights, several checks, ``filter``, response headers), over the *same*
  requests session, token and TLS settings.

Thread-safety: a ConsulClient may be shared by threads (requests' Session is used with one
connection pool per host, which urllib3 makes thread-safe).
"""

from __future__ import annotations

import ipaddress
import json as _json
import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters

from lake_mesh_consul._consul.client_transport import (
    GUARDED_POOL_CLASSES,
    ConnectHook,
    ConnectionRegistry,
    Exchange,
    current_exchange,
    exchange,
    process_connections,
)
from lake_mesh_consul._core.blocking import read_timeout_for_wait
from lake_mesh_consul._core.config import MeshConfig, Secret
from lake_mesh_consul.errors import (
    ConsulAnswerTooLarge,
    ConsulConnectionLimit,
    ConsulError,
    ConsulNotFound,
    ConsulProtocolError,
    ConsulStatusError,
    ConsulTLSError,
    ConsulUnavailable,
    InvalidSetting,
    PermissionDenied,
)

__all__ = ["ConsulClient", "ConsulResponse"]

log = logging.getLogger("lake_mesh_consul.consul")

#: Connection pool size per agent: discovery watches hold one connection each while parked.
POOL_SIZE = 32

#: Bytes read from an answer at a time (the cap is checked after each).
READ_CHUNK = 1024 * 1024

#: Answers from this size on that are JSON arrays are decoded element by element
#: (:func:`loads_yielding`): one ``json.loads`` of 26 MB (10,000 health entries) holds the
#: GIL for about half a second in one C call, freezing every other thread of the process.
YIELDING_DECODE_FROM = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConsulResponse:
    """A decoded answer from Consul with the headers blocking queries need.

    Attributes:
        status: HTTP status code.
        body: raw body.
        index: ``X-Consul-Index`` (0 when absent).
        known_leader: ``X-Consul-KnownLeader`` (``None`` when absent).
        last_contact: ``X-Consul-LastContact`` in seconds (``None`` when absent).
        cache: ``X-Cache`` (``HIT``/``MISS``) when the agent cache answered.
    """

    status: int
    body: bytes = field(repr=False)  # may be large, and may quote anything (the token too)
    index: int
    known_leader: bool | None
    last_contact: float | None
    cache: str | None = None
    address: str = ""
    operation: str = ""
    #: masked wherever the body is quoted in an error (an answer may echo the token).
    token: Secret | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The body decoded as JSON (``None`` for an empty body).

        Raises:
            ConsulProtocolError: the body is not JSON (the address is not a Consul agent).
                Its cause is a plain ValueError with the parser's message: the parser's own
                error would keep the whole body alive.
        """
        if not self.body:
            return None
        try:
            return loads_yielding(self.body)
        except ValueError as exc:
            reason = str(exc)
        detail = _mask(_describe_body(self.body), self.token)
        raise ConsulProtocolError(
            self.address, self.operation or "read answer", detail
        ) from ValueError(reason)

    @classmethod
    def from_requests(
        cls,
        response: requests.Response,
        *,
        address: str = "",
        operation: str = "",
        body: bytes | None = None,
        token: Secret | None = None,
    ) -> ConsulResponse:
        """Build from a requests response, parsing Consul's headers defensively.

        ``body`` is the answer already read (streamed answers); default ``response.content``.
        """
        headers = response.headers
        try:
            index = int(headers.get("X-Consul-Index", "0"))
        except ValueError:
            index = 0
        leader_text = headers.get("X-Consul-KnownLeader")
        known_leader = None if leader_text is None else leader_text.lower() == "true"
        contact_text = headers.get("X-Consul-LastContact")
        try:
            last_contact = None if contact_text is None else int(contact_text) / 1000.0
        except ValueError:
            last_contact = None
        return cls(
            status=response.status_code,
            body=response.content if body is None else body,
            index=index,
            known_leader=known_leader,
            last_contact=last_contact,
            cache=headers.get("X-Cache"),
            address=address,
            operation=operation,
            token=token,
        )


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Our transport: guarded connections (deadline, registry) and CONSUL_TLS_SERVER_NAME."""

    def __init__(self, server_name: str | None, **kwargs: Any) -> None:
        self._server_name = server_name
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
            kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(GUARDED_POOL_CLASSES)


def build_session(config: MeshConfig) -> requests.Session:
    """A requests session carrying the token header and TLS settings of ``config``.

    Its connections are guarded (overall deadlines, see
    :mod:`~lake_mesh_consul._consul.client_transport`); it never follows redirects and
    refuses an answer announcing more than ``config.max_answer_bytes``.
    """
    session = requests.Session()
    session.trust_env = False  # proxies from the environment must not see agent traffic
    session.max_redirects = 0  # the token is a session header: it must never follow one
    session.hooks["response"].append(_answer_guard(config))
    adapter = _ServerNameAdapter(config.tls_server_name, pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if config.token:
        session.headers["X-Consul-Token"] = config.token.reveal()
    if _is_loopback(config.address):
        # gzip on loopback saves no transfer time and costs both ends CPU: decompressing a
        # 26 MB answer took ~55 ms of the ~70 ms the client spent reading it.
        session.headers["Accept-Encoding"] = "identity"
    if config.namespace:
        session.params = {"ns": config.namespace}
    if config.partition:
        params = dict(session.params) if isinstance(session.params, dict) else {}
        params["partition"] = config.partition
        session.params = params
    if not config.verify:
        session.verify = False
    elif config.ca_file:
        session.verify = config.ca_file
    elif config.ca_path:
        session.verify = config.ca_path
    if config.client_cert:
        session.cert = (
            (config.client_cert, config.client_key) if config.client_key else config.client_cert
        )
    return session


class ConsulClient:
    """The adapter's entry point: one per MeshConfig, shared by registry, discovery and KV.

    Use :attr:`consul` (python-consul2) for its well-covered endpoints through :meth:`call`,
    or :meth:`request` for raw HTTP with headers. Both map errors to our tree, and both run
    under an overall deadline (:meth:`deadline_for`).

    It is a context manager; :meth:`close` shuts every connection, waking a thread parked in
    a request (it gets ConsulUnavailable at once), and later calls fail without sending.

    Args:
        config: how to reach the agent (default :meth:`MeshConfig.from_env`).
        on_connect: called with each new connection right after it connects, on the thread
            that opened it (to count or register connections).
    """

    def __init__(
        self, config: MeshConfig | None = None, *, on_connect: ConnectHook | None = None
    ) -> None:
        self.config = config or MeshConfig.from_env()
        self._connections = ConnectionRegistry(on_connect)
        self.session = build_session(self.config)
        self._consul: Any = None  # the consul package's client, built on first use
        self._consul_lock = threading.Lock()
        self._closed = threading.Event()

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def consul(self) -> Any:
        """The consul package's client (python-consul2 or py-consul), built on first use.

        No token in its query strings: it travels in this client's ``X-Consul-Token`` header.
        """
        with self._consul_lock:
            if self._consul is None:
                from lake_mesh_consul._consul import consul_module

                self._consul = consul_module.build_client(self)
            return self._consul

    @property
    def address(self) -> str:
        """The agent's base URL, for messages."""
        return self.config.base_url

    @property
    def open_connections(self) -> int:
        """Connections this client holds open to the agent right now."""
        return self._connections.count()

    def process_connections(self) -> int:
        """Connections this whole process holds open to this client's agent (all clients).

        Consul's ``limits.http_max_conns_per_client`` (default 200) counts them per client IP:
        every process on the host shares that budget.
        """
        return process_connections(self.config.host, self.config.port)

    def timeout_for(self, wait: Any) -> tuple[float, float]:
        """``(connect, read)`` timeouts for a request with blocking ``wait`` (or none)."""
        read = self.config.read_timeout
        if wait is not None:
            seconds = _wait_seconds(wait)
            read = max(read, read_timeout_for_wait(seconds))
        return (self.config.connect_timeout, read)

    def deadline_for(self, wait: Any = None) -> float:
        """The default overall deadline in seconds of a call with blocking ``wait`` (or none).

        ``connect_timeout + read_timeout`` for a non-blocking call (12 s by default), and
        ``connect_timeout`` plus the wait-derived read timeout (``wait + wait/16 + 5 s``) for
        a blocking read: whatever the agent does, the call ends by then.
        """
        connect, read = self.timeout_for(wait)
        return connect + read

    def call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a python-consul2 call, mapping its and requests' errors to ours.

        The call runs under :meth:`deadline_for` its ``wait`` keyword (if any) and the
        answer cap; redirects are refused as in :meth:`request`.

        Args:
            operation: what is being done, for error messages ("read key 'x'").
            fn: a bound python-consul2 method, e.g. ``client.consul.kv.get``.
        """
        from lake_mesh_consul._consul import consul_module as glue

        self._check_open(operation)
        seconds = self.deadline_for(kwargs.get("wait"))
        with exchange(seconds, operation, self._raw_limit(), self._connections) as current:
            try:
                return fn(*args, **kwargs)
            except glue.ACLPermissionDenied as exc:
                raise PermissionDenied(operation) from self._detach(exc)
            except glue.NotFound as exc:
                body = self._quote(str(exc))
                raise ConsulNotFound(404, body, operation) from self._detach(exc)
            except glue.ConsulException as exc:
                status = _status_from_consul_exception(exc, operation, self.config.token)
                raise status from self._detach(exc)
            except requests.RequestException as exc:
                raise self._map_transport_error(exc, operation, current) from self._detach(exc)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # python-consul2 decodes bodies itself; a non-Consul answer breaks its parsing.
                error = ConsulProtocolError(self.address, operation, type(exc).__name__)
                raise error from self._detach(exc)

    def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        wait: float | str | None = None,
        allow_404: bool = False,
        dc: bool = True,
        deadline: float | None = None,
    ) -> ConsulResponse:
        """Send one HTTP request to the agent and return the decoded answer.

        Args:
            method: HTTP method.
            path: API path, e.g. ``/v1/agent/service/register``.
            operation: what is being done, for error messages.
            params: query parameters.
            json: a JSON body.
            data: a raw body.
            wait: the blocking-query wait (seconds or a Consul duration); sets ``wait`` and
                derives the read timeout.
            allow_404: return a 404 answer instead of raising ConsulNotFound.
            dc: add ``dc=`` from the config when a datacenter is set and none is given.
            deadline: overall seconds for the whole exchange: connecting, sending, and every
                read of the status, headers and body (default :meth:`deadline_for`).

        Raises:
            ConsulUnavailable: unreachable, timed out, past ``deadline``, or the client is
                closed (ConsulTLSError for TLS failures, ConsulConnectionLimit when the agent
                closes a new connection unanswered, as it does over its per-client limit).
            ConsulProtocolError: a redirect (naming status and target host): never followed.
            ConsulAnswerTooLarge: the answer passed ``max_answer_bytes``; not read further.
            PermissionDenied: HTTP 403.
            ConsulNotFound: HTTP 404 unless ``allow_404``.
            ConsulStatusError: any other status >= 400.
            InvalidSetting: ``deadline`` is not a positive number of seconds.
        """
        self._check_open(operation)
        seconds = self.deadline_for(wait) if deadline is None else _deadline_seconds(deadline)
        query: dict[str, Any] = dict(params or {})
        if wait is not None:
            query["wait"] = f"{_wait_seconds(wait):g}s"
        if dc and self.config.datacenter and "dc" not in query:
            query["dc"] = self.config.datacenter
        with exchange(seconds, operation, self._raw_limit(), self._connections) as current:
            raw = self._send(
                method=method,
                path=path,
                query=query,
                json=json,
                data=data,
                wait=wait,
                current=current,
            )
            try:
                body = self._read_capped(raw, current)
            finally:
                raw.close()
        response = ConsulResponse.from_requests(
            raw, address=self.address, operation=operation, body=body, token=self.config.token
        )
        del body, raw  # an error's frames must not hold the answer (it may quote the token)
        error = self._status_error(response, allow_404)
        if error is None:
            return response
        del response
        raise error

    def _send(
        self,
        *,
        method: str,
        path: str,
        query: dict[str, Any],
        json: Any,
        data: bytes | str | None,
        wait: Any,
        current: Exchange,
    ) -> requests.Response:
        connect, read = self.timeout_for(wait)
        if current.seconds is not None:
            connect = min(connect, current.seconds)
        try:
            return self.session.request(
                method,
                self.config.base_url + path,
                params=query or None,
                json=json,
                data=data,
                timeout=(connect, read),
                allow_redirects=False,
                stream=True,
            )
        except requests.RequestException as exc:
            raise self._map_transport_error(exc, current.operation, current) from self._detach(exc)
        except UnicodeError:  # a header the HTTP library cannot encode
            pass  # raised below, outside the handler: the UnicodeEncodeError holds the value
        raise InvalidSetting("token", "cannot be sent in an HTTP header (not Latin-1)")

    def _read_capped(self, raw: requests.Response, current: Exchange) -> bytes:
        """The body of ``raw``, read in chunks and refused past ``max_answer_bytes``."""
        limit = self.config.max_answer_bytes
        try:
            body = _read_body(raw, limit)
        except requests.RequestException as exc:
            raise self._map_transport_error(exc, current.operation, current) from self._detach(exc)
        if body is None:
            raise ConsulAnswerTooLarge(self.address, current.operation, limit)
        return body

    def _status_error(self, response: ConsulResponse, allow_404: bool) -> ConsulError | None:
        """The error an answer's status means (``None``: a usable answer)."""
        status, operation = response.status, response.operation
        if status < 400 or (status == 404 and allow_404):
            return None
        text = self._quote(response.body.decode("utf-8", errors="replace"))
        if status == 403:
            return PermissionDenied(operation)
        if status == 404:
            return ConsulNotFound(404, text, operation)
        if status == 429 and "too many concurrent connections" in text.lower():
            return ConsulConnectionLimit(self.address, operation, self.open_connections)
        return ConsulStatusError(status, text, operation)

    def _raw_limit(self) -> int:
        # The socket-level cap counts headers and compressed bytes too: leave room for them.
        return self.config.max_answer_bytes + READ_CHUNK

    def _check_open(self, operation: str) -> None:
        if self._closed.is_set():
            raise ConsulUnavailable(self.address, f"client closed ({operation})")

    def _quote(self, text: str) -> str:
        """A foreign text, trimmed and with any echo of the token masked, for a message."""
        return _mask(_clean(text), self.config.token)

    def _detach(self, exc: BaseException) -> BaseException:
        return _detach(exc, self.config.token)

    def _map_transport_error(
        self, exc: requests.RequestException, operation: str, current: Exchange | None = None
    ) -> ConsulError:
        address = self.address
        if self._closed.is_set():
            return ConsulUnavailable(address, f"client closed ({operation})")
        if current is not None and current.oversize:
            return ConsulAnswerTooLarge(address, operation, self.config.max_answer_bytes)
        if current is not None and current.expired:
            detail = f"deadline of {current.seconds or 0:g}s exceeded ({operation})"
            return ConsulUnavailable(address, detail)
        if isinstance(exc, requests.exceptions.SSLError):
            return ConsulTLSError(address, _tls_hint(exc))
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            detail = f"connect timed out after {self.config.connect_timeout:g}s ({operation})"
        elif isinstance(exc, requests.exceptions.ReadTimeout):
            detail = f"no answer in time ({operation})"
        elif isinstance(exc, _CONNECTION_ERRORS):
            if _refused_new_connection(exc, current):
                return ConsulConnectionLimit(address, operation, self.open_connections)
            detail = f"{_connection_failure(exc)} ({operation})"
        else:
            detail = f"{type(exc).__name__} ({operation})"
        return ConsulUnavailable(address, detail)

    # -- a few calls every part needs --------------------------------------------------------

    def agent_self(self) -> dict[str, Any]:
        """``/v1/agent/self``: the agent's configuration and member info."""
        result: dict[str, Any] = self.call("read agent self", self.consul.agent.self)
        return result

    def leader(self) -> str:
        """``/v1/status/leader``: the leader's address, or ``""`` when there is none."""
        response = self.request("GET", "/v1/status/leader", operation="read leader", dc=False)
        value = response.json()
        return value if isinstance(value, str) else ""

    def close(self) -> None:
        """Shut every connection (in-flight ones too), then the pool. Idempotent, immediate."""
        if not self._closed.is_set():
            self._closed.set()
            self._connections.shut_all()
            self.session.close()

    def __enter__(self) -> ConsulClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConsulClient({self.config.base_url!r})"


#: Transport failures after the connection was made (reset, closed, cut short).
_CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)


def _wait_seconds(wait: Any) -> float:
    if isinstance(wait, int | float):
        return float(wait)
    from lake_mesh_consul._core.durations import parse_duration

    return parse_duration(str(wait))


def _deadline_seconds(deadline: Any) -> float:
    if (
        not isinstance(deadline, int | float)
        or isinstance(deadline, bool)
        or not 0 < deadline < math.inf
    ):
        raise InvalidSetting("deadline", f"must be a positive number of seconds, got {deadline!r}")
    return float(deadline)


def _is_loopback(address: str) -> bool:
    """Whether ``host:port`` (IPv6 bracketed) names this machine: ``localhost`` or 127/8, ::1."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DECODER = _json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as the json module reads it
_AFTER_ITEM = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")


def loads_yielding(body: bytes) -> Any:
    """``json.loads(body)``, decoding a large top-level array one element per C call.

    The same value and the same errors (ValueError) as ``json.loads``, from the same bytes
    decoded the same way (``json.detect_encoding``). Below :data:`YIELDING_DECODE_FROM`
    bytes, or when the answer is not an array, it is ``json.loads`` itself. Otherwise each
    element is one call of the json module's C scanner, with the interpreter between
    elements: other threads get the GIL every switch interval instead of waiting for the
    whole answer (a 26 MB answer: about 0.5 s in one call). The price is the scanner's key
    memo, which lasts one call: each element allocates its own key strings (about +20%
    decoding CPU on Consul's health answers).
    """
    if len(body) < YIELDING_DECODE_FROM:
        return _json.loads(body)
    text = body.decode(_json.detect_encoding(body), "surrogatepass")
    index = _skip_space(text, 0)
    if not text.startswith("[", index):
        return _DECODER.decode(text)
    items: list[Any] = []
    index = _skip_space(text, index + 1)
    if text.startswith("]", index):
        index += 1
    else:
        decode, after, add = _DECODER.raw_decode, _AFTER_ITEM.match, items.append
        while True:
            value, index = decode(text, index)
            add(value)
            separator = after(text, index)
            if separator is None:
                raise _json.JSONDecodeError("Expecting ',' delimiter", text, index)
            index = separator.end()
            if separator.group(1) == "]":
                break
    if _skip_space(text, index) != len(text):
        raise _json.JSONDecodeError("Extra data", text, index)
    return items


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)  # always matches (possibly nothing)
    return match.end() if match is not None else index


def _read_body(raw: requests.Response, limit: int) -> bytes | None:
    """The body of ``raw`` read in chunks, or ``None`` as soon as it passes ``limit`` bytes."""
    if raw.raw is None:  # an adapter that answered from memory
        return raw.content if len(raw.content) <= limit else None
    chunks: list[bytes] = []
    size = 0
    for chunk in raw.iter_content(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _clean(text: str) -> str:
    return text.strip()[:2000]


def _mask(text: str, token: Secret | None) -> str:
    """``text`` with every occurrence of the token replaced by ``***``."""
    secret = token.reveal() if token is not None else ""
    return text.replace(secret, "***") if secret and secret in text else text


#: Attributes of foreign errors that hold the request (its headers carry the token), the
#: answer, or a pool/connection: dropped from a cause so that it keeps nothing alive.
_HEAVY_ATTRIBUTES = ("request", "response", "pool", "conn", "_pool", "_connection")


def _detach(exc: BaseException, token: Secret | None) -> BaseException:
    """Make ``exc`` (and every error it chains) safe to keep as a cause; returns ``exc``.

    Drops tracebacks (their frames hold the request headers, token included, and the failed
    answer), requests'/urllib3's request, response, pool and connection references, the
    documents held by decode errors, and masks the token wherever an argument quotes it.
    """
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < 64:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        item.__traceback__ = None
        fields = getattr(item, "__dict__", {})  # plain attributes only, never properties
        for name in _HEAVY_ATTRIBUTES:
            if fields.get(name) is not None:
                fields[name] = None
        if isinstance(item, _json.JSONDecodeError):
            item.doc = ""
        if isinstance(item, UnicodeError):
            # The text being encoded or decoded: a header's value, a file's bytes.
            text = getattr(item, "object", "")
            setattr(item, "object", text[:0])  # noqa: B010
            item.args = tuple(arg[:0] if arg is text else arg for arg in item.args)
        item.args = tuple(_mask(a, token) if isinstance(a, str) else a for a in item.args)
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return exc


def _refused_new_connection(exc: BaseException, current: Exchange | None) -> bool:
    """A connection opened for this exchange was closed or reset before any answer byte.

    That is what Consul 1.8 does over ``limits.http_max_conns_per_client``: it accepts the
    connection and closes it at once (the client sees a reset, a broken pipe, or
    "Remote end closed connection without response").
    """
    if current is None or not current.fresh_connection or current.received:
        return False
    return any(isinstance(item, ConnectionResetError | BrokenPipeError) for item in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it wraps (causes, contexts, arguments, urllib3's ``reason``)."""
    stack, seen = [exc], 0
    while stack and seen < 32:
        item = stack.pop()
        seen += 1
        yield item
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        stack.extend(x for x in linked if isinstance(x, BaseException))


def _connection_failure(exc: BaseException) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "reset" in text or "aborted" in text:
        return "connection reset"
    if "incomplete" in text or "ended prematurely" in text:
        return "the answer was cut short"
    return "connection failed"


def _answer_guard(config: MeshConfig) -> Any:
    """A requests response hook: refuse redirects and answers announced over the cap.

    It runs before requests would follow a redirect or read a body, on every path through
    the session (python-consul2's included).
    """
    address, limit, token = config.base_url, config.max_answer_bytes, config.token

    def guard(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        current = current_exchange()
        operation = (current.operation if current is not None else "") or "request"
        status = response.status_code
        if 300 <= status < 400:
            target = _mask(_redirect_target(response.headers.get("Location"), address), token)
            response.close()
            raise ConsulProtocolError(
                address,
                operation,
                f"HTTP {status} redirect to {target}; Consul's API never redirects, and the "
                "ACL token would go along, so it was not followed",
            )
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            response.close()
            raise ConsulAnswerTooLarge(address, operation, limit, int(announced))
        return response

    return guard


def _redirect_target(location: str | None, address: str) -> str:
    """The host a redirect points at (``host:port``), never its path or query."""
    if not location:
        return "nowhere (no Location header)"
    try:
        parts = urlsplit(location.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an unparsable location"
    if not host:
        return f"{address} itself (relative Location)"
    shown = f"{host}:{port}" if port else host
    return repr(shown[:100])


def _status_from_consul_exception(
    exc: Exception, operation: str, token: Secret | None = None
) -> ConsulStatusError:
    # python-consul2 formats its errors as "<code> <body>".
    text = _mask(str(exc), token)
    head, _, body = text.partition(" ")
    code = int(head) if head.isdigit() else 500
    from lake_mesh_consul._consul import consul_module as glue

    if isinstance(exc, glue.BadRequest):
        code = 400
    elif isinstance(exc, glue.ACLDisabled):
        code, body = 401, text
    return ConsulStatusError(code, _clean(body or text), operation)


def _describe_body(body: bytes) -> str:
    head = body[:60].decode("utf-8", errors="replace").strip().replace("\n", " ")
    return f"body is not JSON: {head!r}"


def _tls_hint(exc: Exception) -> str:
    text = str(exc)
    low = text.lower()
    if "hostname" in low and ("mismatch" in low or "doesn't match" in low or "match" in low):
        return (
            "TLS certificate does not match the agent's name; set CONSUL_TLS_SERVER_NAME "
            "to a name in the certificate (e.g. server.dc1.consul)"
        )
    if "bad certificate" in low or "unknown ca" in low or "certificate required" in low:
        return (
            "TLS handshake refused: the agent requires a client certificate it trusts; set "
            "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            "TLS certificate verification failed; set CONSUL_CACERT to the CA that signed "
            "the agent's certificate (or CONSUL_TLS_SERVER_NAME if the name differs)"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "TLS handshake failed: the agent is not serving HTTPS on this port"
    if "certificate required" in text.lower() or "handshake failure" in text.lower():
        return (
            "TLS handshake refused: the agent requires a client certificate; set "
            "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY"
        )
    return "TLS handshake failed; check CONSUL_CACERT, CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY"
