"""CLI: write tiny random Hugging Face checkpoints (see core/models/tiny.py) for tests and demos.

    python scripts/make_tiny_model.py OUT_DIR
        [--variant llama|llama3|mistral|qwen2|qwen3|qwen3_moe|mixtral|gemma3|all]
        [--dtype float32|bfloat16] [--shards N] [--seed S] [--size tiny|demo|bench|1b]
    python scripts/make_tiny_model.py OUT_DIR --variant bert-cross-encoder|xlm-roberta-cross-encoder
        [--seed S]

With --variant all, each decoder variant goes to OUT_DIR/<variant>. bert-cross-encoder writes a
tiny BertForSequenceClassification reranker, xlm-roberta-cross-encoder a tiny
XLMRobertaForSequenceClassification one (core/models/tiny_cross_encoder.py; float32 only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from core.models.tiny import ALL_VARIANTS, DTYPES, SIZES, write_tiny_model  # noqa: E402
from core.models.tiny_cross_encoder import write_tiny_cross_encoder  # noqa: E402

CROSS_ENCODERS = {"bert-cross-encoder": "bert", "xlm-roberta-cross-encoder": "xlm-roberta"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variant", choices=[*ALL_VARIANTS, *CROSS_ENCODERS, "all"],
                        default="llama")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--shards", type=int, default=1, help="number of safetensors shards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be >= 1")
    if args.variant in CROSS_ENCODERS:
        print(write_tiny_cross_encoder(args.out_dir, seed=args.seed,
                                       family=CROSS_ENCODERS[args.variant]))
        return 0
    variants = ALL_VARIANTS if args.variant == "all" else (args.variant,)
    for variant in variants:
        out = args.out_dir / variant if args.variant == "all" else args.out_dir
        write_tiny_model(out, variant, seed=args.seed, dtype=args.dtype,
                         num_shards=args.shards, size=args.size)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
