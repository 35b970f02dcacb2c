"""TLS material for test agents, made by Consul's own ``consul tls`` commands.

:func:`create_tls_material` runs ``consul tls ca create`` and ``consul tls cert create``
(``-server`` for the agents, ``-client`` for the caller) in a directory and returns the
paths as a :class:`TLSMaterial`. Nothing here is fit for production: the CA key sits next
to the certificates in a temporary directory.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSMaterial", "create_tls_material"]

#: Seconds one ``consul tls`` command may take before we give up.
TLS_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class TLSMaterial:
    """Paths of a CA and the certificates it signed (PEM files).

    Attributes:
        directory: where the files live.
        ca_file: the CA certificate (what a caller passes as ``ca_file``).
        ca_key: the CA's private key.
        server_cert: the agents' certificate (``server.<dc>.consul``, localhost and the
            loopback addresses the agents bind).
        server_key: its key.
        client_cert: a client certificate for callers of an agent that verifies incoming
            HTTPS connections.
        client_key: its key.
    """

    directory: Path
    ca_file: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(binary: Path, args: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(
        [str(binary), "tls", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TLS_COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`consul tls {' '.join(args)}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )


def create_tls_material(
    binary: Path,
    directory: Path,
    *,
    datacenter: str = "dc1",
    ip_addresses: Sequence[str] = (),
) -> TLSMaterial:
    """Create a CA, a server certificate and a client certificate in ``directory``.

    Args:
        binary: the consul binary.
        directory: an existing directory to write into (the files keep Consul's names).
        datacenter: the datacenter named in the server certificate.
        ip_addresses: extra IP SANs for the server certificate (127.0.0.1 is always in).

    Returns:
        The paths, all existing.

    Raises:
        RuntimeError: a ``consul tls`` command failed (its output is in the message).
    """
    directory.mkdir(parents=True, exist_ok=True)
    _run(binary, ["ca", "create", "-days=2"], directory)
    extra = [f"-additional-ipaddress={ip}" for ip in ip_addresses if ip != "127.0.0.1"]
    _run(binary, ["cert", "create", "-server", f"-dc={datacenter}", "-days=2", *extra], directory)
    _run(binary, ["cert", "create", "-client", f"-dc={datacenter}", "-days=2"], directory)
    material = TLSMaterial(
        directory=directory,
        ca_file=directory / "consul-agent-ca.pem",
        ca_key=directory / "consul-agent-ca-key.pem",
        server_cert=directory / f"{datacenter}-server-consul-0.pem",
        server_key=directory / f"{datacenter}-server-consul-0-key.pem",
        client_cert=directory / f"{datacenter}-client-consul-0.pem",
        client_key=directory / f"{datacenter}-client-consul-0-key.pem",
    )
    for path in (
        material.ca_file,
        material.server_cert,
        material.server_key,
        material.client_cert,
        material.client_key,
    ):
        if not path.is_file():
            raise RuntimeError(f"`consul tls` did not write {path}")
    return material
