"""Serving benchmark: drive an already running Tandem core (gRPC) or facade (HTTP) with many
concurrent streams and report vLLM `benchmark_serving` metrics.

Owns the request drivers (grpc.aio `Inference.Generate`; OpenAI `/v1/completions` SSE over
httpx), the per-request timings and the metric definitions, which follow vLLM's
benchmarks/benchmark_serving.py exactly:
  TTFT  send → first token-bearing chunk, per request
  TPOT  (latency − TTFT) / (output_tokens − 1), per request with more than one output token
        (latency = send → last token-bearing chunk)
  ITL   gap between successive token-bearing chunks, all requests pooled
  output throughput = all output tokens / wall duration; request throughput = requests / duration
Output tokens are the token ids in the gRPC chunks, and the final `usage.completion_tokens` on
HTTP (where ITL is per SSE chunk). Failed requests are counted and left out of the metrics.

Usage:
    python scripts/bench_serving.py --backend grpc --target 127.0.0.1:50051 \
        --num-prompts 32 --prompt-len 128 --output-len 128 [--concurrency 32] [--seed 0] \
        [--shared-prefix-len 0] [--vocab-limit 2000] [--warmup-requests 1] [--model NAME] \
        [--json OUT.json]
    python scripts/bench_serving.py --backend http --base-url http://127.0.0.1:8000/v1 ...

Library API (used by bench_baseline.py):
    metrics = await run_benchmark("grpc", "127.0.0.1:50051", prompts, output_len=128,
                                  concurrency=32)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_prompts, run from anywhere

from bench_prompts import DEFAULT_VOCAB_LIMIT, make_prompts  # noqa: E402

REQUEST_TIMEOUT_S = 3600.0


@dataclass
class RequestTiming:
    """What one request measured."""

    prompt_len: int  # prompt tokens sent
    success: bool = False  # a token arrived and no error was raised
    ttft_s: float = 0.0  # send → first token-bearing chunk
    latency_s: float = 0.0  # send → last token-bearing chunk
    output_tokens: int = 0  # generated tokens (gRPC: counted ids; HTTP: usage)
    cached_tokens: int = 0  # prompt tokens the server's prefix cache served (its usage)
    itl_s: list[float] = field(default_factory=list)  # gaps between token-bearing chunks
    error: str = ""  # why it failed


class _ChunkClock:
    """Turns chunk arrival times into TTFT, ITL and latency."""

    def __init__(self, timing: RequestTiming):
        self.timing = timing
        self.start_s = time.perf_counter()
        self.last_s: float | None = None

    def tick(self) -> None:
        now_s = time.perf_counter()
        if self.last_s is None:
            self.timing.ttft_s = now_s - self.start_s
        else:
            self.timing.itl_s.append(now_s - self.last_s)
        self.last_s = now_s
        self.timing.latency_s = now_s - self.start_s


# ---------------------------------------------------------------------------------------------
# Transports


async def _grpc_request(stub, prompt: list[int], output_len: int, model: str | None,
                        timing: RequestTiming) -> None:
    from tandem.v1 import inference_pb2 as pb

    request = pb.GenerateRequest(
        model=model or "", tokens=pb.TokenIds(ids=prompt),
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=output_len, ignore_eos=True))
    clock = _ChunkClock(timing)
    async for chunk in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
        num_tokens = sum(len(choice.token_ids) for choice in chunk.choices)
        if num_tokens:
            clock.tick()
            timing.output_tokens += num_tokens
        if chunk.HasField("usage"):
            timing.cached_tokens = chunk.usage.cached_tokens


async def _http_request(client, base_url: str, prompt: list[int], output_len: int,
                        model: str | None, timing: RequestTiming) -> None:
    body = {"prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    clock = _ChunkClock(timing)
    async with client.stream("POST", f"{base_url.rstrip('/')}/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                break
            data = json.loads(payload)
            if "error" in data:
                raise RuntimeError(f"error in stream: {data['error']}")
            if data.get("choices"):
                clock.tick()  # like vLLM: every chunk with a choice counts, even empty text
            elif data.get("usage"):
                timing.output_tokens = int(data["usage"]["completion_tokens"])
                details = data["usage"].get("prompt_tokens_details") or {}
                timing.cached_tokens = int(details.get("cached_tokens") or 0)


async def _timed(send, prompt: list[int]) -> RequestTiming:
    timing = RequestTiming(prompt_len=len(prompt))
    try:
        await send(prompt, timing)
        timing.success = timing.output_tokens > 0 and timing.ttft_s > 0
        if not timing.success:
            timing.error = "no tokens"
    except Exception as error:  # a failed request is a result, not a crash
        timing.error = f"{type(error).__name__}: {error}"[:500]
    return timing


# ---------------------------------------------------------------------------------------------
# Benchmark


def _stats_ms(values_s: list[float], name: str) -> dict[str, float]:
    values_ms = np.asarray(values_s or [0.0]) * 1000.0
    return {f"mean_{name}_ms": float(np.mean(values_ms)),
            f"median_{name}_ms": float(np.median(values_ms)),
            f"p99_{name}_ms": float(np.percentile(values_ms, 99))}


def compute_metrics(timings: list[RequestTiming], duration_s: float) -> dict:
    """vLLM's calculate_metrics over the successful requests."""
    done = [timing for timing in timings if timing.success]
    output_tokens = sum(timing.output_tokens for timing in done)
    tpots_s = [(timing.latency_s - timing.ttft_s) / (timing.output_tokens - 1)
               for timing in done if timing.output_tokens > 1]
    metrics = {
        "completed": len(done),
        "failed": len(timings) - len(done),
        "errors": sorted({timing.error for timing in timings if timing.error})[:5],
        "duration_s": duration_s,
        "total_input_tokens": sum(timing.prompt_len for timing in done),
        "total_output_tokens": output_tokens,
        "total_cached_tokens": sum(timing.cached_tokens for timing in done),
        "request_throughput_rps": len(done) / duration_s,
        "output_throughput_tok_s": output_tokens / duration_s,
        **_stats_ms([timing.ttft_s for timing in done], "ttft"),
        **_stats_ms(tpots_s, "tpot"),
        **_stats_ms([gap for timing in done for gap in timing.itl_s], "itl"),
        **_stats_ms([timing.latency_s for timing in done], "e2el"),
    }
    return metrics


async def run_benchmark(backend: str, target: str, prompts: list[list[int]], output_len: int,
                        concurrency: int | None = None, model: str | None = None,
                        warmup_prompts: list[list[int]] | None = None) -> dict:
    """Send every prompt (at most `concurrency` in flight, default all), after the
    `warmup_prompts` one by one (excluded), and return the metrics dict.

    backend "grpc": target is HOST:PORT of a core; "http": target is the facade's base URL
    (…/v1)."""
    concurrency = concurrency or len(prompts)
    if backend == "grpc":
        import grpc

        from tandem.v1 import inference_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.InferenceStub(channel)

        async def send(prompt, timing):
            await _grpc_request(stub, prompt, output_len, model, timing)
    elif backend == "http":
        import httpx

        channel = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0),
                                    limits=httpx.Limits(max_connections=concurrency + 4))

        async def send(prompt, timing):
            await _http_request(channel, target, prompt, output_len, model, timing)
    else:
        raise ValueError(f"unknown backend {backend!r} (grpc or http)")
    try:
        for prompt in warmup_prompts or []:
            warmup = await _timed(send, prompt)
            if not warmup.success:
                raise RuntimeError(f"warm-up request failed: {warmup.error}")
        limit = asyncio.Semaphore(concurrency)

        async def limited(prompt):
            async with limit:
                return await _timed(send, prompt)

        start_s = time.perf_counter()
        timings = await asyncio.gather(*(limited(prompt) for prompt in prompts))
        duration_s = time.perf_counter() - start_s
    finally:
        await (channel.close() if backend == "grpc" else channel.aclose())
    metrics = compute_metrics(list(timings), duration_s)
    metrics.update(backend=backend, num_prompts=len(prompts), concurrency=concurrency,
                   output_len=output_len, warmup_requests=len(warmup_prompts or []))
    return metrics


async def grpc_vocab_size(target: str) -> int:
    """The served model's vocabulary size (GetModelInfo), to keep random ids inside it."""
    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        info = await pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(),
                                                                 timeout=30)
    return info.vocab_size


def format_table(metrics: dict) -> str:
    rows = [("Successful requests", metrics["completed"]),
            ("Failed requests", metrics["failed"]),
            ("Max concurrency", metrics["concurrency"]),
            ("Benchmark duration (s)", metrics["duration_s"]),
            ("Total input tokens", metrics["total_input_tokens"]),
            ("Total generated tokens", metrics["total_output_tokens"]),
            ("Total prefix-cached prompt tokens", metrics["total_cached_tokens"]),
            ("Request throughput (req/s)", metrics["request_throughput_rps"]),
            ("Output token throughput (tok/s)", metrics["output_throughput_tok_s"])]
    for name, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token"),
                        ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        rows.append((f"-- {title} --", None))
        rows += [(f"{kind.capitalize()} {name.upper()} (ms)", metrics[f"{kind}_{name}_ms"])
                 for kind in ("mean", "median", "p99")]
    lines = ["{:=^56}".format(" Serving Benchmark Result ")]
    for label, value in rows:
        if value is None:
            lines.append("{:-^56}".format(f" {label.strip('- ')} "))
        elif isinstance(value, float):
            lines.append(f"{label:<42}{value:>14.2f}")
        else:
            lines.append(f"{label:<42}{value:>14}")
    lines.append("=" * 56)
    lines += [f"error: {error}" for error in metrics["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--target", default="127.0.0.1:50051", help="core HOST:PORT (grpc)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="facade (http)")
    parser.add_argument("--model", default=None, help="model id (default: the server's)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128,
                        help="tokens per prompt, shared prefix included")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="max requests in flight (default: --num-prompts)")
    parser.add_argument("--shared-prefix-len", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-limit", type=int, default=DEFAULT_VOCAB_LIMIT,
                        help="token ids are drawn from [16, this) (grpc: capped by the model)")
    parser.add_argument("--warmup-requests", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here")
    args = parser.parse_args(argv)
    target = args.target if args.backend == "grpc" else args.base_url
    vocab_limit = args.vocab_limit
    if args.backend == "grpc":
        vocab_limit = min(vocab_limit, asyncio.run(grpc_vocab_size(target)))
    prompts = make_prompts(args.num_prompts, args.prompt_len, args.seed, args.shared_prefix_len,
                           vocab_limit)
    # Warm-up prompts share no prefix with the measured ones (a prefix cache stays cold).
    warmup = (make_prompts(args.warmup_requests, args.prompt_len, args.seed + 1_000_003,
                           vocab_limit=vocab_limit) if args.warmup_requests > 0 else [])
    metrics = asyncio.run(run_benchmark(args.backend, target, prompts, args.output_len,
                                        args.concurrency, args.model, warmup))
    metrics.update(prompt_len=args.prompt_len, shared_prefix_len=args.shared_prefix_len,
                   seed=args.seed, vocab_limit=vocab_limit, target=target)
    print(format_table(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if metrics["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
