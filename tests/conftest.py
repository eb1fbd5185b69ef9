"""Shared fixtures: tiny checkpoints written once per session with the project's own builder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def tandem_home(tmp_path_factory) -> Path:
    """Keep the demo model and compilation cache of test runs out of the user's ~/.cache."""
    home = tmp_path_factory.mktemp("tandem-home")
    os.environ["TANDEM_HOME"] = str(home)
    _share_compilations(home / "jax-cache")
    return home


def _share_compilations(cache_dir: Path) -> None:
    """Engines of the same shapes in one test session compile once (XLA's persistent cache)."""
    try:
        import jax
    except ImportError:  # the facade-only environment
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from core.models.tiny import VARIANTS, write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: write_tiny_model(root / variant, variant, seed=0) for variant in VARIANTS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
