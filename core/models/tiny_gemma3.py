"""The tiny Gemma 3 checkpoint of `core.models.tiny` (variant "gemma3"): its special tokens,
config.json and random weights.

Owns: Gemma's special tokens in Gemma's order (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, then
`<start_of_turn>` and `<end_of_turn>`: 105 and 106 in the real vocabulary, 4 and 5 here); a
`Gemma3ForCausalLM` config.json in the keys the real gemma-3-1b-it ships (`rope_theta`,
`rope_local_base_freq`, `rope_scaling`, `sliding_window`, `sliding_window_pattern`,
`query_pre_attn_scalar`, `hidden_activation`; no `tie_word_embeddings`: Gemma ties by default),
shaped so that each Gemma feature shows in the logits: sliding layers before and after a global
one, a window shorter than the test prompts, linear RoPE scaling on the global layer as the 4B+
checkpoints have, query_pre_attn_scalar unlike head_dim, one key/value head as the 1B; and
deterministic float32 weights named as transformers names them. numpy only.
"""

from __future__ import annotations

import numpy as np

GEMMA3_SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>",
                         "im_start": "<start_of_turn>", "im_end": "<end_of_turn>"}  # role → text
GEMMA3_SLIDING_WINDOW = 16  # tokens: shorter than the parity prompts (40 to 80 tokens)
_GEMMA3_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                    max_position_embeddings=2048)


def gemma3_config(vocab_size: int, ids: dict[str, int], dtype: str) -> dict:
    """config.json of the tiny Gemma 3: layers 0, 1 and 3 slide, layer 2 is global."""
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": vocab_size, **_GEMMA3_DIMS, "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "sliding_window": GEMMA3_SLIDING_WINDOW, "sliding_window_pattern": 3,
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
        "use_cache": True, "cache_implementation": "hybrid", "bos_token_id": ids["bos"],
        "eos_token_id": [ids["eos"], ids["im_end"]], "pad_token_id": ids["pad"],
        "dtype": dtype, "torch_dtype": dtype,
    }


def gemma3_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights named as transformers' Gemma3ForCausalLM names them (tied:
    no lm_head). Norm weights scatter around 0 (Gemma scales by 1 + w); the embedding is small
    beside the layers' (normed) outputs, so greedy decoding follows the context rather than
    echoing the last token (logits reach about 2)."""
    rng = np.random.default_rng(seed)
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_dim = cfg["num_attention_heads"] * head_dim
    kv_dim = cfg["num_key_value_heads"] * head_dim

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def norm(width=hidden):
        return normal((width,), 0.5)

    def projection(shape):  # [out, in]
        return normal(shape, 1 / shape[1] ** 0.5)

    w = {"model.embed_tokens.weight": normal((cfg["vocab_size"], hidden), 0.05)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in (("q", (q_dim, hidden)), ("k", (kv_dim, hidden)),
                            ("v", (kv_dim, hidden)), ("o", (hidden, q_dim))):
            w[f"{p}self_attn.{name}_proj.weight"] = projection(shape)
        w[f"{p}self_attn.q_norm.weight"] = norm(head_dim)
        w[f"{p}self_attn.k_norm.weight"] = norm(head_dim)
        for name, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)),
                            ("down", (hidden, inter))):
            w[f"{p}mlp.{name}_proj.weight"] = projection(shape)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            w[f"{p}{name}.weight"] = norm()
    w["model.norm.weight"] = norm()
    if not cfg.get("tie_word_embeddings", True):
        w["lm_head.weight"] = normal((cfg["vocab_size"], hidden), 0.2)
    return w
