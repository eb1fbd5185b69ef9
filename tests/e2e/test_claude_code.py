"""End to end: Claude Code (npm `@anthropic-ai/claude-code`, pinned in package.json) completes a
turn with `claude -p` against `tandem serve` (the tiny model), unchanged, pointed at it by
`ANTHROPIC_BASE_URL`. Its request is shortened to fit the tiny model's context: `--bare` (no
hooks, plugins, CLAUDE.md, background prefetches), a one-line `--system-prompt`, no built-in
tools (`--tools ""`), one turn, and `CLAUDE_CODE_MAX_OUTPUT_TOKENS` (it asks for 32,000 output
tokens otherwise). Nothing leaves the machine: telemetry, error reports, the auto-updater and
other non-essential traffic are switched off, and HOME is a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MODEL

CLAUDE = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "claude"
TIMEOUT_S = 60
MAX_OUTPUT_TOKENS = 16

pytestmark = pytest.mark.skipif(
    not CLAUDE.exists() and not os.environ.get("TANDEM_REQUIRE_CLAUDE_CODE"),
    reason="Claude Code is not installed (npm install)",
)


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


def test_claude_code_completes_a_turn(server, tmp_path):
    assert shutil.which("node") or CLAUDE.exists()
    outcome = _claude(server, tmp_path, "Say hi")
    assert outcome["type"] == "result" and outcome["is_error"] is False, outcome
    assert outcome["subtype"] == "success" and outcome["num_turns"] == 1
    assert isinstance(outcome["result"], str)
    usage = outcome["usage"]
    # the tokens the server reported (Claude Code adds them up from message_start/message_delta)
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 0
    assert 0 < usage["output_tokens"] <= MAX_OUTPUT_TOKENS
