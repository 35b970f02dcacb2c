"""The blocking-query watch engine: one long poll per thing watched, shared by its consumers.

:class:`Watch` keeps one Consul blocking endpoint (``/v1/health/service/<name>``,
``/v1/kv/<prefix>?recurse``, ``/v1/catalog/services`` ...) current in memory:

* it follows every rule of :mod:`lake_mesh_consul._core.blocking`: the index is at least 1
  and is reset to 0 when it goes backwards; an unchanged index or an equal decoded result
  notifies nobody; errors back off with full jitter (100 ms .. 5 s by default; 30-60 s
  when the agent refused the connection for its per-client limit); every
  request, successful or not, first takes a token from a bucket (burst 2, 10/s by default)
  so no server behaviour can drive a busy loop;
* the HTTP read timeout is derived from the wait (``wait + wait/16 + margin``);
* reads are ``?stale`` by default (they keep working through leader elections and loss of
  quorum); ``consistency="default"`` or ``"consistent"`` and ``max_stale`` (re-read from the
  leader when ``X-Consul-LastContact`` exceeds it) are options, and so is the agent cache
  (``cached=True``). ``X-Consul-KnownLeader``, ``X-Consul-LastContact`` and ``X-Cache`` are
  kept on :attr:`Watch.state`;
* after a failure the next answer is always decoded and compared, and when the agent was
  unreachable the index restarts from 0: an agent restarted with its state wiped can
  answer with the very index we hold, for a different result;
* **last known good** (go-kit's ``InvalidateOnError``): when Consul fails, the last decoded
  value stays in :attr:`Watch.current`, :attr:`WatchState.stale` turns true and
  :meth:`WatchState.age` grows; with ``invalidate_after`` the value is dropped (replaced by
  ``invalidated_value``) once it is older than that;
* it runs on one daemon thread with a dedicated HTTP connection pool, so :meth:`Watch.close`
  can shut the socket of a parked long poll and return within a second; no callback starts
  after ``close()`` returns.

:class:`WatchHub` is the single-flight layer: one :class:`Watch` per
``(path, query parameters, options)``, however many consumers subscribe; each consumer
holds a :class:`SharedWatch` handle and the watch stops when the last handle is closed.
:meth:`WatchHub.shared` gives the process-wide hub of one agent configuration.

Example (a KV prefix, as the configuration loader uses it)::

    def decode(response: ConsulResponse) -> dict[str, bytes]:
        if response.status == 404:
            return {}
        return {e["Key"]: base64.b64decode(e["Value"] or "") for e in response.json()}

    with Watch(client, "/v1/kv/app/config/", {"recurse": ""}, decode=decode,
               on_change=reload, consistency="default") as watch:
        watch.start()
        if not watch.wait_first(5.0):
            raise ConfigValidationError("no answer from Consul")
        values = watch.current
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._core.blocking import (
    CONNECTION_LIMIT_BACKOFF,
    DEFAULT_WAIT,
    Backoff,
    BlockingIndex,
    TokenBucket,
    validate_wait,
)
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import (
    ConsulConnectionLimit,
    ConsulError,
    ConsulUnavailable,
    MeshError,
)

__all__ = [
    "DEFAULT_DEDICATED",
    "DEFAULT_RATE",
    "Consistency",
    "Flag",
    "PollClient",
    "SharedWatch",
    "Watch",
    "WatchBase",
    "WatchHub",
    "WatchState",
    "decode_json",
    "failure_backoff",
]

log = logging.getLogger("lake_mesh_consul.watch")

T = TypeVar("T")

#: ``"stale"`` (any server answers; default), ``"default"`` (the leader, may be briefly
#: stale during an election) or ``"consistent"`` (the leader, after a quorum check).
Consistency = Literal["stale", "default", "consistent"]

#: Requests per second a watch may send once its burst is used up (token refill rate).
DEFAULT_RATE = 10.0

#: Token bucket capacity: two requests back to back, then ``rate`` per second.
DEFAULT_BURST = 2

#: The longest close() waits for the watch thread (and a running callback) to finish.
CLOSE_TIMEOUT = 0.9

#: A query parameter value: a string, or several for a repeated parameter (``tag``).
ParamValue = str | Sequence[str]


def decode_json(response: ConsulResponse) -> Any:
    """Decode a watch answer as JSON (``None`` for a 404 or an empty body)."""
    if response.status == 404:
        return None
    return response.json()


@dataclass(frozen=True)
class WatchState(Generic[T]):
    """A watch's view at one moment, swapped atomically as a whole (readers never lock).

    Attributes:
        value: the last good decoded value (``None`` before the first answer, or after
            invalidation without an ``invalidated_value``).
        has_value: whether ``value`` holds a decoded answer (or the invalidated value).
        index: the ``X-Consul-Index`` the next query will block on (0: none).
        updated_at: clock reading of the last successful answer (``None``: never).
        changed_at: clock reading of the last change of ``value``.
        stale: whether the last attempt failed, so ``value`` may be out of date.
        invalidated: whether ``value`` was dropped after ``invalidate_after``.
        error: the last error while ``stale``.
        failures: consecutive failed attempts.
        known_leader: ``X-Consul-KnownLeader`` of the last answer.
        last_contact: ``X-Consul-LastContact`` of the last answer, in seconds.
        cache: ``X-Cache`` of the last answer (``"HIT"``/``"MISS"`` with ``cached``).
    """

    value: T | None = None
    has_value: bool = False
    index: int = 0
    updated_at: float | None = None
    changed_at: float | None = None
    stale: bool = False
    invalidated: bool = False
    error: MeshError | None = None
    failures: int = 0
    known_leader: bool | None = None
    last_contact: float | None = None
    cache: str | None = None

    def age(self, now: float) -> float | None:
        """Seconds since the last successful answer at clock reading ``now`` (``None``: never)."""
        return None if self.updated_at is None else max(0.0, now - self.updated_at)


# --- a client whose parked request can be woken from another thread ----------------------


class PollClient:
    """A ConsulClient of one owner whose in-flight requests can be interrupted.

    A parked long poll holds its socket for up to the whole wait; :meth:`interrupt` closes
    the client, which shuts every socket it opened (a blocked read returns at once with
    ConsulUnavailable) and refuses later requests, so the owner's ``close()`` returns
    within a second. Requests run under the client's deadlines and answer-size cap.

    Thread-safety: :meth:`request` from the owner's thread, :meth:`interrupt` from any.
    """

    def __init__(self, config: MeshConfig) -> None:
        self._client = ConsulClient(config)

    def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        wait: float | None = None,
        allow_404: bool = False,
    ) -> ConsulResponse:
        """See :meth:`ConsulClient.request`."""
        return self._client.request(
            method, path, operation=operation, params=params, wait=wait, allow_404=allow_404
        )

    def interrupt(self) -> None:
        """Shut every socket (waking a parked read) and refuse later requests."""
        self._client.close()

    def close(self) -> None:
        """Close the client. Idempotent."""
        self._client.close()


class Flag:
    """A boolean set once, read from any thread without a lock (an Event nobody waits on).

    A :class:`threading.Event` costs about a kilobyte (a lock, a condition and a deque);
    with a thousand watched services that matters.
    """

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = False

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._value

    def set(self) -> None:
        """Set the flag (idempotent)."""
        self._value = True


# --- what every watch keeps: state, listeners, first-answer events ----------------------------


class WatchBase(Generic[T]):
    """One watched query's state, listeners and "first answer" events, fed by some loop.

    :class:`Watch` feeds it from a blocking query of its own; a member of the multiplexed
    watcher (:mod:`lake_mesh_consul._consul.watch_mux`) is fed by targeted reads. Both
    apply the same rules here: an unchanged index or an equal decoded value notifies
    nobody; a failure keeps the last good value (marked stale) and, with
    ``invalidate_after``, drops it once it is too old; the first value is given to every
    listener *before* :meth:`wait_first` returns; a failure keeps nothing of the attempt
    alive (tracebacks are cleared, so no frame holding an old answer or state survives).

    Thread-safety: every public method may be called from any thread. :attr:`current` and
    :attr:`state` read one reference (no lock). Listeners run one at a time, in order.
    """

    def __init__(
        self,
        path: str,
        params: Mapping[str, ParamValue] | None,
        *,
        decode: Callable[[ConsulResponse], T],
        on_change: Callable[[T], None] | None,
        on_error: Callable[[MeshError], None] | None,
        equal: Callable[[T, T], bool] | None,
        invalidate_after: float | None,
        invalidated_value: T | None,
        name: str | None,
        clock: Clock,
    ) -> None:
        if invalidate_after is not None and invalidate_after < 0:
            raise ValueError("invalidate_after must be >= 0 seconds")
        self.path = path
        self.params: dict[str, ParamValue] = dict(params or {})
        self.name = name or path
        self.invalidate_after = invalidate_after
        self._decode = decode
        self._equal: Callable[[T, T], bool] = equal or _default_equal
        self._on_error = on_error
        self._invalidated_value = invalidated_value
        self._clock = clock
        self._state: WatchState[T] = WatchState()
        self._index = BlockingIndex()
        self._listeners: tuple[Callable[[T], None], ...] = (on_change,) if on_change else ()
        self._listeners_lock = threading.Lock()
        # Held while a new value is installed and given to the listeners (and by subscribe),
        # so a listener never sees a newer value before an older one.
        self._dispatch_lock = threading.RLock()
        self._closed = Flag()  # nobody waits on it: a flag costs a tenth of an Event
        self._first = threading.Event()
        self._first_outcome = threading.Event()
        #: HTTP requests sent for this watch so far (every attempt, successful or not).
        self.requests = 0
        #: Answers whose decoded value changed (notifications sent).
        self.changes = 0
        #: Times the index went backwards and was reset.
        self.resets = 0

    # -- reading ------------------------------------------------------------------------------

    @property
    def state(self) -> WatchState[T]:
        """The current :class:`WatchState` (one atomic read)."""
        return self._state

    @property
    def current(self) -> T | None:
        """The last good value (``None`` before the first answer)."""
        return self._state.value

    @property
    def stale(self) -> bool:
        """Whether the last attempt failed and :attr:`current` may be out of date."""
        return self._state.stale

    def age(self) -> float | None:
        """Seconds since the last successful answer (``None``: never had one)."""
        return self._state.age(self._clock.monotonic())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def start(self) -> WatchBase[T]:
        """Start following the query (idempotent); returns ``self``."""
        return self

    def close(self) -> None:
        """Stop following the query; no callback starts afterwards. Idempotent."""
        self._interrupt()

    def interrupt(self) -> None:
        """Mark closed and wake whatever waits, without waiting; :meth:`close` still follows.

        Closing many watches is fastest as: interrupt each, then close each.
        """
        self._interrupt()

    def _interrupt(self) -> None:
        self._closed.set()
        self._first_outcome.set()

    def wait_first(self, timeout: float | None, *, or_error: bool = False) -> bool:
        """Wait until the first answer is in and given to every listener (starts the watch).

        Args:
            timeout: seconds to wait at most (``None``: forever).
            or_error: also return at the first failed attempt.

        Returns:
            Whether a value is available (from an answer, or before this call).
        """
        self.start()
        event = self._first_outcome if or_error else self._first
        if not event.is_set():
            self._clock.wait(event, timeout)
        return self._state.has_value

    # -- listening ------------------------------------------------------------------------------

    def subscribe(
        self, listener: Callable[[T], None], *, replay: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` with each new value; return a function that unsubscribes.

        With ``replay`` the listener first gets the current value (if there is one), in
        order with later changes (never a newer value before an older one).
        """
        with self._dispatch_lock:
            with self._listeners_lock:
                self._listeners = (*self._listeners, listener)
            state = self._state
            if replay and state.has_value and not self.closed:
                _call(listener, cast(T, state.value), self.name)

        def unsubscribe() -> None:
            with self._listeners_lock:
                listeners = list(self._listeners)
                if listener in listeners:
                    listeners.remove(listener)
                self._listeners = tuple(listeners)

        return unsubscribe

    # -- applying answers and failures ------------------------------------------------------------

    def _apply_answer(self, response: ConsulResponse) -> None:
        """Apply one answer under Consul's index rules (decode only when it may have changed).

        Raises:
            ConsulError: the answer could not be decoded (the index does not move).
        """
        previous = self._index
        step = previous.observe(response.index)
        if step.reset:
            self.resets += 1
            log.info(
                "watch %s: index went backwards (%d -> %d), reset",
                self.name,
                previous.value,
                response.index,
            )
        now = self._clock.monotonic()
        state = self._state
        if state.failures:
            log.info(
                "watch %s: recovered after %d failed attempt(s)",
                self.name,
                state.failures,
                extra={"event": "snapshot_fresh", "watch": self.name, "failures": state.failures},
            )
        if not step.changed and state.has_value and not state.invalidated and not state.failures:
            self._index = step.index
            self._state = _fresh(state, response, now, step.index.value)
            return
        value = self._decoded(response)
        with self._dispatch_lock:
            self._install(value, step.index, response, now)

    def _decoded(self, response: ConsulResponse) -> T:
        try:
            return self._decode(response)
        except Exception as exc:  # a corrupt answer: keep the old index, read it again
            # (_apply_failure clears the tracebacks, so the answer is not kept alive)
            raise ConsulError(f"watch {self.name}: undecodable answer: {exc}") from exc

    def _install(
        self, value: T, index: BlockingIndex, response: ConsulResponse, now: float
    ) -> None:
        """Swap in ``value`` and give it to the listeners, then release first-answer waiters.

        Runs under the dispatch lock: a subscriber with ``replay`` sees either the old value
        followed by this one, or only this one.
        """
        self._index = index
        state = self._state
        if state.has_value and not state.invalidated and self._equal(cast(T, state.value), value):
            self._state = _fresh(state, response, now, index.value)
            self._first.set()
            self._first_outcome.set()
            return
        self._state = _fresh(
            dataclasses.replace(
                state, value=value, has_value=True, invalidated=False, changed_at=now
            ),
            response,
            now,
            index.value,
        )
        self.changes += 1
        self._dispatch(value)
        # Only now: whoever waited for the first answer finds it applied everywhere.
        self._first.set()
        self._first_outcome.set()

    def _apply_failure(self, exc: MeshError, *, quiet: bool = False) -> None:
        """Record a failed attempt: stale, error kept (without its frames), maybe invalidate."""
        _forget_frames(exc)
        state = self._state
        failures = state.failures + 1
        if failures == 1 and not quiet:
            log.warning(
                "watch %s: %s (serving the last known value)",
                self.name,
                exc,
                extra={"event": "snapshot_stale", "watch": self.name, "reason": str(exc)},
            )
        else:
            log.debug("watch %s: attempt %d failed: %s", self.name, failures, exc)
        if isinstance(exc, ConsulUnavailable) and self._index.value:
            # The agent may come back restarted with its state wiped, and then an equal
            # index can carry a different result: start over with a non-blocking read
            # (and the next answer is always decoded and compared: see _apply_answer).
            self._index = BlockingIndex()
        new = dataclasses.replace(state, stale=True, error=exc, failures=failures)
        invalidate = self._should_invalidate(state)
        if invalidate:
            log.warning(
                "watch %s: last value older than %gs, invalidated", self.name, self.invalidate_after
            )
            replacement = self._invalidated_value
            new = dataclasses.replace(
                new,
                value=replacement,
                has_value=replacement is not None,
                invalidated=True,
                changed_at=self._clock.monotonic(),
            )
        self._state = new
        self._first_outcome.set()
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                log.exception("watch %s: on_error callback failed", self.name)
        if invalidate and self._invalidated_value is not None:
            with self._dispatch_lock:
                self._dispatch(self._invalidated_value)

    def _should_invalidate(self, state: WatchState[T]) -> bool:
        return (
            self.invalidate_after is not None
            and state.has_value
            and not state.invalidated
            and state.updated_at is not None
            and self._clock.monotonic() - state.updated_at > self.invalidate_after
        )

    def _dispatch(self, value: T) -> None:
        with self._dispatch_lock:
            for listener in self._listeners:
                if self._closed.is_set():
                    return
                _call(listener, value, self.name)


def _forget_frames(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and its whole cause/context chain.

    A traceback holds the frames it passed through, and a frame holds its locals: the old
    state, the previous answer's body. An error kept as ``WatchState.error`` must keep none
    of that alive (a watch failing against an HTML error page would otherwise keep every
    attempt in memory).
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.append(current.__cause__)
        pending.append(current.__context__)


# --- the watch -----------------------------------------------------------------------------


class Watch(WatchBase[T]):
    """Keep one blocking endpoint's decoded answer current, on a daemon thread.

    Args:
        client: the agent to ask (a ConsulClient or a MeshConfig). The watch opens a
            connection pool of its own from its configuration, so that :meth:`close` can
            interrupt a parked long poll without touching anyone else's connections.
        path: the API path, e.g. ``/v1/health/service/web``.
        params: query parameters (a sequence value repeats the parameter: ``tag``).
            ``index``, ``wait`` and the consistency flags are added by the watch.
        decode: turns an answer (status 200, or 404 with ``allow_404``) into the value;
            runs on the watch thread; an exception counts as a failed attempt (the index
            does not advance, the last good value stays).
        on_change: called with each new value (the first included) on the watch thread.
        on_error: called with each failure on the watch thread (for logging/metrics).
        wait: the blocking wait in seconds, ``0 < wait <= 600``.
        consistency: ``"stale"`` (default), ``"default"`` or ``"consistent"``.
        max_stale: with ``"stale"``: when an answer's ``X-Consul-LastContact`` exceeds this
            many seconds, read again from the leader (the stale answer is kept if that fails).
        cached: ask the agent cache (``?cached``) where the endpoint supports it.
        equal: decides whether a new value equals the current one (no notification).
        backoff: pauses between failed attempts.
        rate: token refill rate (requests per second) once the burst is used.
        burst: token bucket capacity.
        invalidate_after: drop the last good value once Consul has failed for longer than
            this many seconds since the last good answer (``None``: keep it forever).
        invalidated_value: the value that replaces a dropped one (listeners are told);
            ``None`` leaves :attr:`current` ``None`` and tells nobody.
        allow_404: pass 404 answers to ``decode`` (a KV prefix with no keys).
        name: shown in logs and the thread name.
        clock: time source (backoff pauses and ages use it).
        rng: randomness for jitter.

    Thread-safety: every public method may be called from any thread. :attr:`current` and
    :attr:`state` read one reference (no lock). Listeners run one at a time, in order, on
    the watch thread; they must not block for long. :meth:`wait_first` returns only once the
    first value has been given to every listener subscribed before it arrived.

    Raises:
        ValueError: from the constructor for an invalid wait, rate or burst.
    """

    def __init__(
        self,
        client: ConsulClient | MeshConfig,
        path: str,
        params: Mapping[str, ParamValue] | None = None,
        *,
        decode: Callable[[ConsulResponse], T],
        on_change: Callable[[T], None] | None = None,
        on_error: Callable[[MeshError], None] | None = None,
        wait: float = DEFAULT_WAIT,
        consistency: Consistency = "stale",
        max_stale: float | None = None,
        cached: bool = False,
        equal: Callable[[T, T], bool] | None = None,
        backoff: Backoff | None = None,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        invalidate_after: float | None = None,
        invalidated_value: T | None = None,
        allow_404: bool = True,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        if consistency not in ("stale", "default", "consistent"):
            raise ValueError(f"consistency must be stale, default or consistent: {consistency!r}")
        super().__init__(
            path,
            params,
            decode=decode,
            on_change=on_change,
            on_error=on_error,
            equal=equal,
            invalidate_after=invalidate_after,
            invalidated_value=invalidated_value,
            name=name,
            clock=clock,
        )
        self.config = client.config if isinstance(client, ConsulClient) else client
        self.wait = validate_wait(wait)
        self.consistency: Consistency = consistency
        self.max_stale = max_stale
        self.cached = cached
        self.allow_404 = allow_404
        self._backoff = backoff or Backoff()
        self._bucket = TokenBucket(rate=rate, burst=burst)
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._close_started = False
        self._thread: threading.Thread | None = None
        self._poll = PollClient(self.config)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Watch[T]:
        """Start the background thread (idempotent); returns ``self``."""
        with self._start_lock:
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"lake-mesh-watch:{self.name}", daemon=True
                )
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop watching: returns within about a second, and no callback starts afterwards.

        A long poll parked in the agent is interrupted by shutting its socket. If a
        listener is running on the watch thread, close waits for it (up to the same
        second). Idempotent; may be called from a listener.
        """
        with self._start_lock:
            if self._close_started:
                return
            self._close_started = True
        self._interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            deadline = _monotonic() + CLOSE_TIMEOUT
            thread.join(CLOSE_TIMEOUT)
            # Wait out a listener that is still running (it holds the dispatch lock).
            if self._dispatch_lock.acquire(timeout=max(0.0, deadline - _monotonic())):
                self._dispatch_lock.release()
        self._poll.close()

    def _interrupt(self) -> None:
        """Mark closed and wake the thread wherever it is parked (no waiting)."""
        super()._interrupt()
        self._wake.set()
        self._poll.interrupt()

    def __enter__(self) -> Watch[T]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state
        return (
            f"Watch({self.name!r}, index={state.index}, stale={state.stale}, "
            f"requests={self.requests}, closed={self.closed})"
        )

    # -- reads on this watch's own connection -------------------------------------------

    def read(
        self, path: str, params: Mapping[str, Any], *, operation: str, allow_404: bool = True
    ) -> ConsulResponse:
        """One non-blocking GET over this watch's own connection (from its listeners).

        The multiplexed watcher reads the services that changed this way, so a wake costs
        no extra connection. Counted in :attr:`requests`.

        Raises:
            MeshError: as :meth:`ConsulClient.request`.
        """
        self.requests += 1
        return self._poll.request(
            "GET", path, operation=operation, params=params, allow_404=allow_404
        )

    # -- the loop ---------------------------------------------------------------------------------

    def _pause(self, seconds: float) -> bool:
        """Pause ``seconds`` on the clock; True when closed meanwhile."""
        if seconds > 0 and not self._closed.is_set():
            self._clock.wait(self._wake, seconds)
        return self._closed.is_set()

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                self._bucket, delay = self._bucket.reserve(self._clock.monotonic())
                if self._pause(delay) or not self._attempt():
                    return
        except Exception:  # a bug: log it, keep the last good value, stop the thread
            log.exception("watch %s stopped by an unexpected error", self.name)
            self._state = dataclasses.replace(self._state, stale=True)

    def _attempt(self) -> bool:
        """One blocking query and its outcome; False when the watch closed meanwhile."""
        try:
            response = self._fetch()
            if self._closed.is_set():
                return False
            self._apply_answer(response)
            return True
        except MeshError as exc:
            if self._closed.is_set():
                return False
            backoff = failure_backoff(exc, self._backoff)
            self._apply_failure(exc)
        # Outside the except block: the pause holds no reference to the failed attempt.
        return not self._pause(backoff.delay(self._state.failures, self._rng))

    def _query(self, *, blocking: bool, consistency: Consistency) -> dict[str, Any]:
        query: dict[str, Any] = {
            k: v if isinstance(v, str) else list(v) for k, v in self.params.items()
        }
        if consistency != "default":
            query[consistency] = ""
        if self.cached:
            query["cached"] = ""
        index = self._index.query_value
        if blocking and index is not None:
            query["index"] = str(index)
        return query

    def _get(self, query: dict[str, Any], wait: float | None) -> ConsulResponse:
        self.requests += 1
        return self._poll.request(
            "GET",
            self.path,
            operation=f"watch {self.name}",
            params=query,
            wait=wait,
            allow_404=self.allow_404,
        )

    def _fetch(self) -> ConsulResponse:
        blocking = self._index.query_value is not None
        query = self._query(blocking=True, consistency=self.consistency)
        response = self._get(query, self.wait if blocking else None)
        if (
            self.consistency == "stale"
            and self.max_stale is not None
            and response.last_contact is not None
            and response.last_contact > self.max_stale
            and not self._closed.is_set()
        ):
            # Too stale: ask the leader once, without blocking (Consul DNS's max_stale).
            try:
                response = self._get(self._query(blocking=False, consistency="default"), None)
            except MeshError as exc:
                log.debug(
                    "watch %s: leader re-read failed, keeping stale answer: %s", self.name, exc
                )
        return response


def failure_backoff(exc: MeshError, backoff: Backoff) -> Backoff:
    """The backoff after ``exc``: the agent's connection-limit refusal waits much longer."""
    return CONNECTION_LIMIT_BACKOFF if isinstance(exc, ConsulConnectionLimit) else backoff


def _fresh(state: WatchState[T], response: ConsulResponse, now: float, index: int) -> WatchState[T]:
    """``state`` after a successful answer: not stale, headers and freshness updated."""
    return dataclasses.replace(
        state,
        index=index,
        updated_at=now,
        stale=False,
        error=None,
        failures=0,
        known_leader=response.known_leader,
        last_contact=response.last_contact,
        cache=response.cache,
    )


def _default_equal(a: Any, b: Any) -> bool:
    return bool(a == b)


def _call(listener: Callable[[T], None], value: T, name: str) -> None:
    try:
        listener(value)
    except Exception:
        log.exception("watch %s: listener %r failed", name, listener)


def _monotonic() -> float:
    # close() bounds real time, whatever clock drives the loop.
    import time

    return time.monotonic()


# --- single flight --------------------------------------------------------------------------


class SharedWatch(Generic[T]):
    """One consumer's handle on a :class:`Watch` shared through a :class:`WatchHub`.

    Reading (:attr:`current`, :attr:`state`, :meth:`age`) goes to the shared watch;
    listeners subscribed through this handle are removed by :meth:`close`, which also
    releases the handle's reference (the watch stops when the last handle is closed).

    Thread-safety: like :class:`Watch`.
    """

    def __init__(self, hub: WatchHub, key: tuple[Any, ...], watch: WatchBase[T]) -> None:
        self._hub = hub
        self._key = key
        self.watch = watch
        self._unsubscribers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def current(self) -> T | None:
        """The shared watch's last good value."""
        return self.watch.current

    @property
    def state(self) -> WatchState[T]:
        """The shared watch's state."""
        return self.watch.state

    def age(self) -> float | None:
        """Seconds since the shared watch's last successful answer."""
        return self.watch.age()

    def wait_first(self, timeout: float | None, *, or_error: bool = False) -> bool:
        """See :meth:`Watch.wait_first`."""
        return self.watch.wait_first(timeout, or_error=or_error)

    def subscribe(
        self, listener: Callable[[T], None], *, replay: bool = False
    ) -> Callable[[], None]:
        """See :meth:`Watch.subscribe`; the listener is also removed by :meth:`close`."""
        unsubscribe = self.watch.subscribe(listener, replay=replay)
        with self._lock:
            self._unsubscribers.append(unsubscribe)
        return unsubscribe

    def close(self) -> None:
        """Remove this handle's listeners and release it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unsubscribers, self._unsubscribers = self._unsubscribers, []
        for unsubscribe in unsubscribers:
            unsubscribe()
        self._hub.release(self._key)

    def __enter__(self) -> SharedWatch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Dedicated watches (a thread and a connection each) a hub gives eligible health queries
#: before it multiplexes the rest; see :class:`WatchHub`.
DEFAULT_DEDICATED = 1


class WatchHub:
    """Single flight: one watch per (path, parameters, options), shared by handles.

    :meth:`watch` returns a :class:`SharedWatch`; consumers asking for the same path,
    parameters (order does not matter) and options share one watch. The ``decode`` of the
    first consumer is used for everyone: it must depend only on the answer.

    **A bounded cost per process.** The first ``dedicated`` service health queries
    (``/v1/health/service/<name>`` with at most ``tag``/``passing``) each get a
    :class:`Watch` of their own (one thread and one agent connection: the fastest
    propagation). Every further one is served by the hub's multiplexer
    (:mod:`lake_mesh_consul._consul.watch_mux`): two threads and two connections in all,
    however many services are watched. Other queries (KV, ``near``, ``filter``,
    ``node-meta``, another datacenter, ``cached``, ``max_stale``) always get a dedicated
    watch. With the defaults, a process watching 1,000 services runs 3 watch threads and
    holds 3 agent connections (Consul's ``limits.http_max_conns_per_client``, 200 by
    default, counts connections per client IP, shared by every process on the host).

    Args:
        client: the agent (ConsulClient or MeshConfig).
        clock: time source of the watches.
        rng: randomness for jitter (one per hub; watches get their own seeded from it).
        dedicated: how many eligible health queries get a dedicated watch (>= 0; 0
            multiplexes all of them).
        defaults: default keyword arguments for every :class:`Watch` (``wait``, ``rate``,
            ``backoff``...), overridden per call.

    Thread-safety: every method may be called from any thread.

    Example:
        >>> hub = WatchHub.shared(MeshConfig())            # doctest: +SKIP
        >>> a = hub.watch("/v1/health/service/web", {"passing": "1"}, decode=decode_json)
        >>> b = hub.watch("/v1/health/service/web", {"passing": "1"}, decode=decode_json)
        >>> a.watch is b.watch                              # one blocking query
        True
    """

    _shared: dict[MeshConfig, WatchHub] = {}  # noqa: RUF012 - process-wide registry
    _shared_lock = threading.Lock()

    def __init__(
        self,
        client: ConsulClient | MeshConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        dedicated: int = DEFAULT_DEDICATED,
        **defaults: Any,
    ) -> None:
        if not isinstance(dedicated, int) or isinstance(dedicated, bool) or dedicated < 0:
            raise ValueError(f"dedicated must be an integer >= 0, got {dedicated!r}")
        self.config = client.config if isinstance(client, ConsulClient) else client
        #: Eligible health queries that get a dedicated watch before multiplexing starts.
        self.dedicated = dedicated
        self._clock = clock
        self._rng = rng or random.Random()
        self._defaults = defaults
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[WatchBase[Any], int]] = {}
        self._dedicated_keys: set[tuple[Any, ...]] = set()
        self._mux: Any = None  # a watch_mux.Multiplexer, created with the first member
        self._closed_requests = 0
        self._closed = False

    @classmethod
    def shared(cls, client: ConsulClient | MeshConfig) -> WatchHub:
        """The process-wide hub for one agent configuration (real clock), created once."""
        config = client.config if isinstance(client, ConsulClient) else client
        with cls._shared_lock:
            hub = cls._shared.get(config)
            if hub is None or hub.closed:
                hub = cls(config)
                cls._shared[config] = hub
            return hub

    @staticmethod
    def key(path: str, params: Mapping[str, ParamValue] | None, **options: Any) -> tuple[Any, ...]:
        """The single-flight key: path, sorted parameters (sorted repeated values), options."""
        norm = []
        for name, value in (params or {}).items():
            values = (value,) if isinstance(value, str) else tuple(sorted(value))
            norm.append((name, values))
        opts = _canonical(tuple(sorted((k, repr(v)) for k, v in options.items())))
        return (path, tuple(sorted(norm)), opts)

    def watch(
        self,
        path: str,
        params: Mapping[str, ParamValue] | None = None,
        *,
        decode: Callable[[ConsulResponse], T],
        name: str | None = None,
        **options: Any,
    ) -> SharedWatch[T]:
        """A handle on the (started) watch of ``path`` and ``params``, creating it if needed.

        ``options`` are :class:`Watch` keyword arguments; they are part of the key.

        Raises:
            MeshError: the hub is closed (a ConsulError).
            ValueError: invalid options.
        """
        merged = {**self._defaults, **options}
        key = self.key(path, params, **merged)
        with self._lock:
            if self._closed:
                raise ConsulError("the watch hub is closed")
            entry = self._entries.get(key)
            if entry is None or entry[0].closed:
                watch = self._new_watch(
                    key, path=path, params=params, decode=decode, name=name, options=merged
                )
                self._entries[key] = (watch, 1)
            else:
                watch, refs = entry
                self._entries[key] = (watch, refs + 1)
        watch.start()
        return SharedWatch(self, key, watch)

    def _new_watch(
        self,
        key: tuple[Any, ...],
        *,
        path: str,
        params: Mapping[str, ParamValue] | None,
        decode: Callable[[ConsulResponse], Any],
        name: str | None,
        options: dict[str, Any],
    ) -> WatchBase[Any]:
        """A dedicated Watch, or a multiplexed member once the budget is used (lock held)."""
        from lake_mesh_consul._consul import watch_mux

        eligible = watch_mux.muxable(path, params, options)
        if not eligible or len(self._dedicated_keys) < self.dedicated:
            watch: Watch[Any] = Watch(
                self.config,
                path,
                params,
                decode=decode,
                name=name,
                clock=self._clock,
                rng=random.Random(self._rng.random()),
                **options,
            )
            if eligible:
                self._dedicated_keys.add(key)
                # First listener: the same service's multiplexed queries (other tags or
                # health filters) are read before anyone hears of this change.
                watch.subscribe(functools.partial(self._refresh_siblings, path, watch))
            return watch
        if self._mux is None:
            self._mux = watch_mux.Multiplexer(
                self.config,
                clock=self._clock,
                rng=random.Random(self._rng.random()),
                loop_options=options,
            )
        return watch_mux.MuxMember(
            self._mux,
            path,
            params,
            decode=decode,
            name=name,
            clock=self._clock,
            **{k: v for k, v in options.items() if k in _MEMBER_OPTIONS},
        )

    def _refresh_siblings(self, path: str, via: Watch[Any], _value: object) -> None:
        mux = self._mux
        if mux is not None:
            mux.refresh_service(path.rsplit("/", 1)[-1], via=via)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def release(self, key: tuple[Any, ...]) -> None:
        """Drop one reference to the watch of ``key`` (a handle closing); the last closes it."""
        to_close: WatchBase[Any] | None = None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            watch, refs = entry
            if refs <= 1:
                del self._entries[key]
                self._dedicated_keys.discard(key)
                if isinstance(watch, Watch):
                    self._closed_requests += watch.requests
                to_close = watch
            else:
                self._entries[key] = (watch, refs - 1)
        if to_close is not None:
            to_close.close()

    def watches(self) -> Iterator[WatchBase[Any]]:
        """The live watches, dedicated and multiplexed (a snapshot of the list)."""
        with self._lock:
            entries = list(self._entries.values())
        return iter([watch for watch, _ in entries])

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def multiplexed(self) -> int:
        """How many of the live watches the multiplexer serves."""
        mux = self._mux
        return 0 if mux is None else len(mux)

    @property
    def threads(self) -> int:
        """Threads the hub's watches run now (dedicated ones plus the multiplexer's)."""
        with self._lock:
            dedicated = sum(1 for w, _ in self._entries.values() if isinstance(w, Watch))
        mux = self._mux
        return dedicated + (0 if mux is None else mux.threads)

    @property
    def requests(self) -> int:
        """HTTP requests sent by every watch of this hub, closed ones included."""
        with self._lock:
            dedicated = sum(w.requests for w, _ in self._entries.values() if isinstance(w, Watch))
            closed = self._closed_requests
        mux = self._mux
        return closed + dedicated + (0 if mux is None else mux.requests)

    def close(self) -> None:
        """Close every watch (within about a second each, in parallel). Idempotent."""
        with self._lock:
            self._closed = True
            watches = [w for w, _ in self._entries.values()]
            self._closed_requests += sum(w.requests for w in watches if isinstance(w, Watch))
            self._entries.clear()
            self._dedicated_keys.clear()
            mux = self._mux
        for watch in watches:  # wake every parked poll first, then wait for each
            watch.interrupt()
        if mux is not None:
            mux.close()
        for watch in watches:
            watch.close()

    def __enter__(self) -> WatchHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=256)
def _canonical(options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """One shared copy of each distinct options tuple (keys of many watches repeat it)."""
    return options


#: The Watch options a multiplexed member takes (the loops take wait/backoff/rate).
_MEMBER_OPTIONS = frozenset(
    {
        "consistency",
        "allow_404",
        "on_change",
        "on_error",
        "equal",
        "invalidate_after",
        "invalidated_value",
    }
)
