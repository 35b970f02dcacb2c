"""Malformed and odd catalog entries, registered through the raw agent API of a real agent.

Consul 1.8.7 accepts much that a mesh must cope with: no service address (the node's
applies), IPv6 addresses with or without brackets, ports 0, -1 and 70000, empty and
unicode tags, tags with ``=`` and ``/``, 4 KB tags, meta values that are empty, unicode,
512 characters long or hold ``=`` and ``/``, a warning weight of 0, an address that is no
host at all. It refuses a passing weight of 0, meta keys with ``/``, unicode or nothing, and
meta values over 512 characters.

Promise: for each, a clear result and none a crash: Consul's refusals are a
ConsulStatusError 400 carrying Consul's reason; discovery returns every usable instance with
its fields intact and skips an unusable one with a log line naming it; the balancer and the
MeshSession serve every eligible instance (nothing lost) and ``explain`` says why the
others are not eligible; an IPv6 backend on ``::1`` is reached through ``http://<service>/``.
"""

from __future__ import annotations

import http.server
import logging
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul.errors import ConsulStatusError
from lake_mesh_consul.http import endpoint_of
from lake_mesh_consul.mesh import Mesh

from ._loops import RecordProperty, until

#: Odd but valid tags: empty, unicode, '=' and '/', and 4 KB long.
ODD_TAGS = ["", "zoné🚀", "a=b", "a/b", "k=v/w", "x" * 4096]
#: Odd but valid meta values (Consul allows up to 512 characters per value).
ODD_META = {"u": "zoné🚀", "e": "", "eq": "a=b", "sl": "a/b", "long": "y" * 512}


class _Echo(http.server.BaseHTTPRequestHandler):
    server: _Backend

    def do_GET(self) -> None:
        self.server.hits[self.headers.get("Host", "")] += 1
        body = self.server.label.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True
    label = ""
    hits: Counter[str]


class _Backend6(_Backend):
    address_family = socket.AF_INET6


def _serve(cls: type[_Backend], host: str, label: str) -> _Backend:
    server = cls((host, 0), _Echo)
    server.label = label
    server.hits = Counter()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


class _Records(logging.Handler):
    """Keeps the WARNING records of a logger (independent of pytest's log capture)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def backend4() -> Iterator[_Backend]:
    server = _serve(_Backend, "127.0.0.1", "v4")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def backend6() -> Iterator[_Backend]:
    if not _ipv6_loopback():
        pytest.skip("::1 cannot be bound on this machine")
    server = _serve(_Backend6, "::1", "v6")
    yield server
    server.shutdown()
    server.server_close()


def _register(client: ConsulClient, body: dict[str, Any]) -> None:
    client.request("PUT", "/v1/agent/service/register", json=body, operation="register")


def _deregister_all(client: ConsulClient, ids: list[str]) -> None:
    for sid in ids:
        try:
            client.request("PUT", f"/v1/agent/service/deregister/{sid}", operation="deregister")
        except ConsulStatusError:
            pass


def test_consul_refusals_are_clear_errors(
    mesh_config: MeshConfig, unique_name: str, record_property: RecordProperty
) -> None:
    """What Consul itself refuses: a typed 400 carrying Consul's reason, nothing registered."""
    name = unique_name
    refused = {
        "passing-weight-0": ({"Weights": {"Passing": 0, "Warning": 0}}, "Passing must be"),
        "meta-key-slash": ({"Meta": {"a/b": "x"}}, "invalid characters"),
        "meta-key-unicode": ({"Meta": {"zoné": "x"}}, "invalid characters"),
        "meta-key-empty": ({"Meta": {"": "x"}}, "cannot be blank"),
        "meta-value-513": ({"Meta": {"long": "z" * 513}}, "Couldn't load metadata pair"),
    }
    seen: dict[str, str] = {}
    with ConsulClient(mesh_config) as client:
        for suffix, (extra, reason) in refused.items():
            body = {"Name": name, "ID": f"{name}-{suffix}", "Port": 8080, **extra}
            with pytest.raises(ConsulStatusError) as caught:
                _register(client, body)
            seen[suffix] = str(caught.value)[:160]
            assert caught.value.code == 400, caught.value
            assert reason in str(caught.value), caught.value
        listed = client.request("GET", f"/v1/catalog/service/{name}", operation="catalog")
    print(f"\n[refused by Consul] {seen}")
    record_property("refusals", seen)
    assert listed.json() == []


def test_odd_entries_discovered_balanced_and_served(
    mesh_config: MeshConfig,
    unique_name: str,
    backend4: _Backend,
    record_property: RecordProperty,
) -> None:
    name = unique_name
    port = backend4.server_address[1]
    entries: dict[str, dict[str, Any]] = {
        "no-address": {"Port": port},  # the node's address (127.0.0.1) applies
        "odd-tags": {"Port": port, "Address": "127.0.0.1", "Tags": ODD_TAGS},
        "odd-meta": {"Port": port, "Address": "127.0.0.1", "Meta": ODD_META},
        "warning-0": {
            "Port": port,
            "Address": "127.0.0.1",
            "Weights": {"Passing": 1, "Warning": 0},
            "Check": {"CheckID": f"{name}-warning-0-ttl", "TTL": "60s", "Status": "warning"},
        },
        "port-0": {"Port": 0, "Address": "127.0.0.1"},
        "port-negative": {"Port": -1, "Address": "127.0.0.1"},
        "port-70000": {"Port": 70000, "Address": "127.0.0.1"},
    }
    unusable = {f"{name}-port-0", f"{name}-port-negative", f"{name}-port-70000"}
    ids = [f"{name}-{suffix}" for suffix in entries]
    logged = _Records()
    logger = logging.getLogger("lake_mesh_consul.discovery")
    logger.addHandler(logged)
    with ConsulClient(mesh_config) as client:
        try:
            for suffix, extra in entries.items():
                _register(client, {"Name": name, "ID": f"{name}-{suffix}", **extra})
            discovery = ServiceDiscovery(mesh_config, rng=random.Random(3), timeout=10)
            try:
                everything = {e.id: e for e in discovery.endpoints(name, passing_only=False)}
                by_tag = {
                    tag[:12]: sorted(e.id for e in discovery.endpoints(name, tags=[tag]))
                    for tag in ODD_TAGS
                }
                by_meta = {
                    k: sorted(e.id for e in discovery.endpoints(name, service_meta={k: v}))
                    for k, v in ODD_META.items()
                }
                passing = sorted(e.id for e in discovery.endpoints(name))
            finally:
                discovery.close()
            skipped = {sid for sid in unusable if sid in logged.text()}

            mesh = Mesh(
                mesh_config.replace(kv_prefix=name),
                drain_on_close=False,
                rng=random.Random(5),
            )
            with mesh, mesh.session() as http_:
                assert until(lambda: mesh.explain(name).registered == 4, 10) is not None
                explained = mesh.explain(name)
                served: Counter[str] = Counter()
                failures: list[str] = []
                for i in range(60):
                    try:
                        response = http_.get(f"http://{name}/item/{i}", timeout=5)
                    except requests.RequestException as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    endpoint = endpoint_of(response)
                    assert response.status_code == 200
                    assert endpoint is not None
                    served[endpoint.id.removeprefix(f"{name}-")] += 1
        finally:
            logger.removeHandler(logged)
            _deregister_all(client, ids)

    why_not = {
        i.id.removeprefix(f"{name}-"): list(i.reasons) for i in explained.instances if i.reasons
    }
    report = {
        "registered": len(entries),
        "discovered": sorted(k.removeprefix(f"{name}-") for k in everything),
        "skipped_with_log": sorted(s.removeprefix(f"{name}-") for s in skipped),
        "eligible": explained.eligible,
        "why_not": why_not,
        "served": dict(served),
        "failures": len(failures),
        "backend_hosts": dict(backend4.hits),
    }
    print(f"\n[odd catalog entries] {report}")
    for key, value in report.items():
        record_property(key, value)

    # Discovery: every usable instance, fields intact; the unusable ones skipped with a log.
    assert set(everything) == {f"{name}-{s}" for s in entries} - unusable
    assert skipped == unusable, logged.text()[-2000:]
    assert everything[f"{name}-no-address"].address == "127.0.0.1"  # the node's address
    assert list(everything[f"{name}-odd-tags"].tags) == ODD_TAGS
    assert dict(everything[f"{name}-odd-meta"].meta) == ODD_META
    warning = everything[f"{name}-warning-0"]
    assert warning.health.value == "warning"
    assert not warning.eligible
    for tag, found in by_tag.items():
        assert found == [f"{name}-odd-tags"], (tag, found)
    for key, found in by_meta.items():
        assert found == [f"{name}-odd-meta"], (key, found)
    assert passing == sorted({f"{name}-no-address", f"{name}-odd-tags", f"{name}-odd-meta"})
    # The balancer and the session: every eligible instance served, nothing failed.
    assert explained.eligible == 3
    assert why_not == {"warning-0": ["warning weight 0"]}
    assert failures == [], failures[:3]
    assert served == {"no-address": 20, "odd-tags": 20, "odd-meta": 20}
    assert backend4.hits == {name: 60}  # the logical host was sent as Host


def test_ipv6_backend_through_the_session(
    mesh_config: MeshConfig,
    unique_name: str,
    backend6: _Backend,
    record_property: RecordProperty,
) -> None:
    """``::1`` and ``[::1]`` in the catalog: one endpoint address, requests to ``[::1]:port``."""
    name = unique_name
    port = backend6.server_address[1]
    ids = [f"{name}-plain", f"{name}-bracketed"]
    with ConsulClient(mesh_config) as client:
        try:
            _register(client, {"Name": name, "ID": ids[0], "Port": port, "Address": "::1"})
            _register(client, {"Name": name, "ID": ids[1], "Port": port, "Address": "[::1]"})
            mesh = Mesh(
                mesh_config.replace(kv_prefix=name), drain_on_close=False, rng=random.Random(1)
            )
            with mesh, mesh.session() as http_:
                assert until(lambda: mesh.explain(name).eligible == 2, 10) is not None
                addresses = sorted(i.address for i in mesh.explain(name).instances)
                bodies = Counter()
                served: Counter[str] = Counter()
                for i in range(20):
                    response = http_.get(f"http://{name}/v6/{i}", timeout=5)
                    assert response.status_code == 200
                    bodies[response.text] += 1
                    endpoint = endpoint_of(response)
                    assert endpoint is not None
                    served[endpoint.id.removeprefix(f"{name}-")] += 1
        finally:
            _deregister_all(client, ids)
    report = {"addresses": addresses, "served": dict(served), "bodies": dict(bodies)}
    print(f"\n[IPv6 backend] {report}")
    record_property("ipv6", report)
    assert addresses == [f"[::1]:{port}", f"[::1]:{port}"]
    assert bodies == {"v6": 20}
    assert served == {"plain": 10, "bracketed": 10}
    assert backend6.hits == {name: 20}


def test_instance_with_an_address_that_is_no_host(
    mesh_config: MeshConfig,
    unique_name: str,
    backend4: _Backend,
    record_property: RecordProperty,
) -> None:
    """An address that is no host (Consul 1.8 stores ``not a host!``) is skipped by discovery.

    Was a bug: the instance stayed eligible and each request picked for it raised
    requests.InvalidURL to the caller (never sent, yet neither retried elsewhere nor dropped).
    Now discovery skips it with a log line naming it, like an instance with no usable port.
    """
    name = unique_name
    port = backend4.server_address[1]
    ids = [f"{name}-good", f"{name}-garbage"]
    logged = _Records()
    logger = logging.getLogger("lake_mesh_consul.discovery")
    logger.addHandler(logged)
    with ConsulClient(mesh_config) as client:
        try:
            _register(client, {"Name": name, "ID": ids[0], "Port": port, "Address": "127.0.0.1"})
            _register(client, {"Name": name, "ID": ids[1], "Port": 7, "Address": "not a host!"})
            mesh = Mesh(
                mesh_config.replace(kv_prefix=name), drain_on_close=False, rng=random.Random(1)
            )
            failures: list[str] = []
            with mesh, mesh.session() as http_:
                # Both are in the catalog before the mesh follows the service: its first
                # answer has both, and discovery keeps only the usable one, with a log line.
                explained = mesh.explain(name)
                assert until(lambda: ids[1] in logged.text(), 10) is not None
                for i in range(20):
                    try:
                        http_.get(f"http://{name}/{i}", timeout=5)
                    except requests.RequestException as exc:
                        failures.append(f"{type(exc).__name__}: {exc}"[:120])
        finally:
            logger.removeHandler(logged)
            _deregister_all(client, ids)
    print(f"\n[address that is no host] {len(failures)}/20 failed: {failures[:1]}")
    record_property("failures", len(failures))
    assert failures == []
    assert [i.id for i in explained.instances] == [ids[0]]
    assert explained.registered == explained.eligible == 1
    assert backend4.hits == {name: 20}
    line = next(line for line in logged.lines if ids[1] in line)
    assert "'not a host!'" in line, line
    assert "neither an IP nor a host name" in line, line
