"""The oldest and the newest supported `openai` SDK both drive a real `tandem serve`.

tests/e2e/sdk_scenario.py (sync + async, streaming and not, chat + completions, errors, usage and
`cached_tokens`, `x-request-id` through `with_raw_response`) runs in a subprocess:

- **oldest**: openai 1.0.0 — the first release of the `OpenAI()` client API — installed apart
  from the venv by the README's test command / .ci/run into `.sdk/openai-oldest` and put first
  on `PYTHONPATH`, with the dependencies it resolved there;
- **newest**: the venv's own `openai` (the `test` extra installs the latest release).

Each run reports the `openai.__version__` and module path it really imported. Without
`.sdk/openai-oldest` the oldest run is skipped, unless TANDEM_REQUIRE_SDK_MATRIX=1 (set by the
test command of README.md and .ci/run), which makes it a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("sdk_scenario.py")
OLDEST_DIR = ROOT / ".sdk" / "openai-oldest"
OLDEST_VERSION = "1.0.0"  # keep in step with the README's test command and .ci/run
REQUIRE = os.environ.get("TANDEM_REQUIRE_SDK_MATRIX") == "1"


def _installed_version(path: Path) -> str | None:
    dists = [d for d in importlib.metadata.distributions(path=[str(path)])
             if d.metadata["Name"].lower() == "openai"]
    return dists[0].version if dists else None


def _environment(which: str) -> tuple[dict[str, str], str, Path]:
    """Environment for the subprocess, the version it must import, and where from."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if which == "newest":
        return env, importlib.metadata.version("openai"), Path(sys.prefix)
    found = _installed_version(OLDEST_DIR) if OLDEST_DIR.is_dir() else None
    if found is None:
        reason = (f"no openai SDK in {OLDEST_DIR.relative_to(ROOT)}; install it with "
                  f'pip install --upgrade --target .sdk/openai-oldest "openai=={OLDEST_VERSION}" '
                  '"httpx<0.28"  (the README test command does)')
        if REQUIRE:
            pytest.fail(f"TANDEM_REQUIRE_SDK_MATRIX=1: {reason}")
        pytest.skip(reason)
    assert found == OLDEST_VERSION, (
        f"{OLDEST_DIR} holds openai {found}, expected {OLDEST_VERSION}: reinstall it")
    env["PYTHONPATH"] = str(OLDEST_DIR)
    return env, OLDEST_VERSION, OLDEST_DIR


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_sdk_scenario(request, which):
    env, version, location = _environment(which)  # skips before starting a server
    server = request.getfixturevalue("server")
    result = subprocess.run([sys.executable, str(SCENARIO), server.base], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"openai {version}:\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == version
    assert Path(report["file"]).resolve().is_relative_to(location.resolve()), report["file"]
    assert len(report["checks"]) == 27, report["checks"]  # every step of the scenario ran
