"""ConfigStore against a real Consul agent: live reload, rejection, fallback, CAS, txn, restart."""

from __future__ import annotations

import json
import operator
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.kvconfig import ConfigChange, ConfigEvent, ConfigStore
from lake_mesh_consul._core.config import MeshConfig, ServiceConfig
from lake_mesh_consul._core.config_policies import apply_to_balancer
from lake_mesh_consul.errors import CasConflict, ConfigValidationError, ConsulUnavailable
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.integration


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def _rejected_since(events: list[ConfigEvent], start: int) -> bool:
    return any(e.kind == "rejected" for e in events[start:])


def _put(client: ConsulClient, key: str, body: bytes) -> None:
    client.request("PUT", f"/v1/kv/{key}", operation="test put", data=body)


@pytest.fixture
def config(mesh_config: MeshConfig, unique_name: str) -> MeshConfig:
    return mesh_config.replace(kv_prefix=unique_name, watch_rate_limit=1000.0, watch_wait=30.0)


@pytest.fixture
def store(config: MeshConfig) -> Iterator[ConfigStore]:
    with ConfigStore(config) as s:
        yield s


def _key(store: ConfigStore, rest: str) -> str:
    return store.layout.folder + rest


def test_every_write_is_live_in_the_running_balancer(store: ConfigStore) -> None:
    from lake_mesh_consul._core.balancer import LoadBalancer
    from lake_mesh_consul._core.endpoint import ServiceEndpoint
    from lake_mesh_consul._core.strategies import strategy_by_name

    lb = LoadBalancer("web", endpoints=[ServiceEndpoint.create("w1", "10.0.0.1", 80)])
    applied: dict[str, float] = {}
    cond = threading.Condition()

    def on_change(change: ConfigChange) -> None:
        eff = change.current.effective("web")
        apply_to_balancer(lb, eff.values, change.previous.effective("web").values)
        with cond:
            applied[eff.strategy] = time.perf_counter()
            cond.notify_all()

    store.subscribe(on_change, service="web")
    key = _key(store, "services/web")
    names = ["maglev", "random", "least_request", "round_robin"]
    for i in range(200):
        name = names[i % len(names)]
        with cond:
            applied.pop(name, None)
        store.set(key, {"strategy": name, "retry": {"attempts": 1 + i % 5}})
        with cond:
            assert cond.wait_for(partial(operator.contains, applied, name), timeout=2.0), i
        # the running balancer swapped its strategy in place
        assert type(lb.strategy) is type(strategy_by_name(name))
    # How fast (the 50 ms p99 target) is the benchmark's to say (rows config.reload.*), not a
    # timed test's: on a loaded machine a timing assertion measures the machine.
    assert store.effective("web").strategy == names[199 % len(names)]


def test_bad_writes_are_rejected_and_the_last_good_config_stays(store: ConfigStore) -> None:
    key = _key(store, "services/web")
    events: list[ConfigEvent] = []
    changes: list[ConfigChange] = []
    store.on_event(events.append)
    store.subscribe(changes.append)
    store.set(key, {"strategy": "maglev", "per_try_timeout": "2s"})
    _wait(lambda: store.effective("web").strategy == "maglev")
    good_changes = len(changes)
    bad = [
        (b'{"strategy": "maglev",', None),  # malformed JSON
        (b'{"strategy": "maglev", "per_try_timout": "1s"}', "per_try_timout"),  # unknown field
        (b'{"detector": {"failure_rate": 0}}', "detector.failure_rate"),  # out of range
        (b'{"per_try_timeout": "-5s"}', "per_try_timeout"),
    ]
    for body, field in bad:
        before = len(events)
        _put(store.client, key, body)
        _wait(partial(_rejected_since, events, before))
        event = next(e for e in events[before:] if e.kind == "rejected")
        assert event.key == key
        assert event.field == field
        assert event.reason
        eff = store.effective("web")
        assert eff.strategy == "maglev"
        assert eff["per_try_timeout"] == 2.0
        assert eff.provenance["strategy"].source == f"kv:{key}"
    assert len(changes) == good_changes  # a rejected write notifies nobody
    # a valid write after the bad ones is applied again
    store.set(key, {"strategy": "random"})
    _wait(lambda: store.effective("web").strategy == "random")


def test_rejection_is_logged_with_key_and_reason(
    store: ConfigStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key(store, "global")
    with caplog.at_level("WARNING", logger="lake_mesh_consul.config"):
        _put(store.client, key, b'{"stratgy": "random"}')
        _wait(lambda: any("rejected" in r.getMessage() for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())
    assert key in line
    assert "did you mean 'strategy'" in line


def test_deleting_a_key_falls_back_to_the_next_level(store: ConfigStore) -> None:
    g, s, e = (
        _key(store, "global"),
        _key(store, "services/web"),
        _key(store, "services/web/endpoints/w1"),
    )
    store.set_many(
        {
            g: {"strategy": "weighted", "per_try_timeout": "3s"},
            s: {"strategy": "maglev", "per_try_timeout": "2s"},
            e: {"per_try_timeout": "1s", "weight": 9},
        }
    )
    _wait(lambda: store.effective("web", "w1").get("weight") == 9)
    assert store.effective("web", "w1")["per_try_timeout"] == 1.0
    store.delete(e)
    _wait(lambda: store.effective("web", "w1")["per_try_timeout"] == 2.0)
    assert store.effective("web", "w1").provenance["weight"].level == "default"
    store.delete(s)
    _wait(lambda: store.effective("web").strategy == "weighted")
    assert store.effective("web").provenance["strategy"].source == f"kv:{g}"
    store.delete(g)
    _wait(lambda: store.effective("web").strategy == "round_robin")
    assert store.effective("web").provenance["strategy"].level == "default"
    assert [ev.kind for ev in store.events if ev.key == e][-1] == "deleted"


def test_cas_conflict_is_refused(store: ConfigStore) -> None:
    key = _key(store, "services/web")
    store.set(key, {"strategy": "maglev"})
    entry = store.read(key)
    assert entry is not None
    _put(store.client, key, b'{"strategy": "random"}')  # a concurrent operator
    with pytest.raises(CasConflict) as info:
        store.set(key, {"strategy": "weighted"}, expected_index=entry.modify_index)
    assert info.value.key == key
    assert json.loads(store.read(key).value)["strategy"] == "random"  # type: ignore[union-attr]
    with pytest.raises(CasConflict):
        store.set(_key(store, "services/new"), {"strategy": "random"}, expected_index=5)
    with pytest.raises(CasConflict):
        store.delete(key, expected_index=entry.modify_index)


def test_invalid_documents_are_not_written(store: ConfigStore) -> None:
    key = _key(store, "services/web")
    with pytest.raises(ConfigValidationError) as info:
        store.set(key, {"strategy": "fastest"})
    assert info.value.key == key
    assert store.read(key) is None
    with pytest.raises(ConfigValidationError, match="not a configuration key"):
        store.set(_key(store, "elsewhere/x"), {})


def test_txn_applies_several_keys_or_none(store: ConfigStore) -> None:
    a, b = _key(store, "services/a"), _key(store, "services/b")
    seen: list[ConfigChange] = []
    store.subscribe(seen.append)
    store.set_many({a: {"strategy": "maglev"}, b: {"strategy": "random"}})
    _wait(lambda: store.effective("b").strategy == "random")
    assert store.effective("a").strategy == "maglev"
    assert any(set(c.changed_keys) == {a, b} for c in seen)  # one change, both keys
    stale_index = store.read(b).modify_index  # type: ignore[union-attr]
    _put(store.client, b, b'{"strategy": "weighted"}')
    with pytest.raises(CasConflict) as info:
        store.set_many(
            {a: {"strategy": "ring_hash"}, b: {"strategy": "least_request"}},
            expected_indexes={a: store.read(a).modify_index, b: stale_index},  # type: ignore[union-attr]
        )
    assert info.value.key == b
    assert json.loads(store.read(a).value)["strategy"] == "maglev"  # type: ignore[union-attr]
    # an invalid document aborts the whole transaction before anything is sent
    with pytest.raises(ConfigValidationError):
        store.set_many({a: {"strategy": "random"}, b: {"retry": {"attempts": 0}}})
    assert json.loads(store.read(a).value)["strategy"] == "maglev"  # type: ignore[union-attr]


def test_dry_run_shows_the_effective_result_and_writes_nothing(store: ConfigStore) -> None:
    key = _key(store, "services/web/endpoints/w1")
    result = store.set(key, {"drained": True}, dry_run=True)
    assert not result.written
    assert result.effective is not None
    assert result.effective["drained"] is True
    assert result.effective.provenance["drained"].source == f"kv:{key}"
    assert store.read(key) is None


def test_local_service_settings_sit_under_kv(config: MeshConfig) -> None:
    with ConfigStore(config, services={"web": ServiceConfig(strategy="ring_hash")}) as store:
        assert store.effective("web").strategy == "ring_hash"
        store.set(_key(store, "services/web"), {"strategy": "maglev"})
        _wait(lambda: store.effective("web").strategy == "maglev")


def test_fail_fast_when_kv_is_unreachable(unique_name: str) -> None:
    from lake_mesh_consul.testing._agent import free_port

    cfg = MeshConfig(address=f"127.0.0.1:{free_port()}", kv_prefix=unique_name)
    store = ConfigStore(cfg, start_timeout=2.0)
    with pytest.raises(ConsulUnavailable):
        store.start()
    store.close()


def test_start_from_last_known_good_then_pick_up_kv(
    dedicated_consul_agent: ConsulAgentHandle, tmp_path: Path, unique_name: str
) -> None:
    cfg = MeshConfig(
        address=dedicated_consul_agent.address, kv_prefix=unique_name, watch_rate_limit=100
    )
    lkg = tmp_path / "lkg.json"
    with ConfigStore(cfg, last_known_good=lkg) as store:
        store.set(_key(store, "services/web"), {"strategy": "maglev"})
        _wait(lambda: store.effective("web").strategy == "maglev")
        _wait(lambda: lkg.exists() and "maglev" in lkg.read_text())
    dedicated_consul_agent.stop()
    with ConfigStore(
        cfg, start_mode="last_known_good", last_known_good=lkg, start_timeout=1.0
    ) as store:
        assert store.stale
        assert store.effective("web").strategy == "maglev"
        dedicated_consul_agent.start()  # comes back wiped (-dev): KV is empty now
        _wait(lambda: not store.stale, timeout=15)
        store.set(_key(store, "services/web"), {"strategy": "random"})
        _wait(lambda: store.effective("web").strategy == "random", timeout=10)
    with ConfigStore(cfg, start_mode="defaults", start_timeout=1.0) as store:
        assert store.effective("web").strategy == "random"


def test_agent_restart_does_not_lose_the_watch(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str
) -> None:
    # After a restart Consul's index starts again below ours, and a blocking query on an
    # index from the future parks until its wait runs out; then the watch engine sees the
    # index go backwards and resets. So the fall-back arrives within one watch_wait.
    cfg = MeshConfig(
        address=dedicated_consul_agent.address,
        kv_prefix=unique_name,
        watch_rate_limit=100,
        watch_wait=2.0,
    )
    with ConfigStore(cfg) as store:
        key = _key(store, "services/web")
        store.set(key, {"strategy": "maglev"})
        _wait(lambda: store.effective("web").strategy == "maglev")
        dedicated_consul_agent.restart(wipe=True)
        # the wiped KV no longer has the key: it falls back, and the index reset is seen
        _wait(lambda: store.effective("web").strategy == "round_robin", timeout=20)
        store.set(key, {"strategy": "least_request"})
        _wait(lambda: store.effective("web").strategy == "least_request", timeout=10)
        kinds = [e.kind for e in store.events]
        assert "reset" in kinds or "deleted" in kinds
