"""Benchmark: decode throughput with every request constrained by a JSON schema, against the
same requests unconstrained, in the same run on the same engine; and the per-step time of
filling the grammar bitmask.

Usage:
    python scripts/make_tiny_model.py /tmp/bench-model --size bench
    python scripts/bench_structured.py --model /tmp/bench-model --streams 8 32 --repeats 3

For each stream count it runs, alternately and `--repeats` times, N unconstrained requests and
N requests under SCHEMA (each generates exactly `--max-tokens` tokens: the schema asks for more
items than fit, and `ignore_eos` holds for the free ones), all added at once. Decode throughput
is the tokens after each request's first one, divided by the time from the moment every request
has its first token to the last token. It prints the medians, their ratio (target ≥ 0.9), the
mask-fill time per step (p50, p99) and how many fills ended while the device was still busy
(the fill was hidden behind the forward pass). That comparison runs with jump-forward off: it
measures the grammar's cost per sampled token.

Then jump-forward (`--jump-streams`, default 1 and 8): N requests under EXTRACTION (six fixed
keys with enums, booleans and short strings: most of its tokens are forced) with jump-forward
on and off, and N unconstrained requests of the same length (`ignore_eos`), alternately. Here
throughput is end to end: completion tokens over the time from adding the requests to the last
one's end (prefill included, the same prompts in every mode). It prints the medians and the
ratio of jump-forward to unconstrained (goal ≥ 1.5). `--json PATH` writes every number.
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
from core.structured import GrammarSpec  # noqa: E402

# An array of records: keys forced, enums, integers, bounded strings; 1000 items never fit.
SCHEMA = {
    "type": "array", "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "name": {"type": "string", "maxLength": 12},
            "kind": {"enum": ["alpha", "beta", "gamma", "delta"]},
            "active": {"type": "boolean"},
            "score": {"type": "number"},
        },
        "required": ["id", "name", "kind", "active", "score"],
        "additionalProperties": False,
    },
}
SPEC = GrammarSpec("json_schema", json.dumps(SCHEMA), "response_format")
# An extraction record: six fixed keys, enums, booleans and short strings.
EXTRACTION = {
    "type": "object",
    "properties": {
        "document_type": {"enum": ["invoice", "receipt", "contract", "letter"]},
        "is_paid": {"type": "boolean"},
        "currency": {"enum": ["EUR", "USD", "GBP", "JPY"]},
        "vendor": {"type": "string", "maxLength": 8},
        "is_urgent": {"type": "boolean"},
        "status": {"enum": ["draft", "submitted", "approved", "rejected"]},
    },
    "required": ["document_type", "is_paid", "currency", "vendor", "is_urgent", "status"],
    "additionalProperties": False,
}
EXTRACTION_SPEC = GrammarSpec("json_schema", json.dumps(EXTRACTION), "response_format")


def run_batch(engine, num_streams: int, prompt_len: int, max_tokens: int, constrained: bool,
              rng: np.random.Generator) -> dict:
    """Add `num_streams` requests at once; time their decode phase."""
    outputs: queue.Queue = queue.Queue()
    requests = []
    for index in range(num_streams):
        prompt = rng.integers(5, engine.model_config.vocab_size, size=prompt_len).tolist()
        requests.append(Request(
            f"{'c' if constrained else 'u'}-{time.monotonic_ns()}-{index}", prompt,
            SamplingParams(temperature=1.0, seed=index),
            StoppingParams(max_tokens=max_tokens, ignore_eos=True),
            grammar=SPEC if constrained else None))
    engine.grammars.fill_times_s.clear()
    hidden_before = engine.num_fills_hidden
    total_before = engine.num_bitmask_fills
    for request in requests:
        engine.add_request(request, outputs.put)
    first_token_s: dict[str, float] = {}
    num_tokens, unfinished, last_s = 0, {r.request_id for r in requests}, 0.0
    while unfinished:
        output = outputs.get(timeout=600)
        assert output.error is None, output.error
        now = time.perf_counter()
        num_tokens += len(output.new_token_ids)
        first_token_s.setdefault(output.request_id, now)
        if output.finish_reason is not None:
            assert output.completion_tokens == max_tokens, "a request ended early"
            unfinished.discard(output.request_id)
            last_s = now
    decode_start_s = max(first_token_s.values())
    return {
        "decode_tok_s": (num_tokens - num_streams) / (last_s - decode_start_s),
        "fill_ms": [t * 1e3 for t in engine.grammars.fill_times_s],
        "fills": engine.num_bitmask_fills - total_before,
        "fills_hidden": engine.num_fills_hidden - hidden_before,
    }


def run_extraction(engine, num_streams: int, prompt_len: int, mode: str, max_tokens: int) -> dict:
    """N requests at once in `mode` ("jump", "stepped": under EXTRACTION with jump-forward on /
    off; "free": unconstrained, exactly `max_tokens` each); end-to-end completion tok/s."""
    rng = np.random.default_rng(1)  # the same prompts in every mode
    engine.jump_forward = mode == "jump"
    outputs: queue.Queue = queue.Queue()
    requests = [Request(
        f"{mode}-{time.monotonic_ns()}-{index}",
        rng.integers(5, engine.model_config.vocab_size, size=prompt_len).tolist(),
        SamplingParams(temperature=1.0, seed=index),
        StoppingParams(max_tokens=max_tokens, ignore_eos=mode == "free"),
        grammar=None if mode == "free" else EXTRACTION_SPEC) for index in range(num_streams)]
    started = time.perf_counter()
    for request in requests:
        engine.add_request(request, outputs.put)
    completion_tokens, unfinished = [], {r.request_id for r in requests}
    while unfinished:
        output = outputs.get(timeout=600)
        assert output.error is None, output.error
        if output.finish_reason is not None:
            completion_tokens.append(output.completion_tokens)
            unfinished.discard(output.request_id)
    elapsed_s = time.perf_counter() - started
    return {"tok_s": sum(completion_tokens) / elapsed_s,
            "mean_completion_tokens": statistics.mean(completion_tokens)}


def bench_jump_forward(engine, num_streams: int, args) -> dict:
    modes = {"jump": [], "stepped": [], "free": []}
    lengths = []
    configured = engine.jump_forward
    try:
        for _ in range(args.repeats):
            for mode in ("jump", "stepped"):
                result = run_extraction(engine, num_streams, args.prompt_len, mode,
                                        args.extraction_max_tokens)
                modes[mode].append(result["tok_s"])
                lengths.append(result["mean_completion_tokens"])
            free_tokens = max(1, round(statistics.mean(lengths)))
            modes["free"].append(run_extraction(engine, num_streams, args.prompt_len, "free",
                                                free_tokens)["tok_s"])
    finally:
        engine.jump_forward = configured
    medians = {mode: statistics.median(values) for mode, values in modes.items()}
    return {"streams": num_streams, "tok_s": modes, "median_tok_s": medians,
            "mean_completion_tokens": statistics.mean(lengths),
            "jump_over_free": medians["jump"] / medians["free"],
            "jump_over_stepped": medians["jump"] / medians["stepped"]}


def bench(engine, num_streams: int, args) -> dict:
    rng = np.random.default_rng(0)
    free, constrained, fill_ms, fills, hidden = [], [], [], 0, 0
    for _ in range(args.repeats):
        free.append(run_batch(engine, num_streams, args.prompt_len, args.max_tokens, False,
                              rng)["decode_tok_s"])
        result = run_batch(engine, num_streams, args.prompt_len, args.max_tokens, True, rng)
        constrained.append(result["decode_tok_s"])
        fill_ms += result["fill_ms"]
        fills, hidden = fills + result["fills"], hidden + result["fills_hidden"]
    free_median, constrained_median = statistics.median(free), statistics.median(constrained)
    return {
        "streams": num_streams,
        "unconstrained_tok_s": free, "constrained_tok_s": constrained,
        "unconstrained_median_tok_s": free_median,
        "constrained_median_tok_s": constrained_median,
        "ratio": constrained_median / free_median,
        "fill_ms_p50": float(np.percentile(fill_ms, 50)),
        "fill_ms_p99": float(np.percentile(fill_ms, 99)),
        "fill_steps": fills, "fills_hidden_behind_forward": hidden,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--jump-streams", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--extraction-max-tokens", type=int, default=160,
                        help="cap of an extraction request (it ends on its own before)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from core.engine.loop import create_engine
    from core.xla_flags import apply_defaults

    apply_defaults()  # the XLA flags `tandem core` runs with
    longest = max(args.max_tokens, args.extraction_max_tokens)
    engine_config = EngineConfig(max_model_len=args.prompt_len + longest + 16,
                                 max_num_seqs=max(args.streams + args.jump_streams))
    started = time.perf_counter()
    engine = create_engine(args.model, engine_config)
    print(f"engine ready in {time.perf_counter() - started:.0f} s "
          f"(vocab {engine.model_config.vocab_size})", flush=True)
    try:
        engine.check_grammar(SPEC)
        engine.check_grammar(EXTRACTION_SPEC)
        results, jump_results = [], []
        engine.jump_forward = False  # the mask's cost per sampled token
        for num_streams in args.streams:
            result = bench(engine, num_streams, args)
            results.append(result)
            print(f"{num_streams} streams: unconstrained {result['unconstrained_median_tok_s']:.1f}"
                  f" tok/s, JSON schema {result['constrained_median_tok_s']:.1f} tok/s, ratio "
                  f"{result['ratio']:.3f} (target >= 0.9); mask fill p50 "
                  f"{result['fill_ms_p50']:.3f} ms, p99 {result['fill_ms_p99']:.3f} ms; fills "
                  f"hidden behind the forward {result['fills_hidden_behind_forward']}/"
                  f"{result['fill_steps']}", flush=True)
        engine.jump_forward = engine_config.jump_forward
        for num_streams in args.jump_streams:
            result = bench_jump_forward(engine, num_streams, args)
            jump_results.append(result)
            medians = result["median_tok_s"]
            tokens = result["mean_completion_tokens"]
            print(f"{num_streams} streams, extraction schema ({tokens:.0f} tokens): "
                  f"jump-forward {medians['jump']:.1f} tok/s, without "
                  f"{medians['stepped']:.1f}, unconstrained {medians['free']:.1f}; jump-forward /"
                  f" unconstrained {result['jump_over_free']:.2f} (goal >= 1.5), / without "
                  f"{result['jump_over_stepped']:.2f}", flush=True)
        compilations = engine.compilations_after_warmup
        print(f"compilations after warm-up: {compilations}")
    finally:
        engine.stop()
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "engine_config": dataclasses.asdict(engine_config),
            "schema": SCHEMA, "results": results, "extraction_schema": EXTRACTION,
            "jump_forward_results": jump_results, "compilations_after_warmup": compilations},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
