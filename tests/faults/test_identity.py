"""Instance identity against real agents: one service ID on three nodes is three instances.

Consul keeps a service ID unique per agent only, and an ID left out defaults to the service
name, so many deployments register ``web`` with ID ``web`` on every node. A cluster of one
server and three client agents, each registering the service with the *same* ID and its own
backend (a small HTTP server on loopback), proves through a real :class:`Mesh`:

* traffic spreads over all three (it used to go 300/0/0: the three collapsed into one);
* one backend dies (connections refused, no health check to hide it) and GETs keep
  succeeding on the other two (a retry used to exclude every instance with that ID);
* an endpoint KV setting written as ``endpoints/<id>@<node>`` reaches exactly that
  instance, and a plain ``endpoints/<id>`` write is refused with the keys to use instead.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from lake_mesh_consul.errors import AmbiguousInstance
from lake_mesh_consul.http import endpoint_of
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing._agent import find_consul_binary
from lake_mesh_consul.testing.cluster import ClusterMember, ConsulCluster

from ._loops import RecordProperty, until

pytestmark = pytest.mark.slow

#: Requests per phase (bounded loops).
REQUESTS = 300


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Backend

    def do_GET(self) -> None:
        body = self.server.node.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Backend(http.server.ThreadingHTTPServer):
    """A loopback HTTP server answering with the name of the node it is registered on."""

    daemon_threads = True

    def __init__(self, node: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.node = node
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def kill(self) -> None:
        """Stop answering: the port refuses connections from now on."""
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ConsulCluster]:
    binary = find_consul_binary()
    if binary is None:
        pytest.skip("no consul binary (run `lake-mesh agent up` or set LAKE_MESH_CONSUL_BIN)")
    with ConsulCluster(servers=1, clients=3, binary=binary) as started:
        yield started


def _register(member: ClusterMember, service: str, port: int) -> None:
    answer = member.api(
        "PUT",
        "/v1/agent/service/register",
        body={"Name": service, "ID": service, "Address": "127.0.0.1", "Port": port},
    )
    assert answer.status == 200, answer


@pytest.fixture
def web(cluster: ConsulCluster) -> Iterator[tuple[str, dict[str, _Backend]]]:
    """A fresh service, registered as ID == name on each client agent, with its backends."""
    service = f"web-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        backends: dict[str, _Backend] = {}
        for member in cluster.clients:
            backend = _Backend(member.name)
            stack.callback(backend.server_close)
            backends[member.name] = backend
            _register(member, service, backend.port)
            stack.callback(member.api, "PUT", f"/v1/agent/service/deregister/{service}")
        yield service, backends


def _mesh(cluster: ConsulCluster, service: str) -> Mesh:
    mesh = Mesh(
        cluster.mesh_config(cluster.clients[0]),
        drain_on_sigterm=False,
        discovery_timeout=20.0,
    )
    mesh.start()
    seen = until(lambda: len(mesh.explain(service).instances) == 3, 20)
    assert seen is not None, mesh.explain(service)
    return mesh


def _get_all(mesh: Mesh, service: str, count: int) -> tuple[Counter[str], list[str]]:
    served: Counter[str] = Counter()
    failures: list[str] = []
    with mesh.session() as http:
        for i in range(count):
            try:
                response = http.get(f"http://{service}/?n={i}", timeout=5)
            except Exception as exc:  # counted, then asserted on: the caller's view
                failures.append(type(exc).__name__)
                continue
            if response.status_code != 200:
                failures.append(str(response.status_code))
                continue
            endpoint = endpoint_of(response)
            assert endpoint is not None
            assert endpoint.node == response.text  # the node's own backend answered
            served[response.text] += 1
    return served, failures


def test_same_id_on_three_nodes_spreads_and_survives_a_dead_backend(
    cluster: ConsulCluster,
    web: tuple[str, dict[str, _Backend]],
    record_property: RecordProperty,
) -> None:
    service, backends = web
    with _mesh(cluster, service) as mesh:
        explained = mesh.explain(service)
        assert sorted(i.node for i in explained.instances) == sorted(backends)
        assert {i.id for i in explained.instances} == {service}

        spread, failed = _get_all(mesh, service, REQUESTS)
        record_property("spread_over_three", dict(spread))
        assert failed == []
        assert set(spread) == set(backends)
        assert min(spread.values()) >= REQUESTS // 3 - 10, spread

        dead = cluster.clients[1].name
        backends[dead].kill()
        after, failed = _get_all(mesh, service, REQUESTS)
        record_property("after_one_died", dict(after))
        record_property("caller_failures_after_one_died", len(failed))
        assert failed == []
        assert dead not in after
        assert set(after) == set(backends) - {dead}


def test_an_instance_setting_reaches_only_the_named_node(
    cluster: ConsulCluster,
    web: tuple[str, dict[str, _Backend]],
    record_property: RecordProperty,
) -> None:
    service, backends = web
    with _mesh(cluster, service) as mesh:
        store = mesh.store
        plain = store.layout.endpoint_key(service, service)
        with pytest.raises(AmbiguousInstance) as refused:
            store.set(plain, {"drained": True})
        record_property("refusal", str(refused.value))
        assert refused.value.nodes == tuple(sorted(backends))
        assert store.read(plain) is None  # nothing written

        drained = cluster.clients[2].name
        store.set(store.layout.instance_key(service, service, drained), {"drained": True})

        def only_that_one_drained() -> bool:
            reasons = {i.node: i.reasons for i in mesh.explain(service).instances}
            return [n for n, r in reasons.items() if "drained by config" in r] == [drained]

        assert until(only_that_one_drained, 20) is not None, mesh.explain(service)
        served, failed = _get_all(mesh, service, REQUESTS)
        record_property("served_with_one_drained", dict(served))
        assert failed == []
        assert set(served) == set(backends) - {drained}
