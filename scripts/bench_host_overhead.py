"""Host overhead of one decode step: `ModelRunner.execute` (padding to buckets, the sampling
arrays, dispatch, the device→host copy) against the same jitted calls on device-resident
inputs, medians of interleaved repeats in one process.

Usage: python scripts/bench_host_overhead.py --model /tmp/bench-model [--dtype float32]
           [--rows 1,32] [--context 256] [--repeats 31]

What is left after this (scheduler, detokenizer, gRPC stream) is TPOT − execute; the engine
benchmark's TPOT is the other term. Multi-step decode or async scheduling would hide what this
script measures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.xla_flags import apply_defaults  # noqa: E402

apply_defaults()
import jax  # noqa: E402
import numpy as np  # noqa: E402

from core.config import EngineConfig, resolve_model  # noqa: E402
from core.engine.request import SamplingParams, SchedulerOutput, SequenceChunk  # noqa: E402
from core.engine.runner import ModelRunner  # noqa: E402
from core.engine.sampling import SamplingArrays  # noqa: E402
from core.models.loader import load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--context", type=int, default=256, help="tokens already cached per row")
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    rows_list = [int(value) for value in args.rows.split(",")]
    config, engine_config = resolve_model(args.model, EngineConfig(
        max_num_seqs=max(rows_list), max_model_len=2048, dtype=args.dtype))
    model, _ = load_model(args.model, engine_config.dtype, config)
    runner = ModelRunner(model, config, engine_config)
    pages_per_row = -(-(args.context + 1) // runner.page_size)
    greedy = SamplingParams(temperature=0.0)
    for rows in rows_list:
        chunks = tuple(SequenceChunk(f"r{row}", (5,), args.context,
                                     tuple(range(row * pages_per_row, (row + 1) * pages_per_row)),
                                     greedy, wants_sample=True) for row in range(rows))
        output = SchedulerOutput(chunks)
        shape = (runner._decode_buckets[np.searchsorted(runner._decode_buckets, rows)], 1,
                 runner._page_buckets[np.searchsorted(runner._page_buckets, pages_per_row)])
        device_args = [jax.device_put(np.zeros((shape[0], 1), np.int32)),
                       jax.device_put(np.full((shape[0], 1), args.context, np.int32)),
                       jax.device_put(np.zeros((shape[0], shape[2]), np.int32)),
                       jax.device_put(np.zeros((shape[0],), np.int32))]
        sampling = jax.device_put(SamplingArrays.from_params([greedy] * rows, shape[0]))

        def device_only():
            logits, runner._pages, positions = runner._forward(runner._param_leaves,
                                                               runner._pages, *device_args)
            return runner._sample(logits, sampling, positions, np.bool_(False)).token_ids

        execute_s, device_s = [], []
        runner.execute(output)
        jax.block_until_ready(device_only())
        for _ in range(args.repeats):
            start = time.perf_counter()
            runner.execute(output)
            execute_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(device_only())
            device_s.append(time.perf_counter() - start)
        execute_ms = 1000 * statistics.median(execute_s)
        device_ms = 1000 * statistics.median(device_s)
        print(f"{rows:>3} rows (bucket {shape[0]} × {shape[2]} pages), {args.dtype}: execute "
              f"{execute_ms:.2f} ms, device-resident calls {device_ms:.2f} ms, host overhead "
              f"{execute_ms - device_ms:.2f} ms ({(execute_ms - device_ms) / execute_ms:.0%})",
              flush=True)
    print(f"compilations after the first call of each shape: {runner.num_compilations}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
