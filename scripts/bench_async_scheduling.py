"""Benchmark: async scheduling on and off (core/engine/async_step.py), in one process on one
engine, at several stream counts.

Usage:
    python scripts/make_tiny_model.py /tmp/bench-model --size bench
    python scripts/bench_async_scheduling.py --model /tmp/bench-model \
        [--streams 1 8 32] [--prompt-len 128] [--output-len 128] [--repeats 3] [--json PATH]

The engine is built once with `async_scheduling` on and `max_num_seqs` = the largest stream
count (every stream runs at once); "off" sets `engine.async_scheduling = False` on the same
engine (the same executables). Each run adds N requests at once — random `--prompt-len`-token
prompts, `--output-len` new tokens, greedy, `ignore_eos` — and times from the first add to the
last finish: tok/s = N × output-len / that time (prefill included). Per stream count, one
untimed run each way, then `--repeats` each, alternating on / off (the order flips every
repeat); it prints the medians, the on/off ratio (the issue's bar to
keep it on by default: ≥ 1.05), the share of steps dispatched from the device tokens of the
step before, whether the greedy tokens were identical, the compilations after warm-up, the CPU
model and flags and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import EngineConfig  # noqa: E402
from core.engine.request import Request, SamplingParams, StoppingParams  # noqa: E402

WATCHED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict:
    """The CPU model and the flags that decide XLA:CPU's kernels (Linux /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cpu_count": os.cpu_count(),
            "flags": [flag for flag in WATCHED_FLAGS if flag in flags]}


def run_streams(engine, prompts: list[list[int]], output_len: int, tag: str) -> dict:
    """All prompts at once; output tok/s over the wall time, and each request's tokens."""
    outputs: queue.Queue = queue.Queue()
    continued = engine._async.num_continued
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(Request(f"{tag}-{i}", prompt, SamplingParams(temperature=0.0),
                                   StoppingParams(max_tokens=output_len, ignore_eos=True)),
                           outputs.put)
    token_ids: dict[str, list[int]] = {f"{tag}-{i}": [] for i in range(len(prompts))}
    unfinished = set(token_ids)
    while unfinished:
        output = outputs.get(timeout=600)
        assert output.error is None, output.error
        token_ids[output.request_id] += output.new_token_ids
        if output.finish_reason is not None:
            unfinished.discard(output.request_id)
    wall_s = time.perf_counter() - started
    assert all(len(ids) == output_len for ids in token_ids.values()), "a request ended early"
    return {"tok_s": len(prompts) * output_len / wall_s, "wall_s": wall_s,
            "continued_steps": engine._async.num_continued - continued,
            "token_ids": [token_ids[f"{tag}-{i}"] for i in range(len(prompts))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from core.engine.startup import create_engine
    from core.xla_flags import apply_defaults

    apply_defaults()  # the XLA flags `tandem core` runs with
    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ×{cpu['cpu_count']}, flags {' '.join(cpu['flags'])}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    engine_config = EngineConfig(max_model_len=2048, max_num_seqs=max(args.streams),
                                 async_scheduling=True)
    started = time.perf_counter()
    engine = create_engine(args.model, engine_config)
    print(f"engine ready in {time.perf_counter() - started:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    vocab_size = engine.model_config.vocab_size
    results = {}
    try:
        for num_streams in args.streams:
            prompts = [rng.integers(5, vocab_size, size=args.prompt_len).tolist()
                       for _ in range(num_streams)]
            for mode in (True, False):  # untimed: the first round at new shapes runs slow
                engine.async_scheduling = mode
                run_streams(engine, prompts, args.output_len, f"{num_streams}-warm-{mode}")
            runs = {"on": [], "off": []}
            for repeat in range(args.repeats):
                for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
                    engine.async_scheduling = mode == "on"
                    runs[mode].append(run_streams(engine, prompts, args.output_len,
                                                  f"{num_streams}-{mode}-{repeat}"))
            on = statistics.median(run["tok_s"] for run in runs["on"])
            off = statistics.median(run["tok_s"] for run in runs["off"])
            same = all(run["token_ids"] == runs["off"][0]["token_ids"]
                       for run in runs["on"] + runs["off"])
            # steps of an "on" run: one per output token (the first comes with the prefill)
            continued = statistics.median(run["continued_steps"] for run in runs["on"])
            print(f"{num_streams} streams: async on {on:.1f} tok/s, off {off:.1f} tok/s, "
                  f"on/off {on / off:.3f}; continued steps {continued:.0f} of ~"
                  f"{args.output_len - 1}; greedy tokens identical: {same}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            results[num_streams] = {
                "on_tok_s": [run["tok_s"] for run in runs["on"]],
                "off_tok_s": [run["tok_s"] for run in runs["off"]],
                "on_median_tok_s": on, "off_median_tok_s": off, "ratio": on / off,
                "continued_steps_median": continued, "greedy_identical": same}
        compilations = engine.compilations_after_warmup
        print(f"compilations after warm-up: {compilations}")
    finally:
        engine.stop()
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "cpu": cpu,
            "load_average_1m_at_end": os.getloadavg()[0],
            "engine_config": dataclasses.asdict(engine_config), "results": results,
            "compilations_after_warmup": compilations}, indent=2) + "\n")


if __name__ == "__main__":
    main()
