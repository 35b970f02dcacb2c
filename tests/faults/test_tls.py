"""TLS against a real HTTPS agent whose CA and certificates come from ``consul tls``.

Promises: verification is on by default; a wrong or missing CA, a wrong server name, a plain
HTTP address for an HTTPS agent (and the reverse), and a missing client certificate each
give a typed error with a message that says what to fix; the right settings work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul.errors import ConsulStatusError, ConsulTLSError
from lake_mesh_consul.testing._agent import find_consul_binary
from lake_mesh_consul.testing._tls import create_tls_material
from lake_mesh_consul.testing.cluster import ConsulCluster
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

from ._loops import RecordProperty


def _leader(config: MeshConfig) -> str:
    with ConsulClient(config) as client:
        return client.leader()


def _tls_error(config: MeshConfig) -> ConsulTLSError:
    with pytest.raises(ConsulTLSError) as caught:
        _leader(config)
    error = caught.value
    assert error.__cause__ is not None  # the requests/ssl error stays on the chain
    assert "Traceback" not in str(error)
    return error


def test_verification_is_on_by_default(https_agent: ConsulCluster) -> None:
    assert MeshConfig(address="127.0.0.1:8501", scheme="https").verify is True
    assert _leader(https_agent.mesh_config())  # with the CA: works


def test_missing_ca_is_a_clear_tls_error(
    https_agent: ConsulCluster, record_property: RecordProperty
) -> None:
    error = _tls_error(https_agent.mesh_config(ca_file=None))
    print(f"\n[no CA] {error}")
    record_property("message", str(error))
    assert "verification failed" in str(error)
    assert "CONSUL_CACERT" in str(error)
    assert https_agent.client.address in str(error)


def test_wrong_ca_is_a_clear_tls_error(
    https_agent: ConsulCluster, tmp_path: Path, record_property: RecordProperty
) -> None:
    binary = find_consul_binary()
    assert binary is not None
    other = create_tls_material(binary, tmp_path / "other-ca")
    error = _tls_error(https_agent.mesh_config(ca_file=str(other.ca_file)))
    print(f"\n[wrong CA] {error}")
    record_property("message", str(error))
    assert "verification failed" in str(error)
    assert "CONSUL_CACERT" in str(error)


def test_server_name_override(https_agent: ConsulCluster, record_property: RecordProperty) -> None:
    # The agent's certificate names server.dc1.consul: verifying against it works.
    assert _leader(https_agent.mesh_config(tls_server_name="server.dc1.consul"))
    error = _tls_error(https_agent.mesh_config(tls_server_name="not-the-agent.example"))
    print(f"\n[wrong server name] {error} <- {error.__cause__!r:.200}")
    record_property("message", str(error))
    assert "CONSUL_TLS_SERVER_NAME" in str(error)
    assert "does not match" in str(error)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_is_an_explicit_opt_out(https_agent: ConsulCluster) -> None:
    assert _leader(https_agent.mesh_config(ca_file=None, verify=False))


def test_http_to_an_https_agent_is_a_clear_error(
    https_agent: ConsulCluster, record_property: RecordProperty
) -> None:
    with pytest.raises(ConsulStatusError) as caught:
        _leader(https_agent.mesh_config(scheme="http", ca_file=None))
    print(f"\n[http to https port] {caught.value}")
    record_property("message", str(caught.value))
    assert caught.value.code == 400
    assert "HTTPS" in str(caught.value)


def test_https_to_a_plain_http_agent_is_a_clear_tls_error(
    consul_agent: ConsulAgentHandle, record_property: RecordProperty
) -> None:
    error = _tls_error(MeshConfig(address=consul_agent.address, scheme="https"))
    print(f"\n[https to http port] {error}")
    record_property("message", str(error))
    assert "not serving HTTPS" in str(error)


def test_client_certificate_required(
    mtls_agent: ConsulCluster, record_property: RecordProperty
) -> None:
    # With the client certificate: works.
    assert _leader(mtls_agent.mesh_config())
    # Without: the agent refuses the handshake.
    error = _tls_error(mtls_agent.mesh_config(client_cert=None, client_key=None))
    print(f"\n[no client cert] {error} <- {error.__cause__!r:.200}")
    record_property("message", str(error))
    assert "CONSUL_CLIENT_CERT" in str(error)


def test_client_certificate_from_another_ca_is_refused(
    mtls_agent: ConsulCluster, tmp_path: Path
) -> None:
    binary = find_consul_binary()
    assert binary is not None
    other = create_tls_material(binary, tmp_path / "other-ca")
    config = mtls_agent.mesh_config(
        client_cert=str(other.client_cert), client_key=str(other.client_key)
    )
    error = _tls_error(config)
    assert "CONSUL_CLIENT_CERT" in str(error)
