"""HealthCheckManager: keeps a service's health in Consul true, from local check functions.

A service's checks come in two sorts:

* **agent-run** (HTTP, TCP, gRPC, alias, script): declared to the agent with the service
  registration; the agent runs them. The manager observes their status from
  ``/v1/agent/checks`` into its :class:`~lake_mesh_consul._core.health.HealthMetrics`.
* **self-reported** (TTL): the manager runs local *check functions* on a schedule (default
  every ``ttl / 3``) on its own daemon threads, aggregates their results per TTL check (the
  worst wins), damps flapping (consecutive results needed to change status) and pushes the
  status with the output to the agent (``/v1/agent/check/update/<id>``).

A check function takes no arguments and returns ``True``/``None`` (passing), ``False``
(critical), a :class:`~lake_mesh_consul._core.health.HealthStatus`, a ``(status, output)``
pair or a :class:`~lake_mesh_consul._core.health.CheckResult`. One that raises is critical
with the exception's text; one that takes longer than its timeout is critical ("timed out")
and is not started again until it returns, so a hung function never piles up threads.

The heartbeat never runs on the caller's thread. When the agent fails (down, or it forgot
the check), the manager backs off (jittered, exponential, capped at the interval) and
pushes the current status as soon as the agent answers again; the registry re-registers a
forgotten service meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._core.backoff import Backoff
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.health import (
    CheckResult,
    HealthMetrics,
    HealthSnapshot,
    HealthStatus,
    TransitionListener,
    aggregate,
)
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.errors import ConsulError, ConsulNotFound, InvalidSetting

__all__ = ["DEFAULT_IDLE_INTERVAL", "CheckFunction", "HealthCheckManager"]

# Named for this module (the Consul-free _core/health.py logs as "lake_mesh_consul.health").
log = logging.getLogger("lake_mesh_consul.health_checks")

#: A local check function: no arguments; returns a status, (status, output), bool or None.
CheckFunction = Callable[[], object]

#: Seconds between cycles of a service without TTL checks (observing agent-run checks).
DEFAULT_IDLE_INTERVAL = 10.0
#: First backoff step after a failed push (seconds; doubled per failure, capped at interval).
BACKOFF_BASE = 0.2
#: How long close() waits for the heartbeat thread.
CLOSE_JOIN_TIMEOUT = 0.9


class _Runner:
    """Runs one check function on a daemon thread of its own, one run at a time."""

    def __init__(self, fn: CheckFunction, name: str, timeout: float) -> None:
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._request = threading.Event()
        self.done = threading.Event()
        self._stopped = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.result = CheckResult(HealthStatus.CRITICAL, "not run yet")
        self.started = 0.0

    def submit(self, now: float) -> bool:
        """Start a run; False while the previous run has not returned."""
        with self._lock:
            if self._busy or self._stopped:
                return False
            self._busy = True
            self.started = now
            self.done.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"lake-mesh-check-{self.name}", daemon=True
                )
                self._thread.start()
        self._request.set()
        return True

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._request.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end (a hung function keeps it)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))
            return not thread.is_alive()
        return True

    def _loop(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            with self._lock:
                if self._stopped:
                    return
            try:
                result = CheckResult.of(self.fn())
            except Exception as exc:
                result = CheckResult(HealthStatus.CRITICAL, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.result = result
                self._busy = False
            self.done.set()


@dataclass
class _TtlState:
    check: TtlCheck
    runners: list[_Runner] = field(default_factory=list)
    reported: CheckResult | None = None  # set by HealthCheckManager.report()


class HealthCheckManager:
    """Owns one service's checks: declares them, drives its TTL checks, keeps HealthMetrics.

    Args:
        registry: the ServiceRegistry that registers ``service`` and talks to the agent.
        service: the service and its checks.
        clock: time and waiting (every pause and timeout reads it).
        rng: randomness for backoff jitter.
        success_threshold: consecutive passing results a TTL check needs to become passing.
        failure_threshold: consecutive failing results a TTL check needs to leave passing.
        interval: seconds between cycles (default: the shortest TTL / 3, or 10 s without
            TTL checks).
        check_timeout: seconds a check function may run (default: ``interval / 2``).
        observe_agent_checks: record the agent-run checks' statuses in the metrics.

    Thread-safety: every method may be called from any thread. :meth:`start` registers on
    the caller's thread and returns; the heartbeat and check functions then run on daemon
    threads. :meth:`close` returns within 1 s (a hung check function is abandoned on its
    daemon thread).

    Example:
        >>> meta = ServiceMetadata("web", 8080, checks=(TtlCheck(id="web-app", ttl="15s"),))
        >>> with ServiceRegistry(config) as registry:
        ...     with HealthCheckManager(registry, meta, failure_threshold=2) as health:
        ...         health.add_function(lambda: db.ping(), name="db")
        ...         health.start()
        ...         print(health.snapshot().service.status)
    """

    def __init__(
        self,
        registry: ServiceRegistry,
        service: ServiceMetadata,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        success_threshold: int = 1,
        failure_threshold: int = 1,
        interval: float | None = None,
        check_timeout: float | None = None,
        observe_agent_checks: bool = True,
    ) -> None:
        ttls = service.ttl_checks
        if interval is None:
            interval = min(c.ttl for c in ttls) / 3 if ttls else DEFAULT_IDLE_INTERVAL
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise InvalidSetting("interval", f"must be positive seconds, got {interval!r}")
        if check_timeout is None:
            check_timeout = interval / 2
        if (
            isinstance(check_timeout, bool)
            or not isinstance(check_timeout, int | float)
            or check_timeout <= 0
        ):
            raise InvalidSetting(
                "check_timeout", f"must be positive seconds, got {check_timeout!r}"
            )
        self.registry = registry
        self.service = service
        self.interval = float(interval)
        self.check_timeout = float(check_timeout)
        self.observe_agent_checks = observe_agent_checks
        self._clock = clock
        self._rng = rng or random.Random()
        self._metrics = HealthMetrics(
            service.id,
            clock=clock,
            success_threshold=success_threshold,
            failure_threshold=failure_threshold,
        )
        self._ttl: dict[str, _TtlState] = {}
        for ttl_check in ttls:
            assert ttl_check.id is not None
            self._ttl[ttl_check.id] = _TtlState(ttl_check)
            initial = ttl_check.status or HealthStatus.CRITICAL
            self._metrics.add_check(ttl_check.id, initial=initial)
        self._observed = tuple(c.id or "" for c in service.checks if c.id not in self._ttl)
        if observe_agent_checks:
            for check in service.checks:
                if check.id and check.id in self._observed:
                    initial = check.status or HealthStatus.CRITICAL
                    self._metrics.add_check(check.id, initial=initial)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._consecutive_push_failures = 0
        # The library's one backoff; "equal" jitter so a failed push is never retried at once.
        self._backoff = Backoff(min(BACKOFF_BASE, self.interval), self.interval, jitter="equal")

    # -- configuration ---------------------------------------------------------------------

    @property
    def consecutive_push_failures(self) -> int:
        """TTL status pushes that failed in a row (0 after a success; for metrics)."""
        return self._consecutive_push_failures

    @property
    def metrics(self) -> HealthMetrics:
        """The live HealthMetrics of this service (thread-safe; see :meth:`snapshot`)."""
        return self._metrics

    def snapshot(self) -> HealthSnapshot:
        """An immutable snapshot of the metrics."""
        return self._metrics.snapshot()

    def subscribe(self, listener: TransitionListener) -> Callable[[], None]:
        """Call ``listener`` on each status transition; return a function that unsubscribes."""
        return self._metrics.subscribe(listener)

    def add_function(
        self,
        fn: CheckFunction,
        *,
        check_id: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Drive TTL check ``check_id`` with ``fn`` (with several, the worst result counts).

        Args:
            fn: the check function.
            check_id: the TTL check it feeds; may be left out when the service has exactly
                one TTL check.
            name: a label for the output (default: the function's name).
            timeout: seconds it may run (default: ``check_timeout``).

        Raises:
            InvalidSetting: ``check_id`` is not a TTL check of the service (or is ambiguous).
        """
        state = self._ttl_state(check_id)
        label = name or getattr(fn, "__name__", None) or "check"
        run_timeout = self.check_timeout if timeout is None else timeout
        if not run_timeout > 0:
            raise InvalidSetting("timeout", f"must be positive seconds, got {timeout!r}")
        with self._lock:
            state.runners.append(_Runner(fn, label, float(run_timeout)))
        self._wake.set()

    def report(self, check_id: str | None, status: HealthStatus, output: str = "") -> None:
        """Set the status of a TTL check that has no functions; pushed on every cycle.

        Use it when the application knows its health itself (push style). The report goes
        through flap damping like a function's result and is sent at the next cycle (at
        once if the manager runs).
        """
        state = self._ttl_state(check_id)
        with self._lock:
            state.reported = CheckResult(status, output)
        self._wake.set()

    def _ttl_state(self, check_id: str | None) -> _TtlState:
        if check_id is None:
            if len(self._ttl) != 1:
                raise InvalidSetting(
                    "check_id",
                    f"service {self.service.id!r} has {len(self._ttl)} TTL checks; name one",
                )
            return next(iter(self._ttl.values()))
        state = self._ttl.get(check_id)
        if state is None:
            raise InvalidSetting(
                "check_id",
                f"{check_id!r} is not a TTL check of {self.service.id!r} "
                f"(TTL checks: {sorted(self._ttl)})",
            )
        return state

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, register: bool = True) -> HealthCheckManager:
        """Register the service (unless the registry already has it) and start the heartbeat.

        Returns at once after the registration; the first cycle runs on the heartbeat thread.

        Raises:
            ConsulUnavailable, PermissionDenied, ConsulStatusError: registration failed.
        """
        if register and self.service.id not in {m.id for m in self.registry.registered}:
            self.registry.register(self.service)
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._loop, name=f"lake-mesh-health-{self.service.id}", daemon=True
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        """Tell the heartbeat and the check threads to stop, without waiting. Idempotent.

        A :class:`~lake_mesh_consul.mesh.Mesh` stops every manager first, drains, then
        joins them, so that shutting down N services costs one wait, not N.
        """
        with self._lock:
            self._stop.set()
            runners = [r for s in self._ttl.values() for r in s.runners]
        self._wake.set()
        for runner in runners:
            runner.stop()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the heartbeat and check threads; True if ended.

        A thread parked in a call to a hung agent ends when that call's deadline expires or
        when the client is closed (which wakes it at once). A check function that hangs
        keeps its own thread (it is abandoned, as a daemon): then False.
        """
        end = time.monotonic() + timeout
        thread = self._thread
        ended = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
            ended = not thread.is_alive()
        with self._lock:
            runners = [r for s in self._ttl.values() for r in s.runners]
        for runner in runners:
            ended = runner.join(end - time.monotonic()) and ended
        return ended

    def close(self) -> None:
        """Stop the heartbeat and the check threads; returns within 1 s. Idempotent.

        Does not deregister: the registry does that (its close drains).
        """
        self.stop()
        self.join(CLOSE_JOIN_TIMEOUT)

    def __enter__(self) -> HealthCheckManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HealthCheckManager({self.service.id!r}, interval={self.interval:g}s)"

    # -- the cycle -------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Run one cycle on the calling thread; return whether every push succeeded.

        A cycle runs every check function (in parallel, each cut off at its timeout),
        records and damps the results, pushes each TTL check's status, and observes the
        agent-run checks. The heartbeat thread calls this; tests and benchmarks may too.
        """
        self._metrics.set_maintenance(self.registry.in_maintenance(self.service.id))
        results = self._run_functions()
        ok = True
        for check_id, (result, duration) in results.items():
            self._metrics.record(check_id, result, duration=duration)
            status = self._metrics.status(check_id)
            try:
                self.registry.update_ttl(check_id, status, result.output)
            except ConsulError as exc:
                ok = False
                self._metrics.record_ttl_update(check_id, ok=False)
                level = logging.INFO if isinstance(exc, ConsulNotFound) else logging.DEBUG
                log.log(level, "TTL update of %s failed: %s", check_id, exc)
            else:
                self._metrics.record_ttl_update(check_id, ok=True)
        if self.observe_agent_checks and self._observed:
            try:
                self._observe()
            except ConsulError as exc:
                log.debug("reading agent checks of %s failed: %s", self.service.id, exc)
        return ok

    def _run_functions(self) -> dict[str, tuple[CheckResult, float | None]]:
        clock = self._clock
        with self._lock:
            states = [(cid, list(s.runners), s.reported) for cid, s in self._ttl.items()]
        started = clock.monotonic()
        submitted: dict[int, bool] = {}
        for _, runners, _ in states:
            for runner in runners:
                submitted[id(runner)] = runner.submit(started)
        out: dict[str, tuple[CheckResult, float | None]] = {}
        for check_id, runners, reported in states:
            if not runners:
                if reported is not None:
                    out[check_id] = (reported, None)
                continue
            parts: list[tuple[str, CheckResult]] = []
            for runner in runners:
                parts.append((runner.name, self._collect(runner, submitted[id(runner)])))
            duration = clock.monotonic() - started
            if len(parts) == 1:
                result = parts[0][1]
            else:
                status = aggregate(r.status for _, r in parts)
                output = "\n".join(
                    f"{name}: {r.status.value}" + (f": {r.output}" if r.output else "")
                    for name, r in parts
                )
                result = CheckResult(status, output)
            out[check_id] = (result, duration)
        return out

    def _collect(self, runner: _Runner, submitted: bool) -> CheckResult:
        clock = self._clock
        if not submitted:
            hung_for = clock.monotonic() - runner.started
            return CheckResult(
                HealthStatus.CRITICAL,
                f"check {runner.name!r} timed out: still running after {hung_for:.3g}s",
            )
        remaining = runner.started + runner.timeout - clock.monotonic()
        if remaining > 0:
            clock.wait(runner.done, remaining)
        if runner.done.is_set():
            return runner.result
        return CheckResult(
            HealthStatus.CRITICAL, f"check {runner.name!r} timed out after {runner.timeout:g}s"
        )

    def _observe(self) -> None:
        checks = self.registry.agent_checks(self.service.id)
        for check_id in self._observed:
            entry = checks.get(check_id)
            if entry is None:
                continue
            status = HealthStatus.parse(str(entry.get("Status", "")))
            output = str(entry.get("Output") or "")
            if status is HealthStatus.MAINTENANCE:
                continue
            self._metrics.record(check_id, CheckResult(status, output), damped=False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                ok = self.run_once()
            except Exception:  # a bug must not end the heartbeat silently
                log.exception("health cycle of %s failed", self.service.id)
                ok = False
            if ok:
                self._consecutive_push_failures = 0
                pause = self.interval
            else:
                self._consecutive_push_failures += 1
                pause = self._backoff.delay(self._consecutive_push_failures, self._rng)
            if self._stop.is_set():
                return
            # close() sets _wake too; report() and add_function() set it for a prompt cycle.
            self._clock.wait(self._wake, pause)
