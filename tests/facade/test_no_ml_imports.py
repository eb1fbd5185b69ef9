"""The facade imports and builds its app with JAX, torch, transformers (and core-only extras)
impossible to import, and without loading the OpenTelemetry SDK while tracing is off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {
        "jax", "jaxlib", "flax", "torch", "transformers", "tokenizers", "numpy", "core",
        "grpc_health", "grpc_reflection",  # core-only extras
    }

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in the facade")
            return None

    sys.meta_path.insert(0, Blocker())
    from facade.app import create_app
    import facade.main

    app = create_app()
    assert app.title == "Tandem"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    # tracing is off by default: the OpenTelemetry SDK and exporter stay unimported
    tracing = sorted(m for m in sys.modules
                     if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
    assert not tracing, tracing
    print("ok")
    """
)


def test_facade_imports_without_ml_stacks():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
