"""Layering rules of the whole tree: the core never imports the facade (at run time or in any
import statement, TYPE_CHECKING blocks included); only `core/service/` imports the contracts
(`tandem.v1`, and vLLM's of `smg_grpc_proto`); the engine imports nothing from the service; the
runner imports nothing from the engine loop; the engine's metrics import no engine; and there are
no import cycles in the core. The facade's own rules are in tests/facade/test_facade_layering.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` statement of a file names (for `from X
    import Y`, also `X.Y`, which is a module when Y is a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(paths, forbidden) -> dict[str, list[str]]:
    """{file: the forbidden modules it imports} for every file that imports any."""
    found = {str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path)
                                                 if forbidden(name))
             for path in paths}
    return {path: names for path, names in found.items() if names}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_core_module_imports_the_facade():
    assert offenders(CORE.rglob("*.py"), lambda name: under(name, "facade")) == {}


def test_importing_the_core_server_and_cli_loads_no_facade_module():
    code = ("import sys, core.service.server, core.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'facade'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_only_the_service_imports_the_contract():
    outside = [path for path in CORE.rglob("*.py") if not path.is_relative_to(CORE / "service")]
    assert offenders(outside, lambda name: under(name, "tandem.v1")
                     or under(name, "smg_grpc_proto")) == {}
    assert offenders((CORE / "service").rglob("*.py"), lambda name: under(name, "tandem.v1"))


def test_the_engine_imports_nothing_from_the_service():
    assert offenders((CORE / "engine").rglob("*.py"),
                     lambda name: under(name, "core.service")) == {}


def test_the_runner_imports_nothing_from_the_engine_loop():
    assert offenders([CORE / "engine" / "runner.py"],
                     lambda name: under(name, "core.engine.loop")) == {}


def test_the_metrics_import_no_engine():
    assert offenders([CORE / "engine" / "metrics.py"],
                     lambda name: name.startswith("core.engine.") and name != "core.engine.metrics"
                     ) == {}


def test_the_core_has_no_import_cycles():
    files = {module_name(path): path for path in CORE.rglob("*.py")}
    graph = {name: {imported for imported in imported_modules(path) if imported in files
                    and imported != name and not name.startswith(imported + ".")}
             for name, path in files.items()}
    cycles, state = [], {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "visiting"
        for target in sorted(graph[name]):
            if state.get(target) == "visiting":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
