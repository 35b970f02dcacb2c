"""Services of realistic shape in a real agent's catalog, for the benchmarks that need many.

Instances are written through ``/v1/txn`` (catalog operations, 64 per transaction), each on
a node of its own, as a fleet of VMs registers them: a node with tagged addresses and meta
and a node-level health check (shaped as ``serfHealth`` is on a real agent), a service with tags,
meta, weights and tagged addresses, and a TTL-style service check with notes and output.
What ``/v1/health/service/<name>`` then answers is Consul's own encoding of these objects
(about 2 KB per instance with Consul 1.8.7), so every decoding figure works on real answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import requests

#: Consul's limit of operations per transaction.
TXN_MAX_OPS = 64

#: Operations written per instance (node, service, node check, service check).
OPS_PER_INSTANCE = 4


def node_name(service: str, i: int) -> str:
    """The node instance ``i`` of ``service`` lives on."""
    return f"{service}-node-{i}"


def _instance_ops(service: str, i: int) -> list[dict[str, Any]]:
    node = node_name(service, i)
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    sid = f"{service}-{i}"
    return [
        {
            "Node": {
                "Verb": "set",
                "Node": {
                    "Node": node,
                    "Address": ip,
                    "Datacenter": "dc1",
                    "TaggedAddresses": {"lan": ip, "lan_ipv4": ip, "wan": ip, "wan_ipv4": ip},
                    "Meta": {"consul-network-segment": "", "rack": f"r{i % 16}"},
                },
            }
        },
        {
            "Service": {
                "Verb": "set",
                "Node": node,
                "Service": {
                    "ID": sid,
                    "Service": service,
                    "Tags": ["v1", "http", "primary"],
                    "Address": ip,
                    "TaggedAddresses": {
                        "lan": {"Address": ip, "Port": 8080},
                        "wan": {"Address": ip, "Port": 8080},
                    },
                    "Meta": {"version": "1.4.2", "zone": f"zone-{i % 3}", "team": "payments"},
                    "Port": 8080,
                    "Weights": {"Passing": 10, "Warning": 1},
                },
            }
        },
        {
            "Check": {
                "Verb": "set",
                "Check": {
                    "Node": node,
                    # Not "serfHealth": the leader reaps nodes whose serfHealth check has
                    # no serf member behind it (consul leader.go, reconcileReaped).
                    "CheckID": "node-health",
                    "Name": "Node Health Status",
                    "Status": "passing",
                    "Output": "Agent alive and reachable",
                },
            }
        },
        _check_op(service, i, "passing"),
    ]


def _check_op(service: str, i: int, status: str) -> dict[str, Any]:
    sid = f"{service}-{i}"
    return {
        "Check": {
            "Verb": "set",
            "Check": {
                "Node": node_name(service, i),
                "CheckID": f"service:{sid}",
                "Name": f"Service '{service}' check",
                "Status": status,
                "Notes": "heartbeat pushed by the service every 10 s",
                "Output": f"{status}: heartbeat from {sid}",
                "ServiceID": sid,
                "ServiceName": service,
                "Type": "ttl",
            },
        }
    }


def _chunks(ops: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(ops), TXN_MAX_OPS):
        yield ops[start : start + TXN_MAX_OPS]


class Catalog:
    """Writes to one agent's catalog through ``/v1/txn``; a context manager (closes its pool)."""

    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"
        self.http = requests.Session()
        self.http.trust_env = False

    def _txn(self, ops: list[dict[str, Any]]) -> None:
        for chunk in _chunks(ops):
            answer = self.http.put(f"{self.base}/v1/txn", json=chunk, timeout=30)
            if answer.status_code != 200:
                raise RuntimeError(f"txn failed: {answer.status_code} {answer.text[:200]}")

    def populate(self, service: str, n: int) -> None:
        """Register ``n`` instances of ``service``, one node each, all passing."""
        ops: list[dict[str, Any]] = []
        for i in range(n):
            ops.extend(_instance_ops(service, i))
        self._txn(ops)

    def populate_services(self, services: list[str]) -> None:
        """Register one instance (instance 0) of each of ``services``, in few transactions."""
        ops: list[dict[str, Any]] = []
        for service in services:
            ops.extend(_instance_ops(service, 0))
        self._txn(ops)

    def remove_services(self, services: list[str]) -> None:
        """Deregister what :meth:`populate_services` wrote."""
        self._txn(
            [{"Node": {"Verb": "delete", "Node": {"Node": node_name(s, 0)}}} for s in services]
        )

    def set_status(self, service: str, i: int, status: str) -> None:
        """Set instance ``i``'s service check (raises that check's ModifyIndex only)."""
        self._txn([_check_op(service, i, status)])

    def health_body(self, service: str) -> bytes:
        """The raw body of ``/v1/health/service/<service>`` (what a watch decodes)."""
        answer = self.http.get(f"{self.base}/v1/health/service/{service}", timeout=30)
        answer.raise_for_status()
        return answer.content

    def index(self, service: str) -> int:
        """The current ``X-Consul-Index`` of the service's health query."""
        answer = self.http.get(f"{self.base}/v1/health/service/{service}", timeout=30)
        return int(answer.headers["X-Consul-Index"])

    def remove(self, service: str, n: int) -> None:
        """Deregister the nodes :meth:`populate` wrote (their services and checks go too)."""
        ops = [
            {"Node": {"Verb": "delete", "Node": {"Node": node_name(service, i)}}} for i in range(n)
        ]
        self._txn(ops)

    def wait_count(self, service: str, n: int, timeout: float = 30.0) -> None:
        """Wait until the health query lists ``n`` instances."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.http.get(f"{self.base}/v1/catalog/service/{service}", timeout=30)
            if answer.status_code == 200 and len(answer.json()) == n:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{service}: {n} instances never listed")

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
