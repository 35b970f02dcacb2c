"""The narrow interfaces the core's parts use to talk to each other (go-kit style ports).

* The load balancer asks an :class:`EndpointGate` whether an endpoint may be picked right
  now (its breaker is not open, it is not ejected) and tells an :class:`OutcomeRecorder`
  how each request went (the failure detector and breakers listen).
* :class:`EndpointSource` is what a balancer needs from discovery: the current snapshot.

Fakes of these ports (never of Consul's HTTP API) serve the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from lake_mesh_consul._core.endpoint import ServiceEndpoint

__all__ = ["EndpointGate", "EndpointSource", "OutcomeRecorder", "SnapshotListener"]


@runtime_checkable
class EndpointGate(Protocol):
    """Decides whether an endpoint is eligible for a pick right now."""

    def is_available(self, endpoint: ServiceEndpoint) -> bool:
        """False while the endpoint's breaker is open or it is ejected."""
        ...


@runtime_checkable
class OutcomeRecorder(Protocol):
    """Receives the outcome of every request sent to an endpoint."""

    def record(
        self,
        endpoint: ServiceEndpoint,
        *,
        success: bool,
        duration: float,
        error: BaseException | None = None,
        status: int | None = None,
    ) -> None:
        """Record one finished request (``duration`` in seconds)."""
        ...


#: Called with the full new snapshot on each real change.
SnapshotListener = Callable[[Sequence[ServiceEndpoint]], None]


@runtime_checkable
class EndpointSource(Protocol):
    """A live view of one service's endpoints (ServiceDiscovery provides it)."""

    def snapshot(self) -> Sequence[ServiceEndpoint]:
        """The current endpoints, from memory (never a Consul call)."""
        ...

    def subscribe(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener`` on each change; return a function that unsubscribes."""
        ...
