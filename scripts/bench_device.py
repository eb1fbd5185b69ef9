"""Accelerator benchmark (run by scripts/bench_device.sh): a ~1.1B-parameter random-weight Llama
in bfloat16, served by `tandem core` on the machine's first accelerator; output tok/s at 1, 32
and 128 streams, the decode step time as a fraction of the HBM-bandwidth roofline, cold start.

Usage: python scripts/bench_device.py [--size 1b] [--streams 1,32,128] [--output-len 128]
           [--prompt-len 128] [--max-model-len 1024] [--work DIR] [--json FILE]

Steps (each timed, all in one run):
  1. write the checkpoint (core/models/tiny.py, size "1b": TinyLlama-1.1B's shape, vocab 32000);
  2. measure the device's read bandwidth in a child process (a jitted sum over 2 GiB);
  3. start `tandem core` with an empty compilation cache: cold start = launch → ready;
  4. bench_serving over gRPC at each stream count (N prompts of --prompt-len, --output-len
     tokens each, `ignore_eos`);
  5. roofline: one decode step must read every weight once: weights bytes ÷ bandwidth. The
     fraction reported is that time ÷ the measured 1-stream TPOT (host overhead included).
`--size tiny --streams 1,4` with JAX_PLATFORMS=cpu is the CPU dry run of the same path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_baseline import _free_port, _wait_ready  # noqa: E402
from bench_prompts import make_prompts  # noqa: E402
from bench_serving import run_benchmark  # noqa: E402

BANDWIDTH_PROBE = """
import json, time, jax, jax.numpy as jnp
x = jnp.ones((2**29,), jnp.float32)  # 2 GiB
total = jax.jit(jnp.sum)
total(x).block_until_ready()
walls = []
for _ in range(10):
    start = time.perf_counter(); total(x).block_until_ready(); walls.append(time.perf_counter() - start)
walls.sort()
print(json.dumps({"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                  "read_bytes_s": x.nbytes / walls[len(walls) // 2]}))
"""


def weights_bytes(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))


def measure_bandwidth() -> dict:
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run([sys.executable, "-c", BANDWIDTH_PROBE], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def serve_and_measure(args, model_dir: Path, home: Path) -> dict:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "core.cli", "core", "--model", str(model_dir),
               "--grpc-port", str(port), "--max-model-len", str(args.max_model_len),
               "--embedding-model", "none", "--dtype", "bfloat16"]
    env = {**os.environ, "TANDEM_HOME": str(home), "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "protos"), os.environ.get("PYTHONPATH", "")])}
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "core.log"
    results: dict = {"core_command": command}
    with open(log_path, "w") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=env)
        try:
            await _wait_ready(target, process, args.startup_timeout_s)
            results["cold_start_s"] = time.monotonic() - started
            print(f"cold start (launch → ready, empty compilation cache): "
                  f"{results['cold_start_s']:.1f} s", flush=True)
            vocab_limit = min(args.vocab_limit, json.loads(
                (model_dir / "config.json").read_text())["vocab_size"])
            for streams in args.streams:
                count = max(streams, 4)
                prompts = make_prompts(count, args.prompt_len, args.seed + streams, 0,
                                       vocab_limit)
                metrics = await run_benchmark("grpc", target, prompts, args.output_len, streams,
                                              warmup_prompts=prompts[:1])
                if metrics["failed"]:
                    raise RuntimeError(f"{streams} streams: {metrics['errors'][:3]}")
                results[f"streams_{streams}"] = metrics
                print(f"{streams:>4} streams: {metrics['output_throughput_tok_s']:9.1f} output "
                      f"tok/s, TPOT p50 {metrics['median_tpot_ms']:.2f} ms, TTFT p50 "
                      f"{metrics['median_ttft_ms']:.1f} ms", flush=True)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1b")
    parser.add_argument("--streams", default="1,32,128")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--vocab-limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout-s", type=float, default=360.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.streams = [int(value) for value in args.streams.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="tandem-device-"))
    report: dict = {"args": {key: str(value) for key, value in vars(args).items()}}

    from core.models.tiny import write_tiny_model

    started = time.monotonic()
    model_dir = write_tiny_model(work / f"llama-{args.size}", "llama", size=args.size,
                                 dtype="bfloat16")
    report["weights_bytes"] = weights_bytes(model_dir)
    print(f"checkpoint: {report['weights_bytes'] / 1e9:.2f} GB bf16 in "
          f"{time.monotonic() - started:.0f} s ({model_dir})", flush=True)
    report["bandwidth"] = measure_bandwidth()
    print(f"device: {report['bandwidth']['device']}, read bandwidth "
          f"{report['bandwidth']['read_bytes_s'] / 1e9:.0f} GB/s", flush=True)
    report.update(asyncio.run(serve_and_measure(args, model_dir, work / "home")))
    # every weight is read once per decode step (the input embedding only by row: left out)
    config = json.loads((model_dir / "config.json").read_text())
    step_bytes = report["weights_bytes"] - 2 * config["vocab_size"] * config["hidden_size"] * (
        0 if config.get("tie_word_embeddings") else 1)
    roofline_ms = 1000 * step_bytes / report["bandwidth"]["read_bytes_s"]
    tpot_ms = report[f"streams_{args.streams[0]}"]["median_tpot_ms"]
    report["roofline"] = {"step_bytes": step_bytes, "roofline_step_ms": roofline_ms,
                          "tpot_ms": tpot_ms, "fraction_of_roofline": roofline_ms / tpot_ms}
    print(f"decode step at {args.streams[0]} stream(s): TPOT {tpot_ms:.2f} ms vs HBM roofline "
          f"{roofline_ms:.2f} ms ({step_bytes / 1e9:.2f} GB of weights) → "
          f"{roofline_ms / tpot_ms:.0%} of the roofline", flush=True)
    summary = {f"tok_s_{n}": report[f"streams_{n}"]["output_throughput_tok_s"]
               for n in args.streams}
    summary.update(cold_start_s=report["cold_start_s"],
                   fraction_of_roofline=report["roofline"]["fraction_of_roofline"],
                   tpot_ms_by_streams={n: report[f"streams_{n}"]["median_tpot_ms"]
                                       for n in args.streams},
                   total_s=time.monotonic() - started)
    report["summary"] = summary
    print("summary:", json.dumps(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
