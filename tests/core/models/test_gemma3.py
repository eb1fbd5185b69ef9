"""Gemma 3 text (`Gemma3ForCausalLM`) against Hugging Face transformers on the tiny checkpoint
`core.models.tiny` writes (variant "gemma3": sliding layers around a global one, a 16-token
window, linear RoPE scaling on the global layer, query_pre_attn_scalar unlike head_dim, Gemma 3's
own chat template): its config keys, and what is refused; float32 logits within 1e-4, with and
without final-logit softcapping; a multimodal checkpoint's language model; and a core over
gRPC: the template as transformers renders it (system folded into the first user turn, roles
that must alternate, tools refused), greedy chat tokens (chunked prefill, a decode batch of two,
past the window) equal HF `generate`, nothing compiled after warm-up."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from core.config import EngineConfig, ServerConfig
from core.model_config import ConfigError, ModelConfig
from core.models.tiny import write_tiny_model, write_weights
from core.models.tiny_gemma3 import GEMMA3_SLIDING_WINDOW
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.core.models.test_parity import SEQ_LEN, hf_logits
from tests.core.service.test_core_grpc import error_info

torch = pytest.importorskip("torch")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SYSTEM = "Answer briefly, then stop."
STORY = "Tell me a story about the sea, the mountains and the city at night."


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-gemma3") / "gemma3", "gemma3", seed=0)


@pytest.fixture(scope="module")
def hf_model(gemma3_dir):
    return AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32).eval()


def jax_logits(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """test_parity's forward (two rows of SEQ_LEN random ids, pages in reverse order), jitted:
    a fifth of the eager forward's time."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from core.cache.kv_pool import KVPages
    from core.models.loader import load_model

    model, config = load_model(model_dir)
    ids = np.random.RandomState(0).randint(5, config.vocab_size, size=(2, SEQ_LEN))
    pages_per_row = -(-SEQ_LEN // 16)
    pages = KVPages.create(config, 2 * pages_per_row, 16, jnp.float32)
    page_table = np.arange(2 * pages_per_row).reshape(2, pages_per_row)[:, ::-1]
    positions = np.tile(np.arange(SEQ_LEN), (2, 1))
    graph, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, positions, page_table, pages):
        model = nnx.merge(graph, state)
        return model.logits(model(ids, positions, page_table, pages)[0])

    logits = forward(state, *(jnp.asarray(a, jnp.int32) for a in (ids, positions, page_table)),
                     pages)
    return ids, np.asarray(logits)


def _raw(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


# -- config.json ---------------------------------------------------------------------------------


def test_config_reads_the_gemma3_keys(gemma3_dir):
    raw = _raw(gemma3_dir)
    assert raw["model_type"] == "gemma3_text" and "tie_word_embeddings" not in raw
    config = ModelConfig.from_hf_dir(gemma3_dir)
    gemma = config.gemma
    window = GEMMA3_SLIDING_WINDOW
    assert gemma.layer_windows == (window, window, None, window)  # sliding_window_pattern 3
    assert (config.rope_theta, gemma.local_rope_theta) == (1e6, 1e4)
    assert config.rope_scaling.rope_type == "linear" and config.rope_scaling.factor == 8.0
    assert gemma.query_pre_attn_scalar == 24 != config.head_dim
    assert gemma.gelu_approximate and gemma.final_logit_softcapping is None
    assert config.qk_norm and config.tie_word_embeddings and config.sliding_window is None
    assert config.eos_token_ids == (1, 5) and config.bos_token_id == 2  # <eos>, <end_of_turn>
    # transformers 5's own form of the same config (rope_parameters per layer type,
    # layer_types) reads the same
    saved = AutoConfig.from_pretrained(gemma3_dir).to_dict()
    assert "full_attention" in saved["rope_parameters"] and "rope_local_base_freq" not in saved
    assert ModelConfig.from_hf_dict(saved, {"eos_token_id": [1, 5]}) == config
    # the older default pattern: every sixth layer global
    default = {**raw, "num_hidden_layers": 12}
    del default["sliding_window_pattern"]
    windows = ModelConfig.from_hf_dict(default).gemma.layer_windows
    assert [i for i, w in enumerate(windows) if w is None] == [5, 11]


@pytest.mark.parametrize("change, message", [
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping is not supported"),
    ({"hidden_activation": "relu"}, "hidden_activation 'relu' is not supported"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"layer_types": ["full_attention"]}, "layer_types must list"),
])
def test_what_gemma3_configs_are_refused(gemma3_dir, change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf_dict({**_raw(gemma3_dir), **change})


def test_the_4b_hub_config_reads_with_transformers_defaults():
    """google/gemma-3-4b-it's config.json (Gemma3ForConditionalGeneration): its text_config lists
    only what differs from Gemma3TextConfig's defaults; the vision tower is not read."""
    raw = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
           "eos_token_id": [1, 106], "mm_tokens_per_image": 256, "torch_dtype": "bfloat16",
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                           "model_type": "gemma3_text", "num_hidden_layers": 34,
                           "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                             "model_type": "siglip_vision_model", "num_attention_heads": 16,
                             "num_hidden_layers": 27, "patch_size": 14,
                             "vision_use_head": False}}
    config = ModelConfig.from_hf_dict(raw, {"eos_token_id": [1, 106], "bos_token_id": 2})
    assert (config.vocab_size, config.num_heads, config.num_kv_heads, config.head_dim) == (
        262_208, 8, 4, 256)
    assert config.dtype == "bfloat16" and config.eos_token_ids == (1, 106)
    assert config.tie_word_embeddings and config.gemma.query_pre_attn_scalar == 256
    windows = config.gemma.layer_windows
    assert [i for i, w in enumerate(windows) if w is None] == list(range(5, 34, 6))
    assert set(windows) == {1024, None} and config.rope_scaling.factor == 8.0


# -- the forward and the runner ------------------------------------------------------------------


def test_logits_match_transformers(gemma3_dir, hf_model):
    ids, ours = jax_logits(gemma3_dir)
    with torch.no_grad():
        reference = hf_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(reference).max() > 1.0
    assert np.abs(ours - reference).max() <= 1e-4


def test_a_multimodal_checkpoint_serves_its_language_model(gemma3_dir, hf_model, tmp_path):
    """Gemma3ForConditionalGeneration as transformers 5 saves it (text_config in its v5 form,
    tensors under language_model.model., a SigLIP tower and projector beside them) with the tiny
    Gemma 3's weights: logits within 1e-4 of its text-only forward in transformers. The same
    tensors in 4.52's layout (model.language_model., sharded) load to the same logits."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text_config = {key: value for key, value in _raw(gemma3_dir).items()
                   if key != "architectures"}
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
                  num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    multimodal = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=text_config, vision_config=vision, mm_tokens_per_image=4)).eval()
    text_weights = {"model.language_model." + name[len("model."):]: tensor
                    for name, tensor in hf_model.state_dict().items()
                    if name.startswith("model.")}
    assert not [name for name in multimodal.load_state_dict(text_weights, strict=False)
                .missing_keys if "language_model" in name]
    saved = tmp_path / "multimodal"
    multimodal.save_pretrained(saved)
    assert ModelConfig.from_hf_dir(saved).gemma == ModelConfig.from_hf_dir(gemma3_dir).gemma
    ids, ours = jax_logits(saved)
    with torch.no_grad():
        reference = multimodal(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - reference).max() <= 1e-4
    # transformers 4.52's layout of the same tensors
    older = tmp_path / "older"
    shutil.copytree(saved, older, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = {name.replace("language_model.model.", "model.language_model.")
               .replace("vision_tower.", "model.vision_tower.vision_model."): array
               for name, array in load_file(saved / "model.safetensors").items()}
    write_weights(older, weights, num_shards=2)
    np.testing.assert_array_equal(jax_logits(older)[1], ours)


def test_final_logit_softcapping_matches_transformers(gemma3_dir, tmp_path):
    model_dir = shutil.copytree(gemma3_dir, tmp_path / "capped")
    (model_dir / "config.json").write_text(json.dumps(
        {**_raw(gemma3_dir), "final_logit_softcapping": 1.5}))
    ids, ours = jax_logits(model_dir)
    reference = hf_logits(model_dir, ids)
    assert 1.0 < np.abs(reference).max() < 1.5  # capped (the uncapped logits exceed 2)
    assert np.abs(ours - reference).max() <= 1e-4


# -- a core over gRPC ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def gemma3_core(gemma3_dir):
    from core.service.server import CoreServer

    config = ServerConfig(model_dir=gemma3_dir, model_name="tiny-gemma3", grpc_port=0,
                          # one prefill and one decode shape: few buckets to warm up
                          engine=EngineConfig(max_model_len=96, max_num_seqs=2,
                                              max_num_batched_tokens=32, min_prefill_bucket=32,
                                              dtype="float32"))
    server = CoreServer(config)
    port = await server.start()
    await server.load()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, pb_grpc.InferenceStub(channel)
    await channel.close()
    await server.drain_and_stop()


def _chat(*turns: tuple[str, str]) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(role=role, content=[pb.ContentPart(text=text)])
                                  for role, text in turns])


async def test_the_chat_template_renders_as_transformers_does(gemma3_core, gemma3_dir):
    _, stub = gemma3_core
    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    turns = [("system", SYSTEM), ("user", "hi"), ("assistant", "hello"), ("user", STORY)]
    response = await stub.Tokenize(pb.TokenizeRequest(chat=_chat(*turns)))
    expected = tokenizer.apply_chat_template(
        [{"role": role, "content": text} for role, text in turns], tokenize=True,
        add_generation_prompt=True, return_dict=False)
    assert list(response.token_ids) == list(expected)
    assert tokenizer.decode(response.token_ids) == (
        f"<bos><start_of_turn>user\n{SYSTEM}\n\nhi<end_of_turn>\n"
        f"<start_of_turn>model\nhello<end_of_turn>\n"
        f"<start_of_turn>user\n{STORY}<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # Gemma's template: roles alternate
        await stub.Tokenize(pb.TokenizeRequest(chat=_chat(("user", "hi"), ("user", "again"))))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value) == ("INVALID_PARAMETER", "messages")
    assert "roles must alternate" in refused.value.details()
    # Gemma's template ignores tools: a request that offers some is refused, not silently run
    request = pb.GenerateRequest(chat=_chat(("user", "Weather in Paris?")))
    request.chat.tools.append(pb.Tool(type="function", name="get_weather",
                                      parameters_json='{"type": "object"}'))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Generate(request):
            pass
    assert error_info(refused.value) == ("UNSUPPORTED", "tools")


async def test_chat_greedy_tokens_match_transformers_generate(gemma3_core, hf_model):
    """Two chats at once (chunked prefill of 32 tokens, a decode batch of two) past the
    sliding window: greedy tokens equal HF `generate` on the prompt the core rendered."""
    server, stub = gemma3_core
    chats = [_chat(("system", SYSTEM), ("user", STORY)), _chat(("user", STORY + " Again."))]

    async def generate(chat: pb.ChatInput) -> list[int]:
        request = pb.GenerateRequest(chat=chat, stopping=pb.StoppingCriteria(
            max_tokens=16, ignore_eos=True))
        request.sampling.temperature = 0.0
        return [token for response in [r async for r in stub.Generate(request)]
                for choice in response.choices for token in choice.token_ids]

    outputs = await asyncio.gather(*(generate(chat) for chat in chats))
    assert server.servicer.engine.compilations_after_warmup == 0
    for chat, tokens in zip(chats, outputs, strict=True):
        prompt = list((await stub.Tokenize(pb.TokenizeRequest(chat=chat))).token_ids)
        assert 96 - 16 >= len(prompt) > 32 > GEMMA3_SLIDING_WINDOW
        expected = hf_model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=16, do_sample=False, eos_token_id=None,
            pad_token_id=0)[0, len(prompt):].tolist()
        assert tokens == expected and len(set(tokens)) > 4
