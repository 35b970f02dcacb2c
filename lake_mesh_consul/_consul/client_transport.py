"""The socket-level guards under :class:`~lake_mesh_consul._consul.client.ConsulClient`.

requests and urllib3 bound each socket *read* (``timeout=``) but not a whole exchange: an
agent that trickles one byte a second never trips a 10-second read timeout, and held
``register()`` for over 40 s (issue 12). So every connection the client opens is a
:class:`_GuardedHTTPConnection` whose socket re-arms its timeout before each read and write
to ``min(read timeout, time left until the exchange's deadline)``; the sum of the waits can
then never pass the deadline, without a timer thread.

The exchange (deadline, byte cap, the client's registry, whether a fresh connection was
opened, bytes received) lives in a thread-local set by :func:`exchange` around one request:
a connection is used by one thread at a time (urllib3 checks it out of the pool), so the
thread that reads is the one whose deadline applies, and the connection classes can be
shared by every client.

:class:`ConnectionRegistry` remembers the live connections of one client, so that its
``close()`` can shut them, waking a thread parked in a read at once.

Nothing here knows the token: it travels in request headers, which these classes never
see or keep.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "GUARDED_POOL_CLASSES",
    "ConnectionRegistry",
    "Exchange",
    "current_exchange",
    "exchange",
    "process_connections",
]

#: Called with each connection right after it connected (e.g. to register it elsewhere).
ConnectHook = Callable[[HTTPConnection], None]


@dataclass
class Exchange:
    """One request/answer exchange on the calling thread.

    Attributes:
        deadline: ``time.monotonic()`` reading by which it must end (``None``: no overall
            deadline, only per-read timeouts).
        seconds: the deadline as a duration, for messages.
        fresh_connection: a new connection was opened for it (not one from the pool).
        operation: what is being done, for messages.
        limit: most bytes to read from the agent (``None``: no cap); past it a read fails
            with ConnectionAbortedError and ``oversize`` is set.
        fresh_connection: a new connection was opened for it (not one from the pool).
        received: bytes read from the agent so far (headers included).
        expired: a read or write failed because the deadline had passed.
        oversize: the answer passed ``limit``.
        registry: where a connection opened for it is listed (the client's).
    """

    deadline: float | None
    seconds: float | None
    operation: str = ""
    limit: int | None = None
    fresh_connection: bool = False
    received: int = 0
    expired: bool = False
    oversize: bool = False
    registry: ConnectionRegistry | None = None

    def remaining(self) -> float | None:
        """Seconds left (``None``: no deadline); may be negative."""
        return None if self.deadline is None else self.deadline - time.monotonic()


_local = threading.local()

#: Every guarded connection of the process (weakly), for :func:`process_connections`.
_ALL_LOCK = threading.Lock()
_ALL: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()


def process_connections(host: str, port: int) -> int:
    """Open connections this process holds to ``host:port`` through any ConsulClient.

    Consul's ``limits.http_max_conns_per_client`` counts connections per client IP, so this
    is this process's share of that budget (other processes on the host count too).
    """
    with _ALL_LOCK:
        conns = list(_ALL)
    return sum(
        1
        for conn in conns
        if conn.host == host and conn.port == port and getattr(conn, "sock", None) is not None
    )


def current_exchange() -> Exchange | None:
    """The exchange running on this thread, if any."""
    found: Exchange | None = getattr(_local, "exchange", None)
    return found


@contextmanager
def exchange(
    seconds: float | None,
    operation: str = "",
    limit: int | None = None,
    registry: ConnectionRegistry | None = None,
) -> Iterator[Exchange]:
    """Run one exchange on this thread: every socket read and write ends by ``seconds``.

    Nested exchanges keep the earlier of the two deadlines.
    """
    outer = current_exchange()
    deadline = None if seconds is None else time.monotonic() + seconds
    if outer is not None and _earlier(outer.deadline, deadline):
        deadline, seconds = outer.deadline, outer.seconds
    if registry is None and outer is not None:
        registry = outer.registry
    current = Exchange(
        deadline=deadline, seconds=seconds, operation=operation, limit=limit, registry=registry
    )
    _local.exchange = current
    try:
        yield current
    finally:
        _local.exchange = outer


def _earlier(first: float | None, second: float | None) -> bool:
    """``first`` is a deadline that ends before ``second`` (``None``: never ends)."""
    return first is not None and (second is None or first < second)


class ConnectionRegistry:
    """The live connections of one client, so that closing it wakes parked readers.

    Thread-safe. Connections are held weakly: a connection dropped by its pool goes away.
    """

    def __init__(self, on_connect: ConnectHook | None = None) -> None:
        self._lock = threading.Lock()
        self._conns: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self._on_connect = on_connect
        self.closed = False

    def add(self, conn: HTTPConnection) -> None:
        """Remember ``conn``; shut it at once if the registry is already closed."""
        with self._lock:
            self._conns.add(conn)
            closed = self.closed
        if closed:
            shut(conn)
        elif self._on_connect is not None:
            self._on_connect(conn)

    def count(self) -> int:
        """Connections currently open."""
        with self._lock:
            return sum(1 for conn in self._conns if getattr(conn, "sock", None) is not None)

    def shut_all(self) -> None:
        """Close the registry and shut every connection (a parked read sees EOF)."""
        with self._lock:
            self.closed = True
            conns = list(self._conns)
        for conn in conns:
            shut(conn)


def shut(conn: HTTPConnection) -> None:
    """Shut ``conn``'s socket both ways; ``shutdown`` (unlike ``close``) wakes a blocked recv."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _GuardedSocket:
    """A connected socket whose every read and write ends by the current exchange's deadline.

    Everything not overridden is delegated to the wrapped socket (plain or TLS). ``makefile``
    keeps ``socket.makefile``'s contract: the socket really closes only when it and every
    file made from it are closed (http.client closes the connection while the answer is
    still being read).
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._timeout: float | None = sock.gettimeout()
        self._files = 0
        self._close_pending = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        """The per-operation timeout (the deadline may shorten it)."""
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        """The per-operation timeout as last set."""
        return self._timeout

    def _arm(self, current: Exchange | None) -> bool:
        """Set the socket's timeout for one operation; True when the deadline shortened it."""
        if current is None or current.deadline is None:
            self._sock.settimeout(self._timeout)
            return False
        left = current.deadline - time.monotonic()
        if left <= 0:
            current.expired = True
            raise TimeoutError("deadline exceeded")
        if self._timeout is not None and self._timeout <= left:
            self._sock.settimeout(self._timeout)
            return False
        self._sock.settimeout(left)
        return True

    def _guarded(self, operation: Callable[[], int]) -> int:
        current = current_exchange()
        shortened = self._arm(current)
        try:
            return operation()
        except TimeoutError:
            if shortened and current is not None:
                current.expired = True
            raise

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """``socket.recv_into`` within the deadline and the exchange's byte cap."""
        # nbytes=0 means "the whole buffer" for a plain socket, but 0 bytes for a TLS one.
        size = nbytes or memoryview(buffer).nbytes
        count = self._guarded(lambda: int(self._sock.recv_into(buffer, size, flags)))
        current = current_exchange()
        if current is not None:
            current.received += count
            if current.limit is not None and current.received > current.limit:
                current.oversize = True
                raise ConnectionAbortedError("answer larger than the cap")
        return count

    def recv(self, size: int, flags: int = 0) -> bytes:
        """``socket.recv`` within the deadline."""
        buffer = bytearray(size)
        count = self.recv_into(buffer, size, flags)
        return bytes(buffer[:count])

    def sendall(self, data: Any, flags: int = 0) -> None:
        """``socket.sendall`` within the deadline (its timeout covers the whole send)."""
        self._guarded(lambda: self._sock.sendall(data, flags) or 0)

    def send(self, data: Any, flags: int = 0) -> int:
        """``socket.send`` within the deadline."""
        return self._guarded(lambda: int(self._sock.send(data, flags)))

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: Any) -> Any:
        """A buffered reader over this socket (http.client reads answers through it)."""
        if mode not in ("r", "rb"):
            raise ValueError(f"unsupported mode {mode!r}")
        self._files += 1
        size = io.DEFAULT_BUFFER_SIZE if not buffering or buffering < 0 else buffering
        return io.BufferedReader(_SocketReader(self), size)

    def file_closed(self) -> None:
        """One file made by :meth:`makefile` was closed."""
        self._files -= 1
        if self._files <= 0 and self._close_pending:
            self._sock.close()

    def close(self) -> None:
        """Close now, or when the last file made from this socket closes."""
        if self._files > 0:
            self._close_pending = True
        else:
            self._sock.close()


class _SocketReader(io.RawIOBase):
    """The raw reader under :meth:`_GuardedSocket.makefile`."""

    def __init__(self, sock: _GuardedSocket) -> None:
        super().__init__()
        self._sock: _GuardedSocket | None = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._sock is None:
            raise ValueError("I/O operation on closed file")
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        super().close()
        if sock is not None:
            sock.file_closed()


def _before_connect() -> None:
    current = current_exchange()
    registry = None if current is None else current.registry
    if registry is not None and registry.closed:
        raise ConnectionAbortedError("client closed")


def _connected(conn: HTTPConnection) -> None:
    conn.sock = _GuardedSocket(conn.sock)
    with _ALL_LOCK:
        _ALL.add(conn)
    current = current_exchange()
    if current is not None:
        current.fresh_connection = True
        if current.registry is not None:
            current.registry.add(conn)


class _GuardedHTTPConnection(HTTPConnection):
    """An HTTP connection whose socket is guarded and listed in the exchange's registry."""

    def connect(self) -> None:
        _before_connect()
        super().connect()
        _connected(self)


class _GuardedHTTPSConnection(HTTPSConnection):
    """An HTTPS connection whose (TLS) socket is guarded and listed in the exchange's registry."""

    def connect(self) -> None:
        _before_connect()
        super().connect()
        _connected(self)


class _GuardedPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedTLSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


#: urllib3 pool classes by scheme whose connections are guarded: install a copy as a pool
#: manager's ``pool_classes_by_scheme``. One set for the process (classes made per client
#: cost about 9 KB each); the registry a new connection joins is the running exchange's.
GUARDED_POOL_CLASSES: Mapping[str, type[HTTPConnectionPool]] = {
    "http": _GuardedPool,
    "https": _GuardedTLSPool,
}
