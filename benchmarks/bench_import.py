"""Start-up: importing what users import, as whole processes, and the CLI beside Consul's.

Rows (every ratio from alternated pairs: ours, theirs, theirs, ours, ...; the value and the
baseline are medians, the ratio is the median of per-pair ratios; ``n`` pairs):

* ``import.mesh.process``: wall time of a fresh ``python -c "import lake_mesh_consul.mesh"``
  (what the quickstart imports: ``from lake_mesh_consul.mesh import Mesh``), interpreter
  start-up included; baseline: ``python -c "import consul, requests, tenacity, pybreaker"``,
  its four dependencies together, in the same kind of process (target <= 1.15).
* ``import.mesh.process_over_bare``: the same minus a bare ``python -c pass`` on each side:
  the milliseconds the imports themselves take.
* ``import.package.importtime``: ``import lake_mesh_consul`` alone (a lazy shell of the public
  names), cumulative ``-X importtime`` in a fresh interpreter, median; start-up excluded.
* ``cli.endpoints.wall``: ``lake-mesh endpoints NAME --json`` against a local agent (one
  registered instance), the whole process; baseline: ``consul catalog services`` on the same
  agent (Consul's Go CLI). Issue 16 aims for a ratio within 5.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from _common import Context, Row, alternate, compare_alternated

from lake_mesh_consul.testing import find_consul_binary

#: The dependencies of ``lake_mesh_consul.mesh`` (setup.py's install_requires).
DEPENDENCIES = "consul, requests, tenacity, pybreaker"


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def _python(code: str) -> float:
    return _wall([sys.executable, "-c", code])


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter, in milliseconds."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for line in result.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1000.0
    raise RuntimeError(f"-X importtime printed no line for {module}")


def _imports(rounds: int) -> Iterator[Row]:
    _python("import lake_mesh_consul.mesh")  # warm the file-system cache and .pyc files
    _python(f"import {DEPENDENCIES}")
    ms = 1e3
    ours, theirs = alternate(
        lambda: _python("import lake_mesh_consul.mesh") * ms,
        lambda: _python(f"import {DEPENDENCIES}") * ms,
        rounds,
    )
    yield compare_alternated(
        "import.mesh.process",
        ours,
        theirs,
        "ms",
        baseline_is=f"python -c 'import {DEPENDENCIES}'",
        target=1.15,
    )
    bare = [_python("pass") * ms for _ in range(max(3, rounds // 2))]
    floor = statistics.median(bare)
    row = compare_alternated(
        "import.mesh.process_over_bare",
        [x - floor for x in ours],
        [y - floor for y in theirs],
        "ms",
        baseline_is="the dependencies' imports, start-up of a bare interpreter subtracted",
        bare_interpreter_ms=floor,
    )
    yield row
    package = [import_ms("lake_mesh_consul") for _ in range(max(3, rounds // 2))]
    yield Row(
        "import.package.importtime",
        statistics.median(package),
        "ms",
        n=len(package),
        extra={"measures": "import lake_mesh_consul (lazy shell), -X importtime, cumulative"},
    )


def _cli(ctx: Context, rounds: int) -> Iterator[Row]:
    binary = find_consul_binary()
    if binary is None:
        return
    address = ctx.consul_address()
    import requests

    name = f"bench-cli-{uuid.uuid4().hex[:6]}"
    body = {"Name": name, "ID": name, "Port": 8080, "Address": "127.0.0.1"}
    http = requests.Session()
    http.trust_env = False
    http.put(f"http://{address}/v1/agent/service/register", json=body, timeout=10)
    cli = Path(sys.executable).with_name("lake-mesh")
    ours_argv = [str(cli), "endpoints", name, "--json", "--http-addr", address]
    go_argv = [str(binary), "catalog", "services", f"-http-addr={address}"]
    try:
        _wall(ours_argv)
        _wall(go_argv)
        ms = 1e3
        ours, theirs = alternate(lambda: _wall(ours_argv) * ms, lambda: _wall(go_argv) * ms, rounds)
    finally:
        http.put(f"http://{address}/v1/agent/service/deregister/{name}", timeout=10)
        http.close()
    yield compare_alternated(
        "cli.endpoints.wall",
        ours,
        theirs,
        "ms",
        baseline_is="consul catalog services, same agent",
        target=5.0,
    )


def run(ctx: Context) -> Iterator[Row]:
    rounds = 4 if ctx.quick else 21
    yield from _imports(rounds)
    yield from _cli(ctx, rounds)
