"""The facade's layers, read from its source with `ast`: only the app factory imports the routes;
the pipeline (facade/pipeline/) imports neither the routes nor the Responses API, which both sit
above it; the translation (facade/convert.py) imports none of the three."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FACADE = Path(__file__).resolve().parents[2] / "facade"

# The modules that build the app and may therefore import the routers.
APP_BUILDERS = {"facade/app.py"}


def _module_name(path: Path) -> str:
    """`facade/pipeline/chat.py` → `facade.pipeline.chat`; a package's `__init__` → the package."""
    parts = list(path.relative_to(FACADE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module one file imports, anywhere in it (relative imports resolved; for `from X
    import a`, both `X` and `X.a`, since `a` may be a submodule)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(modules: set[str], package: str) -> set[str]:
    return {name for name in modules if name == package or name.startswith(package + ".")}


def _facade_files() -> list[Path]:
    return sorted(FACADE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(FACADE.parent).as_posix()


def test_the_import_reader_sees_imports():
    """The checks below are not vacuous: the app factory's router imports are found."""
    assert _under(imported_modules(FACADE / "app.py"), "facade.routes")
    assert "facade.pipeline.chat" in imported_modules(FACADE / "pipeline" / "__init__.py")


@pytest.mark.parametrize("path", _facade_files(), ids=_relative)
def test_only_the_app_factory_imports_the_routes(path: Path):
    if _relative(path) in APP_BUILDERS:
        return
    assert not _under(imported_modules(path), "facade.routes")


@pytest.mark.parametrize("path", sorted((FACADE / "pipeline").rglob("*.py")), ids=_relative)
def test_the_pipeline_imports_neither_routes_nor_responses(path: Path):
    modules = imported_modules(path)
    assert not _under(modules, "facade.routes")
    assert not _under(modules, "facade.responses")


def test_the_translation_imports_no_layer_above_it():
    modules = imported_modules(FACADE / "convert.py")
    for package in ("facade.pipeline", "facade.routes", "facade.responses"):
        assert not _under(modules, package)
