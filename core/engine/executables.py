"""Warm-up compilation: every bucket's executable compiled in parallel, and kept on disk.

Owns: `compile_all()`, which turns a list of `CompileJob`s (a jitted function, example
arguments — arrays or `jax.ShapeDtypeStruct`s — and a string naming everything else the traced
function depends on) into `jax.stages.Compiled` executables, and the executable store.

- **In parallel.** Jobs run on a thread pool: tracing and lowering hold the GIL, but XLA's
  compilation releases it, so on a 2-core machine two shapes compile at once.
- **On disk.** With a store directory configured (`configure()`, done by the CLI), each
  executable is saved serialized, under a key hashing the job's name (which tells apart jobs
  whose functions close over different constants: the jobs of one call must have distinct
  names), its static description, the arguments' tree, shapes and dtypes, the jax / jaxlib /
  flax versions, the backend and its devices, the `TANDEM_*`, `XLA_*` and `JAX_*` environment
  (less the `TANDEM_*` settings that cannot change a compiled program: where files live, logging,
  tracing, addresses, the drain bound; `INERT_ENVIRONMENT`), and the source of the `core`
  package. A restart loads it without tracing or lowering (JAX's own persistent cache traces
  and lowers every shape to find its key: about a second a shape on 2 cores). A file that
  fails to load is recompiled and rewritten. Nothing is saved while JAX's persistent cache is
  on: an executable that cache hands back loses its kernels when serialized again on XLA:CPU,
  so the CLI leaves it off.

Loading runs code from the store: it must be a directory only this service writes (by default
`$TANDEM_HOME/jax-cache/executables`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

_store_dir: Path | None = None
_source_digest: str | None = None
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class CompileJob:
    """One executable to have ready: `function` (a `jax.jit`) at `args`."""

    name: str  # what it is, unique among jobs of equal arguments ("embedding 64×128 packed 4096")
    function: Any  # a jax.jit-wrapped function
    args: tuple  # example arguments (arrays or jax.ShapeDtypeStruct), positional
    static: str  # everything else the traced function depends on (configs, closures)


def configure(store_dir: Path | None) -> None:
    """Keep executables under `store_dir` (None: compile every start, save nothing)."""
    global _store_dir
    _store_dir = store_dir
    if store_dir is not None:
        store_dir.mkdir(parents=True, exist_ok=True)


def compile_all(jobs: list[CompileJob], workers: int | None = None,
                on_done: Callable[[int, CompileJob, float, bool], None] | None = None
                ) -> list[jax.stages.Compiled]:
    """The jobs' executables, in order. `on_done(index, job, seconds, loaded)` is called as
    each finishes (loaded: it came from the store)."""
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):  # they would share a file in the store
        raise ValueError(f"compile jobs need distinct names: {sorted(names)}")

    def run(index: int) -> jax.stages.Compiled:
        started = time.perf_counter()
        compiled, loaded = _compile_or_load(jobs[index])
        if on_done is not None:
            on_done(index, jobs[index], time.perf_counter() - started, loaded)
        return compiled

    if workers == 1:
        return [run(index) for index in range(len(jobs))]
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="compile") as pool:
        return list(pool.map(run, range(len(jobs))))


def _compile_or_load(job: CompileJob) -> tuple[jax.stages.Compiled, bool]:
    path = None
    if _store_dir is not None:
        path = _store_dir / f"{_key(job)}.exe"
        if path.exists():
            try:
                return _load(path), True
            except Exception as exc:  # corrupt or incompatible: compile it again
                log.warning("executable %s could not be loaded (%s): recompiling", path.name, exc)
    compiled = job.function.lower(*job.args).compile()
    if path is not None and jax.config.jax_compilation_cache_dir:
        # it may have come from JAX's persistent cache: such a copy serializes without its
        # kernels on XLA:CPU ("Function … not found" when it runs after loading)
        log.warning("executable of %s not saved: JAX's persistent compilation cache is on",
                    job.name)
    elif path is not None:
        try:
            _save(compiled, path)
        except Exception as exc:  # e.g. a backend that cannot serialize: keep going
            log.warning("executable of %s not saved: %s", job.name, exc)
    return compiled, False


def _load(path: Path) -> jax.stages.Compiled:
    from jax.experimental import serialize_executable

    payload, in_tree, out_tree = pickle.loads(path.read_bytes())
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)


def _save(compiled: jax.stages.Compiled, path: Path) -> None:
    from jax.experimental import serialize_executable

    blob = pickle.dumps(serialize_executable.serialize(compiled))
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(blob)
    os.replace(partial, path)  # atomic: a concurrent reader sees all of it or nothing


# `TANDEM_*` variables that no traced function reads (paths, logging, tracing, the facade's
# settings): a core started with another log format or home still loads the same executables.
# Any other `TANDEM_*` variable keys the store, as every `XLA_*` and `JAX_*` one does.
INERT_ENVIRONMENT = frozenset({
    "TANDEM_HOME", "TANDEM_LOG_FORMAT", "TANDEM_LOG_LEVEL", "TANDEM_OTLP_TRACES_ENDPOINT",
    "TANDEM_CORE_ADDRESS", "TANDEM_API_KEYS_FILE", "TANDEM_DRAIN_TIMEOUT_S"})


def _keyed_environment() -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in os.environ.items()
                  if name.startswith(("TANDEM_", "XLA_", "JAX_"))
                  and name not in INERT_ENVIRONMENT and not name.startswith("TANDEM_REQUIRE_"))


def _key(job: CompileJob) -> str:
    leaves, tree = jax.tree.flatten(job.args)
    avals = [(tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False)),
              str(getattr(leaf, "sharding", None))) for leaf in leaves]
    devices = [(device.platform, device.device_kind) for device in jax.devices()]
    environment = _keyed_environment()
    # the whole name: jobs with the same arguments may differ in what their function closes
    # over (an embedding bucket's packed-token count), and the name says so
    material = repr((FORMAT_VERSION, job.name, job.static, str(tree), avals,
                     jax.__version__, _versions(), devices, environment, _core_source_digest()))
    return hashlib.sha256(material.encode()).hexdigest()[:40]


def _versions() -> tuple[str, ...]:
    import flax
    import jaxlib

    return jaxlib.__version__, flax.__version__


def core_package_dir() -> Path:
    """The `core` package's folder: the whole package is hashed, wherever this module sits in it
    (the traced code lives in core/models, core/cache, core/engine, core/structured …)."""
    import core

    return Path(core.__file__).resolve().parent


def _core_source_digest() -> str:
    """A hash of every Python file of the `core` package (the traced code lives there)."""
    global _source_digest
    if _source_digest is None:
        root = core_package_dir()
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
        _source_digest = digest.hexdigest()
    return _source_digest
