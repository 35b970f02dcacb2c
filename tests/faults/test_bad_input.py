"""Bad input: connection settings, agent addresses, and agents that are not what they seem.

Promise: every wrong setting is an InvalidSetting naming it, every unusable address a typed
ConsulError saying what happened, within the configured timeouts; nothing crashes with a
foreign exception.
"""

from __future__ import annotations

import http.server
import socket
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.config import ENV_VARS
from lake_mesh_consul.errors import (
    ConsulError,
    ConsulStatusError,
    ConsulUnavailable,
    InvalidSetting,
)
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

from ._loops import RecordProperty

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # the working tree is shared: no .hypothesis directory
    suppress_health_check=[HealthCheck.too_slow],
)

address_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    st.builds(
        lambda scheme, host, port: f"{scheme}{host}{port}",
        st.sampled_from(["", "http://", "https://", "unix://", "HTTP://", "ftp://", "://"]),
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "::1", "[", "a b", "", "-x", "é"]),
        st.sampled_from(["", ":", ":0", ":8500", ":65536", ":-1", ":port", "/", ":8500/v1", "@"]),
    ),
)


@FUZZ
@given(address=address_text)
def test_fuzzed_addresses_are_valid_or_invalid_setting(address: str) -> None:
    try:
        config = MeshConfig(address=address)
    except InvalidSetting as exc:
        error: InvalidSetting | None = exc
    else:
        error = None
    if error is not None:
        assert error.setting == "address"
        assert str(error).startswith("address: ")
    else:
        assert config.scheme in ("http", "https")
        assert 1 <= config.port <= 65535
        assert MeshConfig(address=config.address, scheme=config.scheme) == config


@FUZZ
@given(env=st.dictionaries(st.sampled_from(ENV_VARS), st.text(max_size=30), max_size=6))
def test_fuzzed_environment_is_valid_or_names_the_variable(env: dict[str, str]) -> None:
    try:
        config = MeshConfig.from_env(env)
    except InvalidSetting as exc:
        error: InvalidSetting | None = exc
    else:
        error = None
    if error is not None:
        assert error.setting in ENV_VARS, error.setting
    else:
        token = env.get("CONSUL_HTTP_TOKEN", "")
        if token and config.token is not None and not env.get("CONSUL_HTTP_TOKEN_FILE"):
            assert config.token.reveal() == token
            assert "Secret('***')" in repr(config)
            if len(token) >= 12:  # shorter ones can appear in the repr by chance
                assert token not in repr(config)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"address": "unix:///var/run/consul.sock"}, "address"),
        ({"address": "127.0.0.1:99999"}, "address"),
        ({"address": "::1:8500"}, "address"),
        ({"address": "[::1"}, "address"),
        ({"address": "http://user:pw@127.0.0.1:8500"}, "address"),
        ({"address": "127.0.0.1:85OO"}, "address"),
        ({"scheme": "ftp"}, "scheme"),
        ({"ca_file": "/no/such/ca.pem"}, "ca_file"),
        ({"ca_path": "/no/such/dir"}, "ca_path"),
        ({"client_key": "/etc/hostname"}, "client_key"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"read_timeout": "soon"}, "read_timeout"),
        ({"datacenter": "  "}, "datacenter"),
        ({"token_file": "/no/such/token"}, "token_file"),
    ],
)
def test_invalid_settings_name_the_setting(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(InvalidSetting) as caught:
        MeshConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.setting == setting
    assert caught.value.reason


@pytest.mark.parametrize("setting", ["ca_file", "client_cert", "token_file", "ca_path"])
def test_path_of_unknown_users_home(setting: str) -> None:
    with pytest.raises(InvalidSetting):
        MeshConfig(**{setting: "~no-such-user-0/file.pem"})  # type: ignore[arg-type]


def test_empty_token_file_is_invalid(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(InvalidSetting, match="empty"):
        MeshConfig(token_file=str(empty))


# --- addresses that parse but lead nowhere useful ----------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def garbage_port() -> Iterator[int]:
    """A TCP port that answers every request with bytes that are not HTTP."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    sock.close()


class _NotConsul(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>welcome to nginx</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server_port() -> Iterator[int]:
    """Some other HTTP service (a web page), where a Consul agent was expected."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotConsul)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _fails(config: MeshConfig, record_property: RecordProperty) -> tuple[ConsulError, float]:
    start = time.monotonic()
    with ConsulClient(config) as client, pytest.raises(ConsulError) as caught:
        client.leader()
    took = time.monotonic() - start
    print(f"\n[{config.address}] after {took:.2f}s: {type(caught.value).__name__}: {caught.value}")
    record_property("error", f"{type(caught.value).__name__}: {caught.value}")
    record_property("seconds", round(took, 2))
    return caught.value, took


def test_nothing_listening(record_property: RecordProperty) -> None:
    error, took = _fails(MeshConfig(address=f"127.0.0.1:{_free_closed_port()}"), record_property)
    assert isinstance(error, ConsulUnavailable)
    assert "connection refused" in str(error)
    assert took < 2.0


def test_agent_that_never_answers(silent_port: int, record_property: RecordProperty) -> None:
    config = MeshConfig(address=f"127.0.0.1:{silent_port}", read_timeout=0.5)
    error, took = _fails(config, record_property)
    assert isinstance(error, ConsulUnavailable)
    assert "no answer in time" in str(error)
    assert took < 2.0


def test_port_that_speaks_another_protocol(
    garbage_port: int, record_property: RecordProperty
) -> None:
    error, took = _fails(MeshConfig(address=f"127.0.0.1:{garbage_port}"), record_property)
    assert isinstance(error, ConsulUnavailable)
    assert took < 2.0


def test_ipv6_loopback_without_agent(record_property: RecordProperty) -> None:
    config = MeshConfig(address=f"[::1]:{_free_closed_port()}", connect_timeout=0.5)
    error, _ = _fails(config, record_property)
    assert isinstance(error, ConsulUnavailable)


def test_address_of_another_http_service(
    web_server_port: int, record_property: RecordProperty
) -> None:
    error, _ = _fails(MeshConfig(address=f"127.0.0.1:{web_server_port}"), record_property)
    assert isinstance(error, ConsulError)


def test_unknown_datacenter_is_a_status_error(
    consul_agent: ConsulAgentHandle, record_property: RecordProperty
) -> None:
    config = MeshConfig(address=consul_agent.address, datacenter="no-such-dc")
    with ConsulClient(config) as client, pytest.raises(ConsulStatusError) as caught:
        client.request("GET", "/v1/catalog/services", operation="list services")
    print(f"\n[unknown dc] {caught.value}")
    record_property("error", str(caught.value))
    assert caught.value.code == 500
    assert "datacenter" in caught.value.body.lower()
