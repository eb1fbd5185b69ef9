"""End to end: the Codex CLI (npm `@openai/codex`, pinned in package.json) completes a turn
with `codex exec` against `tandem serve` on the tiny model, unchanged, through a custom model
provider (`wire_api = "responses"`: it streams POST /v1/responses).

What is shortened, and why: Codex's request is cut down to fit the tiny model's context
(SERVER_MAX_MODEL_LEN) by its own config (a temporary CODEX_HOME/config.toml): a one-line
`model_instructions_file` replaces its base instructions; the environment-context, permissions
and apps messages are off; web search, the shell tool, `request_user_input`, sub-agents, goals,
apps, plugins, skills (bundled ones too), image generation, tool suggestions and hooks are off.
What is left is about 2 KB of JSON, about 550 prompt tokens: a developer and a user message and
one small function tool, `view_image`, kept because with no tool at all Codex sends
`"tools": []` with `tool_choice: "auto"`, which Tandem refuses (400 `param: tools`). It also
sends `store: false`, `include: ["reasoning.encrypted_content"]`, `reasoning: {}`,
`prompt_cache_key`, `client_metadata`, `parallel_tool_calls` and `id`s on its input messages,
which Tandem accepts. Codex sends no temperature or output limit, so (as for Claude Code) the
server is the ending copy of the tiny Llama from tests/e2e/test_claude_code.py: each sampled
token ends the answer with probability about one half. Nothing leaves the machine: analytics
and feedback are off, the update check is off, the provider's retries are 0, HOME is a
temporary directory and Codex talks only to the provider's base_url.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.e2e.test_claude_code import ending_server  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
CODEX = ROOT / "node_modules" / ".bin" / "codex"
TIMEOUT_S = 60
API_KEY_ENV = "TANDEM_API_KEY"

pytestmark = pytest.mark.skipif(
    not CODEX.exists() and not os.environ.get("TANDEM_REQUIRE_CODEX"),
    reason="the Codex CLI is not installed (npm install)",
)

# (view_image stays on: with no tool at all Codex sends `"tools": []`, which Tandem refuses.)
FEATURES_OFF = ("shell_tool", "multi_agent_v2", "goals", "apps", "plugins",
                "skill_search", "image_generation", "tool_suggest", "sleep_tool", "hooks",
                "memories")


def _config(server, instructions: Path) -> str:
    """config.toml: the `tandem` provider, and everything that would lengthen the prompt off."""
    features = "\n".join(f"{name} = false" for name in FEATURES_OFF)
    return f"""\
model = "{MODEL}"
model_provider = "tandem"
model_instructions_file = "{instructions}"
web_search = "disabled"
include_environment_context = false
include_permissions_instructions = false
include_apps_instructions = false
check_for_update_on_startup = false
model_reasoning_summary = "none"

[analytics]
enabled = false

[feedback]
enabled = false

[agents]
enabled = false

[skills.bundled]
enabled = false

[tools.experimental_request_user_input]
enabled = false

[features]
{features}

[model_providers.tandem]
name = "Tandem"
base_url = "{server.base}/v1"
wire_api = "responses"
env_key = "{API_KEY_ENV}"
request_max_retries = 0
stream_max_retries = 0
"""


def _codex(server, root: Path, prompt: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    home, codex_home, work = root / "home", root / "codex-home", root / "work"
    for path in (home, codex_home, work):
        path.mkdir()
    instructions = root / "instructions.md"
    instructions.write_text("Be terse.\n")
    (codex_home / "config.toml").write_text(_config(server, instructions))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        API_KEY_ENV: "unused",  # the server has no keys; the provider needs one set
        "OTEL_SDK_DISABLED": "true",
    }
    result = subprocess.run(
        [str(CODEX), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
         "--sandbox", "read-only", "--json", prompt],
        env=env, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, events


def test_codex_exec_completes_a_turn(ending_server, tmp_path):  # noqa: F811
    result, events = _codex(ending_server, tmp_path, "Say hi")
    detail = f"rc {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, detail
    kinds = [event["type"] for event in events]
    assert "turn.failed" not in kinds and "error" not in kinds, detail
    assert kinds[0] == "thread.started" and kinds[-1] == "turn.completed", detail
    messages = [event["item"] for event in events if event["type"] == "item.completed"
                and event["item"]["type"] == "agent_message"]
    assert len(messages) == 1 and isinstance(messages[0]["text"], str), detail  # (often "")
    usage = events[-1]["usage"]  # the tokens the server reported in response.completed
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, detail
