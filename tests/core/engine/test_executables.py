"""The warm-up's executable store: a second process loads what the first compiled (no tracing)
and runs it to the same results; the key covers what the executable depends on; a bad file is
compiled again. Each start is its own process, as a restart is, with JAX's persistent cache off
(as `tandem core` runs: an executable from that cache cannot be stored)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

START = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from core.engine import executables

store, static = sys.argv[1], sys.argv[2]
executables.configure(__import__("pathlib").Path(store))
traces = []

def scaled(weights, x):
    traces.append(x.shape[0])  # runs only while tracing
    return {"out": x @ weights * 3.0, "doubled": x * 2}, x.sum()  # x's buffer is reused

function = jax.jit(scaled, donate_argnums=(1,))
weights = jnp.arange(12.0).reshape(4, 3)
jobs = [executables.CompileJob(f"scaled {rows}", function,
                               (weights, jax.ShapeDtypeStruct((rows, 4), jnp.float32)), static)
        for rows in (2, 8)]
loaded = []
compiled = executables.compile_all(jobs, on_done=lambda i, job, s, was: loaded.append(was))
outputs, donated = [], []
for rows, executable in zip((2, 8), compiled):
    x = jnp.arange(rows * 4, dtype=jnp.float32).reshape(rows, 4)
    out, total = executable(weights, x)
    outputs.append([np.asarray(out["out"]).tolist(), float(total)])
    donated.append(x.is_deleted())
print(json.dumps({"traces": sorted(traces), "loaded": sorted(loaded), "outputs": outputs,
                  "donated": donated}))
"""


def start(store: Path, static: str = "scale 3") -> dict:
    result = subprocess.run([sys.executable, "-c", START, str(store), static], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_restart_loads_the_executables_without_tracing_and_runs_them_alike(tmp_path):
    store = tmp_path / "executables"
    first = start(store)
    assert first["traces"] == [2, 8] and first["loaded"] == [False, False]
    assert len(list(store.glob("*.exe"))) == 2
    second = start(store)
    assert second["traces"] == [] and second["loaded"] == [True, True]  # nothing traced
    assert second["outputs"] == first["outputs"]  # the loaded executables run, alike
    assert second["donated"] == [True, True]  # donation survives the store


def test_what_the_function_depends_on_keys_the_store(tmp_path):
    store = tmp_path / "executables"
    start(store, static="scale 3")
    other = start(store, static="scale 4")  # another config: compiled anew
    assert other["traces"] == [2, 8] and len(list(store.glob("*.exe"))) == 4


def test_only_the_environment_that_can_change_a_program_keys_the_store(monkeypatch):
    from core.engine import executables

    before = executables._keyed_environment()
    for name in ("TANDEM_HOME", "TANDEM_LOG_FORMAT", "TANDEM_REQUIRE_SMG"):
        monkeypatch.setenv(name, "elsewhere")
    assert executables._keyed_environment() == before
    monkeypatch.setenv("TANDEM_PAGED_ATTENTION", "gather")  # read by the traced attention
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    keyed = dict(executables._keyed_environment())
    assert keyed["TANDEM_PAGED_ATTENTION"] == "gather" and keyed["XLA_FLAGS"].endswith("true")


DIGEST = ("from core.engine import executables; "
          "print(executables.core_package_dir(), executables._core_source_digest())")


def test_a_change_anywhere_in_the_core_package_changes_the_key(tmp_path):
    """The store's key hashes the whole `core` package, not the folder of the store's own
    module: a change to a model file (traced code outside core/engine) is a new key."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "core", copy / "core",
                    ignore=shutil.ignore_patterns("__pycache__"))

    def package_and_digest() -> list[str]:
        result = subprocess.run([sys.executable, "-c", DIGEST], cwd=copy, capture_output=True,
                                text=True, timeout=300, check=True,
                                env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                     "PYTHONPATH": str(copy)})
        return result.stdout.split()

    package, before = package_and_digest()
    assert Path(package) == copy / "core"
    model_file = copy / "core" / "models" / "llama.py"
    model_file.write_text(model_file.read_text() + "\n# a change to the traced model code\n")
    changed_package, after = package_and_digest()
    assert changed_package == package and after != before


def test_a_file_that_cannot_be_loaded_is_compiled_again(tmp_path):
    store = tmp_path / "executables"
    first = start(store)
    for path in store.glob("*.exe"):
        path.write_bytes(b"not an executable")
    again = start(store)
    assert again["traces"] == [2, 8] and again["outputs"] == first["outputs"]
    assert start(store)["loaded"] == [True, True]  # the rewritten files load


def _core_run(model_dir: Path, cache_dir: Path, log_path: Path) -> list[int]:
    """Start `tandem core` on the tiny model, wait for it, generate 8 greedy tokens, stop it."""
    import os

    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc
    from tests.conftest import check_running, free_port, retry_on_taken_port, stop_process
    from tests.waiting import wait_until

    def generate(stub, process) -> list | None:
        check_running(process, log_path)  # PortTaken if the port went to someone else
        try:
            return list(stub.Generate(pb.GenerateRequest(
                text="hello there", sampling=pb.SamplingParams(temperature=0.0),
                stopping=pb.StoppingCriteria(max_tokens=8, ignore_eos=True)), timeout=60))
        except grpc.RpcError as error:  # still loading
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            return None

    def run() -> list:
        port = free_port()
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "core", "--model", str(model_dir),
                 "--embedding-model", "none", "--grpc-port", str(port), "--max-model-len", "64",
                 "--max-num-seqs", "2", "--max-num-batched-tokens", "32",
                 "--compilation-cache-dir", str(cache_dir)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=dict(os.environ))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InferenceStub(channel)
                # a cold core on a loaded machine
                chunks = wait_until(lambda: generate(stub, process), "the core generating",
                                    timeout_s=480, interval_s=0.5)
        finally:
            stop_process(process, timeout_s=60)
        assert process.returncode == 0, log_path.read_text()[-3000:]  # a clean SIGTERM exit
        return chunks

    chunks = retry_on_taken_port(run)
    return [token for chunk in chunks for choice in chunk.choices for token in choice.token_ids]


def test_a_restarted_core_loads_every_bucket_and_generates_the_same_tokens(tmp_path, tiny_models):
    cache_dir = tmp_path / "cache"
    first = _core_run(tiny_models["llama"], cache_dir, tmp_path / "first.log")
    second = _core_run(tiny_models["llama"], cache_dir, tmp_path / "second.log")
    assert len(first) == 8 and second == first
    first_log = (tmp_path / "first.log").read_text()
    second_log = (tmp_path / "second.log").read_text()
    assert " compiled in " in first_log and " loaded in " not in first_log
    assert " loaded in " in second_log and " compiled in " not in second_log


CLOSURES = """
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
from core.engine import executables

executables.configure(__import__("pathlib").Path(sys.argv[1]))

def shifted(x, shift):  # `shift` is closed over, not an argument: only the name tells them apart
    return x + shift

jobs = [executables.CompileJob(f"shifted by {shift}", jax.jit(functools.partial(shifted, shift=shift)),
                               (jax.ShapeDtypeStruct((4,), jnp.float32),), "same static")
        for shift in (1.0, 2.0)]
loaded = []
compiled = executables.compile_all(jobs, on_done=lambda i, job, s, was: loaded.append(was))
print(json.dumps({"loaded": loaded, "outputs": [float(c(jnp.zeros(4))[0]) for c in compiled]}))
"""


def test_jobs_that_differ_only_in_what_they_close_over_keep_their_own_executables(tmp_path):
    """An embedding bucket's packed-token count is closed over, not an argument: two such jobs
    with equal arguments must not share a stored executable."""
    def run() -> dict:
        result = subprocess.run([sys.executable, "-c", CLOSURES, str(tmp_path / "store")],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                                env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                     "PYTHONPATH": str(REPO_ROOT)})
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert run() == {"loaded": [False, False], "outputs": [1.0, 2.0]}
    assert run() == {"loaded": [True, True], "outputs": [1.0, 2.0]}


def test_jobs_of_one_call_need_distinct_names():
    import jax
    import jax.numpy as jnp
    import pytest

    from core.engine import executables

    job = executables.CompileJob("same", jax.jit(lambda x: x), (jnp.zeros(2),), "")
    with pytest.raises(ValueError, match="distinct names"):
        executables.compile_all([job, job])
