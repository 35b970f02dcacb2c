"""Checks a command makes before its real work: is the agent there, is the service known.

Two rules every ``lake-mesh`` command follows (``lake-mesh --help`` and the README say so):

* **A dead agent fails at once.** :func:`reach_agent` asks the agent for its leader (no
  ACL needed) before a command starts waiting for anything, so a refused connection is one
  line and exit 1 as fast as the refusal comes, instead of a discovery timeout later.
* **An unknown service is a failure: exit 1.** A command answering about a service that
  has no instance in Consul's catalog (:func:`require_service`), or an instance id the
  agent does not have (:func:`require_instance`), prints one line and exits 1, whatever
  the command. A *known* service with no eligible instance is an answer, not a failure
  (``endpoints`` exits 0 with an empty list; ``call`` exits 1 because it gets no response).
  ``watch`` is a stream, not an answer: it may start before the service exists and
  reports it appearing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

__all__ = ["UNKNOWN_SERVICE_RULE", "reach_agent", "require_instance", "require_service"]

#: The exit-code rule for an unknown service, as ``--help`` prints it.
UNKNOWN_SERVICE_RULE = (
    "Exit codes: 0 ok, 1 failure, 2 bad usage. A service or instance id that Consul does "
    "not know is a failure on every command that answers about it (endpoints, call, status "
    "NAME, explain, checks, deregister, maint): one line on stderr, exit 1. A known service "
    "with no eligible instance is an answer (endpoints: empty, exit 0; call: no response, "
    "exit 1). `watch` may start before a service exists and reports it appearing. An "
    "unreachable agent fails at once: one line, exit 1."
)


def reach_agent(client: Any) -> None:
    """Ask the agent for its leader, so that a dead agent fails before any wait.

    Raises:
        ConsulUnavailable: the agent cannot be reached (connection refused, TLS...).
        ConsulError: any other failure of that one request.
    """
    client.request("GET", "/v1/status/leader", operation="reach the agent", dc=False)


def require_service(client: Any, name: str, *, datacenter: str | None = None) -> None:
    """Raise unless the catalog has at least one instance of ``name``.

    Raises:
        NoEndpointsAvailable: ``name`` has no instance registered in Consul.
        ConsulError: the catalog could not be read.
    """
    from lake_mesh_consul.errors import NoEndpointsAvailable

    params = {"dc": datacenter} if datacenter else None
    answer = client.request(
        "GET",
        f"/v1/catalog/service/{quote(name, safe='')}",
        operation=f"read the catalog of {name!r}",
        params=params,
    )
    if not answer.json():
        raise NoEndpointsAvailable(name, "no instance registered in Consul")


def require_instance(client: Any, service_id: str) -> None:
    """Raise unless the local agent has a service instance with ``service_id``.

    ``deregister`` of an unknown id would otherwise succeed silently (the agent's own
    answer is idempotent) while ``maint`` of the same id fails: one rule for both.

    Raises:
        ConsulNotFound: the agent has no such instance (404).
        ConsulError: the agent could not be asked.
    """
    from lake_mesh_consul.errors import ConsulNotFound

    answer = client.request(
        "GET",
        f"/v1/agent/service/{quote(service_id, safe='')}",
        operation=f"find service instance {service_id!r}",
        allow_404=True,
        dc=False,
    )
    if answer.status == 404:
        raise ConsulNotFound(
            404, "not registered with this agent", f"service instance {service_id!r}"
        )
