"""Sampling-stage benchmark: decode throughput at N concurrent streams with every request using
presence/frequency/repetition penalties and logit_bias, against the same requests without them,
in the same run on the same in-process engine (no gRPC: the engine step is what is measured).

Rounds alternate plain / penalized so that drift on a shared machine hits both alike; the
ratio of the medians is printed (target ≥ 0.9).

Decode throughput of a round: the tokens emitted after every stream had its first token,
divided by the time from that moment to the last token (prefill is left out).

Usage:
    python scripts/make_tiny_model.py /tmp/bench-model --size bench
    python scripts/bench_sampling.py --model /tmp/bench-model [--streams 32] [--prompt-len 128]
        [--output-len 128] [--rounds 3] [--temperature 1.0] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import time
from pathlib import Path

import numpy as np

from core.config import EngineConfig
from core.request import Request, SamplingParams, StoppingParams


def penalized(params: SamplingParams, rng: np.random.Generator, vocab_size: int):
    bias_ids = rng.choice(np.arange(10, vocab_size), size=16, replace=False).tolist()
    return SamplingParams(
        temperature=params.temperature, seed=params.seed, presence_penalty=0.5,
        frequency_penalty=0.5, repetition_penalty=1.1,
        logit_bias=tuple((int(i), float(rng.uniform(-5, 5))) for i in sorted(bias_ids)))


def run_round(engine, prompts: list[list[int]], output_len: int, sampling: list[SamplingParams],
              tag: str) -> float:
    """Decode tokens per second of one round of concurrent streams."""
    outputs: queue.Queue = queue.Queue()
    for index, (prompt, params) in enumerate(zip(prompts, sampling, strict=True)):
        engine.add_request(Request(f"{tag}-{index}", list(prompt), params, StoppingParams(
            max_tokens=output_len, ignore_eos=True)), outputs.put)
    started: set[str] = set()
    unfinished = len(prompts)
    all_started_s, tokens_after, last_s = None, 0, 0.0
    while unfinished:
        output = outputs.get(timeout=600)
        assert output.error is None, output.error
        now = time.perf_counter()
        if all_started_s is not None:
            tokens_after += len(output.new_token_ids)
            last_s = now
        started.add(output.request_id)
        if all_started_s is None and len(started) == len(prompts):
            all_started_s = now
        unfinished -= output.finish_reason is not None
    return tokens_after / (last_s - all_started_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from core.engine import create_engine

    engine = create_engine(args.model, EngineConfig(
        max_model_len=args.prompt_len + args.output_len + 16, max_num_seqs=args.streams))
    vocab_size = engine.model_config.vocab_size
    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {"plain": [], "penalties+logit_bias": []}
    try:
        for round_index in range(args.rounds):
            prompts = [rng.integers(10, min(vocab_size, 2000), size=args.prompt_len).tolist()
                       for _ in range(args.streams)]
            plain = [SamplingParams(temperature=args.temperature, seed=i)
                     for i in range(args.streams)]
            with_stages = [penalized(p, rng, vocab_size) for p in plain]
            for name, sampling in (("plain", plain), ("penalties+logit_bias", with_stages)):
                rate = run_round(engine, prompts, args.output_len, sampling,
                                 f"{name}-{round_index}")
                results[name].append(rate)
                print(f"round {round_index} {name:22s} {rate:8.1f} decode tokens/s", flush=True)
        assert engine.compilations_after_warmup == 0, "a shape compiled after warm-up"
    finally:
        engine.stop()
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    ratio = medians["penalties+logit_bias"] / medians["plain"]
    for name, median in medians.items():
        print(f"median {name:22s} {median:8.1f} decode tokens/s")
    print(f"ratio penalties+logit_bias / plain: {ratio:.3f}  (target ≥ 0.9)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rates": results, "medians": medians,
                                         "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
