"""The block geometry every implementation shares: which logits take part (the rule of
`jax.nn.dot_product_attention`), the masking values, and the grouped-query layout."""

from __future__ import annotations

from typing import overload

import jax
import jax.numpy as jnp
import numpy as np

# The value masked logits take, as in `jax.nn.dot_product_attention` (so fully masked rows
# average the values exactly as it does): -0.7 times float32's largest value, its logits
# being float32 for half-precision inputs too.
_LARGE_NEGATIVE = np.float32(-0.7 * float(np.finfo(np.float32).max))
# Where the blocked implementations start the running maximum and put padded keys: below every
# finite logit, so the largest term of a row is exp(0).
_LOWEST = np.float32(np.finfo(np.float32).min)


def _allowed(
  rows: jax.Array,
  columns: jax.Array,
  mask: jax.Array | None,
  is_causal: bool,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
) -> jax.Array:
  """Which logits take part, ``(B, K, G, T, S)``-broadcastable, from query positions `rows`
  ``(1, 1, 1, T, 1)`` and key positions `columns` ``(1, 1, 1, 1, S)``: the rule of
  `jax.nn.dot_product_attention`, shared by both implementations (the chunked one passes a
  block's positions and the block of `mask`)."""
  allowed = jnp.ones((1, 1, 1) + (rows.shape[3], columns.shape[4]), bool)
  if mask is not None:
    allowed = allowed & mask
  if is_causal:
    allowed = allowed & (columns <= rows)
  if k_lengths is not None:
    allowed = allowed & (columns < k_lengths[:, None, None, None, None])
  if q_lengths is not None:
    allowed = allowed & (rows < q_lengths[:, None, None, None, None])
  return allowed


def _zero_padded_rows(out: jax.Array, q_lengths: jax.Array | None) -> jax.Array:
  """The output's query rows at or beyond `query_seq_lengths` set to 0, as jax.nn does."""
  if q_lengths is None:
    return out
  rows = jnp.arange(out.shape[1])[None, :] < q_lengths[:, None]
  return out * rows[:, :, None, None].astype(out.dtype)


@overload
def _grouped(a: jax.Array, heads_k: int) -> jax.Array: ...
@overload
def _grouped(a: jax.Array | None, heads_k: int) -> jax.Array | None: ...
def _grouped(a: jax.Array | None, heads_k: int) -> jax.Array | None:
  """A ``(B, N, T, S)``-broadcastable array as ``(B, K, G, T, S)``-broadcastable."""
  if a is None:
    return None
  b, n, t, s = a.shape
  if n == 1:
    return a[:, :, None]
  return a.reshape(b, heads_k, n // heads_k, t, s)
