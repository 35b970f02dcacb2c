"""ServiceMetadata and check definitions: every invalid input is rejected at construction.

Construction does no I/O, so "rejected at construction" is "rejected before any network
call"; each error is an InvalidSetting (a ConfigurationError) naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from lake_mesh_consul._consul.registry import encode_service
from lake_mesh_consul._core.endpoint import Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import (
    AliasCheck,
    Check,
    GrpcCheck,
    HttpCheck,
    ScriptCheck,
    ServiceMetadata,
    TcpCheck,
    TtlCheck,
    check_host,
    check_service_name,
    default_service_id,
    is_host,
)
from lake_mesh_consul.errors import ConfigurationError, InvalidSetting


def http(**kw: Any) -> HttpCheck:
    kw.setdefault("url", "http://127.0.0.1:8080/health")
    kw.setdefault("interval", "10s")
    return HttpCheck(**kw)


def test_defaults_and_derived_ids() -> None:
    meta = ServiceMetadata(
        "web", 8080, address="10.0.0.5", checks=(http(), TtlCheck(ttl=15, id="app"), http())
    )
    assert meta.id == "web-10.0.0.5-8080"
    assert meta.check_ids == ("service:web-10.0.0.5-8080:1", "app", "service:web-10.0.0.5-8080:3")
    assert meta.weights == Weights(1, 1)
    assert meta.ttl_checks[0].ttl == 15.0
    assert meta.check("app").kind == "ttl"


def test_id_is_stable_for_the_same_instance() -> None:
    assert ServiceMetadata("web", 80).id == ServiceMetadata("web", 80).id
    assert default_service_id("web", "fe80::1", 80) == "web-fe80--1-80"
    assert ServiceMetadata("web", 80, id="custom").id == "custom"


def test_durations_accept_consul_strings() -> None:
    check = http(interval="1m30s", timeout="250ms", deregister_critical_service_after="2m")
    assert (check.interval, check.timeout, check.deregister_critical_service_after) == (
        90.0,
        0.25,
        120.0,
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "-lead"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": -1}, "port"),
        ({"port": True}, "port"),
        ({"port": "80"}, "port"),
        ({"id": "a/b"}, "id"),
        ({"id": "a b"}, "id"),
        ({"address": ""}, "address"),
        ({"address": "http://x"}, "address"),
        ({"address": "a=b"}, "address"),
        ({"address": "::::"}, "address"),
        ({"address": "not a host!"}, "address"),
        ({"address": "999.1.1.1"}, "address"),
        ({"address": "[::1"}, "address"),
        ({"tags": "single"}, "tags"),
        ({"tags": ("ok", "")}, "tags[1]"),
        ({"meta": {"bad key": "v"}}, "meta"),
        ({"meta": {"consul-x": "v"}}, "meta['consul-x']"),
        ({"meta": {"k": 1}}, "meta['k']"),
        ({"meta": {"k": "v" * 513}}, "meta['k']"),
        ({"meta": {f"k{i}": "v" for i in range(65)}}, "meta"),
        ({"weights": {"passing": 1}}, "weights"),
        ({"enable_tag_override": "yes"}, "enable_tag_override"),
        ({"checks": ("not a check",)}, "checks[0]"),
        ({"checks": (TtlCheck(ttl=5, id="a"), TtlCheck(ttl=5, id="a"))}, "checks[1].id"),
        ({"checks": (AliasCheck(service_id="me"),), "id": "me"}, "checks[0].service_id"),
    ],
)
def test_invalid_service_rejected(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"name": "web", "port": 8080, **kwargs}
    with pytest.raises(InvalidSetting) as info:
        ServiceMetadata(**args)
    assert info.value.setting == field
    assert isinstance(info.value, ConfigurationError)
    assert field in str(info.value)


def test_duplicate_with_derived_id() -> None:
    with pytest.raises(InvalidSetting, match=r"checks\[1\]\.id.*duplicate"):
        ServiceMetadata("web", 80, id="w", checks=(http(), TtlCheck(ttl=5, id="service:w:1")))


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: http(interval=0), "interval"),
        (lambda: http(interval=-1), "interval"),
        (lambda: http(interval="soon"), "interval"),
        (lambda: http(interval=None), "interval"),
        (lambda: http(timeout=0), "timeout"),
        (
            lambda: http(deregister_critical_service_after="59s"),
            "deregister_critical_service_after",
        ),
        (lambda: http(success_before_passing=-1), "success_before_passing"),
        (lambda: http(failures_before_critical=1.5), "failures_before_critical"),
        (lambda: http(status="maintenance"), "status"),
        (lambda: http(status="sideways"), "status"),
        (lambda: http(id="a b"), "id"),
        (lambda: http(name=" "), "name"),
        (lambda: http(url="ftp://x"), "url"),
        (lambda: http(method="FETCH"), "method"),
        (lambda: http(headers={"a:b": "c"}), "headers"),
        (lambda: http(tls_server_name=""), "tls_server_name"),
        (lambda: TcpCheck(address="nohost", interval=1), "address"),
        (lambda: TcpCheck(address="h:0", interval=1), "address"),
        (lambda: TcpCheck(address="a=b:80", interval=1), "address"),
        (lambda: TcpCheck(address="::1:80", interval=1), "address"),  # IPv6 needs [...]
        (lambda: TcpCheck(address="not a host!:80", interval=1), "address"),
        (lambda: GrpcCheck(target="a=b:80/svc", interval=1), "target"),
        (lambda: http(url="http://a=b/health"), "url"),
        (lambda: http(url="http://h:99999/health"), "url"),
        (lambda: http(url="http://[::1/health"), "url"),
        (lambda: GrpcCheck(target="h:99999", interval=1), "target"),
        (lambda: TtlCheck(ttl=0), "ttl"),
        (lambda: TtlCheck(ttl=5, interval=1), "interval"),
        (lambda: TtlCheck(ttl=5, timeout=1), "timeout"),
        (lambda: TtlCheck(ttl=5, failures_before_critical=2), "failures_before_critical"),
        (lambda: AliasCheck(service_id="a/b"), "service_id"),
        (lambda: ScriptCheck(args=(), interval=1), "args"),
        (lambda: ScriptCheck(args="/bin/true", interval=1), "args"),  # type: ignore[arg-type]
    ],
)
def test_invalid_check_rejected(factory: Any, field: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        factory()
    assert info.value.setting == field


def test_check_is_abstract() -> None:
    with pytest.raises(TypeError):
        Check(interval=1)


def test_values_are_frozen() -> None:
    meta = ServiceMetadata("web", 80, meta={"k": "v"})
    with pytest.raises(AttributeError):
        meta.port = 81  # type: ignore[misc]
    with pytest.raises(TypeError):
        meta.meta["k"] = "w"  # type: ignore[index]


def test_consul_json_shape() -> None:
    meta = ServiceMetadata(
        "web",
        8080,
        id="web-1",
        address="127.0.0.1",
        tags=("v1",),
        meta={"zone": "a"},
        weights=Weights(10, 1),
        checks=(
            http(
                method="post",
                headers={"X-A": "1"},
                body="{}",
                timeout=2,
                tls_skip_verify=True,
                success_before_passing=2,
                failures_before_critical=3,
                deregister_critical_service_after=60,
                notes="n",
                status=HealthStatus.PASSING,
            ),
            TcpCheck(address="127.0.0.1:8080", interval=0.5),
            GrpcCheck(target="127.0.0.1:9090/svc", use_tls=True, interval=5),
            TtlCheck(id="app", ttl=15),
            AliasCheck(service_id="db-1"),
            ScriptCheck(args=("/bin/true",), interval=10),
        ),
    )
    body = encode_service(meta, statuses={"app": HealthStatus.WARNING})
    assert body["Weights"] == {"Passing": 10, "Warning": 1}
    assert body["Address"] == "127.0.0.1"
    h, t, g, ttl, alias, script = body["Checks"]
    assert h == {
        "CheckID": "service:web-1:1",
        "Name": "http POST http://127.0.0.1:8080/health",
        "Notes": "n",
        "Status": "passing",
        "Interval": "10s",
        "Timeout": "2s",
        "DeregisterCriticalServiceAfter": "1m",
        "SuccessBeforePassing": 2,
        "FailuresBeforeCritical": 3,
        "HTTP": "http://127.0.0.1:8080/health",
        "Method": "POST",
        "Header": {"X-A": ["1"]},
        "Body": "{}",
        "TLSSkipVerify": True,
    }
    assert t["TCP"] == "127.0.0.1:8080"
    assert t["Interval"] == "500ms"
    assert g["GRPC"] == "127.0.0.1:9090/svc"
    assert g["GRPCUseTLS"] is True
    assert ttl["TTL"] == "15s"
    assert ttl["Status"] == "warning"
    assert "Interval" not in ttl
    assert alias["AliasService"] == "db-1"
    assert script["Args"] == ["/bin/true"]


# --- the shared validators: one service name rule, one address rule --------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "::1",
        "[::1]",
        "2001:db8::7",
        "fe80::1%eth0",
        "localhost",
        "web-1.example.com",
        "host.",
        "my_app_1",  # Docker's names; resolvers accept '_'
        "a" * 63 + ".example",
    ],
)
def test_is_host_accepts_ips_and_host_names(address: str) -> None:
    assert is_host(address)
    assert check_host(address, "address") == address
    assert ServiceMetadata("web", 80, address=address).address == address


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a=b",
        "::::",
        "not a host!",
        "http://x",
        "x y",
        "-lead",
        "trail-",
        "a..b",
        ".",
        "999.1.1.1",
        "1.2.3",
        "[::1",
        "[10.0.0.1]",
        "zoné.example",
        "a" * 64,
        ("a" * 60 + ".") * 5,
    ],
)
def test_is_host_rejects_anything_else(text: str) -> None:
    assert not is_host(text)
    with pytest.raises(InvalidSetting) as info:
        check_host(text, "--address")
    assert info.value.setting == "--address"
    assert "IPv4 or IPv6 address or a host name" in str(info.value)


def test_is_host_rejects_non_text() -> None:
    assert not is_host(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidSetting):
        check_host(12, "address")


def test_tcp_and_http_checks_accept_ipv6_in_brackets() -> None:
    assert TcpCheck(address="[::1]:5432", interval=1).address == "[::1]:5432"
    assert http(url="http://[::1]:8080/health").url == "http://[::1]:8080/health"


@pytest.mark.parametrize("name", ["web", "w", "web-v2", "a_b.c", "9lives", "x" * 255])
def test_check_service_name_accepts(name: str) -> None:
    assert check_service_name(name) == name


@pytest.mark.parametrize("name", ["", "bad/name", "a b", "-x", "x-", "x.", "a?b", "é", "x" * 256])
def test_check_service_name_rejects_naming_setting_and_rule(name: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        check_service_name(name, "service")
    assert info.value.setting == "service"
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work
    assert "letters, digits, '-', '_' and '.'" in info.value.reason


def test_check_service_name_rejects_non_text() -> None:
    with pytest.raises(InvalidSetting):
        check_service_name(None)
