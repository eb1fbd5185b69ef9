"""Tiny random Hugging Face checkpoints for tests and the built-in demo model.

Owns: the per-variant configs (Llama, Llama 3 with rope scaling, Mistral with a small sliding
window, Qwen2 with qkv biases, Qwen3 with per-head q/k norms, a head_dim other than hidden/heads
and a thinking chat template; the mixture-of-experts Qwen3-MoE and Mixtral, 8 experts, 2 per
token), the locally trained byte-level BPE tokenizer with its ChatML chat template,
deterministic random weights written with safetensors (single file or sharded), and the cached
demo-model directory. The Gemma 3 variant's config and weights are `core.models.tiny_gemma3`'s;
it shares the tokenizer, trained with Gemma's special tokens, and writes Gemma 3's own chat
template. Nothing here downloads anything, and importing this module loads neither torch nor
transformers: weights are numpy arrays, the tokenizer comes from `tokenizers`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from core.models.chat_templates import STYLES, TOOL_STYLES, chat_template  # noqa: F401
from core.models.tiny_gemma3 import GEMMA3_SPECIAL_TOKENS, gemma3_config, gemma3_weights

VARIANTS = ("llama", "llama3", "mistral", "qwen2", "qwen3")  # the dense Llama-shaped families
MOE_VARIANTS = ("qwen3_moe", "mixtral")  # mixture-of-experts families (`_moe_config`)
GEMMA_VARIANTS = ("gemma3",)  # written on request (not by every cross-family test)
ALL_VARIANTS = (*VARIANTS, *MOE_VARIANTS, *GEMMA_VARIANTS)
SIZES = ("tiny", "demo", "bench", "1b")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}

BOS, EOS, IM_START, IM_END, PAD = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END, PAD)  # ids 0..4, in this order
_SPECIALS = {"bos": BOS, "eos": EOS, "im_start": IM_START, "im_end": IM_END, "pad": PAD}
# Added tokens that are text, not control (special=False, as in Qwen3's tokenizer): one id each,
# after the trained vocabulary
THINK_TOKENS = ("<think>", "</think>")
ADDED_TEXT_TOKENS = {"qwen3": THINK_TOKENS, "qwen3_moe": THINK_TOKENS}

# The style of each variant's chat template (core/models/chat_templates.py): the plain Llama
# variant and the demo model use Hermes markup, as many Llama fine-tunes do; Qwen3's own template
# writes Hermes markup and `<think>` blocks.
TOOL_STYLE = {"llama": "hermes", "llama3": "llama3", "mistral": "mistral", "qwen2": "hermes",
              "qwen3": "qwen3", "qwen3_moe": "qwen3", "mixtral": "mistral", "gemma3": "gemma3"}
CHAT_TEMPLATE = chat_template("none")  # the template of a model that ignores tools

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model reads text as tokens and predicts
the next token, one step at a time. Serving many requests at once needs a scheduler, a cache of
keys and values, and a sampler that picks each token from the model's probabilities.
Hello, world! How are you today? I am fine, thank you. What would you like to talk about?
Once upon a time there was a small model that wanted to write stories about the sea, the
mountains, the city at night, and the people who lived there. It learned words, then sentences.
Numbers like 1, 2, 3, 10, 42, 100, 2024 and 3.14159 appear in text; so do symbols: + - * / = < >
( ) [ ] { } # @ & % $ and quotes "like this" or 'like that'. Code looks like def main(): return 0
and for i in range(10): print(i). JSON looks like {"role": "user", "content": "hi"}.
Français: héllo, café, crème brûlée, à bientôt, où est la gare? Deutsch: Grüße, Straße, schön.
Español: ¿Cómo estás? Mañana será otro día. Português: coração, não, obrigado.
Русский: привет, мир, спасибо. Ελληνικά: γειά σου κόσμε. العربية: مرحبا بالعالم.
日本語: こんにちは世界、日本語のテキスト。東京は大きい。 中文: 你好，世界。我们喜欢语言模型。
한국어: 안녕하세요 세계. Emoji: 🙂 😀 🚀 🎉 ❤️ 👍 🙂🙂 héllo 日本語 🙂 world.
The assistant answers the user politely and briefly. The user asks a question; the system sets
the rules. Streaming sends text in small pieces, and stop strings end generation early.
"""

_TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=2048)
_DEMO_DIMS = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                  max_position_embeddings=4096)
# The speed-benchmark shape of issue 3: Llama, vocab 32000, 8 layers of width 512.
_BENCH_DIMS = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                   max_position_embeddings=4096)
# ~1.1B parameters (TinyLlama-1.1B's shape): the accelerator benchmark (scripts/bench_device.sh)
_1B_DIMS = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, head_dim=64,
                max_position_embeddings=4096)
_DIMS = {"tiny": _TINY_DIMS, "demo": _DEMO_DIMS, "bench": _BENCH_DIMS, "1b": _1B_DIMS}
_VOCAB_TARGET = {"tiny": 512, "demo": 2048, "bench": 2048, "1b": 2048}
# embedding rows beyond the tokenizer's (never produced by it)
_MODEL_VOCAB_SIZE = {"bench": 32000, "1b": 32000}
_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _training_text(vocab_target: int) -> list[str]:
    """The corpus lines; larger vocabularies also see digits so enough merges exist."""
    lines = _CORPUS.splitlines()
    if vocab_target > 512:
        lines += [" ".join(str(n) for n in range(k, k + 50)) for k in range(0, 5000, 50)]
    return lines


def build_tokenizer(vocab_target: int = 512, variant: str = "llama"):
    """Train the byte-level BPE tokenizer (a `tokenizers.Tokenizer`) on the built-in corpus.

    qwen2 gets Qwen's NFC normalizer and split regex, because transformers 5 always rebuilds a
    qwen2 tokenizer that way; the file and what transformers loads must tokenize alike. qwen3
    gets them too (a real Qwen3 checkpoint names Qwen2Tokenizer), and its think tags. gemma3
    gets Gemma's special tokens (`special_tokens`), in Gemma's order.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    if variant in ("qwen2", "qwen3", "qwen3_moe"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target, special_tokens=list(special_tokens(variant).values()),
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(vocab_target), trainer=trainer)
    tok.add_tokens([AddedToken(text, special=False, normalized=False)
                    for text in ADDED_TEXT_TOKENS.get(variant, ())])
    bos = special_tokens(variant)["bos"]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    return tok


def special_tokens(variant: str = "llama") -> dict[str, str]:
    """A variant's special tokens by role, in id order."""
    return dict(GEMMA3_SPECIAL_TOKENS) if variant in GEMMA_VARIANTS else dict(_SPECIALS)


def special_token_ids(tok, variant: str = "llama") -> dict[str, int]:
    """Token ids of the special tokens, by role."""
    return {role: tok.token_to_id(text) for role, text in special_tokens(variant).items()}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(out_dir: Path, tok, model_max_length: int,
                    template: str = CHAT_TEMPLATE, variant: str = "llama") -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
    specials = special_tokens(variant)
    bos, eos, pad = specials["bos"], specials["eos"], specials["pad"]
    tok.save(str(out_dir / "tokenizer.json"))
    added = {str(token_id): {"content": token.content, "lstrip": token.lstrip,
                             "rstrip": token.rstrip, "normalized": token.normalized,
                             "single_word": token.single_word, "special": token.special}
             for token_id, token in sorted(tok.get_added_tokens_decoder().items())}
    _write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
        "pad_token": pad, "unk_token": specials.get("unk"), "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added, "chat_template": template})
    _write_json(out_dir / "special_tokens_map.json", {
        "bos_token": bos, "eos_token": eos, "pad_token": pad,
        "additional_special_tokens": [specials["im_start"], specials["im_end"]]})
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")


def model_config(variant: str, vocab_size: int, ids: dict[str, int], *,
                 dtype: str = "float32", size: str = "tiny") -> dict:
    """The config.json dict for a variant; keeps classic rope keys next to `rope_parameters`
    (gemma3: the hub's keys only, tiny size only)."""
    if variant not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {ALL_VARIANTS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    if variant == "gemma3":
        if size != "tiny":
            raise ValueError("the gemma3 variant comes in size tiny only")
        return gemma3_config(vocab_size, ids, dtype)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        **_DIMS[size], "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "initializer_range": 0.02, "use_cache": True, "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], "dtype": dtype,
        "torch_dtype": dtype,
    }
    if variant == "llama3":
        cfg.update(rope_theta=500000.0, tie_word_embeddings=True,
                   rope_scaling=dict(_LLAMA3_SCALING), eos_token_id=[ids["eos"], ids["im_end"]])
    elif variant == "mistral":
        cfg.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=32)
        for key in ("attention_bias", "mlp_bias"):
            cfg.pop(key)
    elif variant == "qwen2":
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6,
                   rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                   sliding_window=None, max_window_layers=cfg["num_hidden_layers"])
        for key in ("attention_bias", "mlp_bias"):
            cfg.pop(key)  # Qwen2 always has q/k/v biases and no bias flags
    elif variant in MOE_VARIANTS:
        cfg.update(_moe_config(variant, cfg))
    elif variant == "qwen3":
        # as Qwen3-0.6B: head_dim twice hidden/heads, tied embeddings, no biases (attention_bias
        # false, no mlp_bias key), the window off
        cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", rms_norm_eps=1e-6,
                   rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                   sliding_window=None, max_window_layers=cfg["num_hidden_layers"],
                   head_dim=2 * cfg["hidden_size"] // cfg["num_attention_heads"])
        cfg.pop("mlp_bias")
    # transformers >= 5 reads `rope_parameters` (rope_theta inside); older readers the classic keys.
    cfg["rope_parameters"] = {**(cfg.get("rope_scaling") or {"rope_type": "default"}),
                              "rope_theta": cfg["rope_theta"]}
    if size == "demo":
        cfg["tandem_demo"] = True
    return cfg


def _moe_config(variant: str, cfg: dict) -> dict:
    """The config.json keys of a MoE variant, as the real checkpoints write them: Qwen3-MoE as
    Qwen3-30B-A3B (Qwen3's attention and q/k norms, `num_experts`, `moe_intermediate_size`,
    `norm_topk_prob` true, every layer sparse, untied embeddings), Mixtral as Mixtral-8x7B
    (`num_local_experts`, the experts `intermediate_size` wide, no window). 8 experts, 2 per
    token: they split 4 ways under --tensor-parallel 4."""
    if variant == "qwen3_moe":
        cfg.pop("mlp_bias")
        return dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
                    rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
                    sliding_window=None, max_window_layers=cfg["num_hidden_layers"],
                    head_dim=2 * cfg["hidden_size"] // cfg["num_attention_heads"],
                    num_experts=8, num_experts_per_tok=2,
                    moe_intermediate_size=cfg["intermediate_size"] // 4, norm_topk_prob=True,
                    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.001,
                    output_router_logits=False)
    for key in ("attention_bias", "mlp_bias"):
        cfg.pop(key)
    return dict(architectures=["MixtralForCausalLM"], model_type="mixtral", rope_theta=1000000.0,
                sliding_window=None, num_local_experts=8, num_experts_per_tok=2,
                router_jitter_noise=0.0, router_aux_loss_coef=0.02, output_router_logits=False)


def _moe_layer_weights(cfg: dict, prefix: str, projection) -> dict[str, np.ndarray]:
    """One sparse layer's router and experts, named as the family's Hub checkpoints."""
    hidden = cfg["hidden_size"]
    if cfg["model_type"] == "mixtral":
        block, inter = prefix + "block_sparse_moe.", cfg["intermediate_size"]
        names = {"gate": "w1", "up": "w3", "down": "w2"}
        num_experts = cfg["num_local_experts"]
    else:
        block, inter = prefix + "mlp.", cfg["moe_intermediate_size"]
        names = {name: f"{name}_proj" for name in ("gate", "up", "down")}
        num_experts = cfg["num_experts"]
    w = {block + "gate.weight": projection((num_experts, hidden))}
    for expert in range(num_experts):
        for ours, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)),
                            ("down", (hidden, inter))):
            w[f"{block}experts.{expert}.{names[ours]}.weight"] = projection(shape)
    return w


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights named exactly as the HF checkpoint for `cfg`."""
    if cfg["model_type"] == "gemma3_text":
        return gemma3_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_dim = cfg["num_attention_heads"] * head_dim
    kv_dim = cfg["num_key_value_heads"] * head_dim

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def norm(width=hidden):
        return 1.0 + normal((width,), 0.1)

    def projection(shape):  # [out, in]
        # qwen3: 2/√in, so each layer moves the residual stream and greedy decoding follows the
        # context; the older variants' 0.02 with a tied table mostly echoes the last token
        # (and the MoE variants, whose routers then pick distinct experts per token)
        std = 2 / shape[1] ** 0.5 if cfg["model_type"] in ("qwen3", *MOE_VARIANTS) else 0.02
        return normal(shape, std)

    w = {"model.embed_tokens.weight": normal((cfg["vocab_size"], hidden), 0.2)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in (("q", (q_dim, hidden)), ("k", (kv_dim, hidden)),
                            ("v", (kv_dim, hidden)), ("o", (hidden, q_dim))):
            w[f"{p}self_attn.{name}_proj.weight"] = projection(shape)
        if cfg["model_type"] == "qwen2":
            for name, dim in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                w[f"{p}self_attn.{name}_proj.bias"] = normal((dim,), 0.02)
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):  # one [head_dim] scale: all q, one: k
            w[f"{p}self_attn.q_norm.weight"] = norm(head_dim)
            w[f"{p}self_attn.k_norm.weight"] = norm(head_dim)
        if cfg["model_type"] in MOE_VARIANTS and i not in cfg.get("mlp_only_layers", ()):
            w.update(_moe_layer_weights(cfg, p, projection))
        else:
            for name, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)),
                                ("down", (hidden, inter))):
                w[f"{p}mlp.{name}_proj.weight"] = projection(shape)
        w[f"{p}input_layernorm.weight"] = norm()
        w[f"{p}post_attention_layernorm.weight"] = norm()
    w["model.norm.weight"] = norm()
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = normal((cfg["vocab_size"], hidden), 0.2)
    return w


def write_weights(out_dir: Path, weights: dict[str, np.ndarray], num_shards: int = 1) -> None:
    """model.safetensors, or N contiguous shards plus model.safetensors.index.json."""
    meta = {"format": "pt"}
    if num_shards <= 1:
        save_file(weights, str(out_dir / "model.safetensors"), metadata=meta)
        return
    names = list(weights)
    total_bytes = sum(weights[n].nbytes for n in names)
    count = min(num_shards, len(names))
    shards: list[list[str]] = [[] for _ in range(count)]
    k, running_bytes = 0, 0
    for idx, n in enumerate(names):  # contiguous, by cumulative bytes, no shard left empty
        want = max(running_bytes * count // max(total_bytes, 1), count - (len(names) - idx))
        k = min(want, k + 1, count - 1)
        shards[k].append(n)
        running_bytes += weights[n].nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: weights[n] for n in shard}, str(out_dir / fname), metadata=meta)
        weight_map.update({n: fname for n in shard})
    _write_json(out_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})


def write_tiny_model(out_dir: Path, variant: str = "llama", *, seed: int = 0,
                     dtype: str = "float32", num_shards: int = 1, size: str = "tiny",
                     tool_style: str | None = None) -> Path:
    """Write a complete HF model directory (config, weights, tokenizer) and return it; its chat
    template is of `tool_style` (default: the variant's family, TOOL_STYLE; one of STYLES)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    if size not in SIZES or variant not in ALL_VARIANTS:
        raise ValueError(f"unknown size {size!r} or variant {variant!r}")
    tool_style = tool_style or TOOL_STYLE[variant]
    if tool_style not in STYLES:
        raise ValueError(f"unknown template style {tool_style!r}; expected one of {STYLES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(_VOCAB_TARGET[size], variant)
    ids = special_token_ids(tok, variant)
    vocab_size = max(tok.get_vocab_size(), _MODEL_VOCAB_SIZE.get(size, 0))
    cfg = model_config(variant, vocab_size, ids, dtype=dtype, size=size)
    weights = {n: a.astype(DTYPES[dtype]) for n, a in random_weights(cfg, seed).items()}
    write_weights(out_dir, weights, num_shards)
    _write_json(out_dir / "config.json", cfg)
    _write_json(out_dir / "generation_config.json", {
        "bos_token_id": ids["bos"], "eos_token_id": [ids["eos"], ids["im_end"]],
        "pad_token_id": ids["pad"], "do_sample": False})
    write_tokenizer(out_dir, tok, cfg["max_position_embeddings"], chat_template(tool_style),
                    variant)
    if size == "demo":
        (out_dir / "README.md").write_text(
            "# Tandem demo model\n\nRandom weights, generated locally by `core.models.tiny` "
            f"({variant}, seed {seed}). It exercises the serving stack end to end; its text "
            "is meaningless. Not a trained model.\n", encoding="utf-8")
    return out_dir


def default_cache_dir() -> Path:
    """$TANDEM_HOME, else ~/.cache/tandem."""
    home = os.environ.get("TANDEM_HOME")
    return Path(home) if home else Path.home() / ".cache" / "tandem"


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """The demo model directory `<cache_dir>/demo-model`, built atomically on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "demo-model"
    if (target / "config.json").is_file():
        _refresh_chat_template(target, chat_template(TOOL_STYLE["llama"]))
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=root))
    try:
        write_tiny_model(tmp, "llama", seed=0, size="demo")
        try:
            os.rename(tmp, target)  # atomic; fails if another process finished first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _refresh_chat_template(model_dir: Path, template: str) -> None:
    """Give a demo model cached by an older release the current chat template (the weights and
    tokenizer are unchanged); each file is replaced atomically."""
    if (model_dir / "chat_template.jinja").read_text(encoding="utf-8") == template:
        return
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    for name, text in (("tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False)
                        + "\n"), ("chat_template.jinja", template)):
        tmp = model_dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, model_dir / name)
