"""Frozen configuration dataclasses of the core and their resolution, done once at start.

Owns: `EngineConfig` (lengths, pages,
budgets, buckets) and `ServerConfig` (addresses, paths), and `resolve_model`: the one function
that turns the operator's requested `EngineConfig` (flags, some left open) and the checkpoint's
config into the final frozen pair — dtype chosen for the machine, max_model_len clamped to the
model's, running sequences and KV pages sized from the memory budget — logged once and passed
down; nothing below re-reads `config.json` or re-derives a size. No JAX at import, so the CLI
parses flags cheaply (resolution asks JAX for the backend when it runs).
"""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.model_config import SUPPORTED_DTYPES, ConfigError, ModelConfig

log = logging.getLogger(__name__)

MAX_PREFILL_ROWS = 4  # chunks packed into one prefill call at most
AUTO_MAX_NUM_SEQS = 64  # running sequences when sized from memory (CPU compute saturates below)
AUTO_MAX_NUM_SEQS_ACCELERATOR = 256  # the same on a GPU/TPU
DEFAULT_MEMORY_FRACTION = 0.4  # of the memory available at start, for weights + KV pool
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of fast bf16 dot units


def resolve_dtype(requested: str | None, checkpoint_dtype: str, backend: str,
                  cpu_flags: frozenset[str] | None = None) -> str | None:
    """The compute dtype for a --dtype value: "auto" picks bfloat16 on accelerators and on CPUs
    with bf16 dot units (AVX512-BF16 / AMX), else float32; None keeps the checkpoint's (None)."""
    if requested != "auto":
        return requested
    if backend != "cpu":
        return "bfloat16"
    flags = cpu_flags if cpu_flags is not None else read_cpu_flags()
    return "bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


def read_cpu_flags() -> frozenset[str]:
    """This machine's /proc/cpuinfo flags (empty where it has none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def available_memory_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by a cgroup v2 limit."""
    available = 8 * 2**30  # fallback where /proc/meminfo is missing
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


@dataclass(frozen=True)
class MemorySizing:
    """Running sequences and KV pages sized from a memory budget (see `size_from_memory`)."""

    max_num_seqs: int
    num_pages: int
    budget_bytes: int  # memory_fraction × available − weights: what the KV pool may take


def size_from_memory(kv_bytes_per_token: int, weights_bytes: int, max_model_len: int,
                     page_size: int, available_bytes: int,
                     memory_fraction: float = DEFAULT_MEMORY_FRACTION,
                     max_num_seqs_cap: int = AUTO_MAX_NUM_SEQS) -> MemorySizing:
    """As vLLM's gpu_memory_utilization / SGLang's mem_fraction_static: a fraction of the
    memory goes to weights + KV pool; the pool holds as many full-length sequences as fit (up
    to the cap), and that many run together, so none is ever preempted for lack of pages."""
    budget = int(memory_fraction * available_bytes) - weights_bytes
    pages_per_seq = -(-max_model_len // page_size)
    seq_bytes = kv_bytes_per_token * page_size * pages_per_seq
    fitting = budget // seq_bytes if budget > 0 else 0
    if fitting < 1:
        raise ConfigError(f"a {memory_fraction:.0%} memory budget of {available_bytes / 2**30:.1f}"
                          f" GiB cannot hold the weights and one sequence of max_model_len "
                          f"{max_model_len}: lower --max-model-len or raise --memory-fraction")
    max_num_seqs = min(max_num_seqs_cap, fitting)
    return MemorySizing(max_num_seqs, max_num_seqs * pages_per_seq, budget)


def bucket(buckets: tuple[int, ...], size: int) -> int:
    """The smallest of the sorted `buckets` that holds `size` (ValueError past the largest)."""
    index = bisect.bisect_left(buckets, size)
    if index == len(buckets):
        raise ValueError(f"{size} exceeds the largest bucket {buckets[-1]}")
    return buckets[index]


def default_buckets(max_value: int, smallest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` up to and including `max_value`."""
    buckets, size = [], smallest
    while size < max_value:
        buckets.append(size)
        size *= 2
    buckets.append(max_value)
    return tuple(buckets)


SCHEDULING_POLICIES = ("fcfs", "priority")  # EngineConfig.scheduling_policy
QUANTIZATIONS = ("int8",)  # EngineConfig.quantization (core/models/quantize.py implements them)


@dataclass(frozen=True)
class EngineConfig:
    """Limits of the generation engine; every shape bucket compiles at warm-up. As requested
    (flags, tests) some fields may be left open — `max_num_seqs` None, `num_pages` None, `dtype`
    "auto" or None; `resolve_model` fills every one in, and engines take only resolved ones."""

    max_model_len: int = 2048  # prompt + completion tokens per sequence (≤ the model's)
    # sequences running together (rows of a decode batch); None: sized from memory_fraction
    max_num_seqs: int | None = 8
    max_waiting: int = 256  # queue room beyond a full batch (see max_unfinished)
    max_num_batched_tokens: int = 512  # tokens per engine step (decodes + prefill chunks)
    min_prefill_bucket: int = 16  # smallest padded prefill chunk
    page_size: int = 16  # tokens per KV page
    num_pages: int | None = None  # KV pool size; None: kv_cache_bytes, else a full batch's worth
    kv_cache_bytes: int | None = None  # KV pool memory budget (used when num_pages is None)
    min_decode_pages: int = 8  # smallest page-table width bucket of decode batches
    enable_prefix_cache: bool = True  # reuse KV pages of shared prompt prefixes
    # compute dtype of weights and KV cache: "float32" or "bfloat16"; requested also "auto"
    # (the machine's best, `resolve_dtype`) or None (the checkpoint's)
    dtype: str | None = None
    retry_after_s: int = 1  # RetryInfo sent with RESOURCE_EXHAUSTED
    tensor_parallel: int = 1  # devices the model and KV pages are split over (engine/sharding.py)
    # fraction of the memory available at start that weights + KV pool may take, when
    # max_num_seqs is None (vLLM's gpu_memory_utilization)
    memory_fraction: float = DEFAULT_MEMORY_FRACTION
    # "fcfs": admission in arrival order; "priority": by Request.priority (lower first), with
    # preemption of lower-priority requests that have not sent their first token
    scheduling_policy: str = "fcfs"
    # weight-only quantization of the linear projections at load time (core/models/quantize.py):
    # None (float weights) or "int8"; the lm_head too only with quantize_lm_head
    quantization: str | None = None
    quantize_lm_head: bool = False
    # append the tokens a grammar forces (llguidance's fast-forward tokens) without sampling
    # them; they are computed in the next step as one chunk (core/engine/loop.py)
    jump_forward: bool = True
    # n-gram speculation: propose up to this many tokens from the prompt and output (the
    # tokens that followed the last match of the sequence's final n-gram), verified in one
    # forward; 0 = off (core/engine/speculative.py)
    speculative_ngram: int = 0
    # async scheduling: while a decode step's sampled tokens are still on device, dispatch the
    # next decode step fed from them, then detokenize/stop/emit the first while the device
    # computes the second (core/engine/async_step.py); steps that need host state first
    # (prefills, grammars, speculation, ...) run as before. On: +5-6% tok/s on the 2-core
    # benchmark machine at 1, 8 and 32 streams (scripts/bench_async_scheduling.py)
    async_scheduling: bool = True

    def __post_init__(self):
        if not 0 <= self.speculative_ngram <= 8:
            raise ConfigError("speculative_ngram must be between 0 and 8")
        for name in ("tensor_parallel", "max_num_seqs", "max_num_batched_tokens",
                     "min_prefill_bucket", "min_decode_pages", "page_size", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_num_seqs is not None and self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError("max_num_batched_tokens must be at least max_num_seqs")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ConfigError(f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}"
                              f", got {self.scheduling_policy!r}")
        if self.quantization not in (None, *QUANTIZATIONS):
            raise ConfigError(f"quantization must be one of none, {', '.join(QUANTIZATIONS)}, "
                              f"got {self.quantization!r}")
        if self.quantize_lm_head and self.quantization is None:
            raise ConfigError("quantize_lm_head needs a quantization")

    @property
    def is_resolved(self) -> bool:
        """Every open field filled in (`resolve_model`): what an engine requires."""
        return (self.max_num_seqs is not None and self.num_pages is not None
                and self.dtype in SUPPORTED_DTYPES)

    @property
    def max_unfinished(self) -> int:
        """Requests an engine holds at once, running and queued together; one more is refused
        with RESOURCE_EXHAUSTED. With every row running, `max_waiting` more may queue."""
        return self.max_num_seqs + self.max_waiting

    @property
    def max_pages_per_seq(self) -> int:
        return -(-self.max_model_len // self.page_size)

    def resolved_num_pages(self, kv_bytes_per_token: int) -> int:
        """The pool size: the flag, else the memory budget, else every row at full length."""
        if self.num_pages is not None:
            pages = self.num_pages
        elif self.kv_cache_bytes is not None:
            pages = self.kv_cache_bytes // (kv_bytes_per_token * self.page_size)
        else:
            pages = self.max_num_seqs * self.max_pages_per_seq
        if pages < self.max_pages_per_seq:
            raise ConfigError(f"the KV pool ({pages} pages of {self.page_size} tokens) cannot "
                              f"hold one sequence of max_model_len {self.max_model_len}")
        return pages

    def prefill_buckets(self) -> tuple[int, ...]:
        """Padded lengths of one prefill chunk (a chunk never exceeds the step's token budget)."""
        largest = min(self.max_num_batched_tokens, self.max_model_len)
        return default_buckets(largest, min(self.min_prefill_bucket, largest))

    def prefill_shapes(self) -> tuple[tuple[int, int], ...]:
        """(rows, chunk length) of packed prefill calls: several sequences' chunks share one
        call (one read of the weights) while rows × length stays within the token budget."""
        shapes = []
        for num_tokens in self.prefill_buckets():
            num_rows = 1
            while True:
                shapes.append((num_rows, num_tokens))
                num_rows *= 4  # rows 1 and 4 (and 2 where 4 does not fit): fewer shapes
                largest = min(MAX_PREFILL_ROWS, self.max_num_seqs,
                              self.max_num_batched_tokens // num_tokens)
                if num_rows > largest:
                    if num_rows // 4 < largest:
                        shapes.append((largest, num_tokens))
                    break
        return tuple(shapes)

    def decode_buckets(self) -> tuple[int, ...]:
        """Padded row counts of a decode batch (one token per row). At least 2 rows: XLA turns a
        one-element scatter into a dynamic-update-slice that copies the whole KV pool (and an
        M = 1 bf16 dot is slow). Steps of 4× keep warm-up bounded as
        max_num_seqs grows (a row of a small batch costs little: decode reads the weights)."""
        largest, buckets, rows = max(2, self.max_num_seqs), [2, 8], 8
        while rows * 4 < largest:
            rows *= 4
            buckets.append(rows)
        return tuple(sorted({min(size, largest) for size in (*buckets, largest)}))

    def verify_buckets(self) -> tuple[int, ...]:
        """Padded row counts of a speculation verify call ([rows, speculative_ngram + 1]
        tokens): 2 (see decode_buckets), and 8 when more sequences run."""
        return (2,) if self.max_num_seqs <= 2 else (2, min(8, self.max_num_seqs))

    def page_buckets(self) -> tuple[int, ...]:
        """Padded page-table widths of a decode batch."""
        return default_buckets(self.max_pages_per_seq,
                               min(self.min_decode_pages, self.max_pages_per_seq))

    def prefill_page_buckets(self) -> tuple[int, ...]:
        """Padded page-table widths of a prefill call: a quarter of the widest and the widest
        (two, so short prompts do not attend over max_model_len keys, at twice the shapes)."""
        quarter = self.max_pages_per_seq // 4
        if quarter * self.page_size < self.prefill_buckets()[-1]:
            return (self.max_pages_per_seq,)
        return (quarter, self.max_pages_per_seq)


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint (sharded with an index, or one file)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ConfigError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def resolve_model(model_dir: Path, requested: EngineConfig, *, hf_config: dict | None = None,
                  backend: str | None = None, memory: tuple[int, int] | None = None
                  ) -> tuple[ModelConfig, EngineConfig]:
    """The checkpoint's config (`hf_config`, its config.json if already read, else read here)
    and the engine configuration resolved against it and this machine; logged once. `backend`
    (default: JAX's) and `memory` ((bytes available, running-sequence cap), default: read off
    the backend) are for tests."""
    model_config = ModelConfig.from_hf_dir(model_dir, hf_config)
    if backend is None:
        import jax

        backend = jax.default_backend()
    dtype = resolve_dtype(requested.dtype, model_config.dtype, backend) or model_config.dtype
    if dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(SUPPORTED_DTYPES)}; got {dtype}")
    max_model_len = min(requested.max_model_len, model_config.max_position_embeddings)
    dtype_bytes = 2 if dtype == "bfloat16" else 4
    kv_per_token = model_config.kv_bytes_per_token(dtype_bytes)
    max_num_seqs, num_pages = requested.max_num_seqs, requested.num_pages
    if max_num_seqs is None:
        checkpoint_bytes = 2 if model_config.dtype == "bfloat16" else 4
        weights_bytes = sum(path.stat().st_size for path in checkpoint_files(model_dir))
        available_bytes, max_num_seqs_cap = memory or available_memory_and_cap(backend)
        sized = size_from_memory(kv_per_token, weights_bytes * dtype_bytes // checkpoint_bytes,
                                 max_model_len, requested.page_size, available_bytes,
                                 requested.memory_fraction, max_num_seqs_cap)
        max_num_seqs = sized.max_num_seqs
        if num_pages is None and requested.kv_cache_bytes is None:
            num_pages = sized.num_pages
        log.info("sized from %.0f%% of the available memory: %d running sequences",
                 100 * requested.memory_fraction, max_num_seqs)
    engine_config = replace(requested, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                            num_pages=num_pages, dtype=dtype)
    engine_config = replace(engine_config,
                            num_pages=engine_config.resolved_num_pages(kv_per_token))
    log.info("engine for %s: %s", model_config.architecture, engine_config)
    return model_config, engine_config


def available_memory_and_cap(backend: str) -> tuple[int, int]:
    """(bytes available to weights + KV pool, running-sequence cap) on this backend: host
    memory on CPU, the first device's allocator limit on an accelerator."""
    if backend == "cpu":
        return available_memory_bytes(), AUTO_MAX_NUM_SEQS
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    free = stats.get("bytes_limit", 16 * 2**30) - stats.get("bytes_in_use", 0)
    return free, AUTO_MAX_NUM_SEQS_ACCELERATOR


@dataclass(frozen=True)
class ServerConfig:
    """Where the core listens and what it serves."""

    model_dir: Path  # Hugging Face model directory
    model_name: str = ""  # served model id; empty: the directory's name
    host: str = "127.0.0.1"  # gRPC bind address (loopback unless told otherwise)
    grpc_port: int = 50051
    engine: EngineConfig = field(default_factory=EngineConfig)  # as requested (resolved at load)
    drain_timeout_s: float = 30.0  # graceful shutdown grace period
    # readiness turns NOT_SERVING while an engine has held unfinished work this long without
    # finishing a step (a stalled engine), SERVING again once it moves; 0 turns it off
    stall_timeout_s: float = 60.0
    metrics_port: int | None = None  # Prometheus endpoint of the core; None: off
    trust_request_chat_template: bool = False  # let requests bring their own Jinja template
    embedding_model_dir: Path | None = None  # a second model served for Embed; None: none
    embedding_model_name: str = ""  # its id; empty: the directory's name
    rerank_model_dir: Path | None = None  # a cross-encoder served for Rerank; None: none
    rerank_model_name: str = ""  # its id; empty: the directory's name
    encoder_max_batch_rows: int = 64  # the largest call of an encoder (embedding, rerank) in rows
    decoder_pooling: str | None = None  # "last" or "mean": the main decoder embeds too
    tool_call_parser: str = "auto"  # tool-call syntax of the main model ("auto": its template)
    reasoning_parser: str = "auto"  # think-block syntax of the main model ("auto": its template)
    # JSON Schema objects without additionalProperties stay open (else closed, as vLLM's)
    json_open_objects: bool = False
