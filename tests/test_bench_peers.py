"""The peer benchmark's pure helpers (scripts/bench_peers.py, scripts/vllm_cpu_venv.py): the KV
size handed to vLLM is Tandem's pool read off its log, and the stub `vllm` distribution is one
importlib.metadata finds with the `+cpu` version vLLM's platform detection needs. No server runs."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import bench_peers  # noqa: E402
import vllm_cpu_venv  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 512,
          "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
          "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 4096,
          "rms_norm_eps": 1e-5, "torch_dtype": "float32"}


def test_kv_pool_from_the_core_log(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    log = ('{"message": "engine for LlamaForCausalLM: EngineConfig(max_model_len=2048, '
           'num_pages=8192, dtype=\'bfloat16\', tensor_parallel=1)"}\n'
           '{"message": "KV pool: 8192 pages × 16 tokens"}\n')
    pool = bench_peers.kv_pool_bytes(log, tmp_path)
    per_token = 2 * 8 * 4 * 64 * 2  # keys and values, 8 layers, 4 KV heads of 64, bfloat16
    assert pool == {"pages": 8192, "page_size": 16, "dtype": "bfloat16",
                    "kv_bytes_per_token": per_token, "bytes": 8192 * 16 * per_token}
    assert bench_peers.kv_space_gib(pool["bytes"]) == 1  # exactly 1 GiB
    assert bench_peers.kv_space_gib(pool["bytes"] + 1) == 2  # rounded up, never below
    assert bench_peers.kv_pool_bytes("no pool line here", tmp_path) is None


def test_stub_distribution_is_found_with_cpu_version(tmp_path):
    vllm_cpu_venv.write_stub_distribution(tmp_path, "0.31.0")
    vllm_cpu_venv.write_stub_distribution(tmp_path, "0.32.0")  # replaces its own older stub
    found = [dist.version for dist in importlib.metadata.distributions(path=[str(tmp_path)])
             if dist.metadata["Name"] == "vllm"]
    assert found == ["0.32.0+cpu"]
