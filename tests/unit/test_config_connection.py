"""MeshConfig's connection part: Consul's environment variables, precedence, token hiding."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest

from lake_mesh_consul._core.config import ENV_VARS, MeshConfig, Secret, parse_address
from lake_mesh_consul.errors import InvalidSetting

TOKEN = "3f1c9a52-0d7e-4f6b-9c1a-5e2d8b7a6c40"


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    return path


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


# --- environment parity with Consul's CLI ------------------------------------------------


def test_reads_the_same_variables_as_consuls_cli():
    assert set(ENV_VARS) >= {
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_CACERT",
        "CONSUL_CAPATH",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
        "CONSUL_TLS_SERVER_NAME",
        "CONSUL_NAMESPACE",
        "CONSUL_PARTITION",
    }


def test_defaults_without_environment():
    config = MeshConfig.from_env({})
    assert config.address == "127.0.0.1:8500"
    assert config.scheme == "http"
    assert config.token is None
    assert config.verify is True


def test_every_variable_is_read(tmp_path, pem, token_file):
    key = tmp_path / "key.pem"
    key.write_text("key")
    env = {
        "CONSUL_HTTP_ADDR": "consul.service:8501",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_SSL_VERIFY": "false",
        "CONSUL_CACERT": str(pem),
        "CONSUL_CAPATH": str(tmp_path),
        "CONSUL_CLIENT_CERT": str(pem),
        "CONSUL_CLIENT_KEY": str(key),
        "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
        "CONSUL_NAMESPACE": "team-a",
        "CONSUL_PARTITION": "part-1",
    }
    config = MeshConfig.from_env(env)
    assert config.address == "consul.service:8501"
    assert config.scheme == "https"
    assert config.token == Secret(TOKEN)
    assert config.verify is False
    assert config.ca_file == str(pem)
    assert config.ca_path == str(tmp_path)
    assert config.client_cert == str(pem)
    assert config.client_key == str(key)
    assert config.tls_server_name == "server.dc1.consul"
    assert config.namespace == "team-a"
    assert config.partition == "part-1"


@pytest.mark.parametrize(
    ("value", "scheme", "address"),
    [
        ("127.0.0.1:8500", "http", "127.0.0.1:8500"),
        ("localhost", "http", "localhost:8500"),
        ("http://10.0.0.1:1234", "http", "10.0.0.1:1234"),
        ("https://consul.example:8501/", "https", "consul.example:8501"),
        ("[::1]:8500", "http", "[::1]:8500"),
        ("https://[fe80::1]", "https", "[fe80::1]:8500"),
    ],
)
def test_address_forms(value, scheme, address):
    config = MeshConfig.from_env({"CONSUL_HTTP_ADDR": value})
    assert (config.scheme, config.address) == (scheme, address)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", "t"])
def test_ssl_true_spellings(value):
    assert MeshConfig.from_env({"CONSUL_HTTP_SSL": value}).scheme == "https"


@pytest.mark.parametrize("value", ["0", "false", "no", "off"])
def test_ssl_false_keeps_http(value):
    assert MeshConfig.from_env({"CONSUL_HTTP_SSL": value}).scheme == "http"


def test_empty_variables_count_as_unset():
    config = MeshConfig.from_env({"CONSUL_HTTP_ADDR": "", "CONSUL_HTTP_TOKEN": ""})
    assert config.address == "127.0.0.1:8500"
    assert config.token is None


def test_token_file_beats_token_variable_as_in_consuls_go_api(token_file):
    env = {"CONSUL_HTTP_TOKEN": "from-variable", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert MeshConfig.from_env(env).token == Secret(TOKEN)


# --- precedence: explicit beats environment ------------------------------------------------


def test_explicit_token_beats_consul_http_token():
    config = MeshConfig.from_env({"CONSUL_HTTP_TOKEN": "from-env"}, token=TOKEN)
    assert config.token == Secret(TOKEN)


def test_explicit_token_beats_token_file_variable(token_file):
    config = MeshConfig.from_env({"CONSUL_HTTP_TOKEN_FILE": str(token_file)}, token="explicit")
    assert config.token == Secret("explicit")


def test_explicit_token_file_beats_consul_http_token(token_file):
    config = MeshConfig.from_env({"CONSUL_HTTP_TOKEN": "from-env"}, token_file=str(token_file))
    assert config.token == Secret(TOKEN)


def test_explicit_empty_token_disables_the_environment_token():
    assert MeshConfig.from_env({"CONSUL_HTTP_TOKEN": "from-env"}, token="").token is None


def test_explicit_address_beats_environment_address_and_its_scheme():
    env = {"CONSUL_HTTP_ADDR": "https://remote:8501"}
    config = MeshConfig.from_env(env, address="127.0.0.1:9500")
    assert (config.scheme, config.address) == ("http", "127.0.0.1:9500")


def test_consul_http_ssl_still_applies_to_an_explicit_address():
    config = MeshConfig.from_env({"CONSUL_HTTP_SSL": "true"}, address="127.0.0.1:9500")
    assert config.scheme == "https"


def test_explicit_values_beat_environment(tmp_path):
    env = {"CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_NAMESPACE": "env-ns"}
    config = MeshConfig.from_env(env, verify=True, namespace="code-ns")
    assert config.verify is True
    assert config.namespace == "code-ns"


def test_python_consul2_precedence_is_not_inherited(monkeypatch):
    """python-consul2 lets CONSUL_HTTP_TOKEN override an explicit token; we do not."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    from lake_mesh_consul._consul.client import ConsulClient

    with ConsulClient(MeshConfig(token=TOKEN)) as client:
        assert client.session.headers["X-Consul-Token"] == TOKEN
        assert client.consul.token is None  # never put in a query string


# --- the token never shows -------------------------------------------------------------------


def test_token_not_in_repr_or_str(token_file):
    for config in (MeshConfig(token=TOKEN), MeshConfig.from_env({"CONSUL_HTTP_TOKEN": TOKEN})):
        assert TOKEN not in repr(config)
        assert TOKEN not in str(config)
        assert "***" in repr(config)
        assert TOKEN not in f"{config!r} {config}"
    assert TOKEN not in repr(MeshConfig(token_file=str(token_file)))


def test_secret_masks_and_reveals():
    secret = Secret(TOKEN)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***"
    assert secret.reveal() == TOKEN
    assert copy.deepcopy(secret) == secret
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_token_not_in_logs(caplog):
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info(
            "config %s %r", MeshConfig(token=TOKEN), MeshConfig(token=TOKEN)
        )
    assert TOKEN not in caplog.text


def test_token_not_in_errors_about_other_settings():
    with pytest.raises(InvalidSetting) as info:
        MeshConfig(token=TOKEN, read_timeout=-1)
    assert TOKEN not in str(info.value)
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env({"CONSUL_HTTP_TOKEN": TOKEN, "CONSUL_HTTP_SSL": "maybe"})
    assert TOKEN not in str(info.value)


def test_credentials_in_an_address_are_never_echoed():
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env({"CONSUL_HTTP_ADDR": f"http://user:{TOKEN}@host:8500"})
    assert TOKEN not in str(info.value)
    assert info.value.setting == "CONSUL_HTTP_ADDR"


# --- invalid values name the setting -----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CONSUL_HTTP_ADDR": "ftp://host:21"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "host:99999"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "host:port"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "::1:8500"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "host/path"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_SSL": "maybe"}, "CONSUL_HTTP_SSL"),
        ({"CONSUL_HTTP_SSL_VERIFY": "perhaps"}, "CONSUL_HTTP_SSL_VERIFY"),
        ({"CONSUL_HTTP_TOKEN_FILE": "/nonexistent/token"}, "CONSUL_HTTP_TOKEN_FILE"),
        ({"CONSUL_CACERT": "/nonexistent/ca.pem"}, "CONSUL_CACERT"),
        ({"CONSUL_CAPATH": "/nonexistent/dir"}, "CONSUL_CAPATH"),
        ({"CONSUL_CLIENT_CERT": "/nonexistent/cert.pem"}, "CONSUL_CLIENT_CERT"),
    ],
)
def test_invalid_environment_names_the_variable(env, setting):
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env(env)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")


def test_client_key_without_certificate(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("key")
    with pytest.raises(InvalidSetting) as info:
        MeshConfig(client_key=str(key))
    assert info.value.setting == "client_key"
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env({"CONSUL_CLIENT_KEY": str(key)})
    assert info.value.setting == "CONSUL_CLIENT_KEY"


def test_empty_token_file(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidSetting) as info:
        MeshConfig(token_file=str(empty))
    assert info.value.setting == "token_file"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"address": "bad host"}, "address"),
        ({"scheme": "gopher"}, "scheme"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"read_timeout": "soon"}, "read_timeout"),
        ({"datacenter": " "}, "datacenter"),
        ({"token": 42}, "token"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, setting):
    with pytest.raises(InvalidSetting) as info:
        MeshConfig(**kwargs)
    assert info.value.setting == setting


def test_invalid_argument_to_from_env_names_the_argument():
    with pytest.raises(InvalidSetting) as info:
        MeshConfig.from_env({}, address="ftp://x")
    assert info.value.setting == "address"


def test_durations_and_replace():
    config = MeshConfig(read_timeout="1m30s", connect_timeout="500ms")
    assert config.read_timeout == 90.0
    assert config.connect_timeout == 0.5
    assert config.replace(address="https://h:1").base_url == "https://h:1"


def test_parse_address_returns_parts():
    assert parse_address("https://[::1]:8501") == ("https", "::1", 8501)
    assert MeshConfig(address="[::1]:8501").host == "::1"
    assert MeshConfig(address="h:8501").port == 8501


def test_a_host_with_an_embedded_newline_is_refused() -> None:
    # `$` matches before a final newline; the host rule must end at the end of the text.
    with pytest.raises(InvalidSetting, match="not a host name"):
        MeshConfig(address="localhost\n:8500")
