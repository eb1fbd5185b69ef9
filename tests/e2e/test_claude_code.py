"""End to end: Claude Code (npm `@anthropic-ai/claude-code`, pinned in package.json) completes a
turn with `claude -p` against `tandem serve` on the tiny model, unchanged, pointed at it by
`ANTHROPIC_BASE_URL`.

What is shortened, and why: Claude Code's request is cut down to fit the tiny model's context
(SERVER_MAX_MODEL_LEN) with `--bare` (no hooks, plugins, CLAUDE.md, background prefetches), a
one-line `--system-prompt`, no built-in tools (`--tools ""`), one turn, and
`CLAUDE_CODE_MAX_OUTPUT_TOKENS` (it asks for 32,000 output tokens otherwise): about 100-150
prompt tokens. Claude Code treats an answer cut at max_tokens as an error and asks again, and
a random tiny model (sampled: Claude Code sends no temperature) almost never ends by itself; so
this module's server serves a copy of the tiny Llama whose generation_config.json lists every
even token id as an end-of-sequence token besides its own (1 and 3): each sampled token ends
the answer with probability about one half, so it ends within MAX_OUTPUT_TOKENS (odds of not:
about 2^-32). The weights, tokenizer, template and engine are the `server` fixture's (its
compiled buckets load from the session's store; no embedding model). Nothing leaves the
machine: telemetry, error reports, the auto-updater and other non-essential traffic are
switched off, and HOME is a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    MODEL,
    SERVER_ENGINE_FLAGS,
    Served,
    core_env,
    free_port,
    retry_on_taken_port,
    stop_process,
    wait_for_http,
)

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = ROOT / "node_modules" / ".bin" / "claude"
TIMEOUT_S = 60
MAX_OUTPUT_TOKENS = 32

pytestmark = pytest.mark.skipif(
    not CLAUDE.exists() and not os.environ.get("TANDEM_REQUIRE_CLAUDE_CODE"),
    reason="Claude Code is not installed (npm install)",
)


def _ending_copy(model_dir: Path, out_dir: Path) -> Path:
    """The tiny model, with every even token id (and its own) ending the answer."""
    shutil.copytree(model_dir, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    path = out_dir / "generation_config.json"
    generation = json.loads(path.read_text()) if path.exists() else {}
    own = generation.get("eos_token_id", config.get("eos_token_id", []))
    own = own if isinstance(own, list) else [own]
    generation["eos_token_id"] = sorted(set(own) | set(range(0, config["vocab_size"], 2)))
    path.write_text(json.dumps(generation))
    return out_dir


@pytest.fixture(scope="module")
def ending_server(server, tiny_models, tmp_path_factory):
    """`tandem serve` on the ending copy (after `server`, whose core filled the store)."""
    root = tmp_path_factory.mktemp("claude-code")
    model_dir = _ending_copy(Path(tiny_models["llama"]), root / "llama")

    def start() -> tuple[subprocess.Popen, Served]:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log_path = root / f"serve-{http_port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "serve", "--model", str(model_dir),
                 "--served-model-name", MODEL, "--port", str(http_port),
                 "--grpc-port", str(grpc_port), *SERVER_ENGINE_FLAGS,
                 "--metrics-port", str(metrics_port), "--embedding-model", "none"],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=core_env())
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_for_http(f"{base}/ready", process, log_path, timeout_s=480)
        except BaseException:
            stop_process(process)
            raise
        return process, Served(base, f"127.0.0.1:{grpc_port}",
                               f"http://127.0.0.1:{metrics_port}/metrics")

    process, served = retry_on_taken_port(start)
    try:
        yield served
    finally:
        stop_process(process, timeout_s=60)


def _claude(server, home: Path, *args: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.base,
        "ANTHROPIC_API_KEY": "unused",  # the server has no keys; Claude Code needs one set
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        [str(CLAUDE), "-p", *args, "--bare", "--system-prompt", "Be terse.", "--tools", "",
         "--model", MODEL, "--max-turns", "1", "--no-session-persistence",
         "--output-format", "json"],
        env=env, cwd=home, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.stdout.strip(), f"no output (rc {result.returncode}):\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_claude_code_completes_a_turn(ending_server, tmp_path):
    outcome = _claude(ending_server, tmp_path, "Say hi")
    assert outcome["type"] == "result" and outcome["is_error"] is False, outcome
    assert outcome["subtype"] == "success" and outcome["stop_reason"] == "end_turn"
    assert isinstance(outcome["result"], str)  # what the tiny model said (often nothing)
    usage = outcome["usage"]
    # the tokens the server reported (Claude Code adds them up from message_start/message_delta)
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 0
    # (Claude Code asks again after an empty answer: a turn may take more than one request)
    assert 0 < usage["output_tokens"] <= outcome["num_turns"] * MAX_OUTPUT_TOKENS
