"""An asyncio service calling another service through the mesh: ASGI, uvicorn, httpx.

Run a local agent first (``lake-mesh agent up``, then export CONSUL_HTTP_ADDR), then::

    pip install 'lake-mesh-consul[httpx]' uvicorn
    python examples/asgi_service.py

``frontend`` is an ASGI app (bare ASGI here; FastAPI or Starlette look the same) served by
uvicorn. Its lifespan starts the mesh without blocking the loop (``await mesh.astart()``)
and closes it (``await mesh.aclose()``); its handler calls ``http://greeter/hello`` with an
``httpx.AsyncClient`` whose transport is ``AsyncMeshTransport``: discovery, balancing,
breakers and retries on another instance, with no glue code. For a self-contained example
the two ``greeter`` instances are ASGI apps served by uvicorn in the same process and
registered here; in real life they are other processes that register themselves.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn

from lake_mesh_consul import HealthStatus, ServiceMetadata
from lake_mesh_consul.checks import TtlCheck
from lake_mesh_consul.httpx import AsyncMeshTransport, endpoint_of
from lake_mesh_consul.mesh import Mesh

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def respond(send: Send, status: int, body: str) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


def greeter(name: str, state: dict[str, bool]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """One instance of ``greeter``: 503 while ``state["failing"]``, else a greeting."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if state["failing"]:
            await respond(send, 503, "unavailable")
        else:
            await respond(send, 200, f"hello from {name}")

    return app


class Frontend:
    """The service we are writing: its lifespan owns the mesh, its handler calls greeter."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.http: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.mesh.astart()  # KV read in a worker thread
                    self.http = httpx.AsyncClient(
                        transport=AsyncMeshTransport(self.mesh), timeout=2
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.http is not None:
                        await self.http.aclose()
                    await self.mesh.aclose()  # drain and deregister in a worker thread
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.http is not None
        response = await self.http.get("http://greeter/hello")
        served = endpoint_of(response)
        who = served.id if served is not None else "?"
        await respond(send, response.status_code, f"{response.text} (served by {who})")


def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def serve(
    app: Any, sock: socket.socket, lifespan: str
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve ``app`` with uvicorn on ``sock`` in this loop, once it has started."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    for _ in range(200):  # bounded: 10 s
        if server.started:
            return server, task
        await asyncio.sleep(0.05)
    raise RuntimeError("uvicorn did not start")


async def main() -> None:
    states = {"greeter-a": {"failing": False}, "greeter-b": {"failing": False}}
    servers = []
    mesh = Mesh.from_env(drain_grace=0.5)
    for name, state in states.items():
        sock = bound_socket()
        servers.append(await serve(greeter(name, state), sock, "off"))
        await asyncio.to_thread(  # in real life: the greeter process registers itself
            mesh.register,
            ServiceMetadata("greeter", sock.getsockname()[1], id=name, address="127.0.0.1"),
            TtlCheck(ttl=30.0, status=HealthStatus.PASSING),
        )
    front = bound_socket()
    servers.append(await serve(Frontend(mesh), front, "on"))
    url = f"http://127.0.0.1:{front.getsockname()[1]}/"
    route = await mesh.aroute("greeter")
    for _ in range(150):  # bounded: both instances eligible
        if route.balancer.stats().eligible == 2:
            break
        await asyncio.sleep(0.1)

    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(4):
            response = await client.get(url)
            print("frontend answered:", response.status_code, response.text)
        states["greeter-b"]["failing"] = True  # one instance fails: retried on the other
        for _ in range(2):
            response = await client.get(url)
            print("greeter-b failing:", response.status_code, response.text)

    for server, _ in reversed(servers):  # the frontend first: its lifespan closes the mesh
        server.should_exit = True
    await asyncio.wait_for(asyncio.gather(*(task for _, task in servers)), 10)
    print("mesh closed:", mesh.closed)


if __name__ == "__main__":
    asyncio.run(main())
