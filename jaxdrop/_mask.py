"""The mask generator: 32 random bits per element for the cost of a few integer ops.

One Threefry-2x32 hash (JAX's primitive, 20 rounds) is spent per row of the
mask, a row being the elements along the last axis at one index of the leading
axes; it is keyed by the mask words and counted by the row's flat index. Its two
output words seed the row: each element then gets its own 32 bits from a keyed
integer finaliser (lowbias32, C. Wellons, with the second word mixed in
mid-way) applied to the counter ``seed + column``. Rows are thus independent
Threefry streams, and within a row the finaliser is a bijection of distinct
inputs. The bits of an element depend only on the key and the
element's global index, never on the mesh or the batch, so every shard can draw
its own part of the mask; and the seed is broadcast along the last axis without
any reshape, so XLA's fused loop vectorises.

An element is kept when its 32 bits, read as a signed integer, are at least
``t - 2**31`` with ``t = round(rate * 2**32)``: the realised drop probability
is ``t / 2**32``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from ._keys import threefry2x32

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_SIGN = np.uint32(0x80000000)
_TWO32 = 2.0**32


def _finalise(v: jax.Array, salt: jax.Array) -> jax.Array:
  v = v ^ (v >> 16)
  v = v * _M1
  v = v ^ salt
  v = v ^ (v >> 15)
  v = v * _M2
  return v ^ (v >> 16)


def random_bits(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 random bits of `shape`, a pure function of `words` (uint32[2]) and each index."""
  if not shape:
    return random_bits(words, (1,)).reshape(())
  *lead, last = shape
  if math.prod(lead) >= 2**32 or last >= 2**32:
    raise ValueError(f"jaxdrop masks support axes of fewer than 2**32 rows and columns, got shape {shape}")
  rows = (*lead, 1)
  row = jnp.zeros(rows, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(lead))):
    row = row + jax.lax.broadcasted_iota(jnp.uint32, rows, axis) * np.uint32(stride)
    stride *= lead[axis]
  seed, salt = threefry2x32(words[0], words[1], row, jnp.zeros_like(row))
  column = jax.lax.broadcasted_iota(jnp.uint32, (1,) * len(lead) + (last,), len(lead))
  return _finalise(seed + column, salt)


def drop_threshold(rate: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Threshold of a traced drop rate in [0, 1]: ``(t, any_kept, keep)``.

  `t` is ``round(rate * 2**32)`` as uint32, at least 1 for any rate > 0 (a small
  rate never rounds to "never drop"). `any_kept` is False only for rate 1,
  whose threshold does not fit in 32 bits. `keep` is the realised keep
  probability ``1 - t / 2**32`` in the rate's float dtype.
  """
  t = jnp.round(rate * _TWO32)
  t = jnp.where(rate > 0, jnp.maximum(t, 1), 0)
  t = jnp.minimum(t, np.nextafter(np.asarray(_TWO32, rate.dtype), 0, dtype=rate.dtype))
  any_kept = rate < 1
  keep = jnp.where(any_kept, 1 - t / _TWO32, 0).astype(rate.dtype)
  return t.astype(jnp.uint32), any_kept, keep


def keep_mask(words, shape, t, any_kept) -> jax.Array:
  """Boolean keep mask of `shape`: True where the element is kept.

  The comparison is signed (bits and threshold both offset by 2**31), which
  vectorises to one instruction where an unsigned one takes three.
  """
  bits = jax.lax.bitcast_convert_type(random_bits(words, shape), jnp.int32)
  threshold = jax.lax.bitcast_convert_type(t ^ _SIGN, jnp.int32)
  return (bits >= threshold) & any_kept


def bernoulli(words, shape, t, any_kept, scale):
  """The draw of plain dropout: a Bernoulli keep mask of `shape` and one scale."""
  return keep_mask(words, shape, t, any_kept), scale


def standard_normal(words, shape) -> jax.Array:
  """float32 N(0, 1) noise of `shape`: the inverse normal CDF of 24-bit uniforms in (0, 1)."""
  bits = random_bits(words, shape)
  uniform = ((bits >> 8).astype(jnp.float32) + 0.5) * np.float32(2.0**-24)
  return ndtri(uniform)
