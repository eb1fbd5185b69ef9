"""Run by tests/core/engine/test_tensor_parallel.py in a fresh process with 4 virtual CPU devices:
greedy generation and top logprobs with --tensor-parallel 4 against one device, for each model
directory given (one JSON line each, in order: one process start for them all)."""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path

import jax

from core.config import EngineConfig
from core.engine.loop import create_engine
from core.engine.request import Request, SamplingParams, StoppingParams

# what every run generates (test_tensor_parallel's two-process `tandem core` run too)
ENGINE_LIMITS = {"max_model_len": 64, "max_num_seqs": 2, "max_num_batched_tokens": 32}
PROMPTS = ([0, *range(20, 60)], [0, *range(100, 107)])  # the first spans two chunks
MAX_TOKENS, TOP_LOGPROBS = 12, 5


def generate(model_dir: Path, tensor_parallel: int) -> dict:
    engine = create_engine(model_dir, EngineConfig(**ENGINE_LIMITS,
                                                   tensor_parallel=tensor_parallel))
    split = sum(not leaf.sharding.is_fully_replicated for leaf in engine.runner._param_leaves)
    state = jax.tree_util.tree_unflatten(engine.runner._param_treedef, engine.runner._param_leaves)
    # MoE expert stacks split along their expert axis (expert parallelism): gate/up [d, e, f]
    # on axis 1, down [e, f, d] on axis 0
    experts_split = sum(
        _spec_at(leaf, 0 if "expert_down" in jax.tree_util.keystr(path) else 1) == "tensor"
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if "expert_" in jax.tree_util.keystr(path))
    outputs: queue.Queue = queue.Queue()
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(Request(f"r{index}", list(prompt), SamplingParams(temperature=0.0),
                                   StoppingParams(max_tokens=MAX_TOKENS, ignore_eos=True),
                                   want_logprobs=True, top_logprobs=TOP_LOGPROBS), outputs.put)
    results = {f"r{i}": {"tokens": [], "top": []} for i in range(len(PROMPTS))}
    finished = 0
    while finished < len(PROMPTS):
        output = outputs.get(timeout=120)
        assert output.error is None, output.error
        results[output.request_id]["tokens"] += output.new_token_ids
        results[output.request_id]["top"] += [list(lp.top) for lp in output.logprobs]
        finished += output.finish_reason is not None
    engine.stop()
    return {"split_params": split, "experts_split": experts_split,
            "requests": [results[key] for key in sorted(results)]}


def int8_logits(model_dir: Path) -> dict:
    """`--quantization int8` (the lm_head too) split 4 ways against one device: the int8
    weights and their scales shard along the same output axes (core/engine/sharding.py)."""
    import numpy as np
    from flax import nnx

    from core.engine import sharding
    from core.models.loader import load_model
    from core.models.quantize import next_token_logits

    model, config = load_model(model_dir, "float32", None, "int8", True)
    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh(4)
    sharded = sharding.shard_params(state, mesh, sharding.logical_rules(config, 4))
    scales_split = sum(not leaf.sharding.is_fully_replicated
                       for path, leaf in jax.tree_util.tree_flatten_with_path(sharded)[0]
                       if "_scale" in jax.tree_util.keystr(path))
    prompts = jax.numpy.asarray([[0, *range(20, 40)], [0, *range(100, 120)]])
    forward = jax.jit(lambda params: next_token_logits(nnx.merge(graphdef, params), prompts))
    one, four = np.asarray(forward(state)), np.asarray(forward(sharded))
    return {"scales_split": scales_split, "max_abs_difference": float(np.abs(one - four).max()),
            "argmax_equal": bool((one.argmax(-1) == four.argmax(-1)).all())}


def _spec_at(leaf, axis: int):
    spec = tuple(getattr(leaf.sharding, "spec", ()))
    return spec[axis] if axis < len(spec) else None


if __name__ == "__main__":
    for model_dir in map(Path, sys.argv[1:]):
        print(json.dumps({"model_dir": str(model_dir), "devices": jax.device_count(),
                          "one": generate(model_dir, 1), "four": generate(model_dir, 4)}),
              flush=True)
    print(json.dumps({"int8": int8_logits(Path(sys.argv[1]))}), flush=True)
