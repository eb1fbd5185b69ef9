"""Qwen3 dense (`Qwen3ForCausalLM`) beside the parity tests: the config keys its checkpoints
carry, the per-head q/k norm scales the loader maps, the sliding-window rule of the Qwen
families, the refusal of architectures the core does not serve, and the tiny checkpoint's Qwen3
chat template (think blocks, `enable_thinking`, Hermes tool calls) as transformers renders it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from core.config import EngineConfig, resolve_model
from core.model_config import SUPPORTED_ARCHITECTURES, ConfigError, ModelConfig
from core.models.tiny import THINK_TOKENS

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_config_reads_the_qwen3_keys(tiny_models):
    raw = json.loads((tiny_models["qwen3"] / "config.json").read_text())
    assert raw["architectures"] == ["Qwen3ForCausalLM"] and raw["attention_bias"] is False
    config = ModelConfig.from_hf_dir(tiny_models["qwen3"])
    assert config.qk_norm and config.architecture in SUPPORTED_ARCHITECTURES
    assert config.head_dim == 32 != config.hidden_size // config.num_heads  # explicit head_dim
    assert not (config.qkv_bias or config.o_bias or config.mlp_bias)
    assert config.sliding_window is None and config.tie_word_embeddings
    assert not ModelConfig.from_hf_dir(tiny_models["qwen2"]).qk_norm


def test_the_loader_maps_the_q_and_k_norm_scales(tiny_models):
    from core.models.loader import load_model

    model, config = load_model(tiny_models["qwen3"])
    written = load_file(tiny_models["qwen3"] / "model.safetensors")
    for index, layer in enumerate(model.layers):
        for name in ("q_norm", "k_norm"):
            scale = np.asarray(getattr(layer.self_attn, name).weight.get_value())  # [h]
            expected = written[f"model.layers.{index}.self_attn.{name}.weight"]
            assert scale.shape == (config.head_dim,)
            np.testing.assert_array_equal(scale, expected)
    assert not np.allclose(written["model.layers.0.self_attn.q_norm.weight"], 1.0)


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_the_qwen_sliding_window_is_off_unless_every_layer_slides(tiny_models, architecture):
    raw = {**json.loads((tiny_models["qwen3"] / "config.json").read_text()),
           "architectures": [architecture], "sliding_window": 8}
    assert ModelConfig.from_hf_dict(raw).sliding_window is None  # use_sliding_window false
    sliding = {**raw, "use_sliding_window": True}
    assert ModelConfig.from_hf_dict({**sliding, "max_window_layers": 0}).sliding_window == 8
    assert ModelConfig.from_hf_dict({**sliding, "max_window_layers": 2}).sliding_window is None
    with pytest.raises(ConfigError, match="some layers only"):
        ModelConfig.from_hf_dict({**sliding, "max_window_layers": 1})
    with pytest.raises(ConfigError, match="some layers only"):
        ModelConfig.from_hf_dict({**sliding, "max_window_layers": 0,
                                  "layer_types": ["full_attention", "sliding_attention"]})


def test_an_unsupported_architecture_is_refused_with_its_name_and_the_supported_ones(
        tiny_models, tmp_path):
    model_dir = shutil.copytree(tiny_models["qwen3"], tmp_path / "gpt-neox")
    raw = json.loads((model_dir / "config.json").read_text())
    raw["architectures"] = ["GPTNeoXForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as refused:
        resolve_model(model_dir, EngineConfig(max_model_len=64, max_num_seqs=2), backend="cpu")
    message = str(refused.value)
    assert "'GPTNeoXForCausalLM' is not supported" in message
    for supported in SUPPORTED_ARCHITECTURES:
        assert supported in message


# -- the chat template -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["qwen3"])


def test_think_tags_are_single_text_tokens(tokenizer):
    ids = tokenizer("<think>\nhmm\n</think>\n\nhi", add_special_tokens=False).input_ids
    think_ids = tokenizer.convert_tokens_to_ids(list(THINK_TOKENS))
    assert ids[0] == think_ids[0] and think_ids[1] in ids
    assert not set(think_ids) & set(tokenizer.all_special_ids)  # kept when specials are skipped
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhmm\n</think>\n\nhi"


def test_generation_prompt_honours_enable_thinking(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                        enable_thinking=False)
    assert off == text + "<think>\n\n</think>\n\n"
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       enable_thinking=True)
    assert on == text


def test_reasoning_stays_on_turns_after_the_last_query_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nhello"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        {"role": "assistant", "content": "now", "reasoning_content": "new thoughts"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nand now?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nnow<|im_end|>\n")
    # the last assistant turn always gets its (here empty) think block
    assert tokenizer.apply_chat_template(messages[:3], tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\nold thoughts\n</think>\n\nhello<|im_end|>\n")
    assert tokenizer.apply_chat_template(
        [*messages[:2], {"role": "assistant", "content": "hello"}], tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|>\n")


def test_tools_calls_and_results_render_in_hermes_markup(tokenizer):
    from core.service.tools import detect_syntax

    call = {"id": "c0", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "reasoning_content": "Ask the tool.",
                 "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c0", "content": "sunny"}]
    text = tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL], tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|im_start|>system\n# Tools\n\n")  # no default
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\n"
        "Ask the tool.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        "{\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert detect_syntax(tokenizer.chat_template).name == "hermes"
