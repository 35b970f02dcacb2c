"""httpx integration: transports that send service URLs through the mesh.

Install with ``pip install 'lake-mesh-consul[httpx]'``. ``import lake_mesh_consul`` does not
import httpx; this module does.

    async with Mesh.from_env() as mesh, httpx.AsyncClient(
        transport=AsyncMeshTransport(mesh)
    ) as http:
        items = (await http.get("http://inventory/api/items", timeout=2)).json()

URL form, exactly as :class:`lake_mesh_consul.http.MeshSession` (see
:mod:`lake_mesh_consul._routing`): ``http://orders/...`` and
``http://orders.service.consul/...`` go through the mesh; every other URL (``localhost``,
IP addresses, dotted names, any host with a port) goes to the wrapped transport unchanged.

What happens to a mesh request: it goes through the service's route (``Route.call`` for
:class:`MeshTransport`, ``Route.acall`` for :class:`AsyncMeshTransport`: one admission, one
retry loop, shared with every other caller of the service). Each attempt is admitted (the
balancer's pick and the endpoint's breaker permit), the URL's host becomes the endpoint's
``address:port`` and the request goes out through the wrapped transport (pooling, TLS, HTTP/2
as configured there) with the request's timeouts capped by the attempt's seconds (the
service's ``per_try_timeout`` and what is left of its ``deadline``). The status is classified
once and reported once. A failure is retried on another endpoint when the service's
RetryPolicy allows it: transport errors, timeouts, 502/503/504 and 429 (honouring
``Retry-After``), for idempotent methods only, except a failure to connect, which never
reached the server; a body that cannot be replayed (a generator) is never retried.

Decisions:

* **Host header**: httpx sets ``Host`` from the logical URL (``orders``), and it stays: a
  proxy that preserves the host would send the same (Envoy's default); a ``Host`` set by the
  caller is kept too. ``preserve_host=False`` sends the endpoint's ``address:port`` instead.
* **Response**: ``response.request`` and ``response.url`` keep the logical URL (redirects
  and cookies go through the mesh again); :func:`endpoint_of` tells which endpoint served it.
* **Errors** belong to both trees, so ``except httpx.TransportError`` and
  ``except lake_mesh_consul.errors.MeshError`` both work: :class:`MeshNoEndpoints`,
  :class:`MeshCircuitOpen`, :class:`MeshRetryExhausted`, :class:`MeshDiscoveryTimeout`
  (``httpx.ConnectError`` too), :class:`MeshRetryTimeout` and :class:`MeshDeadlineExceeded`
  (``httpx.TimeoutException`` too). An error that is not retriable is raised as httpx raised it.
* **Final responses**: when attempts run out on a retriable status (a 503), that last
  response is returned; earlier ones are closed.
* **Cancellation** (:class:`AsyncMeshTransport`): a cancelled request releases its breaker
  permit and outstanding count, records no outcome, and ``asyncio.CancelledError``
  propagates unchanged.
* **The event loop never blocks**: the first request to a service waits for Consul's first
  answer in a worker thread (:meth:`lake_mesh_consul.mesh.Mesh.aroute`); afterwards a
  request only reads the route's immutable snapshots.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import httpx

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import CallOptions
from lake_mesh_consul._core.retry_after import parse_retry_after
from lake_mesh_consul._routing import ErrorTree, in_tree, service_of_netloc
from lake_mesh_consul.errors import (
    CircuitOpen,
    DeadlineExceeded,
    DiscoveryTimeout,
    NoEndpointsAvailable,
    RetryExhausted,
)

if TYPE_CHECKING:
    from lake_mesh_consul._core.route import Route
    from lake_mesh_consul.mesh import Mesh

__all__ = [
    "AsyncMeshTransport",
    "MeshCircuitOpen",
    "MeshDeadlineExceeded",
    "MeshDiscoveryTimeout",
    "MeshNoEndpoints",
    "MeshRetryExhausted",
    "MeshRetryTimeout",
    "MeshTransport",
    "endpoint_of",
]

#: The key of ``response.extensions`` that holds the endpoint that served it.
ENDPOINT_EXTENSION = "mesh_endpoint"
#: Hosts whose routing decision is cached.
_CACHE_SIZE = 4096
#: The timeout phases of httpx's ``timeout`` request extension.
_PHASES = ("connect", "read", "write", "pool")


# --- errors: both trees ----------------------------------------------------------------------


class MeshNoEndpoints(NoEndpointsAvailable, httpx.ConnectError):
    """No endpoint of the service could be picked (an ``httpx.ConnectError`` too)."""


class MeshCircuitOpen(CircuitOpen, httpx.ConnectError):
    """The breaker refused the request without sending it (an ``httpx.ConnectError`` too)."""


class MeshRetryExhausted(RetryExhausted, httpx.ConnectError):
    """Every allowed attempt failed; ``.attempts`` has each (an ``httpx.ConnectError`` too)."""


class MeshRetryTimeout(RetryExhausted, httpx.TimeoutException):
    """Every allowed attempt failed, the last by timing out (an ``httpx.TimeoutException``)."""


class MeshDeadlineExceeded(DeadlineExceeded, httpx.TimeoutException):
    """The service's overall deadline ran out (an ``httpx.TimeoutException`` too)."""


class MeshDiscoveryTimeout(DiscoveryTimeout, httpx.ConnectError):
    """Consul did not answer for the service in time (an ``httpx.ConnectError`` too)."""


#: The mesh's errors in httpx's tree.
_TREE: ErrorTree[httpx.TransportError] = ErrorTree(
    MeshNoEndpoints,
    MeshCircuitOpen,
    MeshRetryExhausted,
    MeshRetryTimeout,
    MeshDeadlineExceeded,
    MeshDiscoveryTimeout,
    timeouts=(httpx.TimeoutException, TimeoutError),
)


def _mapped(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """Our error in both trees, or None when ``exc`` is not one the mesh raised."""
    error = in_tree(exc, _TREE)
    if error is not None:
        error.request = request
    return error


def endpoint_of(response: httpx.Response) -> ServiceEndpoint | None:
    """The endpoint that served ``response`` (None if it did not go through the mesh)."""
    endpoint = response.extensions.get(ENDPOINT_EXTENSION)
    return endpoint if isinstance(endpoint, ServiceEndpoint) else None


#: The HTTP status of a response (called on every attempt).
_status: Callable[[httpx.Response], int] = operator.attrgetter("status_code")


def _capped_timeouts(timeouts: Any, seconds: float | None) -> Any:
    """The ``timeout`` extension (a dict of phases) with each phase capped by ``seconds``."""
    if seconds is None:
        return timeouts
    if not isinstance(timeouts, dict):
        return dict.fromkeys(_PHASES, seconds)
    return {
        phase: seconds if value is None else min(float(value), seconds)
        for phase, value in timeouts.items()
    }


class _Router:
    """The routing and per-attempt rewriting both transports share (no I/O of its own)."""

    def __init__(self, mesh: Mesh, preserve_host: bool, services: Iterable[str] | None) -> None:
        self.mesh = mesh
        self.preserve_host = preserve_host
        self.services = frozenset(s.lower() for s in services) if services is not None else None
        self._routes: dict[bytes, str | None] = {}
        self._routes_lock = threading.Lock()
        #: ``(address, port, scheme, raw_path)`` -> the URL an attempt is sent to.
        self._targets: dict[tuple[str, int, str, bytes], httpx.URL] = {}
        clock = mesh.clock

        def retry_after(response: httpx.Response) -> float | None:
            value = response.headers.get("Retry-After")
            return None if value is None else parse_retry_after(value, now=clock.time())

        self.retry_after = retry_after

    def service_for(self, url: httpx.URL) -> str | None:
        """The service ``url`` names, or None (cached per netloc)."""
        if url.scheme not in ("http", "https"):
            return None
        netloc = url.netloc
        try:
            return self._routes[netloc]
        except KeyError:
            service = service_of_netloc(netloc.decode("ascii", "replace"), self.services)
            with self._routes_lock:
                if len(self._routes) >= _CACHE_SIZE:
                    self._routes.clear()
                self._routes[netloc] = service
            return service

    def options(self, route: Route, request: httpx.Request) -> CallOptions:
        """The call's options: idempotency from the method, status, Retry-After, replay."""
        return CallOptions(
            idempotent=route.retry_policy.is_idempotent(request.method, None),
            status_of=_status,
            retry_after_of=self.retry_after,
            replayable=isinstance(request.stream, httpx.ByteStream),
        )

    def prepare(
        self, request: httpx.Request, endpoint: ServiceEndpoint, seconds: float | None
    ) -> tuple[httpx.URL, Any, str | None]:
        """Point ``request`` at ``endpoint`` for one attempt; returns what :meth:`restore` needs."""
        url = request.url
        timeouts = request.extensions.get("timeout")
        host = None if self.preserve_host else request.headers.get("Host")
        request.url = self._target(url, endpoint)
        if seconds is not None:
            request.extensions["timeout"] = _capped_timeouts(timeouts, seconds)
        if host is not None and host == url.netloc.decode("ascii", "replace"):
            request.headers["Host"] = endpoint.host_port
        return url, timeouts, host

    def _target(self, url: httpx.URL, endpoint: ServiceEndpoint) -> httpx.URL:
        """``url`` as sent to ``endpoint`` (cached per endpoint and path).

        httpx builds a URL in tens of microseconds, more than the rest of the mesh's path,
        and a service's paths repeat; userinfo and fragment are never sent, so not kept.
        """
        scheme, raw_path = url.scheme, url.raw_path
        key = (endpoint.address, endpoint.port, scheme, raw_path)
        target = self._targets.get(key)
        if target is None:
            target = httpx.URL(
                scheme=scheme, host=endpoint.address, port=endpoint.port, raw_path=raw_path
            )
            if len(self._targets) >= _CACHE_SIZE:
                self._targets.clear()  # a dict's clear and set are atomic: no lock needed
            self._targets[key] = target
        return target

    @staticmethod
    def restore(request: httpx.Request, saved: tuple[httpx.URL, Any, str | None]) -> None:
        """Put the logical URL, timeouts and Host header back after an attempt."""
        url, timeouts, host = saved
        request.url = url
        if timeouts is None:
            request.extensions.pop("timeout", None)
        else:
            request.extensions["timeout"] = timeouts
        if host is not None:
            request.headers["Host"] = host


# --- the transports -------------------------------------------------------------------------


class MeshTransport(httpx.BaseTransport):
    """An ``httpx.Client`` transport that sends mesh URLs to endpoints picked by a Mesh.

    Args:
        mesh: the started :class:`~lake_mesh_consul.mesh.Mesh` (discovery, breakers,
            retry settings).
        inner: the transport that sends each attempt and every non-mesh request (default:
            a new ``httpx.HTTPTransport()``); closed with this transport.
        preserve_host: send the logical host as ``Host`` (default) or the endpoint's.
        services: only route these single-label names (default: any single-label host).

    Raises (from :meth:`handle_request`): the mesh's errors in both trees (see the module
    docstring); a non-retriable ``httpx.TransportError`` as the inner transport raised it.

    Thread-safety: as httpx's own transports, safe to share between threads.

    Example::

        with httpx.Client(transport=MeshTransport(mesh)) as http:
            http.get("http://inventory/api/items").json()
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        inner: httpx.BaseTransport | None = None,
        preserve_host: bool = True,
        services: Iterable[str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self._router = _Router(mesh, preserve_host, services)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``: through the mesh when its URL names a service, else as is."""
        service = self._router.service_for(request.url)
        if service is None:
            return self.inner.handle_request(request)
        router = self._router
        send = self.inner.handle_request
        responses: list[httpx.Response] = []

        def attempt(endpoint: ServiceEndpoint, seconds: float | None) -> httpx.Response:
            saved = router.prepare(request, endpoint, seconds)
            try:
                response = send(request)
            finally:
                router.restore(request, saved)
            response.extensions[ENDPOINT_EXTENSION] = endpoint
            responses.append(response)
            return response

        result: httpx.Response | None = None
        try:
            route = self.mesh.route(service)
            result = route.call(attempt, router.options(route, request))
            return result
        except httpx.TransportError:
            raise
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is None:
                raise
            raise mapped from (exc.__cause__ or exc)
        finally:
            for response in responses:
                if response is not result:  # retried, or the call failed after it
                    response.close()

    def close(self) -> None:
        """Close the inner transport (not the mesh)."""
        self.inner.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport that sends mesh URLs through the mesh.

    The same rules as :class:`MeshTransport`, with each attempt and backoff awaited
    (``Route.acall``). Admission (pick and breaker permit) runs without an ``await`` in
    between, so a half-open breaker admits exactly its probes however many tasks send at
    once. A cancelled request (``asyncio.timeout``, ``task.cancel()``) releases its permit
    and outstanding count, records no outcome, and the ``CancelledError`` propagates.

    Args:
        mesh: the :class:`~lake_mesh_consul.mesh.Mesh` (``async with mesh`` starts it in a
            worker thread).
        inner: the transport that sends each attempt and every non-mesh request (default:
            a new ``httpx.AsyncHTTPTransport()``); closed with this transport.
        preserve_host: send the logical host as ``Host`` (default) or the endpoint's.
        services: only route these single-label names (default: any single-label host).

    Thread-safety: use it from one event loop, as httpx's async transports.

    Example::

        async with Mesh.from_env() as mesh, httpx.AsyncClient(
            transport=AsyncMeshTransport(mesh)
        ) as http:
            items = (await http.get("http://inventory/api/items")).json()
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        preserve_host: bool = True,
        services: Iterable[str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._router = _Router(mesh, preserve_host, services)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``: through the mesh when its URL names a service, else as is."""
        service = self._router.service_for(request.url)
        if service is None:
            return await self.inner.handle_async_request(request)
        router = self._router
        send = self.inner.handle_async_request
        responses: list[httpx.Response] = []

        async def attempt(endpoint: ServiceEndpoint, seconds: float | None) -> httpx.Response:
            saved = router.prepare(request, endpoint, seconds)
            try:
                response = await send(request)
            finally:
                router.restore(request, saved)
            response.extensions[ENDPOINT_EXTENSION] = endpoint
            responses.append(response)
            return response

        result: httpx.Response | None = None
        try:
            route = await self.mesh.aroute(service)
            result = await route.acall(attempt, router.options(route, request))
            return result
        except httpx.TransportError:
            raise
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is None:
                raise
            raise mapped from (exc.__cause__ or exc)
        finally:
            for response in responses:
                if response is not result:  # retried, or the call failed after it
                    await response.aclose()

    async def aclose(self) -> None:
        """Close the inner transport (not the mesh)."""
        await self.inner.aclose()
