"""Where the time of one engine decode step goes: a committed, repeatable profile.

Owns the profile that docs/benchmarks.md quotes. On one checkpoint (the benchmark Llama by
default: `python scripts/make_tiny_model.py /tmp/bench-model --size bench`) it builds the real
`ModelRunner` and times, in one process, medians of --repeats runs after a warm-up call each:

  step         the jitted decode step alone ([rows, 1] tokens, a [rows, pages] page table, its
               arrays built beforehand): forward over the KV pages, lm_head and the sampler
  call         `ModelRunner._call()`: the same plus building the padded host arrays
  execute      `ModelRunner.execute()` of the same step: chunks in, tokens back on the host
  host         execute − step: building the arrays, dispatch, the device→host copy
  page_gather  every layer's `pool[page_table]` for keys and values (the copy decode attention
               makes of each row's pages)
  attention    every layer's decode attention as the step runs it: the CPU kernel
               (core/kernels/, pool kind "cpu-kernel") where it loads, else `_decode_attention`
               (the gather, the per-page dots, the softmax)
  attention_xla  the latter, where the kernel is in use (what it replaced)
  matmuls      every layer's q/k/v/o projections and MLP, plus the lm_head, at [rows, 1]
  sampler      `core.engine.sampling.sample` on [rows, vocab] float32 logits (greedy, and seeded
               temperature/top-p draws)

The parts are timed as separate jitted functions on the same shapes, so they do not add up
exactly to `step` (XLA fuses across them inside the step); the JSON keeps every figure and the
command. Usage:

    python scripts/profile_step.py --model /tmp/bench-model [--rows 32] [--pages 16 64]
        [--repeats 20] [--json docs/bench/profile_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_peers import cpu_record  # noqa: E402  (the CPU model and flags of every figure)

from core.xla_flags import apply_defaults  # noqa: E402  (before JAX starts its backend)

apply_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from core.config import EngineConfig, resolve_model  # noqa: E402
from core.engine import logits_processors as processors  # noqa: E402
from core.engine.request import SamplingParams, SchedulerOutput, SequenceChunk  # noqa: E402
from core.engine.runner import ModelRunner  # noqa: E402
from core.engine.sampling import SamplingArrays, sample  # noqa: E402
from core.kernels import cpu as cpu_kernels  # noqa: E402
from core.models.llama import project  # noqa: E402
from core.models.loader import load_model  # noqa: E402


class Timer:
    """Times callables: medians (what the docs quote) and minima (the least disturbed run, worth
    a look on a shared machine) of --repeats calls, after one untimed call each."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.min_ms: dict[str, float] = {}

    def median_ms(self, name: str, run: Callable[[], object]) -> float:
        jax.block_until_ready(run())
        walls_s = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            jax.block_until_ready(run())
            walls_s.append(time.perf_counter() - started)
        self.min_ms[name] = min(walls_s) * 1000
        return statistics.median(walls_s) * 1000


def decode_chunks(num_rows: int, num_pages: int, page_size: int,
                  sampling: SamplingParams) -> tuple[SequenceChunk, ...]:
    """`num_rows` decodes, each at the last position of its own `num_pages` pages."""
    position = num_pages * page_size - 1
    return tuple(SequenceChunk(f"row-{row}", (7 + row,), position,
                               tuple(range(row * num_pages, (row + 1) * num_pages)), sampling,
                               wants_sample=True)
                 for row in range(num_rows))


def step_timings(runner: ModelRunner, chunks: tuple[SequenceChunk, ...], timer: Timer) -> dict:
    """The whole decode step: on device alone, through `_call`, through `execute`."""
    num_rows, num_pages = len(chunks), len(chunks[0].page_ids)
    token_ids = np.array([[chunk.token_ids[0]] for chunk in chunks], np.int32)
    positions = np.array([[chunk.start_position] for chunk in chunks], np.int32)
    table = np.array([chunk.page_ids for chunk in chunks], np.int32)
    last_index = np.zeros((num_rows,), np.int32)
    sampling = SamplingArrays.from_params([chunk.sampling for chunk in chunks], num_rows)
    prompt_targets = np.zeros((num_rows, 1), np.int32)
    row_inputs = processors.RowInputs.from_chunks(list(chunks), num_rows, runner.num_row_slots,
                                                  runner.config.vocab_size)
    sample_inputs = (sampling, positions[:, 0] + 1, row_inputs)

    def device_step():  # the arrays are ready: only the two jitted calls, forward then sampler
        logits, runner._pages, _ = runner._forward(
            runner.param_leaves, runner._pages, token_ids, positions, table, last_index,
            prompt_targets, np.bool_(False))
        result = runner._call_sample(logits, sample_inputs, False, None)
        return result.token_ids, logits

    shape = (num_rows, 1, num_pages)
    return {
        "step": timer.median_ms("step", device_step),
        "call": timer.median_ms("call", lambda: runner._call(list(chunks), shape, False)),
        "execute": timer.median_ms(
            "execute", lambda: runner.execute(SchedulerOutput(chunks)).token_ids),
    }


def part_timings(runner: ModelRunner, chunks: tuple[SequenceChunk, ...], timer: Timer) -> dict:
    """Each part of the step as its own jitted function on the step's shapes."""
    config, pages = runner.config, runner._pages  # the pool is only read (nothing donated)
    num_rows, leaves = len(chunks), runner.param_leaves

    def merged(param_leaves):  # inside a jit: the weights are arguments, not constants
        return nnx.merge(runner.graphdef, jax.tree.unflatten(runner.param_treedef,
                                                             param_leaves))

    @jax.jit
    def page_gather(pool_keys, pool_values, page_table):
        return [(keys[page_table].astype(jnp.float32), values[page_table].astype(jnp.float32))
                for keys, values in zip(pool_keys, pool_values, strict=True)]

    def attention_of(kind: str):
        @jax.jit
        def attention(param_leaves, pool_keys, pool_values, page_table, query, query_positions):
            layers = merged(param_leaves).layers
            if kind == "cpu-kernel":  # the kernel the step calls (core/kernels/)
                return [cpu_kernels.paged_decode_attention(
                            query[:, 0], keys, values, page_table, query_positions[:, 0],
                            layer.self_attn.sliding_window)
                        for layer, keys, values in zip(layers, pool_keys, pool_values,
                                                       strict=True)]
            return [layer.self_attn._decode_attention(query, query_positions, page_table, keys,
                                                      values)
                    for layer, keys, values in zip(layers, pool_keys, pool_values, strict=True)]
        return attention

    @jax.jit
    def matmuls(param_leaves, hidden):  # q/k/v/o projections, MLP, lm_head
        model, outs = merged(param_leaves), []
        for layer in model.layers:
            attn = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):  # the model's dot form (float or int8)
                outs.append(project(attn, name, hidden))
            outs.append(project(attn, "o_proj", outs[-3], input_axes=2))
            outs.append(layer.mlp(hidden))
        outs.append(model.logits(hidden[:, 0]))
        return outs

    attention, attention_xla = attention_of(pages.kind), attention_of("gather")
    table = jnp.asarray([chunk.page_ids for chunk in chunks], jnp.int32)
    positions = jnp.asarray([[chunk.start_position] for chunk in chunks], jnp.int32)
    k, g, h = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim
    query = jax.random.normal(jax.random.key(0), (num_rows, 1, k, g, h), jnp.float32)
    hidden = jax.random.normal(jax.random.key(1), (num_rows, 1, config.hidden_size),
                               jnp.float32).astype(runner.engine_config.dtype)
    logits = jax.random.normal(jax.random.key(2), (num_rows, config.vocab_size), jnp.float32)
    sampler, next_positions = jax.jit(sample), positions[:, 0] + 1
    greedy = SamplingArrays.from_params([chunks[0].sampling] * num_rows, num_rows)
    drawn = SamplingArrays.from_params(
        [SamplingParams(temperature=0.8, top_p=0.9, seed=3)] * num_rows, num_rows)
    return {
        "page_gather": timer.median_ms(
            "page_gather", lambda: page_gather(pages.keys, pages.values, table)),
        "attention": timer.median_ms("attention", lambda: attention(
            leaves, pages.keys, pages.values, table, query, positions)),
        **({"attention_xla": timer.median_ms("attention_xla", lambda: attention_xla(
            leaves, pages.keys, pages.values, table, query, positions))}
           if pages.kind == "cpu-kernel" else {}),
        "matmuls": timer.median_ms("matmuls", lambda: matmuls(leaves, hidden)),
        "sampler_greedy": timer.median_ms(
            "sampler_greedy", lambda: sampler(logits, greedy, next_positions, False)),
        "sampler_top_p": timer.median_ms(
            "sampler_top_p", lambda: sampler(logits, drawn, next_positions, False)),
    }


def profile_shape(runner: ModelRunner, num_rows: int, num_pages: int, repeats: int) -> dict:
    """Every figure of one decode step at [num_rows, 1] tokens and a num_pages-wide table."""
    chunks = decode_chunks(num_rows, num_pages, runner.page_size,
                           SamplingParams(temperature=0.0, seed=1))
    timer = Timer(repeats)
    medians = step_timings(runner, chunks, timer)
    medians.update(part_timings(runner, chunks, timer))
    medians["host"] = medians["execute"] - medians["step"]
    return {"rows": num_rows, "pages": num_pages, "median_ms": medians, "min_ms": timer.min_ms,
            "fraction_of_step": {name: medians[name] / medians["step"]
                                 for name in ("page_gather", "attention", "matmuls",
                                              "sampler_greedy", "host")}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--rows", type=int, nargs="+", default=[32], help="decode rows")
    parser.add_argument("--pages", type=int, nargs="+", default=[16, 64],
                        help="page-table widths (pages per row)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    max_rows, max_pages = max(args.rows), max(args.pages)
    page_size = EngineConfig().page_size
    model_config, engine_config = resolve_model(args.model, EngineConfig(
        max_model_len=max_pages * page_size, max_num_seqs=max_rows, min_decode_pages=8,
        num_pages=max_rows * max_pages, dtype=args.dtype))
    model, _ = load_model(args.model, engine_config.dtype, model_config)
    runner = ModelRunner(model, model_config, engine_config)
    shapes = [profile_shape(runner, rows, pages, args.repeats)
              for rows in args.rows for pages in args.pages]
    report = {
        "command": "python scripts/profile_step.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**cpu_record(), "jax": jax.__version__,
                    "decode_attention": runner._pages.kind,
                    "cpu_kernel_build": cpu_kernels.decode_attention_kernel(),
                    "devices": [str(device) for device in jax.devices()],
                    "cpu_count": os.cpu_count(),
                    # other processes' load: a shared machine's figures are only as good as it
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "model": {"dir": str(args.model), "layers": model_config.num_layers,
                  "hidden": model_config.hidden_size, "vocab": model_config.vocab_size,
                  "dtype": args.dtype or model_config.dtype},
        "repeats": args.repeats,
        "shapes": shapes,
    }
    for shape in shapes:
        parts = ", ".join(f"{name} {value:.2f}" for name, value in shape["median_ms"].items())
        print(f"{shape['rows']} rows × {shape['pages']} pages (ms, medians of {args.repeats}): "
              f"{parts}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
