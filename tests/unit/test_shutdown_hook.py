"""ShutdownHook: close first, then the signal goes on to whoever had it (real signals, SIGUSR1)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from lake_mesh_consul._shutdown import ShutdownHook

SIG = signal.SIGUSR1


@pytest.fixture(autouse=True)
def _restore_sigusr1() -> Iterator[None]:
    saved = signal.getsignal(SIG)
    try:
        yield
    finally:
        signal.signal(SIG, saved)


def _hook(events: list[str]) -> ShutdownHook:
    return ShutdownHook(lambda: events.append("close"), budget=5.0, name="t", signals=(SIG,))


def test_close_runs_then_the_application_handler_and_the_hook_is_removed() -> None:
    events: list[str] = []

    def application(signum: int, frame: FrameType | None) -> None:
        events.append(f"application {signum}")

    signal.signal(SIG, application)
    hook = _hook(events)
    assert hook.install()
    assert hook.installed
    os.kill(os.getpid(), SIG)
    assert events == ["close", f"application {int(SIG)}"]
    assert signal.getsignal(SIG) == application
    assert not hook.installed


def test_default_action_becomes_systemexit_128_plus_signum_after_close() -> None:
    events: list[str] = []
    signal.signal(SIG, signal.SIG_DFL)
    hook = _hook(events)
    hook.install()
    with pytest.raises(SystemExit) as caught:
        os.kill(os.getpid(), SIG)
    assert caught.value.code == 128 + SIG
    assert events == ["close"]
    assert signal.getsignal(SIG) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored_after_close() -> None:
    events: list[str] = []
    signal.signal(SIG, signal.SIG_IGN)
    _hook(events).install()
    os.kill(os.getpid(), SIG)
    assert events == ["close"]
    assert signal.getsignal(SIG) == signal.SIG_IGN


def test_a_failing_close_still_hands_the_signal_on() -> None:
    events: list[str] = []

    def broken() -> None:
        raise RuntimeError("close failed")

    signal.signal(SIG, lambda signum, frame: events.append("application"))
    ShutdownHook(broken, budget=5.0, name="t", signals=(SIG,)).install()
    os.kill(os.getpid(), SIG)
    assert events == ["application"]


def test_install_is_refused_off_the_main_thread_and_uninstall_keeps_a_newer_handler() -> None:
    events: list[str] = []
    hook = _hook(events)
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(hook.install()))
    worker.start()
    worker.join(5)
    assert result == [False]
    assert not hook.installed
    hook.install()

    def newer(signum: int, frame: FrameType | None) -> None:
        events.append("newer")

    signal.signal(SIG, newer)  # the application replaced our handler meanwhile
    hook.uninstall()
    assert signal.getsignal(SIG) == newer  # not clobbered


def test_a_signal_inside_a_deferring_block_is_handled_at_its_end() -> None:
    events: list[str] = []
    closed = threading.Event()

    def close() -> None:
        events.append("close")
        closed.set()

    def application(signum: int, frame: FrameType | None) -> None:
        events.append("application")

    signal.signal(SIG, application)
    hook = ShutdownHook(close, budget=5.0, name="t", signals=(SIG,))
    hook.install()
    with hook.deferring():  # e.g. the main thread registering, or closing already
        with hook.deferring():  # nested: only the outermost end hands the signal on
            os.kill(os.getpid(), SIG)
        # No handling cutting the step short; the close starts beside it at once.
        assert closed.wait(5)
        assert "application" not in events
        hook.uninstall()  # the owner's close may uninstall inside the block
    assert events == ["close", "close", "application"]  # a real owner's 2nd close is a no-op
    assert signal.getsignal(SIG) == application


def test_deferring_does_nothing_off_the_main_thread() -> None:
    hook = _hook([])
    done: list[bool] = []

    def worker() -> None:
        with hook.deferring():
            done.append(True)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert done == [True]
