"""Layering rules: the core never imports the facade (at run time or in any import statement,
TYPE_CHECKING blocks included), and the engine and its metrics do not import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` statement of a file names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_core_module_imports_the_facade():
    offenders = {str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path)
                                                     if name.split(".")[0] == "facade")
                 for path in (ROOT / "core").rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_core_server_and_cli_loads_no_facade_module():
    code = ("import sys, core.service.server, core.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'facade'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_engine_and_metrics_do_not_import_each_other():
    assert "core.engine.loop" not in imported_modules(ROOT / "core" / "metrics.py")
