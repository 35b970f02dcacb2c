"""Start-up: importing what users import, as whole processes, and the CLI beside Consul's.

Rows (every ratio from alternated pairs: ours, theirs, theirs, ours, ...; the value and the
baseline are medians, the ratio is the median of per-pair ratios; ``n`` pairs):

* ``import.mesh.process``: wall time of a fresh ``python -c "import lake_mesh_consul.mesh"``
  (what the quickstart imports: ``from lake_mesh_consul.mesh import Mesh``), interpreter
  start-up included; baseline: ``python -c "import consul, requests, tenacity, pybreaker"``,
  its four dependencies together, in the same kind of process (target <= 1.15).
* ``import.mesh.process_over_bare``: the same minus a bare ``python -c pass`` on each side:
  the milliseconds the imports themselves take.
* ``import.mesh.construct``: the same process going on to build a ``Mesh()`` (what the
  quickstart does before its first request; no agent is contacted), against the same
  baseline. A guard on the row above: an import made cheap by moving imports into
  ``Mesh.__init__`` would show here.
* ``import.package.importtime``: ``import lake_mesh_consul`` alone (a lazy shell of the public
  names), cumulative ``-X importtime`` in a fresh interpreter, median; start-up excluded.
* ``cli.endpoints.wall``: ``lake-mesh endpoints NAME --json`` against a local agent (one
  registered instance), the whole process; baseline: ``consul catalog services`` on the same
  agent (Consul's Go CLI). Issue 16 aims for a ratio within 5.

Measured as an installed user runs it: bytecode compiled and allowed. Before measuring, this
module byte-compiles the package (``compileall``, what pip does when it installs our wheel)
and runs every measured process with bytecode allowed (``PYTHONDONTWRITEBYTECODE`` removed
from its environment). The dependencies in site-packages already have their ``.pyc`` files
(pip compiled them at install); without this step an environment that sets
``PYTHONDONTWRITEBYTECODE=1`` (this machine's does) recompiles every module of ours from
source in every measured process while the baseline loads bytecode, and the ratio mostly
measures the compiler. Every measured process also gets ``PYTHONPATH`` set to this checkout,
on both sides, so that the package measured is this tree's, not whatever copy an editable
install elsewhere points at.
"""

from __future__ import annotations

import compileall
import os
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

#: The checkout whose package is measured (put first on every measured process's path).
ROOT = Path(__file__).resolve().parent.parent
#: The package directory byte-compiled before measuring.
PACKAGE = ROOT / "lake_mesh_consul"
#: How the measured processes load modules (said in each row's JSON).
BYTECODE = "package byte-compiled (compileall) and bytecode allowed, as installed from a wheel"


def _environment() -> dict[str, str]:
    """The measured processes' environment: bytecode allowed, this checkout first on the path."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


#: Set by :func:`_prepare` (the environment is read once, at the start of a run).
_ENV: dict[str, str] = {}


def _prepare() -> None:
    """Byte-compile the package (what pip does at install) and fix the measured environment."""
    if not compileall.compile_dir(str(PACKAGE), quiet=1):
        raise RuntimeError(f"compileall failed for {PACKAGE}")
    _ENV.clear()
    _ENV.update(_environment())


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=60, env=_ENV or None)
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
        env=_ENV or None,
    )
    for line in result.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1000.0
    raise RuntimeError(f"-X importtime printed no line for {module}")


def _imports(rounds: int) -> Iterator[Row]:
    _python("import lake_mesh_consul.mesh")  # warm the file-system cache
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
        bytecode=BYTECODE,
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
        bytecode=BYTECODE,
    )
    yield row
    built = "from lake_mesh_consul.mesh import Mesh; Mesh()"
    _python(built)
    ours_built, theirs_built = alternate(
        lambda: _python(built) * ms,
        lambda: _python(f"import {DEPENDENCIES}") * ms,
        rounds,
    )
    yield compare_alternated(
        "import.mesh.construct",
        ours_built,
        theirs_built,
        "ms",
        baseline_is=f"python -c 'import {DEPENDENCIES}'",
        measures=f"python -c '{built}' (no agent contacted)",
        bytecode=BYTECODE,
    )
    package = [import_ms("lake_mesh_consul") for _ in range(max(3, rounds // 2))]
    yield Row(
        "import.package.importtime",
        statistics.median(package),
        "ms",
        n=len(package),
        extra={
            "measures": "import lake_mesh_consul (lazy shell), -X importtime, cumulative",
            "bytecode": BYTECODE,
        },
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
        bytecode=BYTECODE,
    )


def run(ctx: Context) -> Iterator[Row]:
    rounds = 4 if ctx.quick else 21
    _prepare()
    yield from _imports(rounds)
    yield from _cli(ctx, rounds)
