"""Tensor parallelism on 4 virtual CPU devices gives the tokens and logprobs of one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# parameters split 4 ways, per layer of the 2: q, o, gate, up, down, and Qwen2's q bias; Qwen3's
# [head_dim] q/k norm scales stay whole (as every RMSNorm scale). The MoE families: q, o and the
# 3 expert stacks (split over their 8 experts; the routers stay whole), and Mixtral's untied
# output projection (its 512-token vocabulary divides by 4)
SPLIT_PARAMS = {"qwen2": 2 * 6, "qwen3": 2 * 5, "qwen3_moe": 2 * 5, "mixtral": 2 * 5 + 1}
EXPERT_STACKS = {"qwen3_moe": 2 * 3, "mixtral": 2 * 3}  # split along the expert axis
VARIANTS = tuple(SPLIT_PARAMS)


@pytest.fixture(scope="module")
def tp_results(tiny_models) -> dict[str, dict]:
    """tp_check's result per variant, from one process (4 virtual CPU devices) for them all."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "tests.core.engine.tp_check",
                           *(str(tiny_models[variant]) for variant in VARIANTS)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()
             if line.startswith('{"model_dir"')]
    assert [line["model_dir"] for line in lines] == [str(tiny_models[v]) for v in VARIANTS]
    int8 = [json.loads(line) for line in done.stdout.strip().splitlines()
            if line.startswith('{"int8"')]
    return {**dict(zip(VARIANTS, lines, strict=True)), "int8": int8[0]["int8"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_tensor_parallel_4_matches_one_device(tp_results, variant):
    """Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, head_dim twice hidden/heads); their 2
    key/value heads do not split 4 ways, so they are replicated while the 4 query heads, the MLP
    and (where it divides) the vocabulary are split. Qwen3-MoE and Mixtral: 2 of the 8 experts
    on each device (expert parallelism), token-exact too."""
    result = tp_results[variant]
    assert result["devices"] == 4
    assert result["one"]["split_params"] == 0
    assert result["four"]["split_params"] == SPLIT_PARAMS[variant]
    assert result["four"]["experts_split"] == EXPERT_STACKS.get(variant, 0)
    for one, four in zip(result["one"]["requests"], result["four"]["requests"], strict=True):
        assert four["tokens"] == one["tokens"] and len(one["tokens"]) == 12
        for top_one, top_four in zip(one["top"], four["top"], strict=True):
            assert [t for t, _ in top_four] == [t for t, _ in top_one]
            np.testing.assert_allclose([v for _, v in top_four], [v for _, v in top_one],
                                       atol=1e-4)


def test_tensor_parallel_4_int8_matches_one_device(tp_results):
    """Qwen2 with --quantization int8: each weight's scales split with its output axis — q's
    (heads) and gate/up's (MLP width) per layer; k/v's stay whole with their replicated heads,
    o/down's along the model width, and its tied head is the float embedding table; the
    logits are those of one device."""
    result = tp_results["int8"]
    assert result["scales_split"] == 2 * 3  # q, gate, up per layer
    assert result["argmax_equal"] and result["max_abs_difference"] < 1e-4
