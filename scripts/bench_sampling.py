"""Sampling-stage benchmark: decode throughput at N concurrent streams with every request using
presence/frequency/repetition penalties and logit_bias, against the same requests without them,
in the same run on the same in-process engine (no gRPC: the engine step is what is measured).

Two modes, both printing the ratio of the medians (target ≥ 0.9):
- step (default): the engine's jitted decode step for N rows (each row one stream at position
  prompt-len, with its penalty state built from prompt-len tokens), timed step by step, the two
  sampling modes interleaved trial by trial — robust to load bursts on a shared machine.
  Throughput = N / step time.
- serve: whole requests through the engine, rounds alternating plain / penalized; a round's
  decode throughput is the tokens emitted after every stream had its first token, divided by
  the time from that moment to the last token (prefill is left out).

Usage:
    python scripts/make_tiny_model.py /tmp/bench-model --size bench
    python scripts/bench_sampling.py --model /tmp/bench-model [--streams 32] [--prompt-len 128]
        [--output-len 128] [--mode step|serve] [--trials 10] [--steps 5] [--rounds 3]
        [--temperature 1.0] [--json OUT.json]
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
from core.engine.request import Request, SamplingParams, StoppingParams


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


def step_trials(engine, streams: int, prompt_len: int, trials: int, steps: int,
                sampling: dict[str, list[SamplingParams]]) -> dict[str, list[float]]:
    """Decode tokens per second of the engine's jitted step alone: `streams` decode rows at
    position prompt_len, the modes interleaved trial by trial (`steps` timed steps each), so
    that load bursts on a shared machine hit every mode alike."""
    from core.engine.request import SchedulerOutput, SequenceChunk

    runner = engine.runner
    pages_per_row = prompt_len // runner.page_size + 1
    rng = np.random.default_rng(1)

    def batch(params: list[SamplingParams], with_slots: bool, init: bool) -> SchedulerOutput:
        chunks = []
        for row, row_params in enumerate(params):
            history = tuple(rng.integers(10, 2000, size=prompt_len).tolist())
            chunks.append(SequenceChunk(
                f"bench-{row}", (int(history[-1]),), prompt_len,
                tuple(range(row * pages_per_row, (row + 1) * pages_per_row)), row_params, True,
                row_slot=row if with_slots else None,
                row_init=(history, prompt_len - 16) if init and with_slots else None))
        return SchedulerOutput(tuple(chunks))

    batches = {name: batch(params, params[0].uses_row_state, False)
               for name, params in sampling.items()}
    for name, params in sampling.items():  # rebuild the rows' state once, then warm up
        runner.execute(batch(params, params[0].uses_row_state, True))
        runner.execute(batches[name])
    runner.compilations_at_warmup = runner.num_compilations  # both modes: one compiled step
    rates: dict[str, list[float]] = {name: [] for name in sampling}
    for _ in range(trials):
        for name, scheduled in batches.items():
            for _ in range(steps):
                started = time.perf_counter()
                runner.execute(scheduled)  # returns host copies: the step is complete
                rates[name].append(streams / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--mode", choices=("step", "serve"), default="step",
                        help="step: the jitted decode step alone, modes interleaved per trial "
                             "(robust on a busy machine); serve: whole requests via the engine")
    parser.add_argument("--trials", type=int, default=10, help="step mode: interleaved trials")
    parser.add_argument("--steps", type=int, default=5, help="step mode: steps per trial")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from core.engine.startup import create_engine

    engine = create_engine(args.model, EngineConfig(  # step mode compiles only what it runs
        max_model_len=args.prompt_len + args.output_len + 16, max_num_seqs=args.streams),
        warmup=args.mode == "serve")
    vocab_size = engine.model_config.vocab_size
    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {"plain": [], "penalties+logit_bias": []}
    try:
        if args.mode == "step":
            plain = [SamplingParams(temperature=args.temperature, seed=i)
                     for i in range(args.streams)]
            sampling = {"plain": plain,
                        "penalties+logit_bias": [penalized(p, rng, vocab_size) for p in plain]}
            results = step_trials(engine, args.streams, args.prompt_len, args.trials,
                                  args.steps, sampling)
        for round_index in range(args.rounds if args.mode == "serve" else 0):
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
        print(f"median {name:22s} {median:8.1f} decode tokens/s ({args.mode} mode, "
              f"{len(results[name])} samples)")
    print(f"ratio penalties+logit_bias / plain: {ratio:.3f}  (target ≥ 0.9)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rates": results, "medians": medians,
                                         "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
