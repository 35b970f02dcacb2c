"""The ACL token: refused when malformed, trimmed from files as Consul does, never shown.

Pure logic, no agent: MeshConfig's validation, the token file reader, and how the adapter
detaches foreign errors (the requests/urllib3 exceptions that used to carry the token in
their message, their request headers and their traceback's frames).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulResponse, _detach, _redirect_target
from lake_mesh_consul._core.config import Secret, check_token
from lake_mesh_consul.errors import ConfigValidationError, ConsulProtocolError, InvalidSetting
from lake_mesh_consul.testing._secret_scan import secret_findings

TOKEN = "3e1c9b7a-52d4-4f0e-9a61-0c8d2b4f7e15"

#: Malformed tokens as they reach us from the environment or code (never trimmed there).
MALFORMED = {
    "trailing newline": TOKEN + "\n",
    "trailing CRLF": TOKEN + "\r\n",
    "leading space": " " + TOKEN,
    "inner tab": TOKEN[:8] + "\t" + TOKEN[8:],
    "escape character": TOKEN + "\x1b",
    "DEL": TOKEN + "\x7f",
    "NUL": TOKEN[:4] + "\x00" + TOKEN[4:],
    "zero-width space": TOKEN + "\u200b",
    "non-ASCII Latin-1": TOKEN + "\u00e9",
    "non-Latin-1": TOKEN + "\u2603",
}

#: File contents Consul reads as a good token (surrounding whitespace trimmed, as Go's
#: strings.TrimSpace does, Unicode spaces included).
TRIMMED = {
    "trailing newline": TOKEN + "\n",
    "CRLF": TOKEN + "\r\n",
    "spaces and tabs": " \t" + TOKEN + " \t\n",
    "no-break and ideographic spaces": "\u00a0" + TOKEN + "\u3000",
}

#: File contents that are still malformed after trimming.
MALFORMED_FILE = {
    "inner space": TOKEN[:8] + " " + TOKEN[8:] + "\n",
    "control character": TOKEN + "\x1b\n",
    "zero-width space (not whitespace to Go)": TOKEN + "\u200b\n",
    "non-ASCII": TOKEN + "\u00e9\n",
}


def _refused(call: object, setting: str) -> InvalidSetting:
    assert callable(call)
    with pytest.raises(InvalidSetting) as caught:
        call()
    error = caught.value
    assert error.setting == setting
    # Frames that parse the token hold it as a value (the caller's first): the traceback as
    # printed, every message, argument and attribute of the chain must not.
    assert secret_findings(error, TOKEN, frame_locals=False) == []
    assert secret_findings(error, TOKEN[:12], frame_locals=False) == []  # not even a part
    return error


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_token_in_code_is_refused_naming_the_argument(token: str) -> None:
    error = _refused(lambda: MeshConfig(token=token), "token")
    assert "printable ASCII" in error.reason
    _refused(lambda: MeshConfig(token=Secret(token)), "token")


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_token_in_the_environment_is_refused_naming_the_variable(token: str) -> None:
    _refused(lambda: MeshConfig.from_env({"CONSUL_HTTP_TOKEN": token}), "CONSUL_HTTP_TOKEN")


def test_the_reason_says_what_and_where_but_not_the_value() -> None:
    error = _refused(lambda: MeshConfig(token=TOKEN + "\n"), "token")
    assert f"character {len(TOKEN) + 1} of {len(TOKEN) + 1}" in error.reason
    assert "whitespace" in error.reason
    assert "CONSUL_HTTP_TOKEN_FILE" in error.reason  # the way out for secrets with a newline


@pytest.mark.parametrize("content", TRIMMED.values(), ids=TRIMMED.keys())
def test_a_token_file_is_trimmed_as_consul_does(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")
    for config in (
        MeshConfig(token_file=str(path)),
        MeshConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)}),
    ):
        assert config.token is not None
        assert config.token.reveal() == TOKEN


@pytest.mark.parametrize("content", MALFORMED_FILE.values(), ids=MALFORMED_FILE.keys())
def test_a_malformed_token_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")
    _refused(lambda: MeshConfig(token_file=str(path)), "token_file")
    env = {"CONSUL_HTTP_TOKEN_FILE": str(path)}
    _refused(lambda: MeshConfig.from_env(env), "CONSUL_HTTP_TOKEN_FILE")


def test_a_token_file_that_is_not_utf8_is_refused_without_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(TOKEN.encode() + b"\xff\xfe\n")
    error = _refused(lambda: MeshConfig(token_file=str(path)), "token_file")
    assert "not UTF-8" in error.reason
    assert error.__context__ is None  # the UnicodeDecodeError holds the file's bytes


def test_a_token_in_a_config_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"consul": {"token": TOKEN + "\n"}}))
    with pytest.raises(ConfigValidationError) as caught:
        MeshConfig.from_file(path, environ={})
    assert caught.value.field == "consul.token"
    assert secret_findings(caught.value, TOKEN, frame_locals=False) == []


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(min_size=12, max_size=60))
def test_any_token_is_accepted_as_is_or_refused_without_showing_it(token: str) -> None:
    if any(not "!" <= c <= "~" for c in token):
        with pytest.raises(InvalidSetting) as caught:
            MeshConfig(token=token)
        assert caught.value.setting == "token"
        assert secret_findings(caught.value, token, frame_locals=False) == []
    else:
        config = MeshConfig(token=token)
        assert config.token is not None
        assert config.token.reveal() == token
        # The repr is the token-less one with the token masked (a search for the token's
        # text could match the repr's own words by chance).
        assert repr(config).replace("Secret('***')", "None") == repr(MeshConfig())


def test_check_token_accepts_printable_ascii() -> None:
    check_token("token", TOKEN)
    check_token("token", "s.AbC~!{}|")


# --- foreign errors: detached before they become a cause ---------------------------------


def _raise_with_token_in_frames() -> None:
    headers = {"X-Consul-Token": TOKEN}  # a local, as in urllib3's urlopen()
    request = requests.Request("GET", "http://127.0.0.1:8500/v1/kv/x", headers=headers)
    prepared = request.prepare()
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as reset:
        message = f"Invalid header value {TOKEN!r}"
        raise requests.exceptions.ConnectionError(message, request=prepared) from reset


def test_a_detached_foreign_error_keeps_its_type_and_nothing_of_the_token() -> None:
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        _raise_with_token_in_frames()
    exc = caught.value
    assert secret_findings(exc, TOKEN) != []  # the raw error does carry it...
    assert _detach(exc, Secret(TOKEN)) is exc
    assert secret_findings(exc, TOKEN) == []  # ...the detached one does not
    assert exc.request is None
    assert exc.__traceback__ is None
    assert isinstance(exc.__cause__, ConnectionResetError)
    assert "Invalid header value '***'" in str(exc)


def test_a_detached_unicode_error_forgets_the_text_it_was_encoding() -> None:
    try:
        (TOKEN + "\u2603").encode("latin-1")
    except UnicodeEncodeError as exc:
        error = exc
    assert secret_findings(error, TOKEN) != []
    assert secret_findings(_detach(error, None), TOKEN) == []


def test_a_detached_json_error_forgets_its_document() -> None:
    body = '{"echo": "' + TOKEN + '"'
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        error = exc
    _detach(error, None)
    assert error.doc == ""


def test_an_answer_quoting_the_token_is_masked_in_the_protocol_error() -> None:
    response = ConsulResponse(
        status=200,
        body=f"<html>X-Consul-Token: {TOKEN}</html>".encode(),
        index=0,
        known_leader=None,
        last_contact=None,
        address="http://127.0.0.1:8500",
        operation="read leader",
        token=Secret(TOKEN),
    )
    assert TOKEN not in repr(response)
    with pytest.raises(ConsulProtocolError) as caught:
        response.json()
    assert secret_findings(caught.value, TOKEN) == []


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("http://127.0.0.2:8500/v1/kv/x?token=abc", "'127.0.0.2:8500'"),
        ("https://evil.example/steal", "'evil.example'"),
        ("/v1/other", "http://127.0.0.1:8500 itself (relative Location)"),
        (None, "nowhere (no Location header)"),
        ("http://[::1/", "an unparsable location"),
    ],
)
def test_a_redirect_target_shows_only_the_host(location: str | None, shown: str) -> None:
    assert _redirect_target(location, "http://127.0.0.1:8500") == shown


def test_no_secret_scan_misses_a_token_in_a_local_variable() -> None:
    # The scanner itself must see a token held only by a frame's local variable.
    def leak() -> None:
        secret = TOKEN  # noqa: F841 - the point of the test
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError) as caught:
        leak()
    assert secret_findings(caught.value, TOKEN) == ["formatted traceback (capture_locals=True)"]
    assert sys.exc_info() == (None, None, None)
