"""No lock held across I/O in Mesh (issue 12.4), and names checked before any I/O (14.5).

* With the agent down (stopped) or hung (SIGSTOP), N threads making their first call to N
  different services each fail within ONE discovery timeout, side by side (before: 10, 20,
  30, 40 s, the Mesh lock being held across each discovery wait);
* ``close()`` meanwhile returns at once: it never waits behind a discovery wait, and the
  waiting threads end soon after with an error;
* every entry point that takes a service name refuses an invalid one with InvalidSetting
  before any network call, on a Mesh not yet started and pointed at an address where
  nothing answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import InvalidSetting, MeshError
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

#: Threads, each making the first call to a service of its own.
SERVICES = 4
#: The discovery timeout under test (the issue's 10 s, shortened; the shape is the point).
TIMEOUT = 3.0


def _first_uses(mesh: Mesh, names: list[str]) -> list[tuple[str, float, str]]:
    """Each name's first use on its own thread, started together; (name, seconds, error)."""
    results: list[tuple[str, float, str]] = []
    lock = threading.Lock()
    go = threading.Event()

    def use(name: str) -> None:
        go.wait(5)
        started = time.monotonic()
        try:
            mesh.balancer(name)
            error = "no error"
        except MeshError as exc:
            error = type(exc).__name__
        with lock:
            results.append((name, time.monotonic() - started, error))

    threads = [threading.Thread(target=use, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(TIMEOUT * SERVICES + 10)
    return sorted(results)


@pytest.mark.parametrize(
    ("fault", "started"),
    [("down", True), ("hung", True), ("hung", False)],
    ids=["down", "hung", "hung-not-started"],
)
def test_first_use_of_n_services_fails_in_parallel(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str, fault: str, started: bool
) -> None:
    agent = dedicated_consul_agent
    mesh = Mesh(MeshConfig(address=agent.address), discovery_timeout=TIMEOUT)
    if started:  # KV read while the agent answers; discovery of each service starts later
        mesh.start()
    # (not started: the N first uses share ONE attempt to read KV, which fails in time)
    names = [f"{unique_name}-{i}" for i in range(SERVICES)]
    (agent.stop if fault == "down" else agent.pause)()
    try:
        t0 = time.monotonic()
        results = _first_uses(mesh, names)
        wall = time.monotonic() - t0
    finally:
        if fault == "hung":
            agent.resume()
        mesh.close()
    seen = [(n[-1], round(s, 2), e) for n, s, e in results]
    print(f"\nagent {fault} (mesh started before: {started}): first uses {seen}")
    print(f"all {SERVICES} failed after {wall:.2f}s in all (timeout {TIMEOUT}s)")
    assert len(results) == SERVICES
    assert all(error != "no error" for _, _, error in results)
    assert all(seconds <= TIMEOUT + 1.5 for _, seconds, _ in results)
    assert wall <= TIMEOUT + 2.0  # side by side, not one after the other


def test_close_never_waits_behind_a_discovery_wait(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str
) -> None:
    agent = dedicated_consul_agent
    mesh = Mesh(MeshConfig(address=agent.address), discovery_timeout=20.0, drain_grace=0.0)
    mesh.start()
    agent.pause()
    errors: list[str] = []
    waiting = [
        threading.Thread(
            target=lambda n=n: _record(errors, lambda: mesh.balancer(n)),
            daemon=True,
        )
        for n in (f"{unique_name}-{i}" for i in range(SERVICES))
    ]
    try:
        for t in waiting:
            t.start()
        time.sleep(0.5)  # every thread is now parked in its discovery wait
        started = time.monotonic()
        mesh.close()
        closed_in = time.monotonic() - started
        for t in waiting:
            t.join(5)
        ended_in = time.monotonic() - started
    finally:
        agent.resume()
    print(
        f"\nclose() with {SERVICES} first uses parked: {closed_in:.2f}s; waiters ended by "
        f"{ended_in:.2f}s with {errors}"
    )
    assert closed_in <= 2.0
    assert not any(t.is_alive() for t in waiting)
    assert len(errors) == SERVICES


def _record(errors: list[str], fn: Callable[[], Any]) -> None:
    try:
        fn()
        errors.append("no error")
    except MeshError as exc:
        errors.append(type(exc).__name__)


ENTRY_POINTS: dict[str, Callable[[Mesh, str], Any]] = {
    "balancer": lambda m, n: m.balancer(n),
    "call": lambda m, n: m.call(n, lambda endpoint: None),
    "explain": lambda m, n: m.explain(n),
    "detector": lambda m, n: m.detector(n),
    "retry_policy": lambda m, n: m.retry_policy(n),
    "retry_budget": lambda m, n: m.retry_budget(n),
    "set_strategy": lambda m, n: m.set_strategy(n, "random"),
    "route": lambda m, n: m.route(n),
    "status": lambda m, n: m.status([n]),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_bad_service_name_is_refused_before_any_network_call(entry: str) -> None:
    # Nothing listens on port 9 of loopback (discard; refused), and the mesh is not started.
    mesh = Mesh(MeshConfig(address="127.0.0.1:9"), discovery_timeout=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(InvalidSetting) as caught:
            ENTRY_POINTS[entry](mesh, "bad name!")
        took = time.monotonic() - started
        assert not mesh.closed
        assert "service" in str(caught.value)
        assert took < 1.0  # not after a connection attempt or a discovery wait
    finally:
        mesh.close()


@pytest.mark.parametrize("write", ["set", "delete", "set_many", "dry_run"])
def test_a_config_key_with_a_bad_service_name_is_refused_before_any_network_call(
    write: str,
) -> None:
    from lake_mesh_consul._consul.kvconfig import ConfigStore
    from lake_mesh_consul.errors import ConfigValidationError

    key = "lake-mesh/services/bad name!"
    actions: dict[str, Callable[[ConfigStore], Any]] = {
        "set": lambda s: s.set(key, {"strategy": "random"}),
        "delete": lambda s: s.delete(key),
        "set_many": lambda s: s.set_many({key: {"strategy": "random"}}),
        "dry_run": lambda s: s.set(key, {"strategy": "random"}, dry_run=True),
    }
    store = ConfigStore(MeshConfig(address="127.0.0.1:9"))  # not started; nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(ConfigValidationError) as caught:
            actions[write](store)
        assert time.monotonic() - started < 1.0
    finally:
        store.close()
    assert "not a valid service name" in str(caught.value)
