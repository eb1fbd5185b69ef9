"""`facade.main.run()`: serves, and after SIGTERM lets the caller's cleanup run (exit 143)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from tests.facade.conftest import closed_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_runs_callers_cleanup():
    port = closed_port()
    script = textwrap.dedent(
        f"""
        from facade.main import run
        from facade.settings import FacadeSettings
        try:
            run(FacadeSettings(core_address="127.0.0.1:1"), port={port})
        finally:
            print("cleanup ran", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60  # generous: a loaded machine starts Python slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise AssertionError("facade did not start")
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert "cleanup ran" in stdout
    assert process.returncode == 128 + signal.SIGTERM
