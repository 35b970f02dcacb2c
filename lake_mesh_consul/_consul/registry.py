"""ServiceRegistry: register, drain and keep registered through the local agent's API.

This module owns Consul's JSON spelling of :class:`~lake_mesh_consul._core.registration.
ServiceMetadata` and its checks (:func:`encode_service`, :func:`encode_check`) and the agent
endpoints used for them:

* ``PUT /v1/agent/service/register?replace-existing-checks=true`` (several checks, Weights);
* ``PUT /v1/agent/service/deregister/<id>``;
* ``PUT /v1/agent/service/maintenance/<id>?enable=...&reason=...``;
* ``PUT /v1/agent/check/update/<check id>`` (TTL updates, for the HealthCheckManager);
* ``GET /v1/agent/service/<id>`` (anti-entropy: does the agent still know us?).

The lifecycle it adds over a bare registration call:

* **startup retry**: :meth:`ServiceRegistry.register` against an agent that is not up yet
  retries with jittered exponential backoff (tenacity, through
  :func:`~lake_mesh_consul._core.retry.retry_until`) up to ``startup_timeout``, then raises
  :class:`~lake_mesh_consul.errors.ConsulUnavailable` naming the address; ``fail_fast=True``
  raises at once.
* **re-registration**: a daemon thread asks the agent every ``anti_entropy_interval`` whether
  it still knows each owned service (and is woken at once when a TTL update finds a check
  unknown); a service the agent forgot (restarted with its state wiped, as ``-dev`` does) is
  registered again with all its checks, its last reported TTL statuses and its maintenance.
* **drain**: maintenance on -> ``drain_grace`` seconds for consumers' watches to notice ->
  deregister. :meth:`ServiceRegistry.close` and leaving a ``with`` block drain by default;
  :meth:`ServiceRegistry.install_shutdown_hooks` does the same on SIGTERM and at exit.
  A drain always finishes: its agent calls share a budget of :data:`DRAIN_CALL_BUDGET`
  seconds beyond the grace (each call gets what is left as its overall deadline), and when no
  maintenance call got through (agent down or hung) the grace is not waited out, since no
  consumer could see it. ``close()`` returns within ``drain_grace + 2`` seconds.
* **deadlines**: every agent call has an overall deadline (the client's, or what is left of
  ``startup_timeout`` / the drain budget), not only a per-read timeout: an agent that trickles
  its answer cannot hold :meth:`ServiceRegistry.register` past ``startup_timeout``.
* **register racing close**: a registration that completes after ``close()`` began is
  deregistered again at once and raises :class:`~lake_mesh_consul.errors.MeshError`;
  ``close()`` waits (within its bound) for registrations in flight, so none lands after it.

Consul 1.8 notes (checked against a 1.8.7 agent): an HTTP check's ``TLSServerName`` is
rejected with HTTP 400 (it arrived in Consul 1.10), so it is only sent when set; script
checks registered over HTTP need ``enable_script_checks`` (HTTP 500 otherwise); a TTL update
for an unknown check is answered 500 "does not have associated TTL", not 404, and is
treated as "the agent forgot us".
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import random
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.durations import format_duration
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.names import check_service_name
from lake_mesh_consul._core.retry import retry_until
from lake_mesh_consul._shutdown import ShutdownHook
from lake_mesh_consul.errors import (
    ConsulError,
    ConsulNotFound,
    ConsulStatusError,
    ConsulTLSError,
    ConsulUnavailable,
    InvalidSetting,
    MeshError,
)

if TYPE_CHECKING:
    from lake_mesh_consul._core.registration import Check, ServiceMetadata

__all__ = [
    "DEFAULT_ANTI_ENTROPY_INTERVAL",
    "DEFAULT_DRAIN_GRACE",
    "DEFAULT_STARTUP_TIMEOUT",
    "DRAIN_CALL_BUDGET",
    "ServiceRegistry",
    "encode_check",
    "encode_service",
]

log = logging.getLogger("lake_mesh_consul.registry")

T = TypeVar("T")

#: Seconds between maintenance-on and deregistration when draining.
DEFAULT_DRAIN_GRACE = 2.0
#: Seconds between two "does the agent still know us?" checks.
DEFAULT_ANTI_ENTROPY_INTERVAL = 2.0
#: Seconds register() keeps retrying an agent that does not answer.
DEFAULT_STARTUP_TIMEOUT = 30.0
#: First backoff step of the startup retry (seconds, doubled on each attempt).
STARTUP_BACKOFF_BASE = 0.1
#: Longest pause between two startup attempts.
STARTUP_BACKOFF_CAP = 2.0
#: Pause of the anti-entropy loop while the agent does not answer (so that a returning
#: agent is noticed well within the 5 s promise).
UNAVAILABLE_POLL = 0.5
#: Longest a close() waits for the background thread.
CLOSE_JOIN_TIMEOUT = 0.9
#: Seconds a drain may spend in agent calls beyond its grace: half for turning maintenance
#: on, half for deregistering (what one phase leaves unused is not carried over).
DRAIN_CALL_BUDGET = 1.2
#: Seconds close() waits for registrations in flight (each then deregisters itself).
CLOSE_REGISTRATION_WAIT = 0.5

#: Substrings of Consul's answers that mean "no such check" on a TTL update (1.8 answers
#: 500 "CheckID ... does not have associated TTL"; newer agents 404 "Unknown check ID").
_UNKNOWN_CHECK_MARKERS = ("does not have associated ttl", "unknown check")


# --- Consul's JSON spelling --------------------------------------------------------------------


def encode_check(check: Check, *, status: HealthStatus | None = None) -> dict[str, Any]:
    """The agent API's JSON for ``check`` (``status`` overrides its initial status)."""
    # Here, not at the top: the check dataclasses cost import time that only registering uses.
    from lake_mesh_consul._core.registration import (
        AliasCheck,
        GrpcCheck,
        HttpCheck,
        ScriptCheck,
        TcpCheck,
        TtlCheck,
    )

    body: dict[str, Any] = {"CheckID": check.id, "Name": check.display_name}
    if check.notes:
        body["Notes"] = check.notes
    initial = status or check.status
    if initial is not None:
        body["Status"] = initial.value
    if check.interval is not None:
        body["Interval"] = format_duration(check.interval)
    if check.timeout is not None:
        body["Timeout"] = format_duration(check.timeout)
    if check.deregister_critical_service_after is not None:
        body["DeregisterCriticalServiceAfter"] = format_duration(
            check.deregister_critical_service_after
        )
    if check.success_before_passing:
        body["SuccessBeforePassing"] = check.success_before_passing
    if check.failures_before_critical:
        body["FailuresBeforeCritical"] = check.failures_before_critical
    if isinstance(check, HttpCheck):
        body["HTTP"] = check.url
        body["Method"] = check.method
        if check.headers:
            body["Header"] = {k: list(v) for k, v in check.headers.items()}
        if check.body is not None:
            body["Body"] = check.body
        if check.tls_skip_verify:
            body["TLSSkipVerify"] = True
        if check.tls_server_name:
            body["TLSServerName"] = check.tls_server_name
    elif isinstance(check, TcpCheck):
        body["TCP"] = check.address
    elif isinstance(check, GrpcCheck):
        body["GRPC"] = check.target
        body["GRPCUseTLS"] = check.use_tls
        if check.tls_skip_verify:
            body["TLSSkipVerify"] = True
    elif isinstance(check, TtlCheck):
        body["TTL"] = format_duration(check.ttl)
    elif isinstance(check, AliasCheck):
        body["AliasService"] = check.service_id
        if check.node:
            body["AliasNode"] = check.node
    elif isinstance(check, ScriptCheck):
        body["Args"] = list(check.args)
    return body


def encode_service(
    meta: ServiceMetadata, *, statuses: Mapping[str, HealthStatus] | None = None
) -> dict[str, Any]:
    """The body of ``/v1/agent/service/register`` for ``meta``.

    ``statuses`` gives initial statuses by check id (used on re-registration so that a TTL
    check comes back as it was last reported, not critical).
    """
    statuses = statuses or {}
    body: dict[str, Any] = {
        "ID": meta.id,
        "Name": meta.name,
        "Port": meta.port,
        "Tags": list(meta.tags),
        "Meta": dict(meta.meta),
        "Weights": {"Passing": meta.weights.passing, "Warning": meta.weights.warning},
        "EnableTagOverride": meta.enable_tag_override,
        "Checks": [encode_check(c, status=statuses.get(c.id or "")) for c in meta.checks],
    }
    if meta.address:
        body["Address"] = meta.address
    return body


# --- the registry ------------------------------------------------------------------------------


@dataclass
class _Owned:
    """What the registry remembers of a service it registered."""

    metadata: ServiceMetadata
    maintenance: str | None = None  # the reason while maintenance is on
    ttl_status: dict[str, HealthStatus] = field(default_factory=dict)
    registrations: int = 0


class ServiceRegistry:
    """Registers services with the local Consul agent and keeps them registered.

    Args:
        config: a MeshConfig, a ConsulClient to share (not closed by the registry), or
            ``None`` for ``MeshConfig.from_env()``.
        clock: time and waiting (inject a FakeClock in tests).
        rng: randomness for backoff jitter.
        fail_fast: raise ConsulUnavailable at once when the agent does not answer, instead
            of retrying up to ``startup_timeout``.
        startup_timeout: seconds :meth:`register` retries an agent that does not answer.
        drain_grace: seconds between maintenance-on and deregistration in :meth:`drain`.
        drain_on_close: whether :meth:`close` (and leaving ``with``) drains.
        anti_entropy_interval: seconds between checks that the agent still knows each owned
            service; ``None`` turns re-registration off.

    Thread-safety: every method may be called from any thread. A background daemon thread
    (started by the first :meth:`register`) re-registers forgotten services. :meth:`close`
    drains (``drain_grace`` seconds, plus agent calls bounded by :data:`DRAIN_CALL_BUDGET`)
    and stops it: within ``drain_grace + 2`` seconds in all, whatever the agent does.

    Example:
        >>> with ServiceRegistry(MeshConfig(address="127.0.0.1:8500")) as registry:
        ...     registry.register(ServiceMetadata("web", 8080, checks=(
        ...         HttpCheck(url="http://127.0.0.1:8080/health", interval="10s"),
        ...         TtlCheck(id="web-app", ttl="15s"),
        ...     )))
        ...     serve_forever()
        ... # leaving the block: maintenance on, 2 s grace, deregistered
    """

    def __init__(
        self,
        config: MeshConfig | ConsulClient | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        fail_fast: bool = False,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        drain_on_close: bool = True,
        anti_entropy_interval: float | None = DEFAULT_ANTI_ENTROPY_INTERVAL,
    ) -> None:
        for name, value in (("startup_timeout", startup_timeout), ("drain_grace", drain_grace)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidSetting(name, f"must be seconds >= 0, got {value!r}")
        if anti_entropy_interval is not None and not anti_entropy_interval > 0:
            raise InvalidSetting(
                "anti_entropy_interval", f"must be positive seconds, got {anti_entropy_interval!r}"
            )
        if isinstance(config, ConsulClient):
            self._client, self._owns_client = config, False
        else:
            self._client, self._owns_client = ConsulClient(config), True
        self._clock = clock
        self._rng = rng or random.Random()
        self.fail_fast = fail_fast
        self.startup_timeout = float(startup_timeout)
        self.drain_grace = float(drain_grace)
        self.drain_on_close = drain_on_close
        self.anti_entropy_interval = anti_entropy_interval
        self._lock = threading.RLock()
        self._owned: dict[str, _Owned] = {}
        self._check_owner: dict[str, str] = {}
        self._closing = threading.Event()
        self._closed = False
        self._closer: threading.Thread | None = None  # the thread running close()
        self._close_done = threading.Event()
        self._registering = 0  # registrations in flight (close() waits for them)
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hook: ShutdownHook | None = None
        self._atexit_installed = False
        self._reregistrations = 0

    # -- properties ------------------------------------------------------------------------

    @property
    def client(self) -> ConsulClient:
        """The ConsulClient in use."""
        return self._client

    @property
    def address(self) -> str:
        """The agent's base URL (for messages)."""
        return self._client.address

    @property
    def registered(self) -> tuple[ServiceMetadata, ...]:
        """The services this registry registered and has not deregistered."""
        with self._lock:
            return tuple(o.metadata for o in self._owned.values())

    @property
    def reregistrations(self) -> int:
        """How many times a forgotten service was registered again."""
        with self._lock:
            return self._reregistrations

    def owner_of(self, check_id: str) -> str | None:
        """The id of the owned service that has ``check_id``, if any."""
        with self._lock:
            return self._check_owner.get(check_id)

    def in_maintenance(self, service_id: str) -> bool:
        """Whether this registry put ``service_id`` into maintenance (and has not lifted it)."""
        with self._lock:
            owned = self._owned.get(service_id)
            return owned is not None and owned.maintenance is not None

    # -- registration ----------------------------------------------------------------------

    def register(
        self, metadata: ServiceMetadata, *, replace_existing_checks: bool = True
    ) -> ServiceMetadata:
        """Register ``metadata`` (service and all its checks) with the agent; return it.

        Registering the same id again replaces the registration (idempotent). With
        ``replace_existing_checks`` (default) checks the agent has for the service but
        ``metadata`` does not are removed.

        Raises:
            ConsulUnavailable: the agent did not answer within ``startup_timeout`` (at once
                with ``fail_fast``); the message names the address. ``startup_timeout`` is
                an overall deadline: an agent that answers slowly cannot stretch it.
            PermissionDenied: the ACL token may not register the service.
            ConsulStatusError: the agent rejected the definition (e.g. script checks
                disabled, a field unknown to this Consul version).
            MeshError: the registry is closed, or was closed while registering (the
                instance is then deregistered again).
        """
        # Here, not at the top: the metadata dataclasses cost import time only this path uses.
        from lake_mesh_consul._core.registration import ServiceMetadata

        if not isinstance(metadata, ServiceMetadata):
            raise InvalidSetting("metadata", f"expected a ServiceMetadata, got {metadata!r}")
        with self._lock:
            if self._closing.is_set():
                raise MeshError("the ServiceRegistry is closed")
            self._registering += 1
        try:
            with self._signals_deferred():
                self._register_counted(metadata, replace_existing_checks)
        finally:
            with self._lock:
                self._registering -= 1
                self._idle.notify_all()
        self._ensure_thread()
        log.info("registered service %s (%d checks)", metadata.id, len(metadata.checks))
        return metadata

    def _register_counted(self, metadata: ServiceMetadata, replace_existing_checks: bool) -> None:
        bounded = not self.fail_fast and self.startup_timeout > 0
        end = self._clock.monotonic() + self.startup_timeout

        def attempt() -> None:
            # startup_timeout bounds the whole registration, each attempt included.
            left = end - self._clock.monotonic() if bounded else None
            self._put_registration(metadata, {}, replace_existing_checks, deadline=left)

        self._with_startup_retry(f"register service {metadata.id!r}", attempt)
        with self._lock:
            closing = self._closing.is_set()
            if not closing:
                self._remember(metadata)
        if closing:
            # close() began while the registration was in flight: its drain did not see this
            # instance, so take it out again before close() closes the client.
            try:
                self.deregister(metadata.id, deadline=DRAIN_CALL_BUDGET)
            except ConsulError as exc:
                log.warning("register/close race: deregistering %s failed: %s", metadata.id, exc)
            raise MeshError(f"the ServiceRegistry was closed while registering {metadata.id!r}")

    def _remember(self, metadata: ServiceMetadata) -> None:
        """Own ``metadata`` (caller holds the lock)."""
        owned = self._owned.get(metadata.id)
        if owned is None:
            owned = self._owned[metadata.id] = _Owned(metadata)
        else:
            for check_id in owned.metadata.check_ids:
                self._check_owner.pop(check_id, None)
            owned.metadata = metadata
            owned.ttl_status = {
                k: v for k, v in owned.ttl_status.items() if k in metadata.check_ids
            }
        owned.registrations += 1
        for check_id in metadata.check_ids:
            self._check_owner[check_id] = metadata.id

    def deregister(self, service_id: str, *, deadline: float | None = None) -> None:
        """Deregister ``service_id`` (ours or not); forget it, so it is not re-registered.

        Deregistering an id the agent does not know is not an error (Consul answers 200).
        ``deadline``: overall seconds for the call (default: the client's).

        Raises:
            ConsulUnavailable, PermissionDenied, ConsulStatusError: the agent call failed.
        """
        self._forget(service_id)
        self._agent(
            "PUT",
            f"/v1/agent/service/deregister/{_path(service_id)}",
            operation=f"deregister service {service_id!r}",
            deadline=deadline,
        )
        log.info("deregistered service %s", service_id)

    def maintenance(
        self, service_id: str, enable: bool, reason: str = "", *, deadline: float | None = None
    ) -> None:
        """Turn maintenance mode of ``service_id`` on or off (with a reason shown in Consul).

        While on, the instance is critical in every health query (hidden from passing-only
        queries). The registry remembers it and restores it after a re-registration.
        ``deadline``: overall seconds for the call (default: the client's).

        Raises:
            ConsulNotFound: the agent has no service ``service_id``.
            ConsulUnavailable, PermissionDenied, ConsulStatusError: the agent call failed.
        """
        params = {"enable": "true" if enable else "false"}
        if enable and reason:
            params["reason"] = reason
        self._agent(
            "PUT",
            f"/v1/agent/service/maintenance/{_path(service_id)}",
            operation=f"{'enable' if enable else 'disable'} maintenance of {service_id!r}",
            params=params,
            deadline=deadline,
        )
        with self._lock:
            owned = self._owned.get(service_id)
            if owned is not None:
                owned.maintenance = (reason or "maintenance") if enable else None

    def drain(
        self, service_ids: str | Iterable[str] | None = None, *, grace: float | None = None
    ) -> None:
        """Take services out of rotation gracefully: maintenance on, wait, deregister.

        Args:
            service_ids: one id, several, or ``None`` for every owned service.
            grace: seconds to wait between maintenance and deregistration (default
                ``drain_grace``): long enough for consumers' watches to see the change.

        Errors of the maintenance step are logged and do not stop the deregistration.
        Blocks the caller for about ``grace`` seconds, and never longer than ``grace +``
        :data:`DRAIN_CALL_BUDGET`: the agent calls of each step share half of that budget
        as their overall deadline. When no maintenance call got through (the agent is down
        or hung) the grace is skipped: no consumer can see the maintenance anyway.

        Raises:
            ConsulError: the last deregistration error, after trying every service.
        """
        if service_ids is None:
            with self._lock:
                ids = [o.metadata.id for o in self._owned.values()]
        elif isinstance(service_ids, str):
            ids = [service_ids]
        else:
            ids = list(service_ids)
        if not ids:
            return
        if self._maintenance_for_drain(ids) > 0:
            wait = self.drain_grace if grace is None else grace
            if wait > 0:
                self._clock.sleep(wait)
        end = self._clock.monotonic() + DRAIN_CALL_BUDGET / 2
        error: ConsulError | None = None
        for service_id in ids:
            try:
                self.deregister(service_id, deadline=self._left(end, "deregister", service_id))
            except ConsulError as exc:
                log.warning("drain: deregistering %s failed: %s", service_id, exc)
                error = exc
        if error is not None:
            raise error

    def _maintenance_for_drain(self, ids: Sequence[str]) -> int:
        """Maintenance on for each of ``ids`` within half the drain budget; how many got it."""
        end = self._clock.monotonic() + DRAIN_CALL_BUDGET / 2
        done = 0
        for service_id in ids:
            with self._lock:
                owned = self._owned.get(service_id)
                if owned is not None:  # stop re-registering it while it drains
                    owned.maintenance = "draining"
            try:
                deadline = self._left(end, "maintenance", service_id)
                self.maintenance(service_id, True, "draining: shutting down", deadline=deadline)
                done += 1
            except ConsulError as exc:
                log.warning("drain: maintenance on %s failed: %s", service_id, exc)
        return done

    def _left(self, end: float, step: str, service_id: str) -> float:
        """Seconds left before ``end`` for one drain call; raises when none are."""
        left = end - self._clock.monotonic()
        if left <= 0:
            raise ConsulUnavailable(
                self.address, f"drain budget spent before {step} of {service_id!r}"
            )
        return left

    # -- TTL checks ------------------------------------------------------------------------

    def update_ttl(self, check_id: str, status: HealthStatus, output: str = "") -> None:
        """Report ``status`` (passing, warning or critical) and ``output`` for a TTL check.

        When the agent does not know the check and it belongs to an owned service, the
        anti-entropy thread is woken to register the service again (its TTL checks then
        start in the status reported here).

        Raises:
            ConsulNotFound: the agent does not know ``check_id``.
            ConsulUnavailable, PermissionDenied, ConsulStatusError: the agent call failed.
        """
        if status is HealthStatus.MAINTENANCE:
            raise InvalidSetting("status", "a TTL check reports passing, warning or critical")
        with self._lock:
            owner = self._check_owner.get(check_id)
            if owner is not None:
                self._owned[owner].ttl_status[check_id] = status
        operation = f"update TTL check {check_id!r}"
        try:
            self._client.request(
                "PUT",
                f"/v1/agent/check/update/{_path(check_id)}",
                operation=operation,
                json={"Status": status.value, "Output": output},
                dc=False,
            )
        except ConsulStatusError as exc:
            if not isinstance(exc, ConsulNotFound) and not any(
                m in exc.body.lower() for m in _UNKNOWN_CHECK_MARKERS
            ):
                raise
            if owner is not None and not self._closing.is_set():
                log.info("agent forgot check %s; re-registering %s", check_id, owner)
                self._wake.set()
            if isinstance(exc, ConsulNotFound):
                raise
            raise ConsulNotFound(exc.code, exc.body, operation) from exc

    # -- reads -----------------------------------------------------------------------------

    def agent_service(self, service_id: str) -> dict[str, Any] | None:
        """The agent's view of ``service_id`` (``/v1/agent/service/<id>``), ``None`` if unknown."""
        response = self._client.request(
            "GET",
            f"/v1/agent/service/{_path(service_id)}",
            operation=f"read service {service_id!r}",
            allow_404=True,
            dc=False,
        )
        if response.status == 404:
            return None
        value = response.json()
        return value if isinstance(value, dict) else None

    def agent_checks(self, service_id: str) -> dict[str, dict[str, Any]]:
        """The agent's checks of ``service_id`` by check id (``/v1/agent/checks``)."""
        response = self._client.request(
            "GET", "/v1/agent/checks", operation="read agent checks", dc=False
        )
        value = response.json() or {}
        return {
            k: v
            for k, v in value.items()
            if isinstance(v, dict) and v.get("ServiceID") == service_id
        }

    def health_checks(self, service_name: str) -> list[dict[str, Any]]:
        """Every check of every instance of ``service_name``, from ``/v1/health/checks``.

        Returns plain dicts with ``node``, ``service_id``, ``check_id``, ``name``, ``type``,
        ``status``, ``output`` and ``notes`` (empty for an unknown service), sorted by
        service id and check id.

        Raises:
            InvalidSetting: ``service_name`` is not a valid service name.
        """
        check_service_name(service_name, "service_name")
        response = self._client.request(
            "GET",
            f"/v1/health/checks/{_path(service_name)}",
            operation=f"read checks of {service_name!r}",
        )
        out = [
            {
                "node": str(c.get("Node", "")),
                "service_id": str(c.get("ServiceID", "")),
                "check_id": str(c.get("CheckID", "")),
                "name": str(c.get("Name", "")),
                "type": str(c.get("Type", "")),
                "status": HealthStatus.parse(str(c.get("Status", ""))).value,
                "output": str(c.get("Output", "")),
                "notes": str(c.get("Notes", "")),
            }
            for c in response.json() or []
            if isinstance(c, dict)
        ]
        return sorted(out, key=lambda c: (c["service_id"], c["check_id"]))

    # -- anti-entropy ----------------------------------------------------------------------

    def resync(self) -> int:
        """Check every owned service once and re-register the forgotten ones; return how many.

        The background thread calls this; call it yourself to force a check.

        Raises:
            ConsulError: the agent did not answer (nothing was changed).
        """
        count = 0
        with self._lock:
            owned = list(self._owned.values())
        for entry in owned:
            if self._closing.is_set():
                break
            service_id = entry.metadata.id
            if self.agent_service(service_id) is not None:
                continue
            with self._lock:
                if self._owned.get(service_id) is not entry:
                    continue  # deregistered or replaced meanwhile
                statuses = dict(entry.ttl_status)
                maintenance = entry.maintenance
            self._put_registration(entry.metadata, statuses, True)
            if maintenance is not None:
                self.maintenance(service_id, True, maintenance)
            with self._lock:
                entry.registrations += 1
                self._reregistrations += 1
            count += 1
            log.warning(
                "the agent forgot service %s; registered it again",
                service_id,
                extra={"event": "reregistered", "service_id": service_id},
            )
        return count

    def _ensure_thread(self) -> None:
        if self.anti_entropy_interval is None:
            return
        with self._lock:
            if self._thread is not None or self._closing.is_set():
                return
            self._thread = threading.Thread(
                target=self._anti_entropy_loop, name="lake-mesh-registry", daemon=True
            )
            self._thread.start()

    def _anti_entropy_loop(self) -> None:
        assert self.anti_entropy_interval is not None
        pause = self.anti_entropy_interval
        while not self._closing.is_set():
            self._clock.wait(self._wake, pause)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self.resync()
                pause = self.anti_entropy_interval
            except ConsulError as exc:
                log.debug("anti-entropy: %s", exc)
                pause = min(self.anti_entropy_interval, UNAVAILABLE_POLL)
            except Exception:  # a bug must not kill the thread silently
                log.exception("anti-entropy loop failed")
                pause = self.anti_entropy_interval

    # -- shutdown --------------------------------------------------------------------------

    def close(self, *, drain: bool | None = None) -> None:
        """Stop re-registering, drain (by default) every owned service, stop the thread.

        Idempotent. Without draining it returns within about 1.5 s; with draining, within
        ``drain_grace + 2`` seconds whatever the agent does (down, hung, trickling). Errors
        while draining are logged, not raised. A registration in flight is waited for (it
        deregisters itself, see :meth:`register`) before a client the registry owns is
        closed; closing the client wakes a background call parked in a hung agent. A second
        call (another thread, or the SIGTERM hook) waits for the first to finish.
        """
        with self._lock:
            closer = self._closer
            if closer is None:
                self._closer = threading.current_thread()
                self._closed = True
                self._closing.set()  # under the lock: register() and _ensure_thread() check it
        if closer is not None:
            if closer is not threading.current_thread():
                self._close_done.wait(self.drain_grace + 2.0)
            return
        with self._signals_deferred():  # a kept SIGTERM is handled after the finally below
            try:
                self._close_steps(drain)
            finally:
                self._close_done.set()
        self._uninstall_hooks()  # after the block: a kept signal still knows where it goes

    def _close_steps(self, drain: bool | None) -> None:
        self._wake.set()
        if self.drain_on_close if drain is None else drain:
            try:
                self.drain()
            except ConsulError as exc:
                log.warning("drain on close failed: %s", exc)
        with self._idle:
            self._idle.wait_for(lambda: self._registering == 0, CLOSE_REGISTRATION_WAIT)
        if self._owns_client:
            self._client.close()
        self.join(CLOSE_JOIN_TIMEOUT)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the background thread to end; True if it did.

        After :meth:`close`; a :class:`~lake_mesh_consul.mesh.Mesh` calls it again once it
        closed the shared client (which wakes a call parked in a hung agent).
        """
        with self._lock:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def install_shutdown_hooks(
        self, *, signals: Sequence[int] = (signal.SIGTERM,), at_exit: bool = True
    ) -> None:
        """Drain and close on SIGTERM (and other ``signals``) and at interpreter exit.

        After closing (bounded: ``drain_grace + 2`` seconds), a signal goes on to the
        handler that was installed before (if it is a function), is ignored if that was
        SIG_IGN, and otherwise ends the process with ``SystemExit(128 + signum)`` so that
        ``finally`` blocks run (see :class:`~lake_mesh_consul._shutdown.ShutdownHook`).
        Opt-in for a bare registry (a :class:`~lake_mesh_consul.mesh.Mesh` installs it by
        default): call it once, from the main thread. :meth:`close` removes the hooks.

        Raises:
            InvalidSetting: not called from the main thread (Python only lets the main
                thread install signal handlers).
        """
        if signals:
            hook = self._hook or ShutdownHook(
                self.close,
                budget=self.drain_grace + 2.0,
                name="lake-mesh-registry",
                signals=signals,
            )
            if not hook.install():
                raise InvalidSetting(
                    "install_shutdown_hooks",
                    "signal handlers can only be installed from the main thread",
                )
            self._hook = hook
        if at_exit and not self._atexit_installed:
            atexit.register(self.close)
            self._atexit_installed = True

    def _signals_deferred(self) -> contextlib.AbstractContextManager[None]:
        """A SIGTERM on the main thread inside the block is handled at its end (see hooks)."""
        hook = self._hook
        return hook.deferring() if hook is not None else contextlib.nullcontext()

    def _uninstall_hooks(self) -> None:
        if self._atexit_installed:
            atexit.unregister(self.close)
            self._atexit_installed = False
        if self._hook is not None:
            self._hook.uninstall()

    def __enter__(self) -> ServiceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServiceRegistry({self.address!r}, services={len(self._owned)})"

    # -- internals -------------------------------------------------------------------------

    def _agent(
        self, method: str, path: str, *, operation: str, deadline: float | None, **kwargs: Any
    ) -> ConsulResponse:
        """One call to the local agent's API (``dc`` never added), with ``deadline``."""
        if deadline is not None:
            kwargs["deadline"] = max(deadline, 0.001)
        return self._client.request(method, path, operation=operation, dc=False, **kwargs)

    def _put_registration(
        self,
        metadata: ServiceMetadata,
        statuses: Mapping[str, HealthStatus],
        replace: bool,
        *,
        deadline: float | None = None,
    ) -> None:
        params = {"replace-existing-checks": "true"} if replace else None
        self._agent(
            "PUT",
            "/v1/agent/service/register",
            operation=f"register service {metadata.id!r}",
            params=params,
            json=encode_service(metadata, statuses=statuses),
            deadline=deadline,
        )

    def _forget(self, service_id: str) -> None:
        with self._lock:
            owned = self._owned.pop(service_id, None)
            if owned is not None:
                for check_id in owned.metadata.check_ids:
                    self._check_owner.pop(check_id, None)

    def _with_startup_retry(self, operation: str, fn: Callable[[], T]) -> T:
        if self.fail_fast or self.startup_timeout <= 0:
            return fn()
        started = self._clock.monotonic()
        attempts = 1

        def retriable(exc: BaseException) -> bool:
            # A TLS failure is a configuration problem: retrying will not fix it.
            return isinstance(exc, ConsulUnavailable) and not isinstance(exc, ConsulTLSError)

        def on_retry(number: int, error: BaseException, _delay: float) -> None:
            nonlocal attempts
            attempts = number + 1
            log.info("%s: agent not answering (%s); attempt %d", operation, error, number)

        try:
            return retry_until(
                fn,
                timeout=self.startup_timeout,
                retriable=retriable,
                clock=self._clock,
                rng=self._rng,
                base=STARTUP_BACKOFF_BASE,
                cap=STARTUP_BACKOFF_CAP,
                cancel=self._closing,
                on_retry=on_retry,
            )
        except ConsulUnavailable as exc:
            if isinstance(exc, ConsulTLSError) or attempts <= 1:
                raise
            elapsed = self._clock.monotonic() - started
            detail = f"gave up after {attempts} attempts in {elapsed:.1f}s ({operation})"
            raise ConsulUnavailable(exc.address, detail) from exc


def _path(segment: str) -> str:
    """Quote an id for use as one URL path segment."""
    return quote(segment, safe="")
