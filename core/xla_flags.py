"""The XLA flags the core runs with, set before JAX starts its backend.

Owns: `apply_defaults()`, which adds Tandem's default flags to `XLA_FLAGS` (keeping any flag the
operator already set there; `TANDEM_XLA_DEFAULTS=0` adds none). They only touch the CPU backend:

- `--xla_cpu_experimental_xnn_fusion_type=dot` runs dots through XNNPACK. Measured on the
  benchmark machine (2 cores): the MiniLM encoder's forward at batch 64 went from ~217 to
  ~187 ms (its attention's small batched dots are where XLA's own emitter is slowest); the
  Llama step times did not change; every parity test passes with it (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CPU_FLAGS = ("--xla_cpu_experimental_xnn_fusion_type=dot",)


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> str:
    """Add the default flags to XLA_FLAGS (call before the first JAX computation); returns it."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("TANDEM_XLA_DEFAULTS", "1") != "0":
        for flag in CPU_FLAGS:
            if flag.split("=", 1)[0] not in flags:
                flags = f"{flags} {flag}".strip()
        environ["XLA_FLAGS"] = flags
    return flags
