"""The ACL token through every way in: code, environment, token file; API and every CLI command.

Against a real agent with ACLs on (default deny): a well-formed token works from each
source, a token file is trimmed as Consul trims it, and a malformed token is refused before
any request, with an error naming the setting and never the value, from the API and from
every ``lake-mesh`` command that talks to Consul (exit 1, one line, no traceback).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul.cli import main as cli_main
from lake_mesh_consul.errors import InvalidSetting
from lake_mesh_consul.testing._secret_scan import secret_findings
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.integration

#: Malformed as given in the environment (never trimmed there): what each adds to the token.
ENV_FORMS = {
    "trailing-newline": ("", "\n"),
    "trailing-crlf": ("", "\r\n"),
    "leading-space": (" ", ""),
    "escape-char": ("", "\x1b"),
    "zero-width-space": ("", "\u200b"),
    "non-ascii": ("", "\u00e9"),
}

#: Malformed even after a token file is trimmed.
FILE_FORMS = {
    "inner-space": "{a} {b}\n",
    "control-char": "{a}{b}\x1b\n",
    "zero-width-space": "{a}{b}\u200b\n",
    "non-ascii": "{a}{b}\u00e9\n",
}

#: Every lake-mesh command that talks to Consul, with the arguments it needs.
COMMANDS = {
    "endpoints": ["endpoints", "web", "--timeout", "1"],
    "watch": ["watch", "web", "--count", "1", "--timeout", "1"],
    "doctor": ["doctor"],
    "call": ["call", "web", "/"],
    "status": ["status"],
    "explain": ["explain", "web"],
    "register": ["register", "web", "--port", "8080"],
    "deregister": ["deregister", "web-1"],
    "maint": ["maint", "web-1", "on"],
    "checks": ["checks", "web"],
    "config-get": ["config", "get"],
    "config-set": ["config", "set", "services/web", "{document}"],
    "config-watch": ["config", "watch", "--count", "1"],
    "config-delete": ["config", "delete", "services/web"],
}


#: What the ``lake-mesh`` console script runs.
_ENTRY_POINT = "import sys; from lake_mesh_consul.cli import main; sys.exit(main(sys.argv[1:]))"


def _split(token: str) -> tuple[str, str]:
    return token[:8], token[8:]


@pytest.fixture
def unanswered() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: any request attempt leaves a pending connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        yield sock


def _attempts(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


# --- the API --------------------------------------------------------------------------------


def test_a_good_token_works_from_code_environment_and_trimmed_file(
    consul_acl_agent: ConsulAgentHandle, tmp_path: Path
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    token_file = tmp_path / "token"
    token_file.write_text(f"  {token}\r\n\n")  # as a Kubernetes secret or an editor leaves it
    configs = [
        MeshConfig(address=consul_acl_agent.address, token=token),
        MeshConfig.from_env(
            {"CONSUL_HTTP_ADDR": consul_acl_agent.address, "CONSUL_HTTP_TOKEN": token}
        ),
        MeshConfig(address=consul_acl_agent.address, token_file=str(token_file)),
        MeshConfig.from_env(
            {
                "CONSUL_HTTP_ADDR": consul_acl_agent.address,
                "CONSUL_HTTP_TOKEN_FILE": str(token_file),
            }
        ),
    ]
    for config in configs:
        with ConsulClient(config) as client:
            me = client.request("GET", "/v1/acl/token/self", operation="read own token")
        assert me.json()["SecretID"] == token


@pytest.mark.parametrize("form", ENV_FORMS.values(), ids=ENV_FORMS.keys())
def test_a_malformed_token_is_refused_before_any_request(
    consul_acl_agent: ConsulAgentHandle, unanswered: socket.socket, form: tuple[str, str]
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    bad = form[0] + token + form[1]
    address = _address(unanswered)
    attempts = [
        ("token", lambda: MeshConfig(address=address, token=bad)),
        (
            "CONSUL_HTTP_TOKEN",
            lambda: MeshConfig.from_env({"CONSUL_HTTP_ADDR": address, "CONSUL_HTTP_TOKEN": bad}),
        ),
    ]
    for setting, build in attempts:
        with pytest.raises(InvalidSetting) as caught:
            ConsulClient(build()).leader()
        assert caught.value.setting == setting
        assert secret_findings(caught.value, token, frame_locals=False) == []
    assert _attempts(unanswered) == 0, "a request was sent with a malformed token"


# --- every CLI command ----------------------------------------------------------------------


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _refused_by_cli(code: int, out: str, err: str, *, setting: str, token: str) -> None:
    assert code == 1, (code, out, err)
    errors = [line for line in err.splitlines() if "Error" in line or "error" in line]
    assert len(errors) == 1, err  # one line (after any progress line the command printed)
    assert setting in errors[0]
    assert "Traceback" not in err
    assert token not in out + err
    assert token[:12] not in out + err


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_every_command_refuses_a_malformed_token_from_the_environment(
    consul_acl_agent: ConsulAgentHandle,
    unanswered: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    monkeypatch.setenv("CONSUL_HTTP_ADDR", _address(unanswered))
    command = _with_document(command, tmp_path)
    for prefix, suffix in ENV_FORMS.values():
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", prefix + token + suffix)
        code, out, err = _run_cli(command, capsys)
        _refused_by_cli(code, out, err, setting="CONSUL_HTTP_TOKEN", token=token)
    assert _attempts(unanswered) == 0


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_every_command_refuses_a_malformed_token_file(
    consul_acl_agent: ConsulAgentHandle,
    unanswered: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    monkeypatch.setenv("CONSUL_HTTP_ADDR", _address(unanswered))
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    command = _with_document(command, tmp_path)
    path = tmp_path / "token"
    first, rest = _split(token)
    for form in FILE_FORMS.values():
        path.write_text(form.format(a=first, b=rest), encoding="utf-8")
        monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(path))
        code, out, err = _run_cli(command, capsys)
        _refused_by_cli(code, out, err, setting="CONSUL_HTTP_TOKEN_FILE", token=token)
        monkeypatch.delenv("CONSUL_HTTP_TOKEN_FILE")
        code, out, err = _run_cli([*command, "--token-file", str(path)], capsys)
        _refused_by_cli(code, out, err, setting="token_file", token=token)
    assert _attempts(unanswered) == 0


def test_commands_that_never_talk_to_consul_ignore_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "3e1c9b7a-52d4-4f0e-9a61-0c8d2b4f7e15\n")
    code, out, _ = _run_cli(["version"], capsys)
    assert code == 0
    assert "3e1c9b7a" not in out


@pytest.mark.parametrize("command", [["doctor"], ["endpoints", "web", "--timeout", "1"]])
def test_a_real_process_says_one_line_and_exits_1(
    consul_acl_agent: ConsulAgentHandle, command: list[str]
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    env = {
        "PATH": "/usr/bin:/bin",
        "CONSUL_HTTP_ADDR": consul_acl_agent.address,
        "CONSUL_HTTP_TOKEN": token + "\n",
    }
    result = subprocess.run(
        [sys.executable, "-c", _ENTRY_POINT, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(f"\n  lake-mesh {' '.join(command)} -> exit {result.returncode}: {result.stderr.strip()}")
    _refused_by_cli(
        result.returncode, result.stdout, result.stderr, setting="CONSUL_HTTP_TOKEN", token=token
    )


def test_a_good_token_file_through_the_cli_reaches_the_agent(
    consul_acl_agent: ConsulAgentHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = consul_acl_agent.token
    assert token is not None
    path = tmp_path / "token"
    path.write_text(token + "\n")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_acl_agent.address)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    code, out, err = _run_cli(["doctor", "--json", "--token-file", str(path)], capsys)
    assert code == 0, err
    assert '"token_works": true' in out
    assert token not in out + err


def _with_document(command: list[str], tmp_path: Path) -> list[str]:
    """``command`` with ``{document}`` replaced by a file holding a valid service document."""
    document = tmp_path / "service.json"
    document.write_text('{"strategy": "round_robin"}')
    return [arg.replace("{document}", str(document)) for arg in command]
