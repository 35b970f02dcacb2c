"""The public face: the fifteen names, a cheap import, modules importable alone, no cycles."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import lake_mesh_consul

PUBLIC = [
    "BalancerStrategy",
    "BreakerState",
    "CircuitBreaker",
    "EndpointConfig",
    "FailureDetector",
    "HealthCheckManager",
    "HealthMetrics",
    "HealthStatus",
    "LoadBalancer",
    "MeshConfig",
    "ServiceConfig",
    "ServiceDiscovery",
    "ServiceEndpoint",
    "ServiceMetadata",
    "ServiceRegistry",
]
# prometheus_client and opentelemetry: the metrics exporters load them only when used (issue 18);
# httpx (and what it imports): lake_mesh_consul.httpx only (issue 17)
HEAVY = (
    "requests",
    "consul",
    "tenacity",
    "pybreaker",
    "urllib3",
    "prometheus_client",
    "opentelemetry",
    "httpx",
    "httpcore",
    "anyio",
)
PACKAGE_DIR = Path(lake_mesh_consul.__file__).parent


def _modules() -> list[str]:
    names = ["lake_mesh_consul"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="lake_mesh_consul."):
        names.append(info.name)
    return sorted(names)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_all_is_sorted_and_exactly_the_fifteen_names():
    assert lake_mesh_consul.__all__ == sorted(lake_mesh_consul.__all__)
    assert sorted(lake_mesh_consul.__all__) == PUBLIC
    assert len(set(lake_mesh_consul.__all__)) == 15


def test_nothing_else_is_exported_by_accident():
    result = _python(
        "import json, lake_mesh_consul as m; "
        "print(json.dumps([n for n in dir(m) if not n.startswith('_')]))"
    )
    public = set(json.loads(result.stdout))
    assert public == set(PUBLIC)
    with pytest.raises(AttributeError):
        _ = lake_mesh_consul.NotAThing  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves_and_is_documented(name):
    obj = getattr(lake_mesh_consul, name)
    assert (obj.__doc__ or "").strip()


def test_import_loads_no_heavy_dependency():
    result = _python(
        "import sys, json, lake_mesh_consul;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r})))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_import_of_errors_and_config_loads_no_heavy_dependency():
    result = _python(
        "import sys, json; import lake_mesh_consul.errors; "
        "from lake_mesh_consul import MeshConfig; MeshConfig();"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r})))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports_on_its_own_in_a_fresh_interpreter(module):
    result = _python(f"import {module}")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_all_modules_import_in_either_order(order):
    modules = _modules()
    if order == "reverse":
        modules.reverse()
    result = _python("; ".join(f"import {m}" for m in modules))
    assert result.returncode == 0, result.stderr[-2000:]


def _module_level_imports(path: Path, module: str) -> set[str]:
    """lake_mesh_consul modules imported at module level (not in functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)

    visit(tree.body)
    return {name for name in found if name.startswith("lake_mesh_consul")}


def test_no_import_cycles():
    paths: dict[str, Path] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        paths[".".join(parts)] = path
    graph = {
        module: {
            dep for dep in _module_level_imports(path, module) if dep in paths and dep != module
        }
        for module, path in paths.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := dfs(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := dfs(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_check_definitions_have_a_public_home():
    from lake_mesh_consul import checks
    from lake_mesh_consul._core import registration

    assert checks.__all__ == sorted(checks.__all__)
    for name in checks.__all__:
        assert getattr(checks, name) is getattr(registration, name)
        assert (getattr(checks, name).__doc__ or "").strip()


# --- the policy types: one public module, outside the fifteen names (issue 13.7) ---------------


def test_policy_types_are_public_sorted_and_documented():
    import lake_mesh_consul.policies as policies

    assert policies.__all__ == sorted(policies.__all__)
    assert set(dir(policies)) >= set(policies.__all__)
    for name in policies.__all__:
        obj = getattr(policies, name)
        assert obj is not None
        # Listener types are Callable aliases (documented by #:); on Python 3.10 an alias
        # also passes isinstance(..., type), so aliases are told apart by their origin.
        if isinstance(obj, type) and typing.get_origin(obj) is None:
            assert (obj.__doc__ or "").strip(), name
    assert "policies" not in lake_mesh_consul.__all__  # the fifteen names stay fifteen


def test_policy_types_are_the_ones_the_exported_classes_take():
    from lake_mesh_consul import CircuitBreaker, FailureDetector
    from lake_mesh_consul.policies import BreakerPolicy, DetectorPolicy, RetryPolicy

    breaker = CircuitBreaker("b", BreakerPolicy(consecutive_failures=2))
    assert breaker.policy == BreakerPolicy(consecutive_failures=2)
    detector = FailureDetector(DetectorPolicy(breaker=BreakerPolicy()))
    assert detector.policy.breaker == BreakerPolicy()
    assert RetryPolicy().attempts >= 1


def test_importing_the_policies_module_loads_no_heavy_dependency():
    result = _python(
        "import sys, json, lake_mesh_consul.policies;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r})))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
