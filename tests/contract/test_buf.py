"""The contract's buf checks: lint, the breaking-change check against the last release (git tag
v0.1.0), and client generation (TypeScript always, Go when its plugins are installed), with the
generated TypeScript client compiled and run against a real core.

The tools are the npm packages pinned in package.json/package-lock.json (`npm ci`). Without them
these tests skip, unless TANDEM_REQUIRE_BUF=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "node_modules" / ".bin"
RELEASE_TAG = "v0.1.0"  # the last release of protos/: the baseline of `buf breaking`
RELEASE_COMMIT = "52b6dac4197bd025e58abd31dce5b7729d74d8c9"  # what v0.1.0 tags


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("TANDEM_REQUIRE_BUF") == "1":
        pytest.fail(f"{why} (TANDEM_REQUIRE_BUF=1)")
    pytest.skip(why)


@pytest.fixture(scope="session")  # session: decided before the session-scoped `server` starts
def tool_env() -> dict[str, str]:
    _need((BIN / "buf").exists() and (BIN / "protoc-gen-es").exists(),
          "node_modules/.bin/buf is missing: run `npm ci` (package.json pins buf and the plugins)")
    _need(shutil.which("node") is not None, "node is not installed")
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_buf_lint_passes(tool_env):
    result = run(["buf", "lint"], tool_env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def against(tool_env) -> str:
    """The release as a buf input: by its tag, or by its commit where a clone lacks tags (a
    branch pushed without them); a shallow clone with neither fails under TANDEM_REQUIRE_BUF."""
    tagged = run(["git", "tag", "--list", RELEASE_TAG], tool_env)
    if tagged.returncode == 0 and tagged.stdout.strip() == RELEASE_TAG:
        return f"{ROOT / '.git'}#tag={RELEASE_TAG},subdir=protos"
    present = run(["git", "cat-file", "-e", f"{RELEASE_COMMIT}^{{commit}}"], tool_env)
    _need(present.returncode == 0,
          f"neither git tag {RELEASE_TAG} nor its commit {RELEASE_COMMIT[:12]} is in this clone")
    return f"{ROOT / '.git'}#ref={RELEASE_COMMIT},subdir=protos"


def test_no_breaking_change_against_the_last_release(tool_env, against):
    result = run(["buf", "breaking", "protos", "--against", against], tool_env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_catches_a_renumbered_field(tool_env, against, tmp_path):
    """The check is not vacuous: renumbering GenerateRequest.model fails it."""
    shutil.copytree(ROOT / "protos", tmp_path / "protos",
                    ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    proto = tmp_path / "protos" / "tandem" / "v1" / "inference.proto"
    source = proto.read_text()
    marker = ("message GenerateRequest {\n"
              "  // Empty: the core's default generative model.\n"
              "  string model = 1;")
    assert marker in source
    proto.write_text(source.replace(marker, marker.replace("model = 1;", "model = 99;")))
    result = run(["buf", "breaking", str(tmp_path / "protos"), "--against", against], tool_env)
    assert result.returncode != 0
    assert "GenerateRequest" in result.stdout + result.stderr


def _template(env: dict[str, str]) -> tuple[dict, list[str]]:
    """buf.gen.yaml less the local plugins that are not installed (Go's, without `go install`)."""
    import yaml

    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    plugins = [p for p in template["plugins"] if shutil.which(p["local"], path=env["PATH"])]
    missing = [p["local"] for p in template["plugins"] if p not in plugins]
    assert "protoc-gen-es" in [p["local"] for p in plugins]
    return {**template, "plugins": plugins}, missing


def test_generated_typescript_client_calls_the_core(tool_env, tmp_path, server):
    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    template, missing = _template(tool_env)
    result = run(["buf", "generate", "--template", json.dumps(template), "-o", str(tmp_path)],
                 tool_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gen/ts/tandem/v1/inference_pb.ts").is_file()
    if "protoc-gen-go" not in missing:
        assert (tmp_path / "gen/go/tandem/v1/inference.pb.go").is_file()
    if "protoc-gen-go-grpc" not in missing:
        assert (tmp_path / "gen/go/tandem/v1/inference_grpc.pb.go").is_file()

    # An internal service's TypeScript package: the generated code plus
    # tests/contract/clients/ts_client.ts,
    # type-checked strictly and compiled with the pinned tsc, then run with node.
    shutil.copy(ROOT / "tests/contract/clients/ts_client.ts", tmp_path / "ts_client.ts")
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    (tmp_path / "package.json").write_text('{"type": "module", "private": true}\n')
    compiled = run(["tsc", "--strict", "--skipLibCheck", "--target", "es2022",
                    "--module", "nodenext", "--moduleResolution", "nodenext", "--types", "node",
                    "--outDir", "out", "ts_client.ts"], tool_env, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = run(["node", "out/ts_client.js", server.grpc_target], tool_env, cwd=tmp_path, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    got = json.loads(ran.stdout.strip().splitlines()[-1])

    # The same calls through the Python stubs.
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        chunks = list(stub.Generate(pb.GenerateRequest(
            text="Once upon a time", sampling=pb.SamplingParams(temperature=0),
            stopping=pb.StoppingCriteria(max_tokens=8, ignore_eos=True)), timeout=30))
        tokenized = stub.Tokenize(pb.TokenizeRequest(text="Once upon a time"))
        models = stub.ListModels(pb.ListModelsRequest())
    want_ids = [i for chunk in chunks for choice in chunk.choices for i in choice.token_ids]
    assert got["tokenIds"] == want_ids and len(want_ids) == 8
    assert got["text"] == "".join(c.text for chunk in chunks for c in chunk.choices)
    assert got["finishReason"] == "LENGTH"
    assert (got["promptTokens"], got["completionTokens"]) == (
        chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
    assert got["requestId"] == "ts-client-1"
    assert got["models"] == [m.id for m in models.models]
    assert got["tokenizeIds"] == list(tokenized.token_ids)
    assert got["errorCode"] == "NotFound"
