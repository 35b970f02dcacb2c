"""A backend's malformed Retry-After never escapes MeshSession (issue 14.4), real agent.

``Retry-After: ²`` used to raise ValueError out of ``MeshSession.get`` and the 503 was lost.
Now every value either parses (and is honoured) or is ignored: the caller gets the backend's
last 503 after the usual retries, and nothing but the documented errors leaves the session.
"""

from __future__ import annotations

import pytest
from _mesh_support import mesh_with_instances

from lake_mesh_consul._core.config import (
    BreakerSettings,
    DetectorSettings,
    RetrySettings,
    ServiceConfig,
)

pytestmark = pytest.mark.integration

#: Header value -> requests the one instance receives (3: retried as if no header was sent;
#: 1: a parsed wait longer than max_retry_after stops the retries at once).
HOSTILE = {
    "²": 3,
    "-5": 3,
    "1.5": 3,
    "soon": 3,
    "5, 7": 3,
    "Wed, 21 Oct 99999 07:28:00 GMT": 3,
    "Mon, 32 Foo 2015 25:61:61 GMT": 3,
    "9" * 5000: 1,
}


def test_every_retry_after_value_parses_or_is_ignored(mesh_config, unique_name):
    services = {
        unique_name: ServiceConfig(
            strategy="round_robin",
            retry=RetrySettings(
                attempts=3, backoff_base=0.001, backoff_max=0.01, budget_min_per_second=1000
            ),
            breaker=BreakerSettings(consecutive_failures=10_000, failure_rate=1.0),
            detector=DetectorSettings(consecutive_failures=10_000),
        )
    }
    with mesh_with_instances(mesh_config, unique_name, count=1, services=services) as (
        mesh,
        (only,),
    ):
        only.failing = True
        seen: dict[str, tuple[int, int, str]] = {}
        with mesh.session() as http:
            for value in HOSTILE:
                only.retry_after = value
                before = only.hits
                response = http.get(f"http://{unique_name}/", timeout=5)
                seen[value[:40]] = (
                    response.status_code,
                    only.hits - before,
                    response.headers["Retry-After"][:40],
                )
    assert seen == {v[:40]: (503, hits, v[:40]) for v, hits in HOSTILE.items()}
