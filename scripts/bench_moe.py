"""MoE decode benchmark: the Tandem engine against Hugging Face transformers `generate` on the
same tiny mixture-of-experts checkpoint, at 1 and 32 streams, beside the roofline of the active
parameters, and the two expert dispatches of core/models/moe.py on the model's own shapes.

Owns the MoE measurement (not a test):

  decode tok/s, Tandem: the engine in this process (float32, greedy, EOS ignored), N streams of
    --prompt-len random tokens added together; the tokens emitted while every stream is
    decoding (from the last stream's first token to the last token) over that window.
  decode tok/s, HF: a static batch of the same N prompts, torch float32 on every core:
    N·(O − 1) / (median wall of generate(O new tokens) − median wall of generate(1)), so the
    prefill and first token cancel out (as scripts/bench_baseline.py measures it).
  roofline: the active parameters of one token (attention, routers, the top-k experts of each
    sparse layer, dense MLPs, the output projection; not the input embedding table) against
    this machine's float32 matmul FLOP/s (2 FLOP per active parameter per token) and its
    streaming-read bandwidth (4 bytes per active parameter per step, shared by the N streams:
    the bound of a batch whose tokens all pick the same experts); the roofline is the lower.
  dispatch: one MoE layer jitted, "dense" (every expert on every token) against "sorted"
    (grouped `ragged_dot`), median ms per call at 1 and N tokens.

Tandem runs first, then HF, then the rooflines, so they never compete for the CPU. The CPU model
and the flags that matter to XLA:CPU and oneDNN are printed and kept in the JSON.

Usage:
    python scripts/bench_moe.py [--model DIR | --variant qwen3_moe|mixtral] [--streams 1,32]
        [--prompt-len 32] [--output-len 64] [--repeats 3] [--json OUT.json]
    python scripts/bench_moe.py --dispatch-only --dispatch-shape 512,704,8,2 \
        --dispatch-shape 512,256,64,8          # the dispatches alone, at wider shapes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts

from core.xla_flags import apply_defaults  # noqa: E402

apply_defaults()
from bench_prompts import make_prompts  # noqa: E402

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_info() -> dict:
    """The CPU model and the vector flags XLA:CPU and oneDNN pick kernels by."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(),
            "flags": [flag for flag in CPU_FLAGS if flag in flags],
            "load_average": os.getloadavg(), "platform": platform.platform()}


def active_params(config) -> dict:
    """Parameters one token reads (active) and all the model has, without the input table."""
    d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    attention = d * h * (2 * n + 2 * k)
    moe = config.moe
    active = total = config.num_layers * attention + d * config.vocab_size  # + output projection
    for layer in range(config.num_layers):
        if moe is not None and moe.is_sparse(layer):
            expert = 3 * d * moe.expert_intermediate_size
            active += d * moe.num_experts + moe.num_experts_per_tok * expert
            total += d * moe.num_experts + moe.num_experts * expert
        else:
            active += 3 * d * config.intermediate_size
            total += 3 * d * config.intermediate_size
    return {"active": active, "total": total}


def tandem_decode(model_dir: Path, prompts: list[list[int]], output_len: int) -> float:
    """Decode tok/s of the engine while all of `prompts` decode together."""
    from core.config import EngineConfig
    from core.engine.request import Request, SamplingParams, StoppingParams
    from core.engine.startup import create_engine

    max_len = len(prompts[0]) + output_len
    engine = create_engine(model_dir, EngineConfig(
        max_model_len=-(-max_len // 16) * 16, max_num_seqs=max(len(prompts), 2),
        max_num_batched_tokens=max(len(prompts), 64), enable_prefix_cache=False))
    try:
        outputs: queue.Queue = queue.Queue()
        for index, prompt in enumerate(prompts):
            engine.add_request(Request(f"s{index}", prompt, SamplingParams(temperature=0.0),
                                       StoppingParams(max_tokens=output_len, ignore_eos=True)),
                               lambda output: outputs.put((time.perf_counter(), output)))
        events, finished = [], 0  # (time, tokens, first of its stream)
        first: set[str] = set()
        while finished < len(prompts):
            at_s, output = outputs.get(timeout=600)
            assert output.error is None, output.error
            if output.new_token_ids:
                events.append((at_s, len(output.new_token_ids), output.request_id not in first))
                first.add(output.request_id)
            finished += output.finish_reason is not None
        assert engine.runner.compilations_after_warmup == 0
    finally:
        engine.stop()
    start_s = max(at_s for at_s, _, is_first in events if is_first)
    end_s = max(at_s for at_s, _, _ in events)
    tokens = sum(count for at_s, count, _ in events if start_s < at_s <= end_s)
    return tokens / (end_s - start_s)


def hf_decode(model_dir: Path, prompts: list[list[int]], output_len: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)

    def wall_s(new_tokens: int) -> float:
        walls = []
        for _ in range(repeats + 1):  # the first is warm-up
            start_s = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               eos_token_id=None, pad_token_id=0)
            walls.append(time.perf_counter() - start_s)
        return statistics.median(walls[1:])

    decode_s = wall_s(output_len) - wall_s(1)
    # a busy machine can make the difference meaningless: no figure then, rather than a false one
    return len(prompts) * (output_len - 1) / decode_s if decode_s > 0 else float("nan")


def dispatch_ms(d: int, f: int, e: int, top_k: int, streams: list[int],
                repeats: int = 21) -> dict:
    """Median ms of one MoE layer (width d, e experts f wide, top-k renormalized), "dense"
    against "sorted", at each token count."""
    import jax
    import numpy as np

    from core.models.moe import dense_experts, route, sorted_experts

    rng = np.random.default_rng(0)
    router = rng.standard_normal((d, e), np.float32)
    stacks = [0.05 * rng.standard_normal(shape, np.float32) for shape in
              ((d, e, f), (d, e, f), (e, f, d))]
    results = {}
    for tokens in streams:
        x = rng.standard_normal((tokens, d), np.float32)
        for name, experts_fn in (("dense", dense_experts), ("sorted", sorted_experts)):
            @jax.jit
            def layer(x, router, gate, up, down, experts_fn=experts_fn):
                weights, experts = route(x, router, top_k, True)
                return experts_fn(x, weights, experts, gate, up, down)

            layer(x, router, *stacks).block_until_ready()
            walls = []
            for _ in range(repeats):
                start_s = time.perf_counter()
                layer(x, router, *stacks).block_until_ready()
                walls.append(time.perf_counter() - start_s)
            results[f"{name}_{tokens}_ms"] = 1e3 * statistics.median(walls)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a MoE checkpoint (default: a tiny one)")
    parser.add_argument("--variant", default="qwen3_moe", choices=("qwen3_moe", "mixtral"))
    parser.add_argument("--streams", default="1,32")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dispatch-shape", action="append", default=[], metavar="D,F,E,K",
                        help="also time one layer of this shape (width, expert width, experts, "
                             "top-k); repeatable")
    parser.add_argument("--dispatch-only", action="store_true",
                        help="only the dispatch timings (no engine, HF or roofline)")
    args = parser.parse_args()
    streams = [int(count) for count in args.streams.split(",")]
    shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.dispatch_shape]
    if args.dispatch_only:
        for d, f, e, k in shapes:
            print(f"d={d} f={f} experts={e} top-k={k}:",
                  {key: round(value, 3) for key, value in dispatch_ms(
                      d, f, e, k, [*streams, 256]).items()}, flush=True)
        return 0
    from core.model_config import ModelConfig

    model_dir = args.model
    if model_dir is None:
        from core.models.tiny import write_tiny_model

        model_dir = write_tiny_model(Path(tempfile.mkdtemp()) / args.variant, args.variant)
    config = ModelConfig.from_hf_dir(model_dir)
    if config.moe is None:
        parser.error(f"{model_dir} is not a mixture-of-experts checkpoint")
    vocab_limit = min(config.vocab_size, 2000)
    results: dict = {"model_dir": str(model_dir), "architecture": config.architecture,
                     "machine": cpu_info(), "params": active_params(config),
                     "prompt_len": args.prompt_len, "output_len": args.output_len, "runs": {}}
    for count in streams:
        prompts = make_prompts(count, args.prompt_len, seed=count, vocab_limit=vocab_limit)
        tandem = statistics.median(tandem_decode(model_dir, prompts, args.output_len)
                                   for _ in range(args.repeats))
        results["runs"][count] = {"tandem_tok_s": tandem}
    for count in streams:
        prompts = make_prompts(count, args.prompt_len, seed=count, vocab_limit=vocab_limit)
        results["runs"][count]["hf_tok_s"] = hf_decode(model_dir, prompts, args.output_len,
                                                       args.repeats)
    from bench_baseline import matmul_roofline

    roofline = matmul_roofline()
    active = results["params"]["active"]
    results["roofline"] = {"flop_s": roofline["flop_s"],
                           "read_bandwidth_bytes_s": roofline["read_bandwidth_bytes_s"]}
    moe = config.moe
    results["dispatch"] = dispatch_ms(config.hidden_size, moe.expert_intermediate_size,
                                      moe.num_experts, moe.num_experts_per_tok, streams)
    print(json.dumps(results["machine"]))
    print(f"{config.architecture}: {active:,} active of {results['params']['total']:,} "
          f"parameters per token (without the input embedding table)")
    print(f"{'streams':>7} {'Tandem tok/s':>13} {'HF tok/s':>10} {'ratio':>6} "
          f"{'FLOP roofline':>14} {'bandwidth roofline':>19} {'roofline':>9}")
    for count in streams:
        run = results["runs"][count]
        run["flop_roofline_tok_s"] = roofline["flop_s"] / (2 * active)
        run["bandwidth_roofline_tok_s"] = count * roofline["read_bandwidth_bytes_s"] / (4 * active)
        run["roofline_tok_s"] = min(run["flop_roofline_tok_s"], run["bandwidth_roofline_tok_s"])
        run["ratio_vs_hf"] = run["tandem_tok_s"] / run["hf_tok_s"]
        print(f"{count:>7} {run['tandem_tok_s']:>13.1f} {run['hf_tok_s']:>10.1f} "
              f"{run['ratio_vs_hf']:>6.2f} {run['flop_roofline_tok_s']:>14.0f} "
              f"{run['bandwidth_roofline_tok_s']:>19.0f} {run['roofline_tok_s']:>9.0f}")
    print("one MoE layer, median ms:", {key: round(value, 3)
                                        for key, value in results["dispatch"].items()})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
