"""The ``"xla"`` implementation: the ``(B, N, T, S)`` weights materialised, the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .._dropout import compute_dtype, dropout
from ._geometry import _LARGE_NEGATIVE, _allowed, _grouped, _zero_padded_rows


def _xla_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  dropout_key: jax.Array | None,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
  *,
  scale: float,
  is_causal: bool,
  broadcast_dims: tuple[int, ...],
  dropout_on: bool,
  weights_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  """The materialised reference: `jax.nn.dot_product_attention`'s computation, with
  `jaxdrop.dropout` applied to the ``(B, N, T, S)`` weights when `dropout_on`.

  Written out rather than calling jax.nn without dropout: jax.nn's float16 logits ask CPU's
  dot_general for a float32 result it refuses under `jit`, and its gradient promotes
  implicitly, which a caller's strict promotion refuses."""
  b, t, n, h = q.shape
  _, s, heads_k, _ = k.shape
  groups = n // heads_k
  logits = jnp.einsum(
    "btkgh,bskh->bkgts",
    q.reshape(b, t, heads_k, groups, h),
    k,
    preferred_element_type=compute_dtype(q.dtype),
  )
  logits = logits * jnp.asarray(scale, logits.dtype)
  if bias is not None:
    logits = logits + _grouped(bias, heads_k).astype(logits.dtype)
  rows, columns = jnp.arange(t).reshape(1, 1, 1, t, 1), jnp.arange(s).reshape(1, 1, 1, 1, s)
  allowed = _allowed(rows, columns, _grouped(mask, heads_k), is_causal, q_lengths, k_lengths)
  logits = jnp.where(allowed, logits, _LARGE_NEGATIVE.astype(logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k.dtype)
  if dropout_on:
    weights = dropout(
      dropout_key,
      weights.reshape(b, n, t, s),
      rate,
      deterministic=deterministic,
      broadcast_dims=broadcast_dims,
      shard_spec=weights_spec,
      autodiff="jvp",
    ).reshape(b, heads_k, groups, t, s)  # forward mode too, at the cost of "vjp" (measured)
  out = jnp.einsum("bkgts,bskh->btkgh", weights, v)
  return _zero_padded_rows(out.reshape(b, t, n, h), q_lengths)
