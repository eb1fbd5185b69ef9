"""Int8 weight-only quantization (`--quantization int8`) against the float model it came from.

The error bound is not a constant picked to pass: it is what the same model does when each
weight is moved by independent uniform noise within its own rounding interval (±scale/2 of its
output channel), the error that rounding to int8 is (a wrong scale axis, a lost scale or a
transposed weight makes an error orders of magnitude beyond it)."""

from __future__ import annotations

import queue

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.cache.kv_pool import KVPages
from core.config import EngineConfig
from core.engine.request import Request, SamplingParams, StoppingParams
from core.model_config import ConfigError
from core.models.llama import PADDING_POSITION
from core.models.loader import load_model
from core.models.quantize import ATTENTION_WEIGHTS, MLP_WEIGHTS, next_token_logits, quantize_int8

PROMPTS = np.random.default_rng(0).integers(5, 500, (16, 24), dtype=np.int32)
NOISE_FACTOR = 2.0  # int8's error may be this much larger than the rounding-sized noise's


def test_quantize_int8_is_symmetric_per_output_channel():
    weight = np.random.default_rng(1).normal(size=(64, 4, 8)).astype(np.float32)
    weight[:, 0, 0] = 0.0  # an all-zero channel
    quantized, scale = quantize_int8(weight, input_axes=1)
    assert quantized.dtype == np.int8 and scale.shape == (4, 8) and scale[0, 0] == 1.0
    assert np.abs(quantized).max() == 127 and quantized.min() >= -127
    np.testing.assert_allclose(np.abs(weight).max(axis=0)[1:], 127 * scale[1:], rtol=1e-6)
    error = np.abs(quantized * scale - weight)
    assert np.all(error <= scale / 2 + 1e-7)  # rounding: half a step at most


def _kl(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    log_p = reference - np.logaddexp.reduce(reference, axis=-1, keepdims=True)
    log_q = other - np.logaddexp.reduce(other, axis=-1, keepdims=True)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def _with_rounding_noise(model, quantized) -> None:
    """Move every quantized weight of the float `model` by uniform noise of ±scale/2 (the
    scales `quantized` computed), in place."""
    rng = np.random.default_rng(2)
    targets = [(model.lm_head, quantized.lm_head_scale)]
    for layer, qlayer in zip(model.layers, quantized.layers, strict=True):
        for module, qmodule, names in ((layer.self_attn, qlayer.self_attn, ATTENTION_WEIGHTS),
                                       (layer.mlp, qlayer.mlp, MLP_WEIGHTS)):
            targets += [(getattr(module, name), getattr(qmodule, f"{name}_scale"))
                        for name, _ in names]
    for param, scale in targets:
        weight = np.asarray(param.get_value())
        half_step = np.asarray(scale.get_value()) / 2
        noise = rng.uniform(-1, 1, weight.shape).astype(np.float32) * half_step
        param.set_value(jnp.asarray(weight + noise))


@pytest.fixture(scope="module")
def logits(tiny_models) -> dict[str, np.ndarray]:
    """Next-token logits of PROMPTS: float32, int8 (the lm_head too) and rounding-sized noise."""
    float_model, _ = load_model(tiny_models["llama"], "float32")
    int8_model, _ = load_model(tiny_models["llama"], "float32", None, "int8", True)
    assert int8_model.layers[0].mlp.up_proj.get_value().dtype == jnp.int8
    assert int8_model.lm_head.get_value().dtype == jnp.int8
    result = {"float": next_token_logits(float_model, jnp.asarray(PROMPTS)),
              "int8": next_token_logits(int8_model, jnp.asarray(PROMPTS))}
    _with_rounding_noise(float_model, int8_model)
    result["noise"] = next_token_logits(float_model, jnp.asarray(PROMPTS))
    return {name: np.asarray(value, np.float32) for name, value in result.items()}


def error_bound(logits: dict[str, np.ndarray]) -> float:
    """The logit error int8 may make: NOISE_FACTOR × the rounding-sized noise's largest."""
    return NOISE_FACTOR * float(np.abs(logits["noise"] - logits["float"]).max())


def test_int8_logit_error_and_kl_stay_within_rounding_noise(logits):
    error = np.abs(logits["int8"] - logits["float"]).max()
    kl_int8, kl_noise = _kl(logits["float"], logits["int8"]), _kl(logits["float"], logits["noise"])
    print(f"int8: max logit error {error:.4f} (bound {error_bound(logits):.4f}), mean KL "
          f"{kl_int8.mean():.2e} (rounding-sized noise: {kl_noise.mean():.2e})")
    assert 0 < error <= error_bound(logits)
    assert kl_int8.mean() <= NOISE_FACTOR ** 2 * kl_noise.mean()  # KL grows as error²
    # the noise is not negligible either: the bound is a real one
    assert np.abs(logits["noise"] - logits["float"]).max() > 1e-4


def test_int8_engine_greedy_tokens_agree_where_the_margin_exceeds_the_bound(tiny_models,
                                                                           logits):
    """Greedy decoding through the int8 engine (the KV cache carries the error forward) gives
    the float model's tokens at every step whose float top-1 margin exceeds twice the bound;
    the engine compiles nothing after warm-up."""
    from core.engine.loop import create_engine

    bound, new_tokens = error_bound(logits), 6
    float_model, _ = load_model(tiny_models["llama"], "float32")
    width = PROMPTS.shape[1] + new_tokens

    @jax.jit  # one shape for every prefix: right-padded to `width`, read at its last token
    def forward(tokens, length):
        positions = jnp.where(jnp.arange(width) < length, jnp.arange(width), PADDING_POSITION)
        pages = KVPages.create(float_model.config, 3, 16, jnp.float32)
        hidden, _ = float_model(tokens[None], positions[None], jnp.arange(2)[None], pages)
        return float_model.logits(hidden[0, length - 1])

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=32, max_num_seqs=2, max_num_batched_tokens=32, dtype="float32",
        quantization="int8", quantize_lm_head=True))
    try:
        outputs: queue.Queue = queue.Queue()
        prompts = [list(map(int, prompt)) for prompt in PROMPTS[:4]]
        for index, prompt in enumerate(prompts):
            engine.add_request(Request(f"r{index}", prompt, SamplingParams(temperature=0.0),
                                       StoppingParams(max_tokens=new_tokens, ignore_eos=True)),
                               outputs.put)
        tokens = {f"r{index}": [] for index in range(len(prompts))}
        while sum(len(ids) for ids in tokens.values()) < new_tokens * len(prompts):
            output = outputs.get(timeout=120)
            assert output.error is None, output.error
            tokens[output.request_id] += output.new_token_ids
        assert engine.compilations_after_warmup == 0
    finally:
        engine.stop()
    compared = 0
    for index, prompt in enumerate(prompts):
        sequence = list(prompt)
        for token in tokens[f"r{index}"]:  # the float model's choice after the same prefix
            padded = np.zeros(width, np.int32)
            padded[:len(sequence)] = sequence
            reference = np.asarray(forward(padded, len(sequence)))
            top_two = np.sort(reference)[-2:]
            if top_two[1] - top_two[0] <= 2 * bound:
                break  # a near tie: int8 may pick either; later steps see another prefix
            assert token == int(reference.argmax())
            compared += 1
            sequence.append(token)
    assert compared >= len(prompts)  # the check compared tokens, not only near ties


def test_int8_refuses_mixture_of_experts(tiny_models):
    with pytest.raises(ConfigError, match="--quantization int8: mixture-of-experts"):
        load_model(tiny_models["qwen3_moe"], "float32", None, "int8")
