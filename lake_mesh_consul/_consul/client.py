"""The one Consul client: python-consul2 built from MeshConfig, with our transport and errors.

Everything that talks to Consul goes through :class:`ConsulClient`. It

* builds python-consul2's client *without* letting it read the environment (python-consul2
  lets ``CONSUL_HTTP_TOKEN`` override an explicit token; MeshConfig already merged the
  environment with the right precedence);
* sends the ACL token in the ``X-Consul-Token`` header only (python-consul2 would put it in
  the query string, where it ends up in exception messages and access logs);
* derives each request's read timeout from its blocking-query ``wait``
  (:func:`~lake_mesh_consul._core.blocking.read_timeout_for_wait`);
* maps every failure to :mod:`lake_mesh_consul.errors` at the boundary, keeping the cause:
  unreachable or timed out -> ConsulUnavailable, bad TLS -> ConsulTLSError, 403 ->
  PermissionDenied, 404 -> ConsulNotFound, any other status -> ConsulStatusError;
* offers :meth:`ConsulClient.request` for the HTTP endpoints python-consul2 does not cover
  well (service Weights, several checks, ``filter``, response headers), over the *same*
  requests session, token and TLS settings.

Thread-safety: a ConsulClient may be shared by threads (requests' Session is used with one
connection pool per host, which urllib3 makes thread-safe).
"""

from __future__ import annotations

import json as _json
import logging
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import consul
import consul.base
import consul.std
import requests
import requests.adapters

from lake_mesh_consul._core.blocking import read_timeout_for_wait
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import (
    ConsulError,
    ConsulNotFound,
    ConsulProtocolError,
    ConsulStatusError,
    ConsulTLSError,
    ConsulUnavailable,
    PermissionDenied,
)

__all__ = ["ConsulClient", "ConsulResponse"]

log = logging.getLogger("lake_mesh_consul.consul")

#: Connection pool size per agent: discovery watches hold one connection each while parked.
POOL_SIZE = 32


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
    body: bytes
    index: int
    known_leader: bool | None
    last_contact: float | None
    cache: str | None = None
    address: str = ""
    operation: str = ""

    def json(self) -> Any:
        """The body decoded as JSON (``None`` for an empty body).

        Raises:
            ConsulProtocolError: the body is not JSON (the address is not a Consul agent).
        """
        if not self.body:
            return None
        try:
            return _json.loads(self.body)
        except ValueError as exc:
            raise ConsulProtocolError(
                self.address, self.operation or "read answer", _describe_body(self.body)
            ) from exc

    @classmethod
    def from_requests(
        cls, response: requests.Response, *, address: str = "", operation: str = ""
    ) -> ConsulResponse:
        """Build from a requests response, parsing Consul's headers defensively."""
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
            body=response.content,
            index=index,
            known_leader=known_leader,
            last_contact=last_contact,
            cache=headers.get("X-Cache"),
            address=address,
            operation=operation,
        )


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Verify the agent's certificate against a fixed name (CONSUL_TLS_SERVER_NAME)."""

    def __init__(self, server_name: str | None, **kwargs: Any) -> None:
        self._server_name = server_name
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
            kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


def build_session(config: MeshConfig) -> requests.Session:
    """A requests session carrying the token header and TLS settings of ``config``."""
    session = requests.Session()
    session.trust_env = False  # proxies from the environment must not see agent traffic
    adapter = _ServerNameAdapter(config.tls_server_name, pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if config.token:
        session.headers["X-Consul-Token"] = config.token.reveal()
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


class _HTTPClient(consul.std.HTTPClient):  # type: ignore[misc]
    """python-consul2's transport over our session, with a timeout derived per request."""

    def __init__(self, owner: ConsulClient) -> None:
        config = owner.config
        super().__init__(
            host=config.host,
            port=config.port,
            scheme=config.scheme,
            verify=owner.session.verify,
            cert=owner.session.cert,
        )
        self.base_uri = config.base_url
        # python-consul2 opened a session of its own; ours replaces it.
        own: requests.Session = self.__dict__["session"]
        own.close()
        self.session = owner.session
        self._owner = owner

    def _timeout_for(self, params: Any) -> tuple[float, float]:
        wait = None
        for key, value in params.items() if isinstance(params, dict) else params or ():
            if key == "wait":
                wait = value
        return self._owner.timeout_for(wait)

    def get(self, callback: Any, path: str, params: Any = None, headers: Any = None) -> Any:
        uri = self.uri(path, params)
        response = self.session.get(uri, headers=headers, timeout=self._timeout_for(params))
        return callback(self.response(response))

    def put(
        self, callback: Any, path: str, params: Any = None, data: Any = "", headers: Any = None
    ) -> Any:
        uri = self.uri(path, params)
        response = self.session.put(
            uri, data=data, headers=headers, timeout=self._owner.timeout_for(None)
        )
        return callback(self.response(response))

    def delete(
        self, callback: Any, path: str, params: Any = None, data: Any = "", headers: Any = None
    ) -> Any:
        uri = self.uri(path, params)
        response = self.session.delete(
            uri, data=data, headers=headers, timeout=self._owner.timeout_for(None)
        )
        return callback(self.response(response))

    def post(
        self, callback: Any, path: str, params: Any = None, headers: Any = None, data: Any = ""
    ) -> Any:
        uri = self.uri(path, params)
        response = self.session.post(
            uri, data=data, headers=headers, timeout=self._owner.timeout_for(None)
        )
        return callback(self.response(response))


class _Consul(consul.base.Consul):  # type: ignore[misc]
    """python-consul2's client, built without reading the environment.

    ``consul.base.Consul.__init__`` reads CONSUL_HTTP_ADDR, CONSUL_HTTP_SSL(_VERIFY) and lets
    CONSUL_HTTP_TOKEN override the explicit token. We build the same endpoint groups from
    MeshConfig instead, and leave ``token`` unset so it is never put in a query string.
    """

    def __init__(self, owner: ConsulClient) -> None:
        config = owner.config
        base = consul.base.Consul
        with warnings.catch_warnings():
            # python-consul2 warns while building its ACL and discovery-chain groups about
            # APIs we never call; those warnings say nothing about our use.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.agent = base.Agent(self)
            self.catalog = base.Catalog(self)
            self.config = base.Config(self)
            self.connect = base.Connect(self)
            self.consistency = "default"
            self.coordinate = base.Coordinate(self)
            self.dc = config.datacenter
            self.discovery_chain = base.DiscoveryChain(self)
            self.event = base.Event(self)
            self.health = base.Health(self)
            self.http = _HTTPClient(owner)
            self.kv = base.KV(self)
            self.operator = base.Operator(self)
            self.query = base.Query(self)
            self.scheme = config.scheme
            self.session = base.Session(self)
            self.snapshot = base.Snapshot(self)
            self.status = base.Status(self)
            self.token = None  # the token travels in the session's X-Consul-Token header
            self.txn = base.Txn(self)


class ConsulClient:
    """The adapter's entry point: one per MeshConfig, shared by registry, discovery and KV.

    Use :attr:`consul` (python-consul2) for its well-covered endpoints through :meth:`call`,
    or :meth:`request` for raw HTTP with headers. Both map errors to our tree.

    It is a context manager; :meth:`close` closes the connection pool.
    """

    def __init__(self, config: MeshConfig | None = None) -> None:
        self.config = config or MeshConfig.from_env()
        self.session = build_session(self.config)
        self._consul = _Consul(self)
        self._closed = threading.Event()

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def consul(self) -> Any:
        """The underlying python-consul2 client (no token in its query strings)."""
        return self._consul

    @property
    def address(self) -> str:
        """The agent's base URL, for messages."""
        return self.config.base_url

    def timeout_for(self, wait: Any) -> tuple[float, float]:
        """``(connect, read)`` timeouts for a request with blocking ``wait`` (or none)."""
        read = self.config.read_timeout
        if wait is not None:
            seconds = _wait_seconds(wait)
            read = max(read, read_timeout_for_wait(seconds))
        return (self.config.connect_timeout, read)

    def call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a python-consul2 call, mapping its and requests' errors to ours.

        Args:
            operation: what is being done, for error messages ("read key 'x'").
            fn: a bound python-consul2 method, e.g. ``client.consul.kv.get``.
        """
        try:
            return fn(*args, **kwargs)
        except consul.base.ACLPermissionDenied as exc:
            raise PermissionDenied(operation) from exc
        except consul.base.NotFound as exc:
            raise ConsulNotFound(404, _clean(str(exc)), operation) from exc
        except consul.base.ConsulException as exc:
            raise _status_from_consul_exception(exc, operation) from exc
        except requests.RequestException as exc:
            raise self._map_transport_error(exc, operation) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # python-consul2 decodes bodies itself; a non-Consul answer breaks its parsing.
            raise ConsulProtocolError(self.address, operation, type(exc).__name__) from exc

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

        Raises:
            ConsulUnavailable: unreachable or timed out (ConsulTLSError for TLS failures).
            PermissionDenied: HTTP 403.
            ConsulNotFound: HTTP 404 unless ``allow_404``.
            ConsulStatusError: any other status >= 400.
        """
        query: dict[str, Any] = dict(params or {})
        if wait is not None:
            query["wait"] = f"{_wait_seconds(wait):g}s"
        if dc and self.config.datacenter and "dc" not in query:
            query["dc"] = self.config.datacenter
        url = self.config.base_url + path
        try:
            raw = self.session.request(
                method,
                url,
                params=query or None,
                json=json,
                data=data,
                timeout=self.timeout_for(wait),
            )
        except requests.RequestException as exc:
            raise self._map_transport_error(exc, operation) from exc
        response = ConsulResponse.from_requests(raw, address=self.address, operation=operation)
        if response.status < 400 or (response.status == 404 and allow_404):
            return response
        body = _clean(raw.text)
        if response.status == 403:
            raise PermissionDenied(operation)
        if response.status == 404:
            raise ConsulNotFound(404, body, operation)
        raise ConsulStatusError(response.status, body, operation)

    def _map_transport_error(self, exc: requests.RequestException, operation: str) -> ConsulError:
        address = self.address
        if isinstance(exc, requests.exceptions.SSLError):
            return ConsulTLSError(address, _tls_hint(exc))
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            detail = f"connect timed out after {self.config.connect_timeout:g}s ({operation})"
        elif isinstance(exc, requests.exceptions.ReadTimeout):
            detail = f"no answer in time ({operation})"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            text = str(exc).lower()
            reason = "connection refused" if "refused" in text else "connection failed"
            if "reset" in text or "aborted" in text:
                reason = "connection reset"
            detail = f"{reason} ({operation})"
        else:
            detail = f"{type(exc).__name__} ({operation})"
        return ConsulUnavailable(address, detail)

    # -- a few calls every part needs --------------------------------------------------------

    def agent_self(self) -> dict[str, Any]:
        """``/v1/agent/self``: the agent's configuration and member info."""
        result: dict[str, Any] = self.call("read agent self", self._consul.agent.self)
        return result

    def leader(self) -> str:
        """``/v1/status/leader``: the leader's address, or ``""`` when there is none."""
        response = self.request("GET", "/v1/status/leader", operation="read leader", dc=False)
        value = response.json()
        return value if isinstance(value, str) else ""

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self.session.close()

    def __enter__(self) -> ConsulClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConsulClient({self.config.base_url!r})"


def _wait_seconds(wait: Any) -> float:
    if isinstance(wait, int | float):
        return float(wait)
    from lake_mesh_consul._core.durations import parse_duration

    return parse_duration(str(wait))


def _clean(text: str) -> str:
    return text.strip()[:2000]


def _status_from_consul_exception(exc: Exception, operation: str) -> ConsulStatusError:
    # python-consul2 formats its errors as "<code> <body>".
    text = str(exc)
    head, _, body = text.partition(" ")
    code = int(head) if head.isdigit() else 500
    if isinstance(exc, consul.base.BadRequest):
        code = 400
    elif isinstance(exc, consul.base.ACLDisabled):
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
