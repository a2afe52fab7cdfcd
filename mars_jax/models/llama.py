"""A Llama-family causal language model in JAX: pure functions over a params pytree.

Architecture: token embedding, ``L`` pre-norm blocks (RMSNorm, grouped-query attention with
rotate-half RoPE, RMSNorm, SwiGLU MLP), a final RMSNorm and an output projection (tied to the
embedding or separate). Weights are stored ``[in, out]`` (``x @ w``) and the per-layer weights
are stacked along a leading layer axis, so the blocks run under one ``lax.scan`` and compile
time does not grow with depth.

The key/value cache is head-major, ``[L, B, KV, S, Dh]`` for keys and values, carried through
the layer scan and written in place with ``lax.dynamic_update_slice`` at slot ``start``.
Sequences are left-padded: row ``b`` holds ``pad[b]`` padding slots before its first real
token, its RoPE position at slot ``s`` is ``s - pad[b]``, and a query at slot ``i`` sees the
slots ``pad[b] <= j <= i`` (earlier padding and not-yet-written slots are masked).

Params layout (``D`` hidden, ``F`` MLP width, ``H``/``KV`` query/key-value heads, ``Dh`` head
width, ``V`` vocabulary)::

    {"embed": [V, D], "final_norm": [D], "lm_head": [D, V] (untied only),
     "layers": {"attn_norm": [L, D], "wq": [L, D, H*Dh], "wk": [L, D, KV*Dh],
                "wv": [L, D, KV*Dh], "wo": [L, H*Dh, D], "mlp_norm": [L, D],
                "w_gate": [L, D, F], "w_up": [L, D, F], "w_down": [L, F, D]}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "KVCache",
    "LlamaConfig",
    "forward",
    "forward_logits",
    "init_cache",
    "last_slot_states",
    "output_logits",
]

Params = dict[str, Any]
_MASKED = -1e30


@dataclass(frozen=True)
class LlamaConfig:
    """Shapes and constants of a Llama model (hashable: a static argument under ``jit``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    max_positions: int = 8192


class KVCache(NamedTuple):
    """Keys and values of every layer, each ``[L, B, KV, S, Dh]``."""

    keys: jax.Array
    values: jax.Array


def init_cache(config: LlamaConfig, batch: int, length: int, dtype: Any) -> KVCache:
    """An all-zero cache for ``batch`` rows of ``length`` slots."""
    shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, computed in float32 and cast back to ``x.dtype``."""
    x32 = x.astype(jnp.float32)
    scale = lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * scale * weight.astype(jnp.float32)).astype(x.dtype)


def _rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, ...]:
    """cos and sin tables ``[B, 1, T, Dh]`` for integer positions ``[B, T]``."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, None]
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on ``x`` ``[B, H, T, Dh]`` (the Hugging Face convention)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def _block(config: LlamaConfig, carry, layer_params, *, start, cos, sin, mask):
    """One decoder block on ``x`` ``[B, T, D]``; writes its keys/values into the cache."""
    x, keys, values, layer = carry
    p = layer_params
    batch, steps, _ = x.shape
    heads, kv_heads, dh = config.num_heads, config.num_kv_heads, config.head_dim
    h = rms_norm(x, p["attn_norm"], config.rms_eps)
    q = (h @ p["wq"]).reshape(batch, steps, heads, dh).transpose(0, 2, 1, 3)
    k = (h @ p["wk"]).reshape(batch, steps, kv_heads, dh).transpose(0, 2, 1, 3)
    v = (h @ p["wv"]).reshape(batch, steps, kv_heads, dh).transpose(0, 2, 1, 3)
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    if jnp.ndim(start) == 0:
        at = (layer, 0, 0, start, 0)
        keys = lax.dynamic_update_slice(keys, k[None].astype(keys.dtype), at)
        values = lax.dynamic_update_slice(values, v[None].astype(values.dtype), at)
    else:  # one start slot per row: scatter [B, T, KV, Dh] at (layer, b, :, start[b] + t)
        rows = jnp.arange(batch)[:, None]
        slots = start[:, None] + jnp.arange(steps)
        keys = keys.at[layer, rows, :, slots].set(k.transpose(0, 2, 1, 3).astype(keys.dtype))
        values = values.at[layer, rows, :, slots].set(v.transpose(0, 2, 1, 3).astype(values.dtype))
    layer_keys = lax.dynamic_index_in_dim(keys, layer, 0, keepdims=False)
    layer_values = lax.dynamic_index_in_dim(values, layer, 0, keepdims=False)
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, steps, dh)
    scores = jnp.einsum(
        "bkgtd,bksd->bkgts", grouped, layer_keys, preferred_element_type=jnp.float32
    ) * (dh**-0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    weights = jax.nn.softmax(scores, axis=-1).astype(layer_values.dtype)
    attended = jnp.einsum("bkgts,bksd->bkgtd", weights, layer_values)
    attended = attended.reshape(batch, heads, steps, dh).transpose(0, 2, 1, 3)
    x = x + attended.reshape(batch, steps, heads * dh).astype(x.dtype) @ p["wo"]
    h = rms_norm(x, p["mlp_norm"], config.rms_eps)
    x = x + (jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]
    return (x, keys, values, layer + 1), None


def forward(
    params: Params,
    config: LlamaConfig,
    tokens: jax.Array,
    cache: KVCache,
    start: jax.Array | int,
    pad: jax.Array,
) -> tuple[jax.Array, KVCache]:
    """Runs ``tokens`` ``[B, T]`` written at cache slots ``start .. start+T-1``.

    Args:
      params: the params pytree (layout in the module docstring).
      config: the model's shapes.
      tokens: int token ids ``[B, T]``.
      cache: the cache ``[L, B, KV, S, Dh]``; slots before ``start`` hold earlier tokens.
      start: the first slot written: a scalar (may be traced), or int ``[B]``, one per row
        (rows at different steps of their own sequences, as in continuous batching).
      pad: int ``[B]``, number of left-padding slots of each row.

    Returns:
      The final-normed hidden states ``[B, T, D]`` and the updated cache.
    """
    x, cache, _ = _run_blocks(params, config, tokens, cache, start, pad)
    return rms_norm(x, params["final_norm"], config.rms_eps), cache


def last_slot_states(
    params: Params, config: LlamaConfig, tokens: jax.Array, pad: jax.Array
) -> jax.Array:
    """Hidden states ``[L, B, D]`` of the last slot of ``tokens`` ``[B, T]`` after each block.

    One pass over a whole left-padded batch (``pad`` ``[B]``), no cache reuse; the states are
    the residual stream before the final RMSNorm (``L = config.num_layers``: pass a config and
    params cut to the first blocks to stop there).
    """
    batch, steps = tokens.shape
    cache = init_cache(config, batch, steps, params["embed"].dtype)
    _, _, states = _run_blocks(params, config, tokens, cache, 0, pad, keep_last=True)
    return states


def _run_blocks(
    params: Params,
    config: LlamaConfig,
    tokens: jax.Array,
    cache: KVCache,
    start: jax.Array | int,
    pad: jax.Array,
    *,
    keep_last: bool = False,
) -> tuple[jax.Array, KVCache, jax.Array | None]:
    """The blocks of :func:`forward`: hidden states ``[B, T, D]`` before the final norm, the
    cache, and with ``keep_last`` the last slot's state after each block ``[L, B, D]``."""
    batch, steps = tokens.shape
    slots = jnp.broadcast_to(jnp.reshape(start, (-1, 1)) + jnp.arange(steps), (batch, steps))
    positions = jnp.maximum(slots - pad[:, None], 0)
    cos, sin = _rope_tables(positions, config.head_dim, config.rope_theta)
    key_slots = jnp.arange(cache.keys.shape[3])
    mask = (key_slots[None, None, :] >= pad[:, None, None]) & (
        key_slots[None, None, :] <= slots[:, :, None]
    )
    x = params["embed"][tokens]

    def block(carry, layer_params):
        carry, _ = _block(config, carry, layer_params, start=start, cos=cos, sin=sin, mask=mask)
        return carry, carry[0][:, -1] if keep_last else None

    (x, keys, values, _), states = lax.scan(
        block, (x, cache.keys, cache.values, jnp.int32(0)), params["layers"]
    )
    return x, KVCache(keys, values), states


def output_logits(params: Params, config: LlamaConfig, hidden: jax.Array) -> jax.Array:
    """Float32 logits ``[..., V]`` of final-normed hidden states ``[..., D]``."""
    head = params["embed"].T if config.tie_embeddings else params["lm_head"]
    return jnp.matmul(hidden, head, preferred_element_type=jnp.float32)


def forward_logits(
    params: Params, config: LlamaConfig, tokens: jax.Array, pad: jax.Array | None = None
) -> jax.Array:
    """Logits ``[B, T, V]`` of a whole left-padded batch ``[B, T]`` in one pass (no reuse)."""
    batch, steps = tokens.shape
    pad = jnp.zeros((batch,), jnp.int32) if pad is None else pad
    cache = init_cache(config, batch, steps, params["embed"].dtype)
    hidden, _ = forward(params, config, tokens, cache, 0, pad)
    return output_logits(params, config, hidden)
