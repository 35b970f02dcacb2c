"""How many TCP connections this process holds to the Consul agent (Linux ``/proc``).

Consul's ``limits.http_max_conns_per_client`` (200 by default) counts the HTTP connections
of one client IP, shared by every process on the host; past it the agent closes new
connections at once. :func:`agent_connections` counts this process's share, for
``lake-mesh doctor`` and for tests that hold the watch engine to its budget: the sockets
in ``/proc/self/fd`` whose inode ``/proc/self/net/tcp`` (and ``tcp6``) lists as connected
to the agent's address and port.

:func:`agent_connection_limit` reads the agent's limit from ``/v1/agent/self``
(``DebugConfig.HTTPMaxConnsPerClient``, which Consul 1.8 exposes), ``None`` when the
agent does not say.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["agent_connection_limit", "agent_connections"]

#: TCP state "established" in /proc/net/tcp (hex).
_ESTABLISHED = "01"


def _socket_inodes(fd_dir: Path) -> set[str]:
    inodes: set[str] = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _decode_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` (little-endian words, as the kernel prints them) -> (ip, port)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, int(port, 16)
    return ip, int(port, 16)


def _resolve(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


def agent_connections(
    host: str, port: int, *, proc: str | os.PathLike[str] = "/proc"
) -> int | None:
    """This process's established TCP connections to ``host:port``; ``None`` off Linux.

    ``host`` may be an IP address or a name (resolved once). Sockets of other processes
    are not counted, even on the same host.
    """
    root = Path(proc) / "self"
    tables = [root / "net" / "tcp", root / "net" / "tcp6"]
    if not tables[0].exists():
        return None
    wanted = _resolve(host)
    mine = _socket_inodes(root / "fd")
    count = 0
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _ESTABLISHED or fields[9] not in mine:
                continue
            ip, remote_port = _decode_address(fields[2])
            if remote_port == port and ip in wanted:
                count += 1
    return count


def agent_connection_limit(agent_self: Any) -> int | None:
    """The agent's ``http_max_conns_per_client`` from an ``/v1/agent/self`` answer, if shown."""
    if not isinstance(agent_self, dict):
        return None
    debug = agent_self.get("DebugConfig")
    value = debug.get("HTTPMaxConnsPerClient") if isinstance(debug, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
