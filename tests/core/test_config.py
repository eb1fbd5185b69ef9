"""Configuration resolved once: `resolve_model` reads the checkpoint's config.json (or takes it
as already read) and returns the final frozen configs; the loader takes them as given, so
nothing below re-reads the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.config import EngineConfig, resolve_model
from core.model_config import ConfigError, ModelConfig, is_encoder_config, read_hf_config


def test_the_checkpoint_config_is_read_once_and_passed_down(tiny_models, tmp_path):
    from core.models.loader import load_model

    copy = tmp_path / "model"
    shutil.copytree(Path(tiny_models["llama"]), copy)
    raw = read_hf_config(copy)
    (copy / "config.json").unlink()  # from here on, nothing may read it again
    requested = EngineConfig(max_model_len=100_000, max_num_seqs=2, dtype="auto")
    model_config, engine_config = resolve_model(copy, requested, hf_config=raw, backend="cpu")
    assert model_config == ModelConfig.from_hf_dir(tiny_models["llama"])
    assert engine_config.is_resolved and not requested.is_resolved
    assert engine_config.max_model_len == model_config.max_position_embeddings  # clamped
    assert engine_config.num_pages == 2 * engine_config.max_pages_per_seq
    model, config = load_model(copy, engine_config.dtype, model_config)
    assert config is model_config and model is not None


def test_the_config_file_decides_encoder_or_decoder(tiny_models, tmp_path):
    assert not is_encoder_config(read_hf_config(tiny_models["llama"]))
    assert is_encoder_config({"architectures": ["BertModel"]})
    assert is_encoder_config({"model_type": "bert"})
    with pytest.raises(ConfigError, match="config.json"):
        read_hf_config(tmp_path)
