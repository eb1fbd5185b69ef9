"""Int8 weight-only quantization against float, in one process: decode speed and logit error.

Owns the figures docs/benchmarks.md quotes for `--quantization int8`. On one checkpoint (the
benchmark Llama by default: `python scripts/make_tiny_model.py /tmp/bench-model --size bench`)
it loads the weights twice, float (the --dtype) and int8 (`core.models.quantize`; with
--lm-head the output projection too), builds the real `ModelRunner` for each and, alternating,
times medians of --repeats decode steps at each --rows after a warm-up call:

  step      the jitted decode step alone (forward, lm_head, greedy sampler), as
            scripts/profile_step.py times it
  execute   `ModelRunner.execute()` of the same step (host arrays in, tokens back)
  tok/s     rows × 1000 / execute: the engine's decode rate at that many streams

and, on --prompts seeded random prompts of --prompt-len tokens run through both models'
forward, the logit error (max |int8 − float| over the vocabulary, per prompt) and the mean KL
divergence KL(float ‖ int8) of the next-token distributions. Usage:

    python scripts/bench_quantization.py --model /tmp/bench-model [--rows 1 8] [--lm-head]
        [--repeats 20] [--json docs/bench/quantization.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.xla_flags import apply_defaults  # noqa: E402  (before JAX starts its backend)

apply_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from profile_step import Timer, decode_chunks, step_timings  # noqa: E402

from core.config import EngineConfig, resolve_model  # noqa: E402
from core.engine.request import SamplingParams  # noqa: E402
from core.engine.runner import ModelRunner  # noqa: E402
from core.models.loader import load_model  # noqa: E402
from core.models.quantize import next_token_logits  # noqa: E402


def logit_error(reference: np.ndarray, quantized: np.ndarray) -> dict:
    """Error figures of quantized logits [b, v] against the reference ones."""
    error = np.abs(quantized - reference).max(axis=-1)
    log_p = reference - np.logaddexp.reduce(reference, axis=-1, keepdims=True)
    log_q = quantized - np.logaddexp.reduce(quantized, axis=-1, keepdims=True)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    top = np.sort(reference, axis=-1)
    margin = top[:, -1] - top[:, -2]
    clear = margin > 2 * error  # no error this size can swap the top two
    agree = reference.argmax(-1) == quantized.argmax(-1)
    return {"max_abs_logit_error": float(error.max()),
            "mean_abs_logit_error": float(np.abs(quantized - reference).mean()),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "top1_agreement": float(agree.mean()),
            "top1_agreement_where_margin_exceeds_2x_error": float(agree[clear].mean())
            if clear.any() else None, "prompts_with_clear_margin": int(clear.sum())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="decode rows")
    parser.add_argument("--pages", type=int, default=8, help="page-table width (pages per row)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both runs")
    parser.add_argument("--lm-head", action="store_true", help="quantize the lm_head too")
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the logit error")
    parser.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    page_size = EngineConfig().page_size
    model_config, engine_config = resolve_model(args.model, EngineConfig(
        max_model_len=args.pages * page_size, max_num_seqs=max(args.rows), min_decode_pages=8,
        num_pages=max(args.rows) * args.pages, dtype=args.dtype))
    kinds = {"float": None, "int8": "int8"}
    models = {name: load_model(args.model, engine_config.dtype, model_config, method,
                               args.lm_head and method is not None)[0]
              for name, method in kinds.items()}
    prompts = np.random.default_rng(0).integers(
        5, min(model_config.vocab_size, 2000), (args.prompts, args.prompt_len), dtype=np.int32)
    logits = {name: np.asarray(next_token_logits(model, jnp.asarray(prompts)), np.float32)
              for name, model in models.items()}
    accuracy = logit_error(logits["float"], logits["int8"])
    runners = {name: ModelRunner(model, model_config, engine_config)
               for name, model in models.items()}
    speed: dict[str, dict] = {}
    for rows in args.rows:
        chunks = decode_chunks(rows, args.pages, page_size,
                               SamplingParams(temperature=0.0, seed=1))
        for _ in range(2):  # alternate, so a burst of load lands on both
            for name, runner in runners.items():
                timed = step_timings(runner, chunks, Timer(args.repeats // 2 or 1))
                entry = speed.setdefault(name, {}).setdefault(str(rows), {"step": [],
                                                                          "execute": []})
                entry["step"].append(timed["step"])
                entry["execute"].append(timed["execute"])
    for name in speed:
        for rows, entry in speed[name].items():
            entry["step_ms"] = float(np.median(entry.pop("step")))
            entry["execute_ms"] = float(np.median(entry.pop("execute")))
            entry["tok_per_s"] = int(rows) * 1000 / entry["execute_ms"]
    ratios = {rows: speed["int8"][rows]["tok_per_s"] / speed["float"][rows]["tok_per_s"]
              for rows in speed["float"]}
    report = {
        "command": "python scripts/bench_quantization.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "jax": jax.__version__,
                    "devices": [str(device) for device in jax.devices()],
                    "cpu_count": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0]},
        "model": {"dir": str(args.model), "layers": model_config.num_layers,
                  "hidden": model_config.hidden_size, "vocab": model_config.vocab_size,
                  "dtype": args.dtype, "lm_head_quantized": args.lm_head},
        "accuracy": accuracy, "speed": speed, "int8_over_float_tok_per_s": ratios,
    }
    print(json.dumps({"accuracy": accuracy, "speed": speed, "ratios": ratios}, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
