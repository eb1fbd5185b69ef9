"""Engine benchmark: Tandem and its baselines in one run, on one machine, one checkpoint and the
same prompts, printed as ratios against the engine targets.

Owns the baseline run: starting (or attaching to) a Tandem core, the three serving scenarios
over gRPC (via bench_serving.run_benchmark), the Hugging Face transformers baseline (torch CPU
float32), the machine's float32 matmul roofline, the comparison table, the JSON and the plot.

  a. 32 concurrent streams, 128-token prompts, 128 output tokens → output tok/s.
     Baselines: HF static batch of the same 32 prompts (32·128 / wall of one generate);
     the roofline tok/s = matmul FLOP/s ÷ (2 · params without the input embedding table).
  b. 1 stream, 128-token prompt, 128 output tokens → decode tok/s = 1 / median TPOT.
     Baseline: HF batch 1, decode-only: (128 − 1) / (median wall of generate(128 new tokens)
     − median wall of generate(1 new token)); the prefill and the first token cancel out.
  c. 1,024-token shared prefix: TTFT of prefix + suffix A (cold: a fresh random prefix each
     repeat) then prefix + suffix B (the prefix is cached); medians over --repeats.
Scenario a runs --repeats times on both sides (Tandem with fresh prompts each repeat, so the
prefix cache never helps), and the medians are compared.
Order: Tandem first (the core is stopped before the baselines run), then HF, then matmul, so
the measurements never compete for the CPU (except with --target, a core this script did not
start). Build the checkpoint with `python scripts/make_tiny_model.py /tmp/bench-model --size bench`.

Usage:
    python scripts/bench_baseline.py --model /tmp/bench-model [--max-model-len 2048]
        [--core-arg=--some-core-flag=V ...] [--target HOST:PORT] [--scenarios a,b,c]
        [--skip-hf] [--skip-tandem] [--skip-roofline] [--repeats 3] [--seed 0]
        [--json docs/bench/engine.json] [--plot docs/bench/engine.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, run from anywhere

from bench_prompts import DEFAULT_VOCAB_LIMIT, make_prompts  # noqa: E402
from bench_serving import run_benchmark  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_SERVICE = "tandem.v1.Inference"
# (what, comparison, threshold): the engine targets the ratios are judged against.
TARGETS = {"best_vs_hf_float32": (">=", 2.0), "best_vs_hf_best": (">=", 1.0),
           "decode_vs_hf": (">=", 1.2), "ttft_hit_over_miss": ("<=", 0.10),
           "throughput_vs_hf": (None, None), "decode_vs_bandwidth_roofline": (None, None),
           "throughput_vs_bf16_roofline": (None, None)}


# ---------------------------------------------------------------------------------------------
# The Tandem core


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_ready(target: str, process: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll grpc.health.v1 until the Inference service is SERVING (warm-up compiles included)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline_s = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the core exited with status {process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=READY_SERVICE),
                                         timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"the core at {target} was not ready after {timeout_s:.0f} s")
            await asyncio.sleep(1.0)


@contextlib.contextmanager
def tandem_core(args: argparse.Namespace, dtype: str | None = None) -> Iterator[str]:
    """Yield the address of a ready core: --target as is, or a `tandem core` child that is
    stopped (SIGTERM, then SIGKILL) on the way out, errors included."""
    if args.target:
        asyncio.run(_wait_ready(args.target, None, args.startup_timeout_s))
        yield args.target
        return
    target = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "core.cli", "core", "--model", str(args.model),
               "--grpc-port", target.rsplit(":", 1)[1], "--max-model-len",
               str(args.max_model_len), *args.extra_core_args, *args.core_arg]
    # --- issue 14: Tandem at its defaults (sized from memory) unless told; one dtype per core
    if args.max_num_seqs is not None:
        command += ["--max-num-seqs", str(args.max_num_seqs)]
    if dtype is not None:
        command += ["--dtype", dtype]
    # --- end issue 14
    print(f"starting core: {' '.join(command)}  (log: {args.core_log})", flush=True)
    with open(args.core_log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT)
        try:
            start_s = time.monotonic()
            asyncio.run(_wait_ready(target, process, args.startup_timeout_s))
            print(f"core ready in {time.monotonic() - start_s:.0f} s", flush=True)
            yield target
        except BaseException:
            lines = Path(args.core_log).read_text(errors="replace").splitlines()
            print("core log tail:\n" + "\n".join(lines[-20:]), file=sys.stderr)
            raise
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def tandem_scenarios(target: str, args: argparse.Namespace, prompts: dict) -> dict:
    """Scenarios a, b and c over gRPC; each result keeps the full bench_serving metrics."""
    results: dict = {}
    if "a" in args.scenarios:  # --repeats runs, as HF's batch 32: the median run counts
        # each repeat has its own random prompts of the same lengths: no prefix-cache hits
        runs = [await run_benchmark("grpc", target, batch, args.output_len, len(batch),
                                    warmup_prompts=prompts["warmup"] if repeat == 0 else None)
                for repeat, batch in enumerate(prompts["a_repeats"])]
        each = [run["output_throughput_tok_s"] for run in runs]
        median_run = sorted(runs, key=lambda run: run["output_throughput_tok_s"])[len(runs) // 2]
        results["a"] = {"output_throughput_tok_s": statistics.median(each),
                        "output_throughput_each_tok_s": each, "metrics": median_run}
    if "b" in args.scenarios:
        metrics = await run_benchmark("grpc", target, prompts["b"], args.output_len, 1,
                                      warmup_prompts=prompts["warmup"])
        results["b"] = {"decode_tok_s": 1000.0 / metrics["median_tpot_ms"], "metrics": metrics}
    if "c" in args.scenarios:
        miss_ms, hit_ms, hit_cached_tokens = [], [], []
        for repeat, (miss, hit) in enumerate(prompts["c"]):
            warmup = prompts["c_warmup"] if repeat == 0 else None  # same length, unrelated
            cold = await run_benchmark("grpc", target, [miss], args.prefix_output_len, 1,
                                       warmup_prompts=warmup)
            warm = await run_benchmark("grpc", target, [hit], args.prefix_output_len, 1)
            if cold["failed"] or warm["failed"]:
                raise RuntimeError(f"prefix scenario failed: {cold['errors'] + warm['errors']}")
            miss_ms.append(cold["mean_ttft_ms"])
            hit_ms.append(warm["mean_ttft_ms"])
            hit_cached_tokens.append(warm["total_cached_tokens"])
        results["c"] = {"ttft_miss_ms": statistics.median(miss_ms),
                        "ttft_hit_ms": statistics.median(hit_ms),
                        "ttft_miss_each_ms": miss_ms, "ttft_hit_each_ms": hit_ms,
                        "hit_cached_tokens_each": hit_cached_tokens}
    for name in ("a", "b"):
        if name in results and results[name]["metrics"]["failed"]:
            raise RuntimeError(f"scenario {name} failed: {results[name]['metrics']['errors']}")
    results["compilations_after_warmup"] = await _compilations_after_warmup(target)
    return results


async def _compilations_after_warmup(target: str) -> int:
    """The core's XLA compilations since warm-up (GetModelInfo): a slow scenario with a
    non-zero count was compiling, not serving."""
    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        info = await pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(),
                                                                 timeout=30)
    return int(info.compilations_after_warmup)


# ---------------------------------------------------------------------------------------------
# Baselines: Hugging Face transformers, matmul roofline


def hf_baseline(args: argparse.Namespace, prompts: dict, dtype: str = "float32") -> dict:
    """Static-batch and batch-1 greedy generate with torch on the CPU, in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, dtype)).eval()
    pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def generate_s(batch: list[list[int]], new_tokens: int) -> float:
        input_ids = torch.tensor(batch, dtype=torch.long)
        start_s = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, pad_token_id=pad_token_id)
        elapsed_s = time.perf_counter() - start_s
        assert output.shape == (len(batch), input_ids.shape[1] + new_tokens), output.shape
        return elapsed_s

    generate_s(prompts["warmup"], 4)  # warm-up: thread pools, allocator, lazy inits
    results: dict = {"torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}
    if "a" in args.scenarios:
        generate_s(prompts["a"], 2)
        walls_s = [generate_s(prompts["a"], args.output_len) for _ in range(args.repeats)]
        results["a"] = {"batch_size": len(prompts["a"]), "wall_each_s": walls_s,
                        "output_throughput_tok_s":
                            len(prompts["a"]) * args.output_len / statistics.median(walls_s)}
    if "b" in args.scenarios:
        generate_s(prompts["b"][:1], 2)
        full_s = [generate_s([prompt], args.output_len) for prompt in prompts["b"]]
        first_s = [generate_s([prompt], 1) for prompt in prompts["b"]]
        decode_s = statistics.median(full_s) - statistics.median(first_s)
        results["b"] = {"generate_full_each_s": full_s, "generate_one_token_each_s": first_s,
                        "decode_tok_s": (args.output_len - 1) / decode_s,
                        "method": f"({args.output_len} - 1) / (median wall of generate("
                                  f"{args.output_len} new tokens) - median wall of generate(1))"}
    return results


def matmul_roofline(size: int = 2048, repeats: int = 7) -> dict:
    """float32 matmul FLOP/s of this machine, with JAX (jitted, highest precision) and torch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    flop = 2.0 * size**3
    rng = np.random.default_rng(0)
    left = rng.standard_normal((size, size), dtype=np.float32)
    right = rng.standard_normal((size, size), dtype=np.float32)

    def median_s(run) -> float:
        run()
        walls_s = []
        for _ in range(repeats):
            start_s = time.perf_counter()
            run()
            walls_s.append(time.perf_counter() - start_s)
        return statistics.median(walls_s)

    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    jax_left, jax_right = jnp.asarray(left), jnp.asarray(right)
    jax_s = median_s(lambda: matmul(jax_left, jax_right).block_until_ready())
    torch.set_num_threads(os.cpu_count() or 1)
    torch_left, torch_right = torch.from_numpy(left), torch.from_numpy(right)
    torch_s = median_s(lambda: torch.matmul(torch_left, torch_right))
    # --- issue 14: the bf16 compute roofline (torch/oneDNN; XLA's f32-result bf16 dot) and
    # the streaming-read bandwidth (a 512 MiB float32 sum, numpy) for the 1-stream roofline
    bf16_matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    jax_bf16_left, jax_bf16_right = jax_left.astype(jnp.bfloat16), jax_right.astype(jnp.bfloat16)
    jax_bf16_s = median_s(lambda: bf16_matmul(jax_bf16_left, jax_bf16_right).block_until_ready())
    torch_bf16_left, torch_bf16_right = torch_left.bfloat16(), torch_right.bfloat16()
    torch_bf16_s = median_s(lambda: torch.matmul(torch_bf16_left, torch_bf16_right))
    stream = np.ones(2**27, dtype=np.float32)
    stream_s = median_s(stream.sum)
    return {"matrix_size": size, "jax_backend": jax.default_backend(),
            "jax_gflop_s": flop / jax_s / 1e9, "torch_gflop_s": flop / torch_s / 1e9,
            "flop_s": max(flop / jax_s, flop / torch_s),
            "jax_bf16_gflop_s": flop / jax_bf16_s / 1e9,
            "torch_bf16_gflop_s": flop / torch_bf16_s / 1e9,
            "bf16_flop_s": max(flop / jax_bf16_s, flop / torch_bf16_s),
            "read_bandwidth_bytes_s": stream.nbytes / stream_s}
    # --- end issue 14


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as file:
        return json.loads(file.read(int.from_bytes(file.read(8), "little")))


def count_params(model_dir: Path) -> dict:
    """Parameters a decode step multiplies by: the layers, the final norm and the lm_head (the
    input embedding table is only gathered from). From config.json, checked against the
    safetensors headers when they are readable."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or \
        config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    if config.get("model_type") == "qwen2":
        attention += heads * head_dim + 2 * kv_heads * head_dim  # q/k/v biases
    elif config.get("attention_bias"):
        attention += heads * head_dim + 2 * kv_heads * head_dim + hidden
    mlp = 3 * hidden * inter + (2 * inter + hidden if config.get("mlp_bias") else 0)
    layer = attention + mlp + 2 * hidden  # + the two RMSNorm weights
    lm_head = config["vocab_size"] * hidden
    params = config["num_hidden_layers"] * layer + hidden + lm_head
    result = {"params_without_input_embedding": params, "lm_head_params": lm_head,
              "tied_embeddings": bool(config.get("tie_word_embeddings"))}
    stored = sum(math.prod(entry["shape"]) for path in model_dir.glob("*.safetensors")
                 for name, entry in _safetensors_header(path).items()
                 if name != "__metadata__" and not name.endswith("embed_tokens.weight"))
    if stored:
        result["params_from_safetensors"] = stored + (lm_head if result["tied_embeddings"] else 0)
        if result["params_from_safetensors"] != params:
            print(f"warning: config.json gives {params:,} parameters, the safetensors files "
                  f"{result['params_from_safetensors']:,}", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------
# Report


def _get(report: dict, *keys: str) -> float | None:
    for key in keys:
        report = report.get(key) if isinstance(report, dict) else None
    return report


# --- issue 14: every ratio, per dtype and best against best
def comparisons(report: dict, args: argparse.Namespace) -> list[dict]:
    """One row per ratio: (Tandem, baseline, ratio, target, passed); None where skipped.
    Tandem runs at its defaults in each dtype; the 32-stream targets compare Tandem's best
    dtype with HF float32 and with HF's best dtype; 1 stream compares the same dtype."""
    streams, dtypes = args.num_streams, args.dtypes
    tandem, hf, roofline = (report.get(key) or {} for key in ("tandem", "hf", "roofline"))

    def at(tree: dict, dtype: str, *keys: str) -> float | None:
        return _get(tree, dtype, *keys)

    def best(tree: dict) -> tuple[str | None, float | None]:
        found = [(at(tree, d, "a", "output_throughput_tok_s"), d) for d in dtypes]
        found = [(value, d) for value, d in found if value is not None]
        return (max(found)[1], max(found)[0]) if found else (None, None)

    (ours_dtype, ours_best), (hf_dtype, hf_best) = best(tandem), best(hf)
    rows = [("best_vs_hf_float32", f"{streams} streams tok/s: Tandem best ({ours_dtype}) vs HF "
             f"float32 batch {streams}", ours_best, at(hf, "float32", "a", "output_throughput_tok_s")),
            ("best_vs_hf_best", f"{streams} streams tok/s: Tandem best ({ours_dtype}) vs HF best "
             f"({hf_dtype})", ours_best, hf_best)]
    weights = report["model"]["params_without_input_embedding"]
    for dtype in dtypes:
        dtype_bytes = 2 if dtype == "bfloat16" else 4
        rows += [
            ("throughput_vs_hf", f"{streams} streams tok/s, {dtype}: Tandem vs HF batch {streams}",
             at(tandem, dtype, "a", "output_throughput_tok_s"),
             at(hf, dtype, "a", "output_throughput_tok_s")),
            ("decode_vs_hf", f"1-stream decode tok/s, {dtype}: Tandem vs HF batch 1",
             at(tandem, dtype, "b", "decode_tok_s"), at(hf, dtype, "b", "decode_tok_s")),
            ("decode_vs_bandwidth_roofline", f"1-stream decode tok/s, {dtype}: Tandem vs "
             "bandwidth roofline", at(tandem, dtype, "b", "decode_tok_s"),
             roofline.get("read_bandwidth_bytes_s", 0) / (weights * dtype_bytes) or None),
            ("throughput_vs_bf16_roofline", f"{streams} streams tok/s, {dtype}: Tandem vs bf16 "
             "compute roofline", at(tandem, dtype, "a", "output_throughput_tok_s"),
             roofline.get("bf16_flop_s", 0) / (2 * weights) or None),
            ("ttft_hit_over_miss", f"TTFT ms, {args.prefix_len}-token prefix, {dtype}: hit vs "
             "miss", at(tandem, dtype, "c", "ttft_hit_ms"), at(tandem, dtype, "c", "ttft_miss_ms"))]
    result = []
    for key, label, ours, baseline in rows:
        op, threshold = TARGETS[key]
        ratio = ours / baseline if ours is not None and baseline else None
        passed = None if ratio is None or op is None else (
            ratio >= threshold if op == ">=" else ratio <= threshold)
        result.append({"key": key, "metric": label, "tandem": ours, "baseline": baseline,
                       "ratio": ratio, "target": f"{op} {threshold}" if op else "",
                       "passed": passed})
    return result
# --- end issue 14


def format_table(rows: list[dict]) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"

    lines = [f"{'metric':<72}{'Tandem':>10}{'baseline':>10}{'ratio':>8}{'target':>9}  result"]
    for row in rows:
        verdict = {None: "n/a", True: "PASS", False: "FAIL"}[row["passed"]]
        lines.append(f"{row['metric']:<72}{cell(row['tandem']):>10}{cell(row['baseline']):>10}"
                     f"{cell(row['ratio']):>8}{row['target']:>9}  {verdict}")
    return "\n".join(lines)


def write_plot(report: dict, args: argparse.Namespace, path: Path) -> None:
    """One bar subplot per scenario: Tandem against its baselines (log scale when they differ
    by more than 20×, as the roofline usually does)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {row["metric"]: row for row in report["comparisons"]}  # issue 14: by label
    panels = [(label.split(":")[0], label, {"Tandem": row["tandem"], "baseline": row["baseline"]})
              for label, row in rows.items() if row["key"] != "decode_vs_bandwidth_roofline"]
    columns = 4
    figure, axes = plt.subplots(-(-len(panels) // columns), columns,
                                figsize=(18, 4 * -(-len(panels) // columns)), squeeze=False)
    axes = list(axes.flat)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    for axis, (title, key, bars) in zip(axes, panels, strict=False):
        names = [name for name, value in bars.items() if value is not None]
        values = [bars[name] for name in names]
        drawn = axis.bar(names, values, color=["tab:blue", "tab:orange", "tab:gray"][:len(names)])
        axis.bar_label(drawn, fmt="%.1f")
        if values and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")
        axis.margins(y=0.15)
        ratio = rows[key]["ratio"]
        axis.set_title(title + ("" if ratio is None else
                                f"\nratio {ratio:.2f} (target {rows[key]['target']})"), fontsize=8)
    figure.suptitle(f"Tandem vs baselines: {report['model']['dir']}, "
                    f"{report['machine']['cpu_count']} CPUs")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# CLI


def build_prompts(args: argparse.Namespace, vocab_limit: int) -> dict:
    """Every prompt of the run, from --seed; Tandem and HF get the same lists. Scenario c gets
    one (miss, hit) pair per repeat, each pair with a fresh prefix (seed + 100 + repeat)."""
    def prompts(count: int, length: int, seed: int, prefix_len: int = 0) -> list[list[int]]:
        return make_prompts(count, length, seed, prefix_len, vocab_limit)

    prefix_prompt_len = args.prefix_len + args.suffix_len
    scenario_a = prompts(args.num_streams, args.prompt_len, args.seed)
    return {"a": scenario_a,
            "a_repeats": [scenario_a] + [prompts(args.num_streams, args.prompt_len,
                                                 args.seed + 200 + repeat)
                                         for repeat in range(1, args.repeats)],
            "b": prompts(args.repeats, args.prompt_len, args.seed + 1),
            "warmup": prompts(1, args.prompt_len, args.seed + 2),
            "c": [prompts(2, prefix_prompt_len, args.seed + 100 + repeat, args.prefix_len)
                  for repeat in range(args.repeats)],
            "c_warmup": prompts(1, prefix_prompt_len, args.seed + 3)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.set_defaults(extra_core_args=("--embedding-model", "none"))  # no second model here
    parser.add_argument("--model", type=Path, required=True, help="benchmark checkpoint dir")
    parser.add_argument("--target", default=None, help="attach to a running core HOST:PORT")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=None,
                        help="pass --max-num-seqs to the core (default: the core's default)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="compute dtypes, each run on Tandem and HF (comma-separated)")
    parser.add_argument("--core-arg", action="append", default=[],
                        help="extra `tandem core` flag, repeatable: --core-arg=--flag=value")
    parser.add_argument("--core-log", default="/tmp/tandem-bench-core.log")
    parser.add_argument("--startup-timeout-s", type=float, default=900.0)
    parser.add_argument("--scenarios", default="a,b,c")
    for part in ("hf", "tandem", "roofline"):
        parser.add_argument(f"--skip-{part}", action="store_true")
    for flag, default in (("--num-streams", 32), ("--prompt-len", 128), ("--output-len", 128),
                          ("--prefix-len", 1024), ("--suffix-len", 16), ("--prefix-output-len", 2),
                          ("--repeats", 3), ("--seed", 0), ("--vocab-limit", DEFAULT_VOCAB_LIMIT)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "docs/bench/engine.json")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "docs/bench/engine.png")
    args = parser.parse_args(argv)
    args.scenarios = {name.strip() for name in args.scenarios.split(",") if name.strip()}
    args.dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    if not args.scenarios <= {"a", "b", "c"}:
        parser.error("--scenarios takes a comma-separated subset of a,b,c")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = count_params(args.model)
    vocab_limit = min(args.vocab_limit, json.loads((args.model / "config.json").read_text())
                      ["vocab_size"])
    prompts = build_prompts(args, vocab_limit)
    report: dict = {"command": [sys.executable, *sys.argv], "started_at": time.strftime("%FT%T%z"),
                    "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                "processor": platform.processor(),
                                "python": platform.python_version()},
                    "model": {"dir": str(args.model), **params},
                    "settings": {key: (sorted(value) if isinstance(value, set) else str(value))
                                 for key, value in vars(args).items()}}
    print(f"params without the input embedding: {params['params_without_input_embedding']:,} "
          f"(layers + final norm + lm_head)", flush=True)
    # --- issue 14: one core per dtype at its defaults, HF in each dtype, then the rooflines
    if not args.skip_tandem:
        if args.target:
            print(f"warning: attached to {args.target}; it shares this machine's CPU",
                  file=sys.stderr)
        report["tandem"] = {}
        for dtype in args.dtypes:
            with tandem_core(args, None if args.target else dtype) as target:
                report["tandem"][dtype] = asyncio.run(tandem_scenarios(target, args, prompts))
            brief = {name: {key: value for key, value in result.items() if key != "metrics"}
                     if isinstance(result, dict) else result
                     for name, result in report["tandem"][dtype].items()}
            print(f"tandem {dtype}:", json.dumps(brief), flush=True)
    if not args.skip_hf:
        report["hf"] = {dtype: hf_baseline(args, prompts, dtype) for dtype in args.dtypes}
        print("hf:", json.dumps(report["hf"]), flush=True)
    if not args.skip_roofline:
        report["roofline"] = matmul_roofline()
        report["roofline"]["tokens_per_s"] = (report["roofline"]["flop_s"] /
                                              (2 * params["params_without_input_embedding"]))
        print("roofline:", json.dumps(report["roofline"]), flush=True)
    # --- end issue 14
    report["comparisons"] = comparisons(report, args)
    print(format_table(report["comparisons"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    try:  # issue 14: the plot is optional (matplotlib is not a test dependency)
        write_plot(report, args, args.plot)
        print(f"wrote {args.json} and {args.plot}")
    except ImportError as error:
        print(f"wrote {args.json}; no plot ({error})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
