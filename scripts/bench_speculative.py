"""Benchmark: n-gram speculation on and off, at 1 stream, on a copy-heavy and a fresh workload,
in the same run on the same engine.

Usage:
    python scripts/make_tiny_model.py /tmp/bench-model --size bench
    python scripts/bench_speculative.py --model /tmp/bench-model --drafts 4 --repeats 3

The engine runs with `speculative_ngram` = `--drafts`; "off" sets the scheduler's draft count to
0 on the same engine (the same executables, no speculation). Copy-heavy, honest with random
weights: a random prefix, the model's own greedy continuation of it (`--output-len` tokens,
speculation off), then prefix + continuation + prefix as the prompt, asking for
`--output-len` tokens again — the model then writes its continuation again, which prompt
lookup finds in the prompt. Fresh: a random prompt of the same length. Requests are greedy
(`--temperature` changes that) with `ignore_eos`. Throughput is decode tok/s: the tokens after
the first, over the time from the first token to the last; medians of `--repeats` alternating
runs. It prints the ratios (goals: ≥ 2 on copy-heavy, ≥ 0.95 on fresh), the draft tokens
proposed and accepted, and the compilations after warm-up. `--json PATH` writes every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import EngineConfig  # noqa: E402
from core.engine.request import Request, SamplingParams, StoppingParams  # noqa: E402


def generate(engine, prompt: list[int], output_len: int, temperature: float,
             tag: str) -> dict:
    """One request alone: its tokens, decode tok/s and draft counts."""
    outputs: queue.Queue = queue.Queue()
    engine.add_request(Request(f"{tag}-{time.monotonic_ns()}", prompt,
                               SamplingParams(temperature=temperature, seed=1),
                               StoppingParams(max_tokens=output_len, ignore_eos=True)),
                       outputs.put)
    token_ids, first_s = [], None
    while True:
        output = outputs.get(timeout=600)
        assert output.error is None, output.error
        now = time.perf_counter()
        first_s = first_s or now
        if len(token_ids) == 0:
            num_first = len(output.new_token_ids)  # the first output's tokens are not timed
        token_ids += output.new_token_ids
        if output.finish_reason is not None:
            assert len(token_ids) == output_len, "the request ended early"
            return {"token_ids": token_ids,
                    "decode_tok_s": (len(token_ids) - num_first) / max(now - first_s, 1e-9),
                    "draft_tokens": output.num_draft_tokens,
                    "accepted_draft_tokens": output.num_accepted_draft_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--drafts", type=int, default=4, help="speculative_ngram K")
    parser.add_argument("--prefix-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from core.engine.loop import create_engine
    from core.xla_flags import apply_defaults

    apply_defaults()  # the XLA flags `tandem core` runs with
    prompt_len = 2 * args.prefix_len + args.output_len
    engine_config = EngineConfig(max_model_len=prompt_len + args.output_len + 16,
                                 max_num_seqs=2, speculative_ngram=args.drafts)
    started = time.perf_counter()
    engine = create_engine(args.model, engine_config)
    print(f"engine ready in {time.perf_counter() - started:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    vocab_size = engine.model_config.vocab_size
    results = {}
    try:
        engine.scheduler.max_drafts = 0
        prefix = rng.integers(5, vocab_size, size=args.prefix_len).tolist()
        continuation = generate(engine, prefix, args.output_len, 0.0, "seed")["token_ids"]
        workloads = {"copy": prefix + continuation + prefix,
                     "fresh": rng.integers(5, vocab_size, size=prompt_len).tolist()}
        for name, prompt in workloads.items():
            runs = {"on": [], "off": []}
            for _ in range(args.repeats):
                for mode in ("on", "off"):
                    engine.scheduler.max_drafts = args.drafts if mode == "on" else 0
                    runs[mode].append(generate(engine, prompt, args.output_len,
                                               args.temperature, f"{name}-{mode}"))
            on = statistics.median(run["decode_tok_s"] for run in runs["on"])
            off = statistics.median(run["decode_tok_s"] for run in runs["off"])
            drafts = sum(run["draft_tokens"] for run in runs["on"])
            accepted = sum(run["accepted_draft_tokens"] for run in runs["on"])
            same = all(run["token_ids"] == runs["off"][0]["token_ids"]
                       for run in runs["on"] + runs["off"]) if args.temperature == 0 else None
            goal = ">= 2" if name == "copy" else ">= 0.95"
            print(f"{name}: speculation {on:.1f} tok/s, off {off:.1f} tok/s, ratio "
                  f"{on / off:.2f} (goal {goal}); drafts accepted {accepted}/{drafts}"
                  + ("" if same is None else f"; greedy tokens identical: {same}"), flush=True)
            results[name] = {"on_tok_s": [run["decode_tok_s"] for run in runs["on"]],
                             "off_tok_s": [run["decode_tok_s"] for run in runs["off"]],
                             "on_median_tok_s": on, "off_median_tok_s": off,
                             "ratio": on / off, "draft_tokens": drafts,
                             "accepted_draft_tokens": accepted, "greedy_identical": same}
        compilations = engine.compilations_after_warmup
        print(f"compilations after warm-up: {compilations}")
    finally:
        engine.stop()
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "engine_config": dataclasses.asdict(engine_config),
            "results": results, "compilations_after_warmup": compilations}, indent=2) + "\n")


if __name__ == "__main__":
    main()
