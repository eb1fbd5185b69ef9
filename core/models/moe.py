"""Mixture-of-experts MLP (Qwen3-MoE, Mixtral) in Flax NNX.

Owns: the router (a float32 softmax over the experts, top-k, renormalized where the family does)
and the experts' SwiGLU MLPs, computed without gathering any token's expert weights. Two
dispatches give the same sums:

- "dense" (the one the model runs): every expert runs on every token, as one matmul over all
  experts' gate/up projections ([d, e·f]) and one down projection over (expert, width) pairs
  after each expert's hidden state is scaled by its routing weight [t, e] (zero for the experts
  a token was not routed to): plain 2-D dots, the ones XLA:CPU runs fast, in bf16 too. No
  token is ever dropped (the capacity is every token), the shapes are static, and with the
  expert axis split over the mesh each device runs its own experts and XLA all-reduces the
  combined sum (expert parallelism from the logical-axis rules of core/engine/sharding.py).
- "sorted" (`sorted_experts`, kept for scripts/bench_moe.py and the parity test): the t·k
  (token, expert) pairs sorted by expert, the tokens' rows gathered in that order and run
  through `jax.lax.ragged_dot` grouped matmuls, then scattered back. It does k/e of the dense
  FLOPs, but XLA:CPU runs `ragged_dot` as dense work over every group: on the CPU it measured
  slower than "dense" in most cases, up to 10× (256 tokens, 64 experts; about even or ahead
  only at 1 token or 8 wide experts at 256 tokens: `scripts/bench_moe.py`, docs/benchmarks.md),
  so the model does not use it.

Letters: t tokens, d model width, e experts, f expert MLP width, k experts per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from core.model_config import ModelConfig


def route(x: jax.Array, router: jax.Array, top_k: int, normalize: bool
          ) -> tuple[jax.Array, jax.Array]:
    """x [t, d], router [d, e] → (weights [t, k] in x's dtype, expert ids [t, k]): the top-k of
    a float32 softmax over the router logits, renormalized to sum to 1 when `normalize`."""
    # the logits in x's dtype, as transformers' router Linear gives them (in bf16 a rounding of
    # its own would pick other experts near ties), then the softmax in float32
    logits = _matmul(x, router).astype(jnp.float32)  # [t, e]
    probs = jax.nn.softmax(logits, axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights.astype(x.dtype), experts


def dense_experts(x: jax.Array, weights: jax.Array, experts: jax.Array, gate: jax.Array,
                  up: jax.Array, down: jax.Array) -> jax.Array:
    """Every expert on every token, combined with the routing weights: x [t, d], weights and
    experts [t, k], gate/up [d, e, f], down [e, f, d] → [t, d]. Three plain 2-D matmuls: the
    gate and up projections of all experts at once ([d, e·f]), and the down projection summed
    over (expert, width) pairs ([e·f, d]) after each expert's hidden state is scaled by its
    routing weight (Σₑ wₑ·(hₑ·Dₑ) = [w₁h₁ … wₑhₑ]·[D₁; …; Dₑ])."""
    t = x.shape[0]
    d, num_experts, f = gate.shape
    # [t, e]: a token's weight for each expert, 0 where it was not routed there
    combine = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=weights.dtype)
                      * weights[..., None], axis=1)
    hidden = (jax.nn.silu(_matmul(x, gate.reshape(d, -1))) * _matmul(x, up.reshape(d, -1)))
    hidden = hidden.reshape(t, num_experts, f) * combine[..., None].astype(hidden.dtype)
    return _matmul(hidden.reshape(t, -1), down.reshape(num_experts * f, -1))  # [t, d]


def sorted_experts(x: jax.Array, weights: jax.Array, experts: jax.Array, gate: jax.Array,
                   up: jax.Array, down: jax.Array) -> jax.Array:
    """The same sum with grouped matmuls: the (token, expert) pairs sorted by expert, each
    expert's group of token rows through `jax.lax.ragged_dot`, scattered back to the tokens."""
    t, top_k = experts.shape
    gate, up = gate.transpose(1, 0, 2), up.transpose(1, 0, 2)  # [e, d, f]
    flat = experts.reshape(-1)  # [t·k]
    order = jnp.argsort(flat)
    tokens = order // top_k  # the token of each sorted pair
    rows = x[tokens]  # [t·k, d]: activations, not weights
    sizes = jnp.bincount(flat, length=down.shape[0]).astype(jnp.int32)
    hidden = jax.nn.silu(jax.lax.ragged_dot(rows, gate, sizes)) * jax.lax.ragged_dot(
        rows, up, sizes)
    out = jax.lax.ragged_dot(hidden, down, sizes) * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[tokens].add(out.astype(x.dtype))


def _matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
    """x [m, k] · weight [k, n] in x's dtype with a float32 result: the form XLA:CPU runs bf16 on
    (as `core.models.llama.dense`; a batched bf16 dot with a float32 result it refuses)."""
    return jnp.dot(x, weight, preferred_element_type=jnp.float32).astype(x.dtype)


class SparseMoeBlock(nnx.Module):
    """The experts' MLP of one layer: router [d, e], gate/up [d, e, f], down [e, f, d]."""

    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs):
        moe = config.moe
        d, e, f = config.hidden_size, moe.num_experts, moe.expert_intermediate_size
        self.router = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d, e), dtype))
        self.expert_gate = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d, e, f), dtype))
        self.expert_up = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d, e, f), dtype))
        self.expert_down = nnx.Param(0.02 * jax.random.normal(rngs.params(), (e, f, d), dtype))
        self.top_k = moe.num_experts_per_tok
        self.normalize = moe.normalize_top_k

    def __call__(self, x: jax.Array) -> jax.Array:
        rows = x.reshape(-1, x.shape[-1])
        weights, experts = route(rows, self.router[...], self.top_k, self.normalize)
        out = dense_experts(rows, weights, experts, self.expert_gate[...], self.expert_up[...],
                            self.expert_down[...])
        return out.reshape(x.shape)
