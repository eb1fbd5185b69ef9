"""Time `tandem serve` from launch to ready, cold (empty compilation cache) then warm (a restart
that reuses it), with whatever flags are given after `--` (none: both default models).

Usage: python scripts/bench_startup.py [--home DIR] [--runs cold,warm] [--json PATH]
           [-- serve flags...]

Prints one line per run (seconds to `/ready` answering 200, and the warm-up shape count from the
log) and a JSON summary. `--home` is the TANDEM_HOME the runs share (default: a fresh temporary
directory, so the first run is cold: no demo model, no compilation cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_to_ready(home: Path, serve_flags: list[str], log_path: Path,
                  timeout_s: float = 900.0) -> float:
    """Launch `tandem serve`, poll /ready, stop it; seconds from launch to the first 200."""
    http_port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "core.cli", "serve", "--port", str(http_port),
               "--grpc-port", str(grpc_port), *serve_flags]
    env = {**os.environ, "TANDEM_HOME": str(home), "JAX_PLATFORMS": "cpu"}
    started = time.monotonic()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=env)
        try:
            while time.monotonic() - started < timeout_s:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=2).status_code \
                            == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            raise TimeoutError(f"not ready within {timeout_s} s")
        finally:
            process.terminate()
            process.wait(timeout=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--runs", default="cold,warm")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(own)
    home = args.home or Path(tempfile.mkdtemp(prefix="tandem-startup-"))
    home.mkdir(parents=True, exist_ok=True)
    results = {}
    for run in args.runs.split(","):
        log_path = home / f"serve-{run}.log"
        seconds = time_to_ready(home, serve_flags, log_path)
        shapes = len(re.findall(r"warm-up \d+/\d+", log_path.read_text()))
        results[run] = {"seconds_to_ready": round(seconds, 1), "warmup_shapes_logged": shapes}
        print(f"{run}: ready in {seconds:.1f} s ({shapes} shapes compiled/loaded at warm-up)",
              flush=True)
    summary = json.dumps({"command": "python scripts/bench_startup.py " + " ".join(argv),
                          "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "flags": serve_flags, "home": str(home),
                          "load_average": os.getloadavg(), "cpus": os.cpu_count(), **results})
    print(summary)
    if args.json is not None:
        args.json.write_text(summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
