"""The watch engine against a real agent, and against a tiny loopback server of our own for
the answers a real agent will not give on demand (index 0, index going backwards, instant
answers forever, errors, stale reads). That server is the only stand-in for Consul here."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from _consul_support import deregister, eventually, register

from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._consul.watch import Watch, WatchHub, decode_json
from lake_mesh_consul._core.blocking import Backoff
from lake_mesh_consul._core.config import MeshConfig

pytestmark = pytest.mark.integration


def ids(value: Any) -> list[str]:
    return sorted(e["Service"]["ID"] for e in value or [])


# --- a scripted loopback server -----------------------------------------------------------------


class Script:
    """Answers for the stand-in: ``answer(query) -> (status, index, body, headers)``."""

    def __init__(
        self, answer: Callable[[dict[str, list[str]]], tuple[int, int, Any, dict[str, str]]]
    ):
        self.answer = answer
        self.queries: list[dict[str, list[str]]] = []
        self.lock = threading.Lock()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.queries)


@pytest.fixture
def standin() -> Iterator[Callable[[Script], MeshConfig]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Script) -> MeshConfig:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                with script.lock:
                    script.queries.append(query)
                status, index, body, headers = script.answer(query)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Consul-Index", str(index))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a watch closing mid-answer resets the connection: expected

        server = Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return MeshConfig(address=f"127.0.0.1:{server.server_address[1]}")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- against the real agent ---------------------------------------------------------------------


def test_watch_follows_register_and_deregister(mesh_config, unique_name):
    seen: list[list[str]] = []
    with ConsulClient(mesh_config) as client:
        watch: Watch[Any] = Watch(
            client,
            f"/v1/health/service/{unique_name}",
            decode=decode_json,
            on_change=lambda v: seen.append(ids(v)),
            wait=30,
        )
        with watch:
            assert watch.wait_first(5)
            assert watch.current == []
            register(client, unique_name, "a")
            assert eventually(lambda: ids(watch.current) == ["a"])
            register(client, unique_name, "b", port=8081)
            assert eventually(lambda: ids(watch.current) == ["a", "b"])
            deregister(client, "a")
            assert eventually(lambda: ids(watch.current) == ["b"])
            deregister(client, "b")
            assert eventually(lambda: ids(watch.current) == [])
            state = watch.state
            assert state.known_leader is True
            assert state.last_contact is not None
            assert not state.stale
            assert state.index >= 1
    assert seen[0] == []
    assert seen[-1] == []
    assert ["a", "b"] in seen


def test_unchanged_results_notify_nobody(mesh_config, unique_name):
    """An answer with a new index but an equal decoded result notifies nobody."""
    calls: list[Any] = []

    def decode(r: ConsulResponse) -> list[tuple[str, str]]:
        return sorted((e["Service"]["ID"], e["Checks"][-1]["Status"]) for e in r.json())

    with ConsulClient(mesh_config) as client:
        register(client, unique_name, "a", Check={"TTL": "60s", "Status": "passing"})
        with Watch(
            client,
            f"/v1/health/service/{unique_name}",
            decode=decode,
            on_change=calls.append,
            wait=30,
        ) as watch:
            assert watch.wait_first(5)
            first_index = watch.state.index
            before = watch.requests
            for n in range(3):
                # re-registering with other meta changes the index, not the decoded result
                # (a TTL check's output alone is synced only every check_update_interval)
                register(
                    client,
                    unique_name,
                    "a",
                    Meta={"n": str(n)},
                    Check={"TTL": "60s", "Status": "passing"},
                )
                time.sleep(0.15)
            assert eventually(lambda: watch.state.index > first_index)
            assert watch.requests > before  # the query did return ...
            assert len(calls) == 1  # ... but nobody was told
            client.request("PUT", "/v1/agent/check/warn/service:a", operation="ttl")
            assert eventually(lambda: len(calls) == 2)
            assert calls[-1] == [("a", "warning")]
        deregister(client, "a")


def test_close_returns_within_a_second_while_parked(mesh_config, unique_name):
    calls: list[Any] = []
    watch: Watch[Any] = Watch(
        mesh_config,
        f"/v1/health/service/{unique_name}",
        decode=decode_json,
        on_change=calls.append,
        wait=300,
    )
    watch.start()
    assert watch.wait_first(5)
    time.sleep(0.3)  # now parked in a 300 s long poll
    thread = watch._thread
    assert thread is not None
    assert thread.is_alive()
    started = time.monotonic()
    watch.close()
    assert time.monotonic() - started < 1.0
    assert eventually(lambda: not thread.is_alive(), 1.0)
    count = len(calls)
    with ConsulClient(mesh_config) as client:
        register(client, unique_name, "late")
        time.sleep(0.3)
        deregister(client, "late")
    assert len(calls) == count  # no callback after close


def test_kv_prefix_watch_generic_use(mesh_config, unique_name):
    def decode(r: ConsulResponse) -> dict[str, bytes]:
        if r.status == 404:
            return {}
        return {e["Key"]: base64.b64decode(e["Value"] or "") for e in r.json()}

    prefix = f"{unique_name}/cfg/"
    with (
        ConsulClient(mesh_config) as client,
        Watch(
            client,
            f"/v1/kv/{prefix}",
            {"recurse": ""},
            decode=decode,
            consistency="consistent",
            wait=30,
        ) as watch,
    ):
        assert watch.wait_first(5)
        assert watch.current == {}
        client.request("PUT", f"/v1/kv/{prefix}a", operation="put", data=b"1")
        assert eventually(lambda: watch.current == {f"{prefix}a": b"1"})


def test_hub_shares_one_query_between_consumers(mesh_config, unique_name):
    hub = WatchHub(mesh_config, rng=random.Random(1))
    path = f"/v1/health/service/{unique_name}"
    try:
        a = hub.watch(path, {"tag": ["x", "y"], "passing": "1"}, decode=decode_json, wait=30)
        b = hub.watch(path, {"passing": "1", "tag": ["y", "x"]}, decode=decode_json, wait=30)
        c = hub.watch(path, {"passing": "1"}, decode=decode_json, wait=30)
        assert a.watch is b.watch
        assert c.watch is not a.watch
        assert len(hub) == 2
        a.close()
        assert len(hub) == 2
        assert not b.watch.closed
        b.close()
        assert len(hub) == 1
        assert a.watch.closed
        c.close()
        assert len(hub) == 0
    finally:
        hub.close()


# --- against the stand-in -------------------------------------------------------------


def test_index_zero_forever_is_clamped_and_rate_limited(standin):
    script = Script(lambda q: (200, 0, [{"n": 1}], {}))
    calls: list[Any] = []
    watch: Watch[Any] = Watch(
        standin(script),
        "/v1/x",
        decode=decode_json,
        on_change=calls.append,
        rate=5.0,
        burst=2,
        wait=10,
    )
    with watch:
        time.sleep(2.0)
    # index 0 is clamped to 1, so later answers are "unchanged": one notification only
    assert calls == [[{"n": 1}]]
    assert watch.resets == 0
    # burst 2 + 5/s for 2 s, with a little slack for scheduling
    assert 3 <= script.count <= 2 + 5 * 2 + 2
    assert all(q.get("index") in (None, ["1"]) for q in script.queries)


def test_server_answering_instantly_with_new_data_is_rate_limited(standin):
    counter = iter(range(1, 1_000_000))

    def answer(q: dict[str, list[str]]) -> tuple[int, int, Any, dict[str, str]]:
        n = next(counter)
        return 200, n, [n], {}

    script = Script(answer)
    watch: Watch[Any] = Watch(standin(script), "/v1/x", decode=decode_json, rate=10.0)
    with watch:
        time.sleep(1.5)
    assert script.count <= 2 + 10 * 1.5 + 2
    assert watch.changes == script.count or watch.changes == script.count - 1


def test_index_going_backwards_resets_and_rereads(standin):
    sequence = iter([10, 20, 5, 5, 6] + [6] * 1000)
    bodies = {10: ["a"], 20: ["a", "b"], 5: ["c"], 6: ["c"]}

    def answer(q: dict[str, list[str]]) -> tuple[int, int, Any, dict[str, str]]:
        index = next(sequence)
        return 200, index, bodies[index], {}

    script = Script(answer)
    calls: list[Any] = []
    watch: Watch[Any] = Watch(
        standin(script), "/v1/x", decode=decode_json, on_change=calls.append, rate=20.0
    )
    with watch:
        assert eventually(lambda: script.count >= 6, 3)
    assert watch.resets == 1
    assert calls == [["a"], ["a", "b"], ["c"]]
    indexes = [q.get("index", [None])[0] for q in script.queries[:5]]
    # first read without index; after the reset (answer 3) the next read has no index again
    assert indexes == [None, "10", "20", None, "5"]


def test_errors_back_off_and_keep_the_last_good_value(standin):
    failing = threading.Event()

    def answer(q: dict[str, list[str]]) -> tuple[int, int, Any, dict[str, str]]:
        if failing.is_set():
            return 500, 0, "rpc error: No cluster leader", {}
        return 200, 7, ["good"], {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}

    script = Script(answer)
    watch: Watch[Any] = Watch(
        standin(script),
        "/v1/x",
        decode=decode_json,
        wait=1,
        backoff=Backoff(base=0.1, cap=1.0),
        rng=random.Random(5),
        invalidate_after=2.5,
        invalidated_value=[],
    )
    with watch:
        assert watch.wait_first(2)
        failing.set()
        before = script.count
        assert eventually(lambda: watch.stale, 3)
        assert watch.current == ["good"]  # last known good
        age1 = watch.age()
        time.sleep(1.0)
        assert watch.current == ["good"]
        age2 = watch.age()
        assert age1 is not None
        assert age2 is not None
        assert age2 > age1 + 0.5
        assert watch.state.error is not None
        assert watch.state.failures >= 2
        # invalidated once older than 2.5 s
        assert eventually(lambda: watch.state.invalidated, 4)
        assert watch.current == []
        errors = script.count - before
        # full jitter under a 1 s cap: mean pause >= ~0.4 s after the first few
        assert errors <= 20
        failing.clear()
        assert eventually(lambda: watch.current == ["good"] and not watch.stale, 3)


def test_max_stale_rereads_from_the_leader(standin):
    def answer(q: dict[str, list[str]]) -> tuple[int, int, Any, dict[str, str]]:
        if "stale" in q:
            return 200, 3, ["old"], {"X-Consul-LastContact": "9000", "X-Consul-KnownLeader": "true"}
        return 200, 3, ["fresh"], {"X-Consul-LastContact": "0", "X-Consul-KnownLeader": "true"}

    script = Script(answer)
    with Watch(standin(script), "/v1/x", decode=decode_json, max_stale=2.0) as watch:
        assert watch.wait_first(2)
        assert watch.current == ["fresh"]
    assert "stale" in script.queries[0]
    assert "stale" not in script.queries[1]

    script2 = Script(answer)
    with Watch(standin(script2), "/v1/x", decode=decode_json, cached=True) as watch:
        assert watch.wait_first(2)
        assert watch.current == ["old"]
        assert watch.state.last_contact == 9.0
    assert "cached" in script2.queries[0]
    assert "stale" in script2.queries[0]


def test_undecodable_answer_is_a_failure_not_a_crash(standin):
    n = iter(range(1000))

    def answer(q: dict[str, list[str]]) -> tuple[int, int, Any, dict[str, str]]:
        return 200, 4 + min(next(n), 2), "not-a-list" if next(n) < 3 else ["ok"], {}

    def decode(r: ConsulResponse) -> list[Any]:
        value = r.json()
        if not isinstance(value, list):
            raise ValueError("not a list")
        return value

    with Watch(
        standin(Script(answer)), "/v1/x", decode=decode, backoff=Backoff(base=0.01, cap=0.05)
    ) as watch:
        assert watch.wait_first(3)
        assert watch.current == ["ok"]
