"""The CPU paged decode-attention kernel (core/kernels/): every build this CPU runs against a
NumPy reference (float32 and bfloat16 pools, sliding windows, padding rows, positions on and off
page boundaries), the engine's greedy decode with it against XLA's gather path, and the switch
that turns it off."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.cache import kv_pool
from core.kernels import cpu
from tests.core.engine.test_paged_kernels import greedy_run

K, G, H, C = 4, 2, 64, 16  # kv heads, query heads per kv head, head width, page size


def reference(q, keys, values, table, positions, window):
    out = np.zeros(q.shape, np.float32)
    for row, position in enumerate(positions):
        if position < 0:
            continue
        row_keys = np.concatenate([keys[page] for page in table[row]], axis=-1)  # [k, h, s]
        row_values = np.concatenate([values[page] for page in table[row]], axis=1)  # [k, s, h]
        scores = np.einsum("kgh,khs->kgs", q[row], row_keys)
        key_positions = np.arange(row_keys.shape[-1])
        visible = key_positions <= position
        if window:
            visible &= position - key_positions < window
        scores = np.where(visible, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[row] = np.einsum("kgs,ksh->kgh", weights / weights.sum(-1, keepdims=True),
                             row_values)
    return out


def test_a_build_exists_wherever_a_compiler_does():
    # `pip install` builds the kernels when a C++ compiler is there: a missing build is a
    # broken install, not a reason to skip the tests below
    if shutil.which("c++") or shutil.which("g++"):
        assert cpu.library_path("generic") is not None
        assert cpu.decode_attention_kernel() is not None


@pytest.mark.parametrize("level", list(cpu.ISA_LEVELS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window", [None, 20])
def test_kernel_matches_the_reference(level, dtype, window):
    if not cpu.register(level):
        pytest.skip(f"no {level} build usable on this CPU")
    rng = np.random.default_rng(7)
    num_pages, table_pages = 64, 6
    keys = rng.standard_normal((num_pages, K, H, C)).astype(np.float32)
    values = rng.standard_normal((num_pages, K, C, H)).astype(np.float32)
    if dtype == "bfloat16":  # the pools hold bf16 bits as uint16 (kv_pool.storage_dtype)
        key_pool, value_pool = jnp.asarray(keys, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16)
        keys = np.asarray(key_pool.astype(jnp.float32))
        values = np.asarray(value_pool.astype(jnp.float32))
        key_pool = jax.lax.bitcast_convert_type(key_pool, jnp.uint16)
        value_pool = jax.lax.bitcast_convert_type(value_pool, jnp.uint16)
    else:
        key_pool, value_pool = jnp.asarray(keys), jnp.asarray(values)
    # padding row (-1), the first position, both sides of page boundaries, a full table
    positions = np.array([0, 15, 16, 17, 50, 95, -1, 33, 7], np.int32)
    q = (rng.standard_normal((len(positions), K, G, H)) * H ** -0.5).astype(np.float32)
    table = rng.permutation(num_pages)[:len(positions) * table_pages].reshape(
        len(positions), table_pages).astype(np.int32)
    got = jax.jit(lambda *args: cpu.paged_decode_attention(*args, window, level=level))(
        q, key_pool, value_pool, table, positions)
    np.testing.assert_allclose(np.asarray(got), reference(q, keys, values, table, positions,
                                                          window), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["llama", "mistral", "gemma3"])
def test_engine_decode_with_the_kernel_matches_the_gather_path(tiny_models, monkeypatch,
                                                                variant):
    if cpu.decode_attention_kernel() is None:
        pytest.skip("no kernel build usable on this CPU")
    gather_tokens, gather_logprobs = greedy_run(tiny_models[variant], monkeypatch, "gather",
                                                steps=12)
    kernel_tokens, kernel_logprobs = greedy_run(tiny_models[variant], monkeypatch,
                                                "cpu-kernel", steps=12)
    assert kernel_tokens == gather_tokens
    np.testing.assert_allclose(kernel_logprobs, gather_logprobs, atol=1e-4)


def test_the_default_kind_follows_the_build_and_the_switch(monkeypatch):
    monkeypatch.delenv("TANDEM_PAGED_ATTENTION", raising=False)
    expected = "cpu-kernel" if cpu.decode_attention_kernel() else "gather"
    assert kv_pool.paged_attention_kind("cpu") == expected
    assert kv_pool.paged_attention_kind("gpu") == "pallas"
    monkeypatch.setenv("TANDEM_CPU_KERNELS", "0")
    cpu.decode_attention_kernel.cache_clear()
    try:
        assert kv_pool.paged_attention_kind("cpu") == "gather"
        monkeypatch.setenv("TANDEM_CPU_KERNELS", "sse9")
        cpu.decode_attention_kernel.cache_clear()
        with pytest.raises(ValueError, match="TANDEM_CPU_KERNELS"):
            kv_pool.paged_attention_kind("cpu")
    finally:
        monkeypatch.delenv("TANDEM_CPU_KERNELS")
        cpu.decode_attention_kernel.cache_clear()
