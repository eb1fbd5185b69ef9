"""Micro-benchmark of one layer's paged decode attention on XLA:CPU: formulations and pool
layouts side by side, each as KV bytes read per second, against a contiguous (unpaged) read of
the same bytes measured in the same run.

Usage: python scripts/bench_attention.py [--rows 32] [--pages 16] [--dtype float32|bfloat16]
           [--repeats 21]

Shape: the benchmark Llama's layer (4 KV heads × 64, 2 query heads per KV head), 16-token
pages, a pool of rows × 128 pages. Every row attends to `--pages` pages spread over the pool.
Formulations:
  page_major   the engine's: keys [P, k, h, c] / values [P, k, c, h]; gather [b, p, ...], per-page
               dots, softmax over (p, c)
  head_major   pools [k, P, c, h] (the Pallas kernels' layout); gather [k, b, p, c, h], dots
  token_rows   pools [P·c, k, h] (one row per token); gather the table's token rows
  contiguous   no paging: the same KV already laid out [b, k, s, h] — the floor
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.xla_flags import apply_defaults  # noqa: E402

apply_defaults()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from core.cache.kv_pool import to_float32  # noqa: E402

K, G, H, C = 4, 2, 64, 16  # kv heads, query heads per kv head, head width, page size


def softmax_out(scores, values_dot):
    peak = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - peak)
    return values_dot(weights) / jnp.sum(weights, axis=-1)[..., None]


def page_major(q, keys, values, table):
    k_pages, v_pages = to_float32(keys[table]), to_float32(values[table])  # [b,p,k,h,c] [b,p,k,c,h]
    scores = jnp.einsum("bkgh,bpkhc->bkgpc", q, k_pages)
    b, k, g, p, c = scores.shape
    return softmax_out(scores.reshape(b, k, g, p * c), lambda w: jnp.einsum(
        "bkgpc,bpkch->bkgh", w.reshape(b, k, g, p, c), v_pages))


def page_major_reduce(q, keys, values, table):
    """page_major's layout, with the dots written as multiply-and-sum (loop fusions that can
    read the gathered pages in place) instead of batched dots over tiny [g, h] x [h, c] blocks."""
    k_pages, v_pages = to_float32(keys[table]), to_float32(values[table])  # [b,p,k,h,c] [b,p,k,c,h]
    scores = jnp.sum(q[:, None, :, :, :, None] * k_pages[:, :, :, None], axis=4)  # [b,p,k,g,c]
    b, p, k, g, c = scores.shape
    peak = jnp.max(scores, axis=(1, 4), keepdims=True)
    weights = jnp.exp(scores - peak)
    total = jnp.sum(weights, axis=(1, 4))  # [b, k, g]
    out = jnp.sum(weights[..., None] * v_pages[:, :, :, None], axis=(1, 4))  # [b, k, g, h]
    return out / total[..., None]


def head_major(q, keys, values, table):
    k_pages, v_pages = to_float32(keys[:, table]), to_float32(values[:, table])  # [k,b,p,c,h]
    scores = jnp.einsum("bkgh,kbpch->bkgpc", q, k_pages)
    b, k, g, p, c = scores.shape
    return softmax_out(scores.reshape(b, k, g, p * c), lambda w: jnp.einsum(
        "bkgpc,kbpch->bkgh", w.reshape(b, k, g, p, c), v_pages))


def token_rows(q, keys, values, table):
    tokens = (table[:, :, None] * C + jnp.arange(C)[None, None, :]).reshape(table.shape[0], -1)
    k_rows, v_rows = to_float32(keys[tokens]), to_float32(values[tokens])  # [b, s, k, h]
    scores = jnp.einsum("bkgh,bskh->bkgs", q, k_rows)
    return softmax_out(scores, lambda w: jnp.einsum("bkgs,bskh->bkgh", w, v_rows))


def contiguous(q, keys, values, _table):
    k_all, v_all = to_float32(keys), to_float32(values)  # [b, k, s, h]
    scores = jnp.einsum("bkgh,bksh->bkgs", q, k_all)
    return softmax_out(scores, lambda w: jnp.einsum("bkgs,bksh->bkgh", w, v_all))


def median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - start)
    return 1000 * statistics.median(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    b, p = args.rows, args.pages
    num_pages = b * 128
    storage = jnp.uint16 if args.dtype == "bfloat16" else jnp.float32
    rng = np.random.default_rng(0)

    def stored(values):
        if storage == jnp.uint16:
            return jax.lax.bitcast_convert_type(values.astype(jnp.bfloat16), jnp.uint16)
        return values

    # one logical KV per pool [P, k, c, h], laid out four ways (same numbers in each)
    logical_keys, logical_values = (
        jnp.asarray(rng.standard_normal((num_pages, K, C, H), dtype=np.float32))
        for _ in range(2))
    table = jnp.asarray(rng.permutation(num_pages)[:b * p].reshape(b, p).astype(np.int32))
    q = jnp.asarray(rng.standard_normal((b, K, G, H), dtype=np.float32))
    itemsize = 2 if args.dtype == "bfloat16" else 4
    kv_bytes = 2 * b * p * C * K * H * itemsize

    def rows(pool):
        return pool.transpose(0, 2, 1, 3).reshape(num_pages * C, K, H)

    def gathered(pool):
        return pool[table].transpose(0, 2, 1, 3, 4).reshape(b, K, p * C, H)

    cases = {
        "page_major": (logical_keys.transpose(0, 1, 3, 2), logical_values),
        "page_major_reduce": (logical_keys.transpose(0, 1, 3, 2), logical_values),
        "head_major": (logical_keys.transpose(1, 0, 2, 3), logical_values.transpose(1, 0, 2, 3)),
        "token_rows": (rows(logical_keys), rows(logical_values)),
        "contiguous": (gathered(logical_keys), gathered(logical_values)),
    }
    cases = {name: (stored(keys), stored(values)) for name, (keys, values) in cases.items()}
    functions = {"page_major": page_major, "page_major_reduce": page_major_reduce,
                 "head_major": head_major,
                 "token_rows": token_rows, "contiguous": contiguous}
    reference = None
    print(f"{b} rows × {p} pages of {C} tokens, {args.dtype}: {kv_bytes / 2**20:.1f} MiB of KV "
          f"read per layer")
    for name, (keys, values) in cases.items():
        fn = jax.jit(functions[name])
        ms = median_ms(fn, (q, keys, values, table), args.repeats)
        out = np.asarray(fn(q, keys, values, table))
        reference = out if reference is None else reference
        assert np.allclose(out, reference, atol=1e-3), name  # same math, other layout
        print(f"{name:<18} {ms:7.2f} ms  {kv_bytes / ms / 1e6:6.1f} GB/s")
    stream = jnp.ones(kv_bytes // 4, jnp.float32)
    copy_ms = median_ms(jax.jit(lambda x: x * 2.0), (stream,), args.repeats)
    print(f"{'stream x*2':<18} {copy_ms:7.2f} ms  {kv_bytes / copy_ms / 1e6:6.1f} GB/s "
          "(read + write of the same bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
