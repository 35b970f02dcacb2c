r"""Build-time choice of the Consul client distribution (everything else is in pyproject.toml).

python-consul2 (the default) and py-consul (its maintained fork) both install the top-level
module ``consul``; installing one over the other overwrites its files and leaves a mixture
that ``pip check`` does not see. The adapter works with either (same API family), so the
distribution is chosen when the wheel is built:

    pip install lake-mesh-consul                       # python-consul2 (the default)
    LAKE_MESH_CONSUL_CLIENT=py-consul pip install --no-binary lake-mesh-consul \
        --no-cache-dir lake-mesh-consul

``--no-binary`` makes pip build from the sdist, so the variable is read; ``--no-cache-dir``
keeps pip from reusing a wheel it built earlier with the other choice.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

#: The environment variable read at build time, and its accepted values.
CLIENT_ENV = "LAKE_MESH_CONSUL_CLIENT"
CLIENTS = {
    # The design's client; 0.1.5 is its last release.
    "python-consul2": "python-consul2>=0.1.5",
    # The maintained fork; 1.8 is the release the adapter's integration tests run against.
    "py-consul": "py-consul>=1.8",
}

COMMON = [
    "tenacity>=8.2",
    "pybreaker>=1.0",
    "requests>=2.28",
    'tomli>=1.1; python_version < "3.11"',  # tomllib is in the standard library from 3.11
]


def _consul_client() -> str:
    choice = os.environ.get(CLIENT_ENV, "").strip() or "python-consul2"
    if choice not in CLIENTS:
        sys.exit(f"{CLIENT_ENV}={choice!r}: expected one of {', '.join(sorted(CLIENTS))}")
    return CLIENTS[choice]


setup(install_requires=[_consul_client(), *COMMON])
