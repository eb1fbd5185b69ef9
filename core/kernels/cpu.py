"""The CPU kernels' loader: which build of core/kernels/*.cc this CPU runs, and their JAX calls.

Owns: `decode_attention_kernel()`, the ISA level of the paged decode-attention kernel this
process decodes with (None: none is built or usable here; decode attention then stays XLA's
einsum path), `register` (one level's build as its own XLA target), and
`paged_decode_attention`, the kernel's call from a jitted function.

`pip install` builds the kernel once per x86 ISA level (setup.py: `avx512`, `avx2`, and a
`generic` build with the compiler's defaults); the loader takes the highest level whose CPU
flags this machine has, so one install serves every machine kind it is copied to. Set
TANDEM_CPU_KERNELS=0 to use none (the einsum path), or to a level name to insist on it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from core.config import read_cpu_flags

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).resolve().parent
SYMBOL = "TandemPagedDecodeAttention"
# ISA level → the /proc/cpuinfo flags its build was compiled for (setup.py's flags), best first
ISA_LEVELS = {
    "avx512": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "generic": frozenset(),
}


def library_path(level: str) -> Path | None:
    """The built library of one ISA level (setuptools adds the interpreter's suffix)."""
    found = sorted(KERNEL_DIR.glob(f"_paged_attention_{level}*.so"))
    return found[0] if found else None


def register(level: str) -> bool:
    """Load one ISA level's build and register its target with XLA (once); False if it is not
    built, does not load, or needs CPU flags this machine lacks."""
    if level in _registered:
        return True
    path = library_path(level)
    if path is None or not ISA_LEVELS[level] <= read_cpu_flags():
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(path))
        jax.ffi.register_ffi_target(target(level), jax.ffi.pycapsule(getattr(library, SYMBOL)),
                                    platform="cpu")
    except (OSError, AttributeError) as error:  # a broken build: another level, or XLA's path
        log.warning("CPU kernel %s not loaded: %s", path.name, error)
        return False
    _registered.add(level)
    return True


def target(level: str) -> str:
    return f"tandem_paged_decode_attention_{level}"


_registered: set[str] = set()


@functools.cache
def decode_attention_kernel() -> str | None:
    """The ISA level this process decodes with (the best that registers), or None."""
    wanted = os.environ.get("TANDEM_CPU_KERNELS", "")
    if wanted == "0":
        return None
    if wanted and wanted not in ISA_LEVELS:
        raise ValueError(f"TANDEM_CPU_KERNELS={wanted!r}: 0 or one of {tuple(ISA_LEVELS)}")
    for level in ISA_LEVELS:
        if (not wanted or level == wanted) and register(level):
            return level
    if wanted:
        raise RuntimeError(f"TANDEM_CPU_KERNELS={wanted}: no usable build of that level")
    return None


def paged_decode_attention(q: jax.Array, pool_keys: jax.Array, pool_values: jax.Array,
                           page_table: jax.Array, positions: jax.Array,
                           window_tokens: int | None, level: str | None = None) -> jax.Array:
    """q [b, k, g, h] (scaled) over the row's pages → float32 [b, k, g, h] (padding rows, whose
    position is < 0, give 0). Pools are the CPU layouts (keys [P, k, h, c], values
    [P, k, c, h]; float32 or bfloat16 bits). `level`: a registered build (default: the
    process's, `decode_attention_kernel()`, which must be set)."""
    level = level or decode_attention_kernel()
    if level is None or level not in _registered:
        raise RuntimeError(f"no paged decode-attention kernel registered (level {level})")
    return jax.ffi.ffi_call(target(level), jax.ShapeDtypeStruct(q.shape, jnp.float32))(
        q.astype(jnp.float32), pool_keys, pool_values, page_table.astype(jnp.int32),
        positions.astype(jnp.int32), window=np.int64(window_tokens or 0))
