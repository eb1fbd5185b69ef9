"""The container images of deploy/docker/: static checks of both Dockerfiles and .dockerignore,
the core's gRPC health probe against a real core (NOT_SERVING → SERVING → port closed), the
facade's HTTP HEALTHCHECK command against a real facade, and the facade's no-JAX build guard.

`TANDEM_DOCKER_TESTS=1` adds a real `docker build` of the facade image (needs a Docker daemon
that can pull the base image)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
PROBE = DOCKER_DIR / "grpc_health_probe.py"
READY_SERVICE = "tandem.v1.Inference"
MODEL_STACK = ("jax", "torch", "transformers")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|build-essential|make|cmake|apt-get install|apk add)\b")


# ---- a small Dockerfile parser -------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, line continuations joined."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return result


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the build stages in order."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)),
                           words[0])
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            result.append(Stage(image, name))
        elif not result:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default.strip("\"'")
        else:
            result[-1].instructions.append((keyword, args))
    return global_args, result


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD / HEALTHCHECK ... CMD."""
    start = args.index("[")
    value = json.loads(args[start:])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """(options, exec-form command) of the stage's single HEALTHCHECK."""
    checks = stage.all("HEALTHCHECK")
    assert len(checks) == 1, f"expected one HEALTHCHECK, got {checks}"
    options_text, sep, _ = checks[0].partition("CMD")
    assert sep, "HEALTHCHECK without CMD"
    options = dict(opt.lstrip("-").split("=", 1) for opt in options_text.split())
    return options, exec_form(checks[0])


def pip_installs(stage: Stage) -> list[str]:
    """Every `pip install ...` command of the stage's RUNs."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;|\|\|", run):
            if re.search(r"\bpip3? install\b", part):
                commands.append(part.strip())
    return commands


def is_pinned(image: str) -> bool:
    """A digest, or a tag that names a version (has a digit) and is not `latest`."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return tag != "latest" and "$" not in tag and bool(re.search(r"\d", tag))


DOCKERFILES = {"core": DOCKER_DIR / "Dockerfile.core", "facade": DOCKER_DIR / "Dockerfile.facade"}


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def image(request) -> tuple[str, list[Stage]]:
    return request.param, stages(DOCKERFILES[request.param])[1]


# ---- static checks ---------------------------------------------------------------------------


def test_multi_stage_with_every_base_pinned(image):
    name, parsed = image
    assert len(parsed) >= 2, f"{name}: not multi-stage"
    stage_names = {s.name for s in parsed if s.name}
    for stage in parsed:
        if stage.image in stage_names:  # FROM an earlier stage
            continue
        assert is_pinned(stage.image), f"{name}: FROM {stage.image} is not pinned"
    assert parsed[0].name, f"{name}: the builder stage needs a name for COPY --from"


def test_runtime_stage_copies_only_the_venv_and_runs_as_non_root(image):
    name, parsed = image
    builder, runtime = parsed[0], parsed[-1]
    copies_from = [c for c in runtime.all("COPY") if c.startswith("--from")]
    assert copies_from == [f"--from={builder.name} /opt/venv /opt/venv"], copies_from
    assert pip_installs(runtime) == [], f"{name}: the runtime stage installs packages"
    for run in runtime.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"{name}: build tools in the runtime stage: {run}"
    users = runtime.all("USER")
    assert users, f"{name}: the runtime stage runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} is not a numeric non-root"
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    keywords = [kw for kw, _ in runtime.instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], f"{name}: RUN after the final USER runs as it"
    assert runtime.all("CMD"), f"{name}: no CMD"


def test_core_image():
    _, parsed = stages(DOCKERFILES["core"])
    builder, runtime = parsed[0], parsed[-1]
    installs = pip_installs(builder)
    assert any('".[core]"' in cmd for cmd in installs), installs
    # GPU/TPU variant: a build arg adds jax[<extra>] on top of the CPU jax of the core extra.
    assert any(arg.startswith("JAX_EXTRA") for arg in builder.all("ARG"))
    assert any('"jax[$JAX_EXTRA]"' in cmd for cmd in installs), installs
    assert exec_form(runtime.all("CMD")[-1]) == [
        "tandem", "core", "--grpc-host", "0.0.0.0", "--metrics-port", "9090"]
    assert "/models" in " ".join(runtime.all("VOLUME"))
    options, command = healthcheck(runtime)
    assert command[0] == "python" and command[1].endswith("/grpc_health_probe.py"), command
    assert command[command.index("--service") + 1] == READY_SERVICE, command
    assert f"deploy/docker/grpc_health_probe.py {command[1]}" in runtime.all("COPY")
    assert float(options["start-period"].rstrip("s")) >= 60, "model load + compile need time"
    # The probe's default port is the one the image's core listens on.
    assert "TANDEM_GRPC_PORT=50051" in " ".join(runtime.all("ENV"))
    assert "50051" in " ".join(runtime.all("EXPOSE"))


def test_facade_image():
    _, parsed = stages(DOCKERFILES["facade"])
    runtime = parsed[-1]
    installs = [cmd for stage in parsed for cmd in pip_installs(stage)]
    extras = {extra for cmd in installs for group in re.findall(r"\.\[([^\]]*)\]", cmd)
              for extra in group.split(",")}
    assert extras == {"facade"}, f"the facade image installs extras {extras}"
    for cmd in installs:
        for package in MODEL_STACK:
            assert not re.search(rf"\b{package}\b", cmd.replace(".[facade]", "")), cmd
    guard = no_model_stack_guard()
    assert guard, "no RUN in the runtime stage fails the build when jax/torch/transformers import"
    keywords = [(kw, args) for kw, args in runtime.instructions]
    copy_venv = next(i for i, (kw, args) in enumerate(keywords)
                     if kw == "COPY" and "/opt/venv" in args)
    guard_at = next(i for i, (kw, args) in enumerate(keywords) if kw == "RUN" and args == guard)
    assert guard_at > copy_venv, "the guard must check the final venv"
    options, command = healthcheck(runtime)
    text = " ".join(command)
    assert command[0] == "python" and "urllib.request" in text and "/health" in text, command
    assert "curl" not in text and "wget" not in text
    assert exec_form(runtime.all("CMD")[-1])[:2] == ["tandem", "facade"]
    assert "0.0.0.0" in exec_form(runtime.all("CMD")[-1])


def no_model_stack_guard() -> str:
    """The facade runtime stage's RUN that checks jax, torch and transformers are absent."""
    runtime = stages(DOCKERFILES["facade"])[1][-1]
    for run in runtime.all("RUN"):
        if all(package in run for package in MODEL_STACK) and "sys.exit" in run:
            return run
    return ""


def test_facade_guard_fails_where_the_model_stack_imports_and_passes_where_not():
    """Run the Dockerfile's own guard command: this test environment has jax (build must fail);
    with site-packages off (`-S`) nothing of the stack is importable (build must pass)."""
    argv = shlex.split(no_model_stack_guard())
    assert argv[:2] == ["python", "-c"], argv
    failing = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True,
                             timeout=30)
    assert failing.returncode != 0 and "jax" in failing.stderr, failing
    passing = subprocess.run([sys.executable, "-S", "-c", argv[2]], capture_output=True,
                             text=True, timeout=30)
    assert passing.returncode == 0, passing.stderr


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().lstrip("/") for line in lines
            if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, without `!` exceptions: a path is out if it or a parent matches
    (a leading `**/` also matches at the root)."""
    patterns = patterns + [p[3:] for p in patterns if p.startswith("**/")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, p) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = dockerignore_patterns()
    assert not any(p.startswith("!") for p in patterns), "the checker does not model exceptions"
    for heavy in (".venv", ".git", ".sdk", ".pytest_cache", "tests", "docs/bench", "build",
                  "node_modules", "core/__pycache__", "tandem.egg-info"):
        assert ignored(heavy, patterns), f".dockerignore lets {heavy} into the build context"
    for dockerfile in DOCKERFILES.values():
        for stage in stages(dockerfile)[1]:
            for copy in stage.all("COPY"):
                if copy.startswith("--from"):
                    continue
                for source in copy.split()[:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
                    assert not ignored(source, patterns), f".dockerignore drops {source}"
    for needed in ("core/service/server.py", "facade/app.py", "protos/tandem/v1/inference.proto",
                   "protos/tandem/v1/inference_pb2.py"):
        assert not ignored(needed, patterns), needed


def test_images_install_every_package():
    """The images `pip install .` (not -e): every package directory must be in the wheel."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = {"core": ROOT / "core", "facade": ROOT / "facade",
             "tandem": ROOT / setuptools["package-dir"]["tandem"]}
    found = {".".join((name, *init.parent.relative_to(root).parts))
             for name, root in roots.items() for init in root.rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


# ---- the probes against real processes -----------------------------------------------------


async def probe(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROBE), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    return process.returncode, output.decode()


async def test_grpc_probe_against_a_real_core(tiny_models):
    from core.config import EngineConfig, ServerConfig
    from core.service.server import CoreServer

    config = ServerConfig(model_dir=Path(tiny_models["llama"]), model_name="tiny-llama",
                          grpc_port=0, engine=EngineConfig(  # one bucket each: compiles fast
                              max_model_len=32, max_num_seqs=1, max_num_batched_tokens=16,
                              min_decode_pages=2))
    server = CoreServer(config)
    port = await server.start()
    addr = f"127.0.0.1:{port}"
    stopped = False
    try:
        # Bound but not loaded: live, not ready.
        assert await probe("--addr", addr, "--service", "") == (0, "service '' is SERVING\n")
        code, output = await probe("--addr", addr)  # default service: tandem.v1.Inference
        assert code == 4 and "NOT_SERVING" in output, output
        await server.load()
        code, output = await probe("--addr", addr, "--service", READY_SERVICE)
        assert code == 0 and "SERVING" in output, output
        code, output = await probe("--addr", addr, "--service", "no.such.Service")
        assert code == 3 and "NOT_FOUND" in output, output
        # The image's HEALTHCHECK command as written, pointed at this core by the env var.
        _, command = healthcheck(stages(DOCKERFILES["core"])[1][-1])
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(PROBE), *command[2:], env={**os.environ, "TANDEM_GRPC_PORT":
                                                          str(port)})
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
        await server.drain_and_stop()
        stopped = True
        code, output = await probe("--addr", addr, "--connect-timeout", "1")
        assert code == 2 and "cannot connect" in output, output
    finally:
        if not stopped:
            await server.drain_and_stop()


async def test_grpc_probe_bad_arguments():
    assert (await probe("--no-such-flag"))[0] == 1


def test_facade_http_healthcheck_against_a_real_facade(tmp_path):
    port = free_port()
    _, command = healthcheck(stages(DOCKERFILES["facade"])[1][-1])
    assert command[:2] == ["python", "-c"] and ":8000/" in command[2]
    check = [sys.executable, "-c", command[2].replace(":8000/", f":{port}/")]
    log_path = tmp_path / "facade.log"
    with open(log_path, "w") as log_file:
        facade = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "facade", "--port", str(port),
             "--core", f"127.0.0.1:{free_port()}"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60  # generous: a loaded machine starts Python slowly
            while True:
                assert facade.poll() is None, log_path.read_text()
                result = subprocess.run(check, capture_output=True, timeout=10)
                if result.returncode == 0:
                    break
                assert time.monotonic() < deadline, f"no healthy facade:\n{log_path.read_text()}"
                time.sleep(0.2)
        finally:
            facade.terminate()
            facade.wait(timeout=20)
    assert subprocess.run(check, capture_output=True, timeout=10).returncode != 0


# ---- opt-in: a real image build -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TANDEM_DOCKER_TESTS") != "1",
                    reason="set TANDEM_DOCKER_TESTS=1 to build the images with docker")
@pytest.mark.timeout(1800)
def test_facade_image_builds_without_the_model_stack():
    assert shutil.which("docker"), "docker CLI not found"
    tag = "tandem-facade:pytest"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILES["facade"]), "-t", tag, str(ROOT)],
                   check=True, timeout=1700)
    for package in MODEL_STACK:
        result = subprocess.run(["docker", "run", "--rm", tag, "python", "-c",
                                 f"import {package}"], capture_output=True, timeout=120)
        assert result.returncode != 0, f"{package} imports inside the facade image"
    user = subprocess.run(["docker", "run", "--rm", tag, "id", "-u"], capture_output=True,
                          text=True, check=True, timeout=120)
    assert user.stdout.strip() == "10001"
