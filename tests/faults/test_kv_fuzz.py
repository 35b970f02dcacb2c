"""Fuzzed KV configuration written under a running mesh.

A Mesh calls three real HTTP backends through ``mesh.session()`` on four threads while 200
malformed documents (seeded random: broken JSON, invalid UTF-8, non-objects, unknown keys
and sections, wrong types, out-of-range numbers, bad durations and strategies, NaN,
inconsistent pairs...) are written raw (no validation) to the service's KV key
``<prefix>/services/<name>``, one at a time, each after the previous one was seen.

Promise (README, "Live reload"): a bad write is rejected and the last good configuration
stays in force, with an event naming the key and the reason: the effective settings never
change from the last good document, one ``rejected`` event per write, no listener is told
of a change, and no request fails. A good document written afterwards is applied again.

Observed on Consul 1.8.7: writing the value a key already holds keeps its ``ModifyIndex``
and wakes no blocking query, so it is no write at all; the generator never repeats the
previous document.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.kvconfig import ConfigEvent
from lake_mesh_consul._core.config_schema import SERVICE, parse_document
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.errors import ConfigValidationError
from lake_mesh_consul.mesh import Mesh

from ._loops import RecordProperty, until

#: Malformed documents written (the issue: fuzzed KV config).
DOCUMENTS = 200
#: The last good document, in force before and after the fuzzing.
GOOD = {
    "strategy": "peak_ewma",
    "per_try_timeout": "2s",
    "retry": {"attempts": 3},
    "detector": {"consecutive_failures": 7},
}


def _malformed(rng: random.Random) -> bytes:
    """One document that must be rejected (checked by the caller with the real parser)."""
    kind = rng.randrange(16)
    good = dict(GOOD)
    if kind == 0:  # random bytes (often invalid UTF-8)
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:  # truncated JSON
        text = json.dumps(good)
        return text[: rng.randrange(1, len(text) - 1)].encode()
    if kind == 2:  # valid JSON that is not an object
        return json.dumps(rng.choice([[1, 2], "peak_ewma", 42, None, True, [GOOD]])).encode()
    if kind == 3:  # an unknown top-level key (maybe a typo of a real one)
        good[rng.choice(["strategi", "retries", "breakr", "", "🚀", "x" * 300])] = 1
    elif kind == 4:  # an unknown strategy
        good["strategy"] = rng.choice(["fastest", "", "ROUND_ROBIN", "peak-ewma", "🚀", "x" * 500])
    elif kind == 5:  # a wrong type
        field = rng.choice(["strategy", "retry", "per_try_timeout", "panic_threshold"])
        good[field] = rng.choice([[1], {"a": 1}, True, 3.5j.imag if field == "retry" else [None]])
    elif kind == 6:  # a bad duration
        good["per_try_timeout"] = rng.choice(["soon", "-1s", "0s", "10", "1h1s", "1e400s", "5 s"])
    elif kind == 7:  # out of range
        good["panic_threshold"] = rng.choice([-1, 101, 1e9, -0.001])
    elif kind == 8:  # an unknown key inside a section
        good["retry"] = {"attempts": 3, rng.choice(["atempts", "budget", "on"]): 2}
    elif kind == 9:  # a section that is not an object
        good[rng.choice(["retry", "breaker", "detector"])] = rng.choice([3, "fast", [1, 2]])
    elif kind == 10:  # numbers JSON should not carry
        text = json.dumps(good).replace(
            '"attempts": 3', f'"attempts": {rng.choice(["NaN", "Infinity", "-Infinity"])}'
        )
        return text.encode()
    elif kind == 11:  # attempts out of range or not an integer
        good["retry"] = {"attempts": rng.choice([0, -3, 101, 2.5, "3", 10**30])}
    elif kind == 12:  # an endpoint-only or bootstrap field at the service level
        good[rng.choice(["weight", "drained", "disabled", "watch_wait", "kv_prefix"])] = 1
    elif kind == 13:  # inconsistent pairs
        good["retry"] = {"attempts": 3, "backoff_base": "1s", "backoff_max": "10ms"}
    elif kind == 14:  # a deep or huge document
        nested: Any = 1
        for _ in range(rng.randrange(50, 400)):
            nested = {"a": nested}
        good["meta"] = nested
    else:  # a breaker failure rate outside (0, 100]
        good["breaker"] = {"failure_rate": rng.choice([0, 100.5, -5, math.inf])}
    try:
        return json.dumps(good).encode()
    except ValueError:  # inf: write it as JSON's non-standard token
        return json.dumps(good, allow_nan=True).encode()


def documents(count: int, seed: int = 20240909) -> tuple[list[bytes], int]:
    """``count`` documents the real parser rejects; also how many valid candidates were dropped."""
    rng = random.Random(seed)
    out: list[bytes] = []
    dropped = 0
    while len(out) < count:
        body = _malformed(rng)
        if out and body == out[-1]:
            continue  # Consul 1.8 keeps ModifyIndex for an identical value: not a write
        try:
            parse_document(body, SERVICE, key="fuzz", kv=True)
        except ConfigValidationError:
            out.append(body)
        else:
            dropped += 1
    return out, dropped


class _Backend:
    """A loopback HTTP server answering 200 with its name."""

    def __init__(self, name: str) -> None:
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends(unique_name: str) -> Iterator[list[_Backend]]:
    started = [_Backend(f"{unique_name}-{i}") for i in range(3)]
    yield started
    for backend in started:
        backend.close()


def _strategy(mesh: Mesh, name: str) -> str:
    return mesh.balancer(name).stats().strategy


class RequestLoop:
    """``threads`` callers sending GETs through the session until stopped (bounded)."""

    def __init__(
        self, get: Callable[[], requests.Response], threads: int = 4, max_per_thread: int = 5000
    ) -> None:
        self.get = get
        self.threads = threads
        self.max_per_thread = max_per_thread
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._futures: list[Any] = []

    def _worker(self) -> None:
        deadline = time.monotonic() + 120
        for _ in range(self.max_per_thread):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                response = self.get()
                ok = response.status_code == 200
                text = response.text if ok else f"HTTP {response.status_code}"
            except Exception as exc:  # any exception is a caller-visible failure
                ok, text = False, f"{type(exc).__name__}: {exc}"[:200]
            with self._lock:
                if ok:
                    self.served[text] += 1
                else:
                    self.failures.append(text)
            self._stop.wait(0.005)

    def __enter__(self) -> RequestLoop:
        self._futures = [self._pool.submit(self._worker) for _ in range(self.threads)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for future in self._futures:
            future.result(timeout=30)
        self._pool.shutdown(wait=True)


def test_fuzzed_kv_documents_never_change_the_config_in_force(
    mesh_config: MeshConfig,
    unique_name: str,
    backends: list[_Backend],
    record_property: RecordProperty,
) -> None:
    name = unique_name
    bodies, dropped = documents(DOCUMENTS)
    config = mesh_config.replace(kv_prefix=name, watch_rate_limit=200.0, watch_wait=10.0)
    mesh = Mesh(config, drain_on_close=False, drain_grace=0.0, rng=random.Random(4))
    events: list[ConfigEvent] = []
    with mesh:
        key = mesh.store.layout.service_key(name)
        mesh.store.on_event(events.append)
        for backend in backends:
            mesh.register(
                ServiceMetadata(name, backend.port, id=backend.name, address="127.0.0.1"),
                TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
            )
        assert until(lambda: mesh.balancer(name).stats().eligible == 3, 10) is not None
        mesh.store.set(key, GOOD)
        assert until(lambda: _strategy(mesh, name) == "peak_ewma", 10) is not None
        good = dict(mesh.effective(name).values)
        good_provenance = {k: p.source for k, p in mesh.effective(name).provenance.items()}
        changes_before = mesh.store.changes
        changed_during: list[str] = []
        unseen: list[int] = []
        write_to_event: list[float] = []

        with (
            mesh.session() as session,
            RequestLoop(lambda: session.get(f"http://{name}/fuzz", timeout=5)) as loop,
        ):
            time.sleep(0.2)
            for n, body in enumerate(bodies):
                before = sum(1 for e in events if e.kind == "rejected" and e.key == key)
                t0 = time.monotonic()
                mesh.client.request("PUT", f"/v1/kv/{key}", data=body, operation="fuzz write")
                seen = until(
                    lambda before=before: (
                        sum(1 for e in events if e.kind == "rejected" and e.key == key) > before
                    ),
                    5,
                    interval=0.002,
                )
                if seen is None:
                    unseen.append(n)
                else:
                    write_to_event.append(time.monotonic() - t0)
                if dict(mesh.effective(name).values) != good:
                    changed_during.append(f"#{n}: {body[:60]!r}")
                if _strategy(mesh, name) != "peak_ewma":
                    changed_during.append(f"#{n}: strategy {_strategy(mesh, name)}")
            time.sleep(0.2)
        rejected = [e for e in events if e.kind == "rejected" and e.key == key]
        changes_during = mesh.store.changes - changes_before
        provenance_after = {k: p.source for k, p in mesh.effective(name).provenance.items()}

        # A good write afterwards is applied: the reload path is still alive.
        mesh.store.set(key, {**GOOD, "strategy": "least_request"})
        reapplied = until(lambda: _strategy(mesh, name) == "least_request", 10)
        mesh.store.delete(key)

    reasons = Counter((e.field or "-").split(".")[0] for e in rejected)
    write_to_event.sort()
    report = {
        "documents": len(bodies),
        "valid_candidates_dropped": dropped,
        "rejected_events": len(rejected),
        "writes_without_event": len(unseen),
        "config_changes_during": changes_during,
        "effective_changed": changed_during[:3],
        "requests": sum(loop.served.values()),
        "failed_requests": len(loop.failures),
        "served": {k.rsplit("-", 1)[-1]: v for k, v in sorted(loop.served.items())},
        "write_to_event_ms_p50_p99": (
            round(write_to_event[len(write_to_event) // 2] * 1000, 1),
            round(write_to_event[int(len(write_to_event) * 0.99)] * 1000, 1),
        ),
        "rejected_by_field": dict(reasons.most_common(8)),
        "reapplied_after_s": reapplied,
    }
    print(f"\n[fuzzed KV config] {report}")
    for k, value in report.items():
        record_property(k, value)

    assert unseen == [], f"writes without a rejected event: {unseen[:10]}"
    assert len(rejected) == DOCUMENTS
    assert all(e.reason for e in rejected)
    assert changed_during == []
    assert changes_during == 0
    assert provenance_after == good_provenance
    assert loop.failures == [], loop.failures[:3]
    assert sum(loop.served.values()) > 0
    assert len(loop.served) == 3
    assert reapplied is not None
