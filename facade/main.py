"""Running the facade: `run()` starts uvicorn with `create_app()`; `main()` is its command line.

    python -m facade --host 0.0.0.0 --port 8000 --core-address dns:///tandem-core:50051

`run()` also sets up the process's logging (`facade.logs`: JSON lines by default, uvicorn's
loggers included; uvicorn's own access line is off, the facade writes a richer one).

On SIGTERM uvicorn stops accepting connections, lets in-flight requests (SSE streams included)
finish for up to `TANDEM_DRAIN_TIMEOUT_S` seconds, cancels what is left, and then re-raises
the signal; with the default handler that would kill the process before the caller's `finally`
blocks run (e.g. `tandem serve` stopping its core child). `run()` therefore turns that SIGTERM
into `SystemExit(143)`.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from facade.app import create_app
from facade.logs import configure_logging
from facade.settings import FacadeSettings


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(settings: FacadeSettings | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the facade until interrupted (binds loopback unless told otherwise).

    Ends by raising KeyboardInterrupt (SIGINT) or SystemExit(143) (SIGTERM), in both cases after
    a graceful shutdown, so that the caller's cleanup still runs.
    """
    settings = settings or FacadeSettings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
            log_config=None,  # keep configure_logging()'s handler
            access_log=False,  # the metrics middleware writes the access line
        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tandem OpenAI-compatible facade")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--core-address", default=None, help="gRPC target of the core (else TANDEM_CORE_ADDRESS)"
    )
    parser.add_argument(
        "--api-key-file", type=Path, default=None,
        help="file of accepted API keys, one per line (else TANDEM_API_KEYS_FILE)",
    )  # fmt: skip
    parser.add_argument(
        "--otlp-traces-endpoint", default=None,
        help="OTLP/HTTP receiver of the facade's spans (else TANDEM_OTLP_TRACES_ENDPOINT)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {"core_address": args.core_address} if args.core_address else {}
    if args.otlp_traces_endpoint:
        overrides["otlp_traces_endpoint"] = args.otlp_traces_endpoint
    if args.api_key_file is not None:
        overrides["api_keys_file"] = args.api_key_file
    run(FacadeSettings(**overrides), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
