"""Config models: merge precedence, effective provenance, validation, did-you-mean, sources."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lake_mesh_consul._core.config import (
    BreakerSettings,
    EndpointConfig,
    MeshConfig,
    RetrySettings,
    ServiceConfig,
)
from lake_mesh_consul._core.config_layers import ConfigSnapshot, layer_from
from lake_mesh_consul._core.config_models import DetectorSettings, flatten
from lake_mesh_consul._core.config_schema import (
    ENDPOINT,
    FIELDS,
    GLOBAL,
    SERVICE,
    STRATEGY_NAMES,
    defaults,
    env_var,
    fields_for,
    parse_document,
    to_document,
)
from lake_mesh_consul._core.config_sources import load_file
from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

KEY = "lake-mesh/services/web"


def _snapshot(
    *,
    mesh: MeshConfig | None = None,
    kv_global: dict[str, object] | None = None,
    service: ServiceConfig | None = None,
    kv_service: dict[str, object] | None = None,
    endpoint: EndpointConfig | None = None,
    kv_endpoint: dict[str, object] | None = None,
) -> ConfigSnapshot:
    g = [layer_from(mesh or MeshConfig(), "code")]
    if kv_global is not None:
        g.append(layer_from(parse_document(json.dumps(kv_global), GLOBAL), "kv:lake-mesh/global"))
    s = []
    if service is not None:
        s.append(layer_from(service, "code"))
    if kv_service is not None:
        s.append(layer_from(parse_document(json.dumps(kv_service), SERVICE), f"kv:{KEY}"))
    e = []
    if endpoint is not None:
        e.append(layer_from(endpoint, "code"))
    if kv_endpoint is not None:
        e.append(
            layer_from(parse_document(json.dumps(kv_endpoint), ENDPOINT), f"kv:{KEY}/endpoints/w1")
        )
    return ConfigSnapshot(
        global_layers=tuple(g),
        service_layers={"web": tuple(s)},
        endpoint_layers={("web", "w1"): tuple(e)},
    )


# --- precedence -------------------------------------------------------------------------------


def test_built_in_defaults_when_nothing_is_set() -> None:
    eff = _snapshot().effective("web")
    assert eff.strategy == "round_robin"
    assert eff["breaker.consecutive_failures"] == 5
    assert eff.provenance["strategy"].level == "default"
    assert eff.provenance["strategy"].source == "built-in"
    assert "weight" not in eff.values  # endpoint-only settings need an endpoint


def test_most_specific_level_wins() -> None:
    snap = _snapshot(
        mesh=MeshConfig(strategy="random", per_try_timeout=5.0),
        kv_global={"strategy": "weighted", "breaker": {"reset_timeout": "20s"}},
        kv_service={"strategy": "maglev", "per_try_timeout": "2s"},
        kv_endpoint={"per_try_timeout": "250ms", "weight": 7},
    )
    eff = snap.effective("web", "w1")
    assert eff.strategy == "maglev"
    assert eff.provenance["strategy"].level == "service"
    assert eff["per_try_timeout"] == 0.25
    assert eff.provenance["per_try_timeout"].level == "endpoint"
    assert eff.provenance["per_try_timeout"].kv_key == f"{KEY}/endpoints/w1"
    assert eff["breaker.reset_timeout"] == 20.0
    assert eff.provenance["breaker.reset_timeout"].source == "kv:lake-mesh/global"
    assert eff["weight"] == 7
    # the service as a whole does not see the endpoint's override
    assert snap.effective("web")["per_try_timeout"] == 2.0


def test_kv_beats_code_within_a_level_and_fields_merge_one_by_one() -> None:
    snap = _snapshot(
        service=ServiceConfig(strategy="random", breaker=BreakerSettings(consecutive_failures=3)),
        kv_service={"breaker": {"reset_timeout": "5s"}},
    )
    eff = snap.effective("web")
    assert eff.strategy == "random"
    assert eff.provenance["strategy"].source == "code"
    assert eff["breaker.consecutive_failures"] == 3
    assert eff["breaker.reset_timeout"] == 5.0
    assert eff.provenance["breaker.reset_timeout"].source == f"kv:{KEY}"


def test_service_code_beats_global_kv() -> None:
    snap = _snapshot(kv_global={"strategy": "weighted"}, service=ServiceConfig(strategy="random"))
    assert snap.effective("web").strategy == "random"
    assert snap.effective("other").strategy == "weighted"


def test_effective_to_dict_shows_value_level_and_source() -> None:
    snap = _snapshot(kv_service={"per_try_timeout": "1m30s"})
    item = snap.effective("web").to_dict()["per_try_timeout"]
    assert item == {"value": "1m30s", "level": "service", "source": f"kv:{KEY}"}
    json.dumps(snap.effective("web", "w1").to_dict())  # JSON-ready throughout


def test_effective_typed_view_and_policies() -> None:
    snap = _snapshot(kv_service={"retry": {"attempts": 5}, "deadline": "3s"})
    eff = snap.effective("web", "w1")
    assert eff.settings.retry.attempts == 5
    assert eff.endpoint_settings is not None
    assert eff.endpoint_settings.drained is False
    policy = eff.retry_policy()
    assert policy.attempts == 5
    assert policy.deadline == 3.0
    assert eff.breaker_policy().consecutive_failures == 5
    assert eff.detector_policy().interval == 10.0


def test_same_settings_ignores_modify_index() -> None:
    a = _snapshot(kv_service={"strategy": "maglev"})
    b = _snapshot(kv_service={"strategy": "maglev"})
    assert a.same_settings(b)
    assert not a.same_settings(_snapshot(kv_service={"strategy": "random"}))


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"stratgy": "random"}, "stratgy", "did you mean 'strategy'"),
        (
            {"breaker": {"reset_timout": "1s"}},
            "breaker.reset_timout",
            "did you mean 'reset_timeout'",
        ),
        ({"strategy": "least_requests"}, "strategy", "did you mean 'least_request'"),
        ({"detector": {"failure_rate": 0}}, "detector.failure_rate", "(0, 100]"),
        ({"detector": {"failure_rate": 100.5}}, "detector.failure_rate", "out of range"),
        ({"deregister_critical_after": "30s"}, "deregister_critical_after", "[1m,"),
        ({"per_try_timeout": "0s"}, "per_try_timeout", "(0s, 1h]"),
        ({"per_try_timeout": "-1s"}, "per_try_timeout", "duration"),
        ({"per_try_timeout": "ten"}, "per_try_timeout", "1m30s"),
        ({"retry": {"attempts": 2.5}}, "retry.attempts", "integer"),
        ({"retry": {"attempts": True}}, "retry.attempts", "integer"),
        ({"keep_warning": "yes"}, "keep_warning", "true or false"),
        ({"tags": "a,b"}, "tags", "list of strings"),
        ({"meta": {"bad key": "x"}}, "meta", "meta key"),
        ({"weight": 3}, "weight", "only at the endpoint level"),
        ({"watch_wait": "1m"}, "watch_wait", "bootstrap"),
        ({"retry": 3}, "retry", "expected an object"),
        ({"per_try_timeout": "5s", "deadline": "1s"}, "deadline", "shorter than"),
    ],
)
def test_validation_names_key_field_and_reason(doc: object, field: str, words: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_document(json.dumps(doc), SERVICE, key=KEY, kv=True)
    err = info.value
    assert err.key == KEY
    assert err.field == field
    assert words in err.reason
    assert KEY in str(err)
    assert field in str(err)


def test_watch_wait_at_most_ten_minutes() -> None:
    with pytest.raises(ConfigValidationError, match=r"600|10m"):
        parse_document({"watch_wait": "11m"}, GLOBAL)
    assert parse_document({"watch_wait": "10m"}, GLOBAL)["watch_wait"] == 600.0


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty document"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"strategy": NaN}', "NaN"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"[" * 100_000, "malformed JSON"),
    ],
)
def test_malformed_documents(data: bytes, words: str) -> None:
    with pytest.raises(ConfigValidationError, match=words.replace("[", r"\[")) as info:
        parse_document(data, SERVICE, key=KEY)
    assert info.value.key == KEY


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_document({"zzzzzz": 1}, SERVICE)
    assert "did you mean" not in info.value.reason


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), (5, 5.0)]
)
def test_durations_the_consul_way(text: object, seconds: float) -> None:
    assert parse_document({"per_try_timeout": text}, SERVICE)["per_try_timeout"] == seconds


def test_round_trip_document() -> None:
    doc = {
        "strategy": "ring_hash",
        "per_try_timeout": "1m30s",
        "breaker": {"reset_timeout": "250ms"},
        "tags": ["a", "b"],
        "meta": {"zone": "eu"},
    }
    values = parse_document(doc, SERVICE)
    assert to_document(values) == doc
    assert ServiceConfig.from_document(json.dumps(doc)).to_document() == doc


# --- models -----------------------------------------------------------------------------------


def test_models_are_frozen_and_validated_in_code() -> None:
    svc = ServiceConfig(per_try_timeout="250ms", retry=RetrySettings(backoff_base="10ms"))  # type: ignore[arg-type]
    assert svc.per_try_timeout == 0.25
    assert svc.retry.backoff_base == 0.01
    with pytest.raises(dataclasses.FrozenInstanceError):
        svc.strategy = "random"  # type: ignore[misc]
    with pytest.raises(ConfigValidationError) as info:
        ServiceConfig(strategy="fastest")
    assert info.value.field == "strategy"
    with pytest.raises(ConfigValidationError):
        EndpointConfig(weight=0)
    with pytest.raises(ConfigValidationError) as info2:
        BreakerSettings(consecutive_failures=0)
    assert info2.value.field == "breaker.consecutive_failures"


def test_mesh_config_defaults_raise_invalid_setting() -> None:
    with pytest.raises(InvalidSetting) as info:
        MeshConfig(detector={"max_ejection_percent": 101})  # type: ignore[arg-type]
    assert info.value.setting == "detector.max_ejection_percent"
    with pytest.raises(ConfigValidationError):
        DetectorSettings(max_ejection_percent=101)
    with pytest.raises(InvalidSetting) as info2:
        MeshConfig(watch_wait=601)
    assert info2.value.setting == "watch_wait"
    with pytest.raises(InvalidSetting):
        MeshConfig(kv_prefix="a//b")
    cfg = MeshConfig(strategy="maglev", breaker={"reset_timeout": "3s"})  # type: ignore[arg-type]
    assert cfg.breaker.reset_timeout == 3.0
    hash(cfg)  # the watch hub keys on MeshConfig


def test_schema_table_matches_models() -> None:
    svc = {f"{p}" for p in flatten(_all_set(ServiceConfig))}
    assert svc == {f.path for f in fields_for(SERVICE)}
    ep = set(flatten(_all_set(EndpointConfig)))
    assert ep == {f.path for f in fields_for(ENDPOINT)}
    mesh_paths = {f.path for f in fields_for(GLOBAL)}
    for path in mesh_paths:
        head = path.partition(".")[0]
        assert hasattr(MeshConfig(), head), path
    assert set(defaults()) == {f.path for f in FIELDS}


def _all_set(cls: type) -> object:
    """An instance of ``cls`` with every field set to its default (or a valid value)."""
    values = {f.path: f.default for f in FIELDS}
    values.update({"weight": 1, "deregister_critical_after": 60.0, "per_try_timeout": 1.0})
    from lake_mesh_consul._core.config_models import from_flat

    return from_flat(cls, values)


def test_strategy_names_match_the_balancer_when_present() -> None:
    strategies = pytest.importorskip("lake_mesh_consul._core.strategies")
    names = getattr(strategies, "STRATEGY_NAMES", None) or getattr(strategies, "STRATEGIES", None)
    if names is None:
        pytest.skip("the strategies module exposes no name list")
    assert set(STRATEGY_NAMES) <= set(names)


# --- sources ----------------------------------------------------------------------------------


def test_environment_sets_global_defaults_with_provenance() -> None:
    env = {
        "LAKE_MESH_STRATEGY": "random",
        "LAKE_MESH_BREAKER_CONSECUTIVE_FAILURES": "7",
        "LAKE_MESH_WATCH_WAIT": "2m",
        "LAKE_MESH_KV_PREFIX": "team/mesh",
    }
    cfg = MeshConfig.from_env(env)
    assert cfg.strategy == "random"
    assert cfg.breaker.consecutive_failures == 7
    assert cfg.watch_wait == 120.0
    assert cfg.kv_prefix == "team/mesh"
    assert cfg.sources["strategy"] == "env:LAKE_MESH_STRATEGY"
    eff = ConfigSnapshot(global_layers=(layer_from(cfg, "code"),)).effective("x")
    assert eff.provenance["breaker.consecutive_failures"].source == (
        "env:LAKE_MESH_BREAKER_CONSECUTIVE_FAILURES"
    )


def test_code_beats_environment_field_by_field() -> None:
    env = {"LAKE_MESH_STRATEGY": "random", "LAKE_MESH_BREAKER_RESET_TIMEOUT": "9s"}
    cfg = MeshConfig.from_env(
        env, strategy="maglev", breaker=BreakerSettings(consecutive_failures=2)
    )
    assert cfg.strategy == "maglev"
    assert cfg.breaker.consecutive_failures == 2
    assert cfg.breaker.reset_timeout == 9.0
    assert "strategy" not in cfg.sources
    assert cfg.sources["breaker.reset_timeout"] == "env:LAKE_MESH_BREAKER_RESET_TIMEOUT"


def test_bad_environment_variable_is_named() -> None:
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env({"LAKE_MESH_DETECTOR_FAILURE_RATE": "0"})
    assert info.value.setting == "LAKE_MESH_DETECTOR_FAILURE_RATE"
    assert env_var(FIELDS[0]) == "LAKE_MESH_STRATEGY"


def test_file_then_environment_then_code(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    path.write_text(
        json.dumps(
            {
                "consul": {"address": "10.0.0.1:8500"},
                "global": {"strategy": "weighted", "deadline": "4s", "kv_prefix": "filemesh"},
                "services": {"web": {"strategy": "maglev"}},
                "endpoints": {"web": {"w1": {"drained": True}}},
            }
        )
    )
    cfg = MeshConfig.from_file(path, {"LAKE_MESH_DEADLINE": "6s"}, strategy="random")
    assert cfg.address == "10.0.0.1:8500"
    assert cfg.strategy == "random"
    assert cfg.deadline == 6.0
    assert cfg.kv_prefix == "filemesh"
    assert cfg.sources["kv_prefix"] == f"file:{path}"
    assert cfg.sources["deadline"] == "env:LAKE_MESH_DEADLINE"
    loaded = load_file(path)
    assert loaded.services["web"].strategy == "maglev"
    assert loaded.endpoints[("web", "w1")].drained is True


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"servces": {}}))
    with pytest.raises(ConfigValidationError, match="did you mean 'services'") as info:
        load_file(path)
    assert info.value.key == str(path)
    path.write_text(json.dumps({"services": {"web": {"retry": {"atempts": 2}}}}))
    with pytest.raises(ConfigValidationError, match="did you mean 'attempts'"):
        load_file(path)
    with pytest.raises(ConfigValidationError, match="cannot read"):
        load_file(tmp_path / "missing.json")


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[global]\nstrategy = "least_request"\n[services.web.retry]\nattempts = 2\n')
    loaded = load_file(path)
    assert loaded.global_values["strategy"] == "least_request"
    assert loaded.services["web"].retry.attempts == 2


def test_retry_on_is_configurable_and_defaults_to_the_retry_module() -> None:
    from lake_mesh_consul._core.config_models import RetrySettings
    from lake_mesh_consul._core.config_schema import DEFAULT_RETRY_KINDS, parse_document
    from lake_mesh_consul._core.detector import OutcomeKind
    from lake_mesh_consul._core.retry import DEFAULT_RETRY_ON

    # One default, in two places that must not drift apart.
    assert {k.value for k in DEFAULT_RETRY_ON} == set(DEFAULT_RETRY_KINDS)
    assert ServiceConfig().retry_policy().retry_on == DEFAULT_RETRY_ON
    parsed = parse_document({"retry": {"retry_on": ["server_error", "timeout"]}}, "service")
    assert parsed == {"retry.retry_on": ("server_error", "timeout")}
    policy = ServiceConfig(retry=RetrySettings(retry_on=("server_error",))).retry_policy()
    assert policy.retry_on == frozenset({OutcomeKind.SERVER_ERROR})


def test_retry_on_rejects_unknown_kinds_with_a_suggestion() -> None:
    from lake_mesh_consul._core.config_schema import parse_document

    with pytest.raises(ConfigValidationError) as caught:
        parse_document({"retry": {"retry_on": ["server_eror"]}}, "service", key="mesh/s/x")
    assert caught.value.field == "retry.retry_on"
    assert caught.value.key == "mesh/s/x"
    assert "did you mean 'server_error'" in str(caught.value)
