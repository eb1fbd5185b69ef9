"""Defaults sized to the machine (issue 14): dtype "auto", running sequences and KV pages from a
memory budget, and warm-up shape counts that stay bounded as the batch grows."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import cli
from core.config import (
    AUTO_MAX_NUM_SEQS,
    ConfigError,
    EngineConfig,
    resolve_dtype,
    resolve_model,
    size_from_memory,
)
from core.model_config import ModelConfig


def test_auto_dtype_follows_the_hardware():
    assert resolve_dtype("auto", "float32", "cpu", frozenset({"avx512f", "avx512_bf16"})) \
        == "bfloat16"
    assert resolve_dtype("auto", "float32", "cpu", frozenset({"amx_bf16"})) == "bfloat16"
    assert resolve_dtype("auto", "bfloat16", "cpu", frozenset({"avx2"})) == "float32"
    assert resolve_dtype("auto", "float32", "gpu", frozenset()) == "bfloat16"
    assert resolve_dtype("float32", "bfloat16", "gpu") == "float32"
    assert resolve_dtype(None, "bfloat16", "cpu") is None  # the checkpoint's


def test_sizing_from_a_memory_budget():
    kv_per_token, model_len, page = 16 * 1024, 2048, 16  # the benchmark Llama in float32
    roomy = size_from_memory(kv_per_token, 160 * 2**20, model_len, page, 16 * 2**30)
    assert roomy.max_num_seqs == AUTO_MAX_NUM_SEQS
    assert roomy.num_pages == roomy.max_num_seqs * model_len // page
    tight = size_from_memory(kv_per_token, 160 * 2**20, model_len, page, 2**30)
    assert 1 <= tight.max_num_seqs < AUTO_MAX_NUM_SEQS  # (0.4 GiB − weights) / 32 MiB
    assert tight.num_pages * page * kv_per_token <= tight.budget_bytes
    with pytest.raises(ConfigError, match="max_model_len"):
        size_from_memory(kv_per_token, 160 * 2**20, model_len, page, 2**28)


def test_warmup_shapes_stay_bounded_as_the_batch_grows():
    def shapes(config: EngineConfig) -> int:
        return (len(config.decode_buckets()) * len(config.page_buckets())
                + len(config.prefill_shapes()) * len(config.prefill_page_buckets()))

    assert shapes(EngineConfig(max_num_seqs=64)) <= shapes(EngineConfig(max_num_seqs=8)) + 10
    assert EngineConfig(max_num_seqs=32).decode_buckets() == (2, 8, 32)
    assert min(EngineConfig(max_num_seqs=1).decode_buckets()) == 2  # never a 1-row decode
    for num_rows, num_tokens in EngineConfig(max_num_seqs=64).prefill_shapes():
        assert num_rows * num_tokens <= 512


def test_serve_without_tuning_flags_is_sized(tiny_models, monkeypatch):
    monkeypatch.setattr("core.config.available_memory_bytes", lambda: 8 * 2**30)
    model = Path(tiny_models["llama"])
    args = cli.build_parser().parse_args(["core", "--model", str(model)])
    requested = cli.engine_request(args)  # the flags alone: nothing sized yet
    assert (requested.max_num_seqs, requested.num_pages, requested.dtype) == (None, None, "auto")
    model_config, engine = resolve_model(model, requested, backend="cpu")
    assert model_config == ModelConfig.from_hf_dir(model)
    assert engine.is_resolved
    assert engine.max_num_seqs == AUTO_MAX_NUM_SEQS
    assert engine.num_pages == AUTO_MAX_NUM_SEQS * engine.max_pages_per_seq
    assert engine.dtype in ("float32", "bfloat16")
    explicit = cli.engine_request(cli.build_parser().parse_args(
        ["core", "--model", str(model), "--max-num-seqs", "4", "--dtype", "checkpoint"]))
    assert (explicit.max_num_seqs, explicit.num_pages, explicit.dtype) == (4, None, None)
    _, resolved = resolve_model(model, explicit, backend="cpu")
    # the checkpoint's dtype; a pool of 4 full-length rows; the context clamped to the model's
    assert resolved.dtype == model_config.dtype and resolved.max_num_seqs == 4
    assert resolved.max_model_len == min(2048, model_config.max_position_embeddings)
    assert resolved.num_pages == 4 * resolved.max_pages_per_seq
