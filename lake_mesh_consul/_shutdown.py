"""Drain on SIGTERM: run a bounded close, then hand the signal on to whoever had it before.

systemd, Docker and Kubernetes stop a service with SIGTERM, then SIGKILL after a grace period
(Kubernetes: 30 s by default). Python's default action for SIGTERM ends the process at once:
no ``finally`` block, no ``with`` exit, so a registered instance would stay in Consul,
critical, until someone deregisters it. Spring Cloud Consul deregisters on shutdown; so do we.

:class:`ShutdownHook` installs one handler per signal (only the main thread may) that

1. runs ``close`` on a helper thread and waits for it at most ``budget`` seconds (the close
   is bounded itself; the helper thread only guards against a close that would need a lock
   the interrupted main thread holds);
2. restores the handlers it replaced;
3. hands the signal on: to the previous handler when it is a function (the application's
   own), nowhere when it was ``SIG_IGN``, and otherwise raises ``SystemExit(128 + signum)``
   (exit status 143 for SIGTERM, as a shell reports it), so ``finally`` blocks and ``with``
   exits run on the way out.

A second signal while the first is handled goes straight on (the close is idempotent).
A signal that interrupts the main thread inside a :meth:`ShutdownHook.deferring` block (where
handling it at once would do harm: the owner is closing already, or registering) is kept: the
handler starts the close beside it and returns, the section goes on (bounded: the close
cancels a registration's retries and wakes its call), and the block's end handles the
signal (close done, hand on). Handled
at once, SystemExit would cut a drain short, or interrupt a registration the agent may
already have made, leaving it behind.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

__all__ = ["ShutdownHook"]

log = logging.getLogger("lake_mesh_consul.shutdown")


class ShutdownHook:
    """Run ``close`` (bounded by ``budget`` seconds) on ``signals``, then chain.

    Args:
        close: what to run (idempotent; it must bound its own duration).
        budget: the longest the handler waits for ``close`` before handing the signal on.
        name: shown in the log line and the helper thread's name.
        signals: the signals handled (default: SIGTERM).

    Thread-safety: :meth:`install` and :meth:`uninstall` act only on the main thread (Python
    lets no other thread touch signal handlers); elsewhere they do nothing and say so.
    """

    def __init__(
        self,
        close: Callable[[], None],
        *,
        budget: float,
        name: str,
        signals: Sequence[int] = (signal.SIGTERM,),
    ) -> None:
        self._close = close
        self.budget = budget
        self.name = name
        self.signals = tuple(signals)
        self._sections = 0  # deferring() blocks the main thread is in
        # Kept signals, with the handler they go on to (read when the signal came).
        self._deferred: list[tuple[int, FrameType | None, Any]] = []
        self._previous: dict[int, Any] = {}
        # Reentrant: the handler may interrupt the main thread inside install/uninstall.
        self._lock = threading.RLock()

    @property
    def installed(self) -> bool:
        """Whether the handlers are in place."""
        return bool(self._previous)

    def install(self) -> bool:
        """Install the handlers (idempotent); False when not on the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        with self._lock:
            if not self._previous:
                for signum in self.signals:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        """Put back the handlers this hook replaced (where it is still the one installed)."""
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            try:
                if signal.getsignal(signum) == self._handle:
                    signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            except (ValueError, TypeError, OSError):  # interpreter shutting down
                pass

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """On the main thread: a signal arriving inside the block is handled at its end.

        Elsewhere (no signal handler runs on another thread) it does nothing. Leaving the
        outermost block may raise ``SystemExit``, as the signal's handling would have.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._sections += 1
        try:
            yield
        finally:
            self._sections -= 1
            if self._sections == 0 and self._deferred:
                signum, frame, previous = self._deferred[0]
                self._deferred.clear()
                self._handle_now(signum, frame, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._sections > 0:
            log.info("%s: signal %d kept until the current step ends", self.name, signum)
            previous = self._previous.get(signum, signal.SIG_DFL)
            self._deferred.append((signum, frame, previous))
            # Start closing now, beside the step (which it cuts short cleanly, e.g. a
            # registration retrying against a dead agent): the block's end only waits for it.
            threading.Thread(
                target=self._run_close, name=f"{self.name}-shutdown", daemon=True
            ).start()
            return
        self._handle_now(signum, frame, self._previous.get(signum, signal.SIG_DFL))

    def _handle_now(self, signum: int, frame: FrameType | None, previous: Any) -> None:
        log.info(
            "%s: signal %d: draining before exit (at most %.1fs)", self.name, signum, self.budget
        )
        closer = threading.Thread(target=self._run_close, name=f"{self.name}-shutdown", daemon=True)
        closer.start()
        closer.join(self.budget)
        if closer.is_alive():
            log.warning(
                "%s: close still running after %.1fs; exiting anyway", self.name, self.budget
            )
        self.uninstall()
        self._chain(previous, signum, frame)

    @staticmethod
    def _chain(previous: Any, signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    def _run_close(self) -> None:
        try:
            self._close()
        except Exception:  # the process is going down: log, never raise on a helper thread
            log.exception("%s: close on signal failed", self.name)

    def __repr__(self) -> str:
        names = ", ".join(signal.Signals(s).name for s in self.signals)
        return f"ShutdownHook({self.name!r}, {names}, installed={self.installed})"
