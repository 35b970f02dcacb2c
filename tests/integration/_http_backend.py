"""A loopback HTTP backend for the asyncio tests, run as a subprocess (no GIL shared with them).

``python _http_backend.py NAME`` listens on 127.0.0.1 (a free port, printed on stdout as the
first line) with HTTP/1.1 keep-alive and a deep accept queue. Every path answers with the
current status (200 unless told), after the current delay, with JSON naming the instance,
method, path and Host header. Control, from the test:

    POST /_control?status=503&delay=0.5&retry_after=1   change the answers
    GET  /_hits                                         {"hits": N} (control calls excluded)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    name = ""
    status = 200
    delay = 0.0
    retry_after: str | None = None
    hits = 0
    lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as a pooled client expects
    wbufsize = -1  # headers and body in one segment (no 40 ms delayed-ACK stall)
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        if parts.path == "/_control":
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            server.status = int(query.get("status", server.status))
            server.delay = float(query.get("delay", server.delay))
            server.retry_after = query.get("retry_after") or None
            self._send(200, b"{}")
            return
        if parts.path == "/_hits":
            self._send(200, json.dumps({"hits": server.hits}).encode())
            return
        with server.lock:
            server.hits += 1
        status, delay = server.status, server.delay
        if delay:
            time.sleep(delay)
        body = {
            "instance": server.name,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
        }
        self._send(status, json.dumps(body).encode())

    do_GET = _answer  # noqa: N815 - http.server dispatches on do_<METHOD>
    do_POST = _answer  # noqa: N815
    do_PUT = _answer  # noqa: N815

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if status != 200 and self.server.retry_after:
            self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.name = sys.argv[1]
    print(server.server_address[1], flush=True)
    server.serve_forever(0.05)


if __name__ == "__main__":
    main()
