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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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


class MaskSource(NamedTuple):
  """Where a mask's bits come from: the two key words and, for a block of a larger array
  (inside `shard_map`), the block's offset along each axis of the global array."""
  words: jax.Array
  offsets: tuple[jax.Array, ...] | None = None


class MaskLayout(NamedTuple):
  """A mask's shape and, on a mesh with explicit axes, the mesh axes sharding each of its axes.

  With `spec`, the counters are created sharded like `x`, so that each device draws only
  its own part of the mask (by default explicit-axes JAX would build them whole on every
  device); with auto axes XLA's partitioner does this by itself.
  """
  shape: tuple[int, ...]
  spec: tuple[Any, ...] | None = None
  mesh: Any = None
  global_shape: tuple[int, ...] | None = None  # the whole mask's, when `shape` is a block of it


def mask_layout(x: jax.Array, shape: tuple[int, ...]) -> MaskLayout:
  """The layout of a mask of `shape` (x's shape with size-1 shared axes) drawn for `x`."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty:
    return MaskLayout(shape)
  explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
              if kind == jax.sharding.AxisType.Explicit}
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))

  def explicit_only(entry, shared):
    names = () if entry is None or shared else entry if isinstance(entry, tuple) else (entry,)
    names = tuple(name for name in names if name in explicit)
    return None if not names else names[0] if len(names) == 1 else names

  entries = tuple(explicit_only(spec[a], shape[a] != x.shape[a]) for a in range(len(shape)))
  if all(entry is None for entry in entries):
    return MaskLayout(shape)
  return MaskLayout(shape, entries, mesh)


def _iota(layout: MaskLayout, shape, dimension, axes):
  """A uint32 iota, sharded (when the layout says so) along the layout's `axes`."""
  if layout.spec is None:
    return jax.lax.broadcasted_iota(jnp.uint32, shape, dimension)
  spec = P(*(layout.spec[a] if a in axes else None for a in range(len(shape))))
  return jax.lax.broadcasted_iota(jnp.uint32, shape, dimension,
                                  out_sharding=NamedSharding(layout.mesh, spec))


def random_bits(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """uint32 random bits of ``layout.shape``: a pure function of the key words and each
  element's index in the global mask (the block's own index plus its offset, if any)."""
  shape = layout.shape
  if not shape:
    return random_bits(source, MaskLayout((1,))).reshape(())
  *lead, last = shape
  *global_lead, global_last = layout.global_shape or shape
  if math.prod(global_lead) >= 2**32 or global_last >= 2**32:
    raise ValueError("jaxdrop masks support axes of fewer than 2**32 rows and columns, got shape "
                     f"{layout.global_shape or shape}")
  offsets = source.offsets or (np.uint32(0),) * len(shape)
  rows, leading = (*lead, 1), range(len(lead))
  row = _iota(layout, rows, len(lead), leading)  # zeros, sharded like the rows
  stride = 1
  for axis in reversed(leading):
    row = row + (_iota(layout, rows, axis, leading) + offsets[axis]) * np.uint32(stride)
    stride *= global_lead[axis]
  seed, salt = threefry2x32(source.words[0], source.words[1], row, jnp.zeros_like(row))
  column = _iota(layout, (1,) * len(lead) + (last,), len(lead), (len(lead),)) + offsets[-1]
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
  # The largest threshold below 2**32 that is an integer in the rate's dtype, so that
  # `keep` below describes exactly the uint32 threshold the mask uses.
  largest = np.minimum(np.nextafter(np.asarray(_TWO32, rate.dtype), 0), np.asarray(2**32 - 1, rate.dtype))
  t = jnp.minimum(t, largest)
  any_kept = rate < 1
  keep = jnp.where(any_kept, 1 - t / _TWO32, 0).astype(rate.dtype)
  return t.astype(jnp.uint32), any_kept, keep


def keep_mask(source: MaskSource, layout: MaskLayout, t, any_kept) -> jax.Array:
  """Boolean keep mask of ``layout.shape``: True where the element is kept.

  The comparison is signed (bits and threshold both offset by 2**31), which
  vectorises to one instruction where an unsigned one takes three.
  """
  bits = jax.lax.bitcast_convert_type(random_bits(source, layout), jnp.int32)
  threshold = jax.lax.bitcast_convert_type(t ^ _SIGN, jnp.int32)
  return (bits >= threshold) & any_kept


def bernoulli(source: MaskSource, layout: MaskLayout, t, any_kept, scale):
  """The draw of plain dropout: a Bernoulli keep mask and one scale."""
  return keep_mask(source, layout, t, any_kept), scale


def standard_normal(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """float32 N(0, 1) noise of ``layout.shape``: the inverse normal CDF of 24-bit uniforms in (0, 1).

  Written with `lax.erf_inv`, an elementwise primitive, so it keeps any sharding.
  """
  return normal_from_bits(random_bits(source, layout))


def normal_from_bits(bits: jax.Array) -> jax.Array:
  """N(0, 1) from uint32 bits: sqrt(2) erf^-1(2u - 1), u = (k + 1/2) / 2**24 for the top 24 bits k.

  ``2u - 1`` is exact in float32 and never reaches -1 or 1, so the noise is finite and
  symmetric, within about ±5.42. (``ndtri(u)`` would round the top u to 1 and return inf.)
  """
  symmetric = (bits >> 8).astype(jnp.float32) * np.float32(2.0**-23) + np.float32(2.0**-24 - 1)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(symmetric)
