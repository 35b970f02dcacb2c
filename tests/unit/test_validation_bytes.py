"""Validation as Consul counts (issue 14.5): bytes, control characters, Go durations, bounds.

Each case is an input that used to pass locally and then failed at (or was mangled by)
Consul: a meta value of 512 non-ASCII characters (Consul's ``len()`` counts UTF-8 bytes), an
id with a control character (registers, can never be deregistered), ``1ns`` sent as
``1e-06ms``, durations beyond Go's int64 nanoseconds, ``'web\\n'`` passing a ``$`` anchor,
and ``lake-mesh config set 'services/bad name!'`` writing a key nothing else reads.
Everything here is refused before any network call with one clear error naming the field.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul._consul.registry import encode_service
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.config_schema import parse_document
from lake_mesh_consul._core.durations import MAX_DURATION, format_duration, parse_duration
from lake_mesh_consul._core.endpoint import Weights
from lake_mesh_consul._core.registration import (
    META_MAX_VALUE_LENGTH,
    AliasCheck,
    HttpCheck,
    ScriptCheck,
    ServiceMetadata,
    TtlCheck,
    check_service_id,
    check_service_name,
    is_host,
    utf8_length,
)
from lake_mesh_consul.cli import main
from lake_mesh_consul.cli._output import Output, modify_index
from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

# --- lengths in bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a" * 512, True),
        ("a" * 513, False),
        ("é" * 256, True),  # 512 bytes
        ("é" * 257, False),  # 514 bytes, 257 characters
        ("é" * 512, False),  # the case: 512 characters, 1,024 bytes
        ("€" * 170 + "ab", True),  # 3-byte characters: 512 bytes
        ("€" * 171, False),  # 513 bytes
        ("😀" * 128, True),  # 4-byte characters: 512 bytes
        ("😀" * 128 + "a", False),
    ],
)
def test_meta_values_are_counted_in_utf8_bytes(value: str, ok: bool) -> None:
    assert (utf8_length(value) <= META_MAX_VALUE_LENGTH) is ok
    if ok:
        assert ServiceMetadata("web", 80, meta={"k": value}).meta["k"] == value
        assert parse_document({"meta": {"k": value}}, "service")["meta"]["k"] == value
        return
    with pytest.raises(InvalidSetting, match=r"bytes of UTF-8; Consul allows 512") as exc:
        ServiceMetadata("web", 80, meta={"k": value})
    assert exc.value.setting == "meta['k']"
    with pytest.raises(ConfigValidationError, match="512 bytes") as cfg:
        parse_document({"meta": {"k": value}}, "service")
    assert cfg.value.field == "meta"


# --- control characters --------------------------------------------------------------------

CONTROLS = ["\x00", "\x01", "\x07", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"]


def _all_refused(build: Any, field: str) -> list[str]:
    """The messages of building with each control character; fails if one passes."""
    messages = []
    for ch in CONTROLS:
        with pytest.raises(InvalidSetting) as exc:
            build(ch)
        assert exc.value.setting.startswith(field), (repr(ch), exc.value.setting)
        messages.append(str(exc.value))
    return messages


def test_control_characters_are_refused_in_names_ids_tags_and_meta() -> None:
    _all_refused(lambda c: ServiceMetadata(f"web{c}", 80), "name")
    _all_refused(lambda c: ServiceMetadata(f"web{c}x", 80), "name")
    _all_refused(lambda c: ServiceMetadata("web", 80, id=f"web-1{c}"), "id")
    _all_refused(lambda c: ServiceMetadata("web", 80, id=f"web{c}1"), "id")
    _all_refused(lambda c: ServiceMetadata("web", 80, tags=(f"v1{c}",)), "tags[0]")
    _all_refused(lambda c: ServiceMetadata("web", 80, meta={"k": f"v{c}"}), "meta['k']")
    _all_refused(lambda c: ServiceMetadata("web", 80, meta={f"k{c}": "v"}), "meta")
    _all_refused(lambda c: TtlCheck(id=f"c{c}", ttl=10), "id")
    _all_refused(lambda c: TtlCheck(name=f"n{c}", ttl=10), "name")
    _all_refused(lambda c: AliasCheck(service_id=f"s{c}"), "service_id")
    _all_refused(lambda c: ServiceMetadata("web", 80, address=f"localhost{c}"), "address")


def test_the_error_names_the_character_and_where_it_is() -> None:
    with pytest.raises(InvalidSetting, match=r"control character U\+0000 at position 3"):
        ServiceMetadata("web", 80, id="web\x001")
    with pytest.raises(InvalidSetting, match=r"unpaired surrogate U\+D800"):
        ServiceMetadata("web", 80, meta={"k": "\ud800"})


@pytest.mark.parametrize("name", ["web\n", "web\r\n", "a\n", "db-1\n"])
def test_a_trailing_newline_no_longer_slips_past_the_end_anchor(name: str) -> None:
    # re's "$" matches before a final newline: "web\n" used to be a valid service name.
    with pytest.raises(InvalidSetting):
        check_service_name(name)
    with pytest.raises(InvalidSetting):
        check_service_id(name)
    assert not is_host(name)


def test_http_check_headers_and_url_cannot_inject_lines() -> None:
    url = "http://127.0.0.1:8080/health"
    with pytest.raises(InvalidSetting, match=r"U\+000D") as exc:
        HttpCheck(url=url, interval=10, headers={"X-A": "v\r\nX-Evil: 1"})
    assert exc.value.setting == "headers['X-A']"
    with pytest.raises(InvalidSetting, match="not a header name"):
        HttpCheck(url=url, interval=10, headers={"X A": "v"})
    with pytest.raises(InvalidSetting, match=r"U\+000A"):
        HttpCheck(url=url + "\n", interval=10)
    assert HttpCheck(url=url, interval=10, headers={"X-A": "a\tb"}).headers["X-A"] == ("a\tb",)


def test_free_text_keeps_its_lines_and_scripts_only_lose_nul() -> None:
    assert TtlCheck(ttl=10, notes="line 1\nline 2").notes == "line 1\nline 2"
    assert ScriptCheck(args=("sh", "-c", "a\nb"), interval=10).args[2] == "a\nb"
    with pytest.raises(InvalidSetting, match="NUL"):
        ScriptCheck(args=("sh", "a\x00"), interval=10)


def test_config_documents_refuse_control_characters_in_tags_meta_and_datacenters() -> None:
    for doc, field in [
        ({"tags": ["v1\n"]}, "tags"),
        ({"meta": {"k": "a\x00"}}, "meta"),
        ({"failover_datacenters": ["dc2\n"]}, "failover_datacenters"),
        ({"meta": {"k\n": "a"}}, "meta"),
    ]:
        with pytest.raises(ConfigValidationError) as exc:
            parse_document(doc, "service")
        assert exc.value.field == field


def test_kv_prefix_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigValidationError) as exc:
        parse_document({"kv_prefix": "mesh\n"}, "global")
    assert exc.value.field == "kv_prefix"


# --- durations in Go's units and range ------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1e-9, "1ns"),  # was "1e-06ms", which Go's ParseDuration refuses
        (999e-9, "999ns"),
        (1.5e-6, "1.5us"),
        (0.25, "250ms"),
        (0.0015, "1.5ms"),
        (1 / 3, "333.333333ms"),
        (1.0, "1s"),
        (90, "1m30s"),
        (90.5, "1m30.5s"),
        (3600, "1h"),
        (3661.000000001, "1h1m1.000000001s"),
        (MAX_DURATION, "2562047h47m16.854775807s"),  # Go's own maximum, to the nanosecond
        (0, "0s"),
    ],
)
def test_durations_are_written_in_go_units_to_the_nanosecond(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert "e" not in text  # never a float exponent
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "value",
    ["2562048h", "9223372037s", 1e300, 10**400, "1e400", float("inf"), "inf", "nan", "-1s"],
)
def test_durations_beyond_gos_range_are_refused_with_a_clear_error(value: Any) -> None:
    with pytest.raises(ValueError, match=r"at most 9223372036s|finite|negative"):
        parse_duration(value)
    with pytest.raises(InvalidSetting) as exc:
        TtlCheck(ttl=value)
    assert exc.value.setting == "ttl"


@pytest.mark.parametrize("value", ["\u0661s", "\u00b2s", "1_0s", "+5", "5 s", "1.5.5s"])
def test_duration_text_is_ascii_go_grammar(value: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_a_check_duration_below_one_nanosecond_is_refused() -> None:
    with pytest.raises(InvalidSetting, match="at least 1ns"):
        TtlCheck(ttl=1e-12)
    check = HttpCheck(url="http://127.0.0.1:1/", interval="1ns", timeout="1.5us")
    body = encode_service(ServiceMetadata("web", 80, checks=(check,)))
    assert body["Checks"][0]["Interval"] == "1ns"
    assert body["Checks"][0]["Timeout"] == "1.5us"


def test_weights_stay_within_gos_int() -> None:
    with pytest.raises(InvalidSetting) as exc:
        ServiceMetadata("web", 80, weights=Weights(2**63, 1))
    assert exc.value.setting == "weights.passing"


# --- the CLI refuses a key no command would read ---------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "services/bad name!",
        "services/web\n",
        "services/-web",
        "services/web/endpoints/a b",
        "services/web/endpoints/a\x00",
        "lake-mesh/services/bad name!",
    ],
)
@pytest.mark.parametrize("command", ["set", "delete", "validate"])
def test_config_commands_refuse_a_key_with_an_invalid_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, command: str
) -> None:
    # Nothing listens on port 1: a request would fail differently (agent unavailable).
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    doc = tmp_path / "doc.json"
    doc.write_text("{}")
    argv = {
        "set": ["config", "set", key, str(doc)],
        "delete": ["config", "delete", key],
        "validate": ["config", "validate", str(doc), "--key", key],
    }[command]
    err = io.StringIO()
    monkeypatch.setattr("lake_mesh_consul.cli.Output", _capturing(err))
    assert main(argv) == 1
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert any(
        reason in lines[0]
        for reason in ("not a valid service name", "not a service id", "control character")
    )
    assert "unavailable" not in lines[0]


def _capturing(err: io.StringIO) -> Any:
    def build(**kwargs: Any) -> Output:
        return Output(stdout=io.StringIO(), stderr=err, **kwargs)

    return build


@pytest.mark.parametrize(
    ("text", "ok"), [("0", True), (str(2**64 - 1), True), (str(2**64), False), ("-1", False)]
)
def test_cas_index_is_a_uint64_like_consuls(text: str, ok: bool) -> None:
    # Consul answered HTTP 500 (strconv.ParseUint) for --cas 99999999999999999999999999.
    argv = ["config", "delete", "services/web", "--cas", text, "--dry-run", "--http-addr"]
    if ok:
        assert modify_index(text) == int(text)
        return
    with pytest.raises(argparse.ArgumentTypeError, match=r"0\.\.2\*\*64-1"):
        modify_index(text)
    assert main([*argv, "127.0.0.1:1"]) == 2


@pytest.mark.parametrize("value", [1e300, float("inf"), float("nan"), 10**400, 86400.5])
@pytest.mark.parametrize("name", ["read_timeout", "connect_timeout"])
def test_client_timeouts_are_bounded_with_a_clear_error(name: str, value: float) -> None:
    # read_timeout=1e300 used to be accepted, then raise a raw OverflowError in the socket.
    with pytest.raises(InvalidSetting, match="at most 86400s") as exc:
        MeshConfig(**{name: value})
    assert exc.value.setting == name
