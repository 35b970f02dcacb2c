"""A hostile HTTP server on loopback: an adversary standing where the agent should be.

It is never a stand-in for Consul's behaviour: it plays what a wrong address, a broken
proxy or an attacker would send (redirects, HTML error pages, truncated, oversized and
trickling bodies) and records what it received, so that a test can see whether the token
arrived somewhere it should not.

Every loop here is bounded: the accept loop stops when the server is closed, each answer
stops when the client goes away or its byte/time budget is spent.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Longest request head read from a client.
MAX_HEAD = 64 * 1024

#: One answer: write to the connection, given the request head received.
Answer = Callable[[socket.socket, bytes], None]


class HostileServer:
    """Accept connections on ``host``; answer each with ``answer``; remember the heads.

    Connections are served one after another on one daemon thread; each is closed after its
    answer. :attr:`heads` holds every request head received, :attr:`sent` the bytes written.
    """

    def __init__(
        self, answer: Answer, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.answer = answer
        self.tls = tls
        self.heads: list[bytes] = []
        self.sent = 0
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile-agent", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port``."""
        host, port = self._sock.getsockname()[:2]
        return f"{host}:{port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = _read_head(conn)
            self.heads.append(head)
            self.answer(conn, head)
        except OSError:  # the client went away (or refused the handshake)
            pass
        finally:
            conn.close()

    def send(self, conn: socket.socket, data: bytes) -> None:
        """Write ``data`` and count it."""
        conn.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        """Stop accepting and wait for the serving thread (bounded)."""
        self._stop.set()
        self._thread.join(10)
        self._sock.close()


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def hostile(
    answer: Answer, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> Iterator[HostileServer]:
    """A :class:`HostileServer` (HTTPS with ``tls``) for the duration of a ``with`` block."""
    server = HostileServer(answer, host, tls)
    try:
        yield server
    finally:
        server.close()


def head(status: str, headers: dict[str, str], length: int | None) -> bytes:
    """An HTTP/1.1 status line and headers (``Connection: close``)."""
    lines = [f"HTTP/1.1 {status}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def fixed(status: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """Answer with ``body`` and a correct Content-Length."""

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.sendall(head(status, headers or {}, len(body)) + body)

    return answer


def truncated(body: bytes, announced: int) -> Answer:
    """Announce ``announced`` bytes, send ``body`` (fewer), then close."""

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.sendall(head("200 OK", {"Content-Type": "application/json"}, announced) + body)

    return answer


def endless(server: Callable[[], HostileServer], *, announce: bool, total: int) -> Answer:
    """A body of ``total`` bytes of a JSON array, with or without Content-Length.

    Without it the body ends when the connection closes; it stops early when the client
    goes away (the bytes actually written are counted in ``server().sent``).
    """
    chunk = b"[" + b"1," * 32767

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.sendall(head("200 OK", {"X-Consul-Index": "7"}, total if announce else None))
        written = 0
        while written < total:
            piece = chunk[: total - written]
            server().send(conn, piece)
            written += len(piece)

    return answer


def trickle(prefix: bytes, *, interval: float, max_bytes: int) -> Answer:
    """Send ``prefix`` one byte every ``interval`` seconds (at most ``max_bytes`` bytes)."""

    def answer(conn: socket.socket, _: bytes) -> None:
        for byte in prefix[:max_bytes]:
            conn.sendall(bytes([byte]))
            time.sleep(interval)

    return answer


def silent(seconds: float) -> Answer:
    """Read the request, then say nothing for ``seconds`` (or until the client leaves)."""

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.settimeout(seconds)
        try:
            conn.recv(1)
        except OSError:
            pass

    return answer
