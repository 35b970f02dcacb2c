"""requests integration: a Session that sends service URLs through the mesh.

URL form — which requests go through the mesh::

    http://orders/api/items                 a single-label host without a port
    http://orders.service.consul/api/items  Consul's DNS name of the service
    https://orders/...                      the same over TLS to the picked endpoint

Everything else (``localhost``, IP addresses, dotted names such as ``api.example.com``,
any host with an explicit port) is left alone and sent by the ordinary adapters. With
``services=[...]`` only those single-label names are routed.

What happens to a mesh request (:class:`MeshAdapter`): it goes through the service's route
(``mesh.route(service).call(...)``, see :mod:`lake_mesh_consul._core.route`): each attempt
is admitted (the balancer's pick and the endpoint's breaker permit in one step), the URL's
host is replaced by the endpoint's ``address:port`` and the request goes out through an
ordinary :class:`requests.adapters.HTTPAdapter` (connection pooling, TLS, streaming as usual)
with the per-try timeout. The status is classified once and reported once: the balancer's
latency and load figures, the failure detector and the breaker.
A failure is retried on another endpoint when the service's RetryPolicy allows it:
transport errors, timeouts, 502/503/504 and 429 (honouring ``Retry-After``) — for
idempotent methods only (GET, HEAD, PUT, DELETE, OPTIONS, TRACE), except a failure to
connect, which never reached the server. Bodies that cannot be replayed (generators, files)
are never retried.

Decisions, so that the whole requests API keeps working:

* **Host header**: the logical host (``orders``) is sent as ``Host``, as a proxy that
  preserves the host would (Envoy's default); a ``Host`` header set by the caller wins;
  ``preserve_host=False`` sends the endpoint's ``address:port`` instead.
* **Response URL**: ``response.url`` and ``response.request`` keep the logical URL, so
  relative redirects, cookies and auth handlers (digest) go through the mesh again;
  :func:`endpoint_of` tells which endpoint served a response.
* **Timeouts**: the request's ``timeout`` (a number or a ``(connect, read)`` pair) is
  capped by the attempt's budget: the service's ``per_try_timeout`` and what is left of its
  ``deadline``.
* **Proxies** do not apply to mesh requests (they go straight to the endpoint), so
  :class:`MeshSession` does not look the environment's proxy settings up for them (requests
  scans ``os.environ`` twice per request for that); ``REQUESTS_CA_BUNDLE`` and
  ``CURL_CA_BUNDLE`` still apply, as do ``.netrc`` credentials for the service's name.
* **Errors** subclass both requests' exceptions and the mesh's tree, so
  ``except requests.RequestException`` and ``except lake_mesh_consul.errors.MeshError``
  both work: :class:`MeshNoEndpoints`, :class:`MeshCircuitOpen`,
  :class:`MeshRetryExhausted` (:class:`MeshRetryTimeout` when the last attempt timed
  out), :class:`MeshDeadlineExceeded` and :class:`MeshDiscoveryTimeout`. An error that is
  not retriable (e.g. an SSL error) is raised as requests raised it.
* **Final responses**: when attempts run out on a retriable status (a 503), that last
  response is returned, as requests would return it without a mesh.
"""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
from requests.models import PreparedRequest, Response
from requests.sessions import merge_setting as _merge_setting

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import CallOptions
from lake_mesh_consul._core.retry_after import parse_retry_after
from lake_mesh_consul._routing import (
    ErrorTree,
    in_tree,
    service_of,
    service_of_netloc,
    split_url,
)
from lake_mesh_consul.errors import (
    CircuitOpen,
    DeadlineExceeded,
    DiscoveryTimeout,
    NoEndpointsAvailable,
    RetryExhausted,
)

if TYPE_CHECKING:
    from requests.sessions import _Settings

    from lake_mesh_consul.mesh import Mesh

#: requests' own merge of a request setting with the session's (untyped in its stubs).
_merge: Callable[..., Any] = _merge_setting

__all__ = [
    "MeshAdapter",
    "MeshCircuitOpen",
    "MeshDeadlineExceeded",
    "MeshDiscoveryTimeout",
    "MeshNoEndpoints",
    "MeshRetryExhausted",
    "MeshRetryTimeout",
    "MeshSession",
    "endpoint_of",
    "service_of",
]

#: Hosts whose routing decision is cached (the parse is per request otherwise).
_CACHE_SIZE = 4096
#: The attribute of a Response that holds the endpoint that served it.
_ENDPOINT_ATTR = "mesh_endpoint"
#: Bodies that can be sent again (a tuple: ``bytes | str`` would build a union per request).
_REPLAYABLE = (bytes, str)


# --- errors: both trees ----------------------------------------------------------------------


class MeshNoEndpoints(NoEndpointsAvailable, requests.ConnectionError):
    """No endpoint of the service could be picked (a ``requests.ConnectionError`` too)."""


class MeshCircuitOpen(CircuitOpen, requests.ConnectionError):
    """The breaker refused the request without sending it (a ``requests.ConnectionError``)."""


class MeshRetryExhausted(RetryExhausted, requests.ConnectionError):
    """Every allowed attempt failed; ``.attempts`` has each (a ``requests.ConnectionError``)."""


class MeshRetryTimeout(MeshRetryExhausted, requests.Timeout):
    """Every allowed attempt failed, the last one by timing out (a ``requests.Timeout`` too)."""


class MeshDeadlineExceeded(DeadlineExceeded, requests.Timeout):
    """The service's overall deadline ran out (a ``requests.Timeout`` too)."""


class MeshDiscoveryTimeout(DiscoveryTimeout, requests.ConnectionError):
    """Consul did not answer for the service in time (a ``requests.ConnectionError`` too)."""


#: The mesh's errors in requests' tree.
_TREE: ErrorTree[requests.RequestException] = ErrorTree(
    MeshNoEndpoints,
    MeshCircuitOpen,
    MeshRetryExhausted,
    MeshRetryTimeout,
    MeshDeadlineExceeded,
    MeshDiscoveryTimeout,
    timeouts=(requests.Timeout, TimeoutError),
)


def _mapped(exc: BaseException, request: PreparedRequest) -> requests.RequestException | None:
    """Our error in both trees, or None when ``exc`` is not one the mesh raised."""
    error = in_tree(exc, _TREE)
    if error is not None:
        error.request = request
    return error


# --- which URLs are ours: lake_mesh_consul._routing (shared with the httpx transports) ------


def endpoint_of(response: Response) -> ServiceEndpoint | None:
    """The endpoint that served ``response`` (None if it did not go through the mesh)."""
    endpoint = getattr(response, _ENDPOINT_ATTR, None)
    return endpoint if isinstance(endpoint, ServiceEndpoint) else None


def _cap(timeout: Any, attempt: float | None) -> Any:
    """The request's timeout capped by the attempt's seconds."""
    if attempt is None:
        return timeout
    if timeout is None:
        return attempt
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (
            attempt if connect is None else min(float(connect), attempt),
            attempt if read is None else min(float(read), attempt),
        )
    if isinstance(timeout, int | float):
        return min(float(timeout), attempt)
    return timeout  # a urllib3 Timeout object: the caller's own choice


# --- the adapter -----------------------------------------------------------------------------


class MeshAdapter(requests.adapters.BaseAdapter):
    """A transport adapter that sends mesh URLs to endpoints picked by a :class:`Mesh`.

    Mount it yourself (``session.mount("http://orders", adapter)``) or use
    :class:`MeshSession`, which routes every mesh URL (see the module docstring) to it.

    Args:
        mesh: the mesh that owns discovery, balancers, breakers and retry settings.
        preserve_host: send the logical host as ``Host`` (default) or the endpoint's.
        services: only route these single-label names (default: any single-label host).
        inner: the HTTPAdapter that sends each attempt (default: a new one, pooled).

    Thread-safety: like requests' own adapters, safe to share between threads.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        preserve_host: bool = True,
        services: Iterable[str] | None = None,
        inner: requests.adapters.HTTPAdapter | None = None,
    ) -> None:
        super().__init__()
        self.mesh = mesh
        self.preserve_host = preserve_host
        self.services = frozenset(s.lower() for s in services) if services is not None else None
        self.inner = inner or requests.adapters.HTTPAdapter(pool_maxsize=32)
        self._routes: dict[str, str | None] = {}
        self._routes_lock = threading.Lock()
        #: ``(url, parts, service)`` of the URL routed last: MeshSession.get_adapter and
        #: then send() ask about the same ``request.url`` object; replaced atomically.
        self._last: tuple[str, tuple[str, str, str] | None, str | None] = ("", None, None)
        clock = mesh.clock

        def retry_after(response: Response) -> float | None:
            value = response.headers.get("Retry-After")
            return None if value is None else parse_retry_after(value, now=clock.time())

        self._retry_after = retry_after

    def service_for(self, url: str) -> str | None:
        """The service ``url`` names, or None (cached per host)."""
        return self._route(url)[1]

    def _route(self, url: str) -> tuple[tuple[str, str, str] | None, str | None]:
        """``(parts, service)`` of ``url`` (the last URL and every host are cached)."""
        last = self._last
        if last[0] is url:
            return last[1], last[2]
        parts = split_url(url)
        if parts is None:
            return None, None
        netloc = parts[1]
        try:
            service = self._routes[netloc]
        except KeyError:  # first sight of this host
            service = service_of_netloc(netloc, self.services)
            with self._routes_lock:
                if len(self._routes) >= _CACHE_SIZE:
                    self._routes.clear()
                self._routes[netloc] = service
        self._last = (url, parts, service)
        return parts, service

    def send(  # noqa: PLR0917 - requests' adapter signature
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        """Send ``request`` through the mesh (see the module docstring).

        Raises:
            MeshNoEndpoints, MeshCircuitOpen, MeshRetryExhausted, MeshRetryTimeout,
            MeshDeadlineExceeded, MeshDiscoveryTimeout: the mesh's errors, in both trees.
            requests.RequestException: a non-retriable transport error, as requests raised it.
            requests.exceptions.InvalidURL: ``request.url`` is not a mesh URL.
        """
        url = request.url or ""
        last = self._last  # get_adapter asked about this very URL object just before
        if last[0] is url:
            parts, service = last[1], last[2]
        else:
            parts, service = self._route(url)
        if parts is None or service is None:
            raise requests.exceptions.InvalidURL(f"not a mesh URL: {url!r}", request=request)
        scheme, netloc, rest = parts
        send = self.inner.send
        headers = request.headers
        logical_host = netloc.rpartition("@")[2]
        set_host = self.preserve_host and "Host" not in headers
        # ``verify`` only applies to TLS: a plain-http attempt sends ``True`` so that requests
        # does not stat a CA-bundle path (REQUESTS_CA_BUNDLE) on every attempt for nothing.
        attempt_verify = verify if scheme == "https" else True
        responses: list[Response] = []

        def attempt(endpoint: ServiceEndpoint, seconds: float | None) -> Response:
            request.url = f"{scheme}://{endpoint.host_port}{rest}"
            if set_host:
                headers["Host"] = logical_host
            if seconds is None:
                capped = timeout
            elif timeout.__class__ is float or timeout.__class__ is int:  # the usual case
                capped = float(timeout) if timeout < seconds else seconds
            else:
                capped = _cap(timeout, seconds)
            try:
                response = send(
                    request,
                    stream=stream,
                    timeout=capped,
                    verify=attempt_verify,
                    cert=cert,
                    proxies=None,
                )
            finally:
                request.url = url
                if set_host:
                    del headers["Host"]
            response.url = url
            response.request = request
            response.mesh_endpoint = endpoint  # type: ignore[attr-defined]  # endpoint_of()
            responses.append(response)
            return response

        body = request.body
        try:
            route = self.mesh.route(service)
            options = CallOptions(
                idempotent=route.retry_policy.is_idempotent(request.method, None),
                status_of=_status,
                retry_after_of=self._retry_after,
                replayable=body is None or isinstance(body, _REPLAYABLE),
            )
            result = route.call(attempt, options)
        except requests.RequestException:
            raise
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is None:
                raise
            raise mapped from (exc.__cause__ or exc)
        finally:
            if len(responses) > 1:
                _close_others(responses)
        return result

    def close(self) -> None:
        """Close the inner adapter's connection pools (not the mesh)."""
        self.inner.close()


#: The HTTP status of a response (a C-level getter: called on every attempt).
_status: Callable[[Response], int] = operator.attrgetter("status_code")


def _close_others(responses: list[Response]) -> None:
    for response in responses[:-1]:
        response.close()


class MeshSession(requests.Session):
    """A ``requests.Session`` whose service URLs go through the mesh; others go as usual.

    Args:
        mesh: the :class:`~lake_mesh_consul.mesh.Mesh` to route through. When omitted the
            session builds one from the environment (``Mesh.from_env()``), starts it, and
            closes it with the session.
        preserve_host: send the logical host as ``Host`` (default) or the endpoint's.
        services: only route these single-label names (default: any single-label host).

    The whole requests API keeps working: headers, auth, cookies, hooks, streaming,
    redirects (relative ones go through the mesh again). See the module docstring for the
    URL form, retries, timeouts and errors.

    Thread-safety: as ``requests.Session`` (sharing one between threads is common practice
    and works for plain requests; cookies are the usual caveat).

    Example::

        with Mesh.from_env() as mesh, mesh.session() as http:
            items = http.get("http://inventory/api/items", timeout=2).json()
            try:
                http.post("http://orders/api/orders", json=order)   # never retried
            except requests.RequestException as exc:                 # our errors too
                log.warning("order failed: %s", exc)
    """

    def __init__(
        self,
        mesh: Mesh | None = None,
        *,
        preserve_host: bool = True,
        services: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        self._owns_mesh = mesh is None
        if mesh is None:
            from lake_mesh_consul.mesh import Mesh

            mesh = Mesh.from_env().start()
        self.mesh = mesh
        self.mesh_adapter = MeshAdapter(mesh, preserve_host=preserve_host, services=services)

    def get_adapter(self, url: str) -> requests.adapters.BaseAdapter:
        """The mesh adapter for mesh URLs, else the mounted adapter (requests' rule)."""
        if self.mesh_adapter.service_for(url) is not None:
            return self.mesh_adapter
        return super().get_adapter(url)

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> _Settings:
        """Merge settings as requests does, minus the proxy lookup for mesh URLs.

        Other URLs get requests' own behaviour unchanged.
        """
        if (
            not self.trust_env
            or not isinstance(url, str)
            or self.mesh_adapter.service_for(url) is None
        ):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is True or verify is None:  # requests' CA-bundle rule, as it does it
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
            )
        return {
            "proxies": _merge(proxies, self.proxies),
            "stream": _merge(stream, self.stream),
            "verify": _merge(verify, self.verify),
            "cert": _merge(cert, self.cert),
        }

    def close(self) -> None:
        """Close the connection pools (and the mesh if the session built it)."""
        super().close()
        self.mesh_adapter.close()
        if self._owns_mesh:
            self.mesh.close()
