"""Which encoding the client asks the agent for: none on loopback, gzip elsewhere.

On loopback, compressing saves no transfer time and costs both ends CPU (decompressing a
26 MB health answer was most of the client's read cost), so the client asks for the
identity encoding there; a remote agent keeps requests' default (gzip, deflate).
"""

from __future__ import annotations

import pytest

from lake_mesh_consul._consul.client import build_session
from lake_mesh_consul._core.config import MeshConfig


@pytest.mark.parametrize(
    "address", ["127.0.0.1:8500", "127.8.9.10:8500", "[::1]:8500", "localhost:8500"]
)
def test_loopback_agent_answers_uncompressed(address: str) -> None:
    session = build_session(MeshConfig(address=address))
    assert session.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("address", ["10.0.0.5:8500", "consul.internal:8500", "[2001:db8::1]:8500"])
def test_remote_agent_keeps_compression(address: str) -> None:
    session = build_session(MeshConfig(address=address))
    assert "gzip" in str(session.headers["Accept-Encoding"])
