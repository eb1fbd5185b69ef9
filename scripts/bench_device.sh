#!/usr/bin/env bash
# Accelerator benchmark in one command (≤ 8 minutes on one NVIDIA GPU): builds a ~1.1B-parameter
# random-weight Llama in bf16, serves it with `tandem core` (decode attention through JAX's
# Pallas paged-attention kernel), and prints output tok/s at 1, 32 and 128 streams, the decode
# step time as a fraction of the HBM-bandwidth roofline, and the cold start time.
#
# Needs: JAX with CUDA, Flax, transformers (tokenizers, safetensors), grpcio, protobuf — no
# install step: the repository runs from its checkout (PYTHONPATH). Results also go to
# $OUT/bench_device.json when $OUT is set (else ./bench_device.json).
#
# CPU dry run of the same path (small model, two stream counts):
#   JAX_PLATFORMS=cpu scripts/bench_device.sh --size tiny --streams 1,4
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY'
import importlib, sys
missing = [name for name in ("jax", "flax", "transformers", "tokenizers", "safetensors", "grpc",
                             "google.protobuf", "numpy") if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"bench_device: missing Python packages: {missing}")
import jax
print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}", flush=True)
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null || true
exec timeout 470 "$PYTHON" scripts/bench_device.py --json "${OUT:-.}/bench_device.json" "$@"
