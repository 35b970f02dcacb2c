"""Every script in examples/ runs against a real agent (subprocess, CONSUL_HTTP_ADDR set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: script -> text its output must contain.
EXPECTED = {
    "register_service.py": ["1/1 eligible", "our TTL check: passing", "drained and deregistered"],
    "call_with_session.py": ["200 ServiceEndpoint", "Host: greeter", "caught: MeshNoEndpoints"],
    "call_raw_socket.py": ["HELLO", "ANSWERING"],
    "watch_config.py": ["strategy after:  LeastRequest", "the last good config stays"],
    "asgi_service.py": [
        "frontend answered: 200 hello from greeter-a",
        "frontend answered: 200 hello from greeter-b",
        "greeter-b failing: 200 hello from greeter-a",
        "mesh closed: True",
    ],
}


#: Scripts that serve until signalled, tested elsewhere.
SERVING = {"quickstart.py": "tests/faults/test_shutdown.py (SIGTERM drains it)"}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted([*EXPECTED, *SERVING])


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, consul_agent):
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul_agent.address, "PYTHONUNBUFFERED": "1"}
    env.pop("CONSUL_HTTP_TOKEN", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for text in EXPECTED[script]:
        assert text in result.stdout, result.stdout + result.stderr
