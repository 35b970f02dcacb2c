"""The consul package (python-consul2 or py-consul) behind ``ConsulClient.consul``.

Imported only when :attr:`ConsulClient.consul <lake_mesh_consul._consul.client.ConsulClient.consul>`
or :meth:`~lake_mesh_consul._consul.client.ConsulClient.call` is first used: the adapter's own
calls go through ``ConsulClient.request`` and never need it, so discovery, registration and
``lake-mesh endpoints`` do not pay for its import.

Both distributions install the top-level module ``consul`` with the same API family; this
module builds either one's client over the ConsulClient's session, token header, timeouts and
TLS settings, and names their error classes in one place.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

import consul
import consul.base
import consul.std
import requests

if TYPE_CHECKING:
    from lake_mesh_consul._consul.client import ConsulClient

__all__ = [
    "ACLDisabled",
    "ACLPermissionDenied",
    "BadRequest",
    "ConsulException",
    "NotFound",
    "build_client",
]

#: The consul package's error classes (both distributions export these at top level).
ACLDisabled: type[Exception] = consul.ACLDisabled
ACLPermissionDenied: type[Exception] = consul.ACLPermissionDenied
ConsulException: type[Exception] = consul.ConsulException
NotFound: type[Exception] = consul.NotFound

#: The endpoint groups the adapter builds, by attribute and class name. python-consul2 nests
#: them in ``consul.base.Consul``; py-consul (the maintained fork, same API family) keeps each
#: in ``consul.api.<module>``. Only these are built: the rest are never called.
_GROUPS: tuple[tuple[str, str, str], ...] = (
    # (attribute, class, py-consul module)
    ("agent", "Agent", "agent"),
    ("catalog", "Catalog", "catalog"),
    ("coordinate", "Coordinate", "coordinates"),
    ("event", "Event", "event"),
    ("health", "Health", "health"),
    ("kv", "KV", "kv"),
    ("session", "Session", "session"),
    ("status", "Status", "status"),
    ("txn", "Txn", "txn"),
)

#: HTTP 400 from the consul module: in ``consul.base`` (python-consul2) or
#: ``consul.exceptions`` (py-consul).
BadRequest: type[Exception] = (
    getattr(consul.base, "BadRequest", None)
    or importlib.import_module("consul.exceptions").BadRequest
)


def _endpoint_group(cls_name: str, module: str) -> Any:
    nested = getattr(consul.base.Consul, cls_name, None)
    if isinstance(nested, type):
        return nested  # python-consul2
    return getattr(importlib.import_module(f"consul.api.{module}"), cls_name)  # py-consul


class _HTTPClient(consul.std.HTTPClient):  # type: ignore[misc]
    """The consul module's transport over our session, with a timeout derived per request.

    Works with python-consul2 and py-consul alike: both subclass ``consul.base.HTTPClient``
    with the same constructor and ``get/put/delete/post(callback, path, params, ...)``;
    py-consul adds ``raw`` to ``get`` (snapshots) and an abstract ``close``.
    """

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
        # The consul module opened a session of its own; ours replaces it.
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

    def get(
        self, callback: Any, path: str, params: Any = None, headers: Any = None, raw: bool = False
    ) -> Any:
        uri = self.uri(path, params)
        response = self.session.get(uri, headers=headers, timeout=self._timeout_for(params))
        return callback(self.response(response, raw=True) if raw else self.response(response))

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

    def close(self) -> None:
        """Nothing to do: the session belongs to the ConsulClient, which closes it."""


class _Consul(consul.base.Consul):  # type: ignore[misc]
    """The consul module's client (python-consul2 or py-consul), built without the environment.

    ``consul.base.Consul.__init__`` reads CONSUL_HTTP_ADDR, CONSUL_HTTP_SSL(_VERIFY) and lets
    CONSUL_HTTP_TOKEN override the explicit token (python-consul2 even raises on an address
    it cannot split). We build the endpoint groups of :data:`_GROUPS` from MeshConfig instead,
    and leave ``token`` unset so it is never put in a query string.
    """

    def __init__(self, owner: ConsulClient) -> None:
        config = owner.config
        self.consistency = "default"
        self.dc = config.datacenter
        self.http = _HTTPClient(owner)
        self.scheme = config.scheme
        self.token = None  # the token travels in the session's X-Consul-Token header
        with warnings.catch_warnings():
            # python-consul2 warns while building some groups about APIs we never call;
            # those warnings say nothing about our use.
            warnings.simplefilter("ignore", DeprecationWarning)
            for attribute, cls_name, module in _GROUPS:
                setattr(self, attribute, _endpoint_group(cls_name, module)(self))

    def http_connect(self, *args: Any, **kwargs: Any) -> Any:
        """py-consul's abstract factory; never called (``http`` is set in ``__init__``)."""
        return self.http


def build_client(owner: ConsulClient) -> Any:
    """The consul package's client for ``owner`` (its session, token header and timeouts)."""
    return _Consul(owner)
