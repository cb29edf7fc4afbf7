"""The mask generator (stream version 2): 32 random bits per element for a few integer ops.

Element ``(r, c)`` of a mask, ``r`` the flat index of its row (all axes but the last) and
``c`` its index along the last axis, both global, gets

    s0, s1 = threefry2x32(mask words; counter (r, 0))     # once per row
    w      = c * 0x9E3779B9  (mod 2**32)                  # a Weyl step, once per column
    v      = (s0 + w) ^ s1
    bits   = lowbias32(v) ^ w ^ 0x80000000

One Threefry-2x32 hash (JAX's primitive, 20 rounds) is spent per row; it is keyed by the
mask words (see `_keys.mask_words`) and its two output words key the row: a 64-bit row key,
so two rows share their inputs only if both words agree. The column's Weyl step spreads
neighbouring columns across the 32-bit space, lowbias32 (C. Wellons' full two-round integer
finaliser) mixes, and xoring the Weyl step back in (a feed-forward) makes each row a random
function of the column rather than a bijection: a long row repeats 32-bit values as often
as random data does (PractRand sees the permutations only over a whole row of 2**32
columns). The stream passes PractRand on row-major, column-major, long-row, packed-mask and
across-key streams, and TestU01 Crush (docs/concepts/mask_stream.md for how far);
`benchmarks/rng_quality.py` writes each stream for the batteries.

The bits of an element depend only on the key and its global index, never on the mesh or the
batch: every shard, or any block (an attention tile), can be drawn alone and equals that block
of the whole mask. Row keys are broadcast along the last axis and the column term along the
others, without any reshape, so XLA's fused loop vectorises.

An element is kept when its bits, read as unsigned, are at least ``t = round(rate * 2**32)``
(``t`` clamped to ``[1, 2**32 - 1]`` for ``0 < rate < 1``): the realised drop probability is
``t / 2**32``. The mask path computes the bits before their top bit is flipped and compares
them signed with ``t ^ 2**31``, which is the same test in one vector instruction.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike, DTypeLike

from . import _validate as check
from ._keys import as_typed_key, mask_words, threefry2x32

STREAM_VERSION = 2

_M1 = np.uint32(0x7FEB352D)  # lowbias32's multipliers
_M2 = np.uint32(0x846CA68B)
_WEYL = np.uint32(0x9E3779B9)  # 2**32 / golden ratio, odd
_SIGN = np.uint32(0x80000000)
_TWO32 = 2**32


def lowbias32(v: jax.Array) -> jax.Array:
  """C. Wellons' lowbias32 integer hash: a bijection of uint32 with low avalanche bias."""
  v = v ^ (v >> 16)
  v = v * _M1
  v = v ^ (v >> 15)
  v = v * _M2
  return v ^ (v >> 16)


def _flipped_element_bits(s0: jax.Array, s1: jax.Array, column: jax.Array) -> jax.Array:
  """The bits of the element at `column` of the row keyed by ``(s0, s1)`` (broadcasting),
  with the top bit flipped (the form the signed compare of the mask path reads)."""
  w = column * _WEYL
  return lowbias32((s0 + w) ^ s1) ^ w


def element_bits(s0: jax.Array, s1: jax.Array, column: jax.Array) -> jax.Array:
  """The bits of the element at `column` of the row keyed by ``(s0, s1)`` (broadcasting)."""
  return _flipped_element_bits(s0, s1, column) ^ _SIGN


class MaskSource(NamedTuple):
  """Where a mask's bits come from: the two key words and, for a block of a larger array
  (inside `shard_map`), the block's offset along each axis of the global array."""

  words: jax.Array | tuple[jax.Array, jax.Array]  # ``uint32[2]``, or its two entries (a kernel's)
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
  shared = tuple(a for a in range(len(shape)) if shape[a] != x.shape[a])
  return sharded_layout(shape, getattr(jax.typeof(x), "sharding", None), shared)


def sharded_layout(
  shape: tuple[int, ...], sharding: Any, shared: tuple[int, ...] = ()
) -> MaskLayout:
  """The layout of a mask of `shape` for an array sharded by `sharding` (None: unsharded),
  the `shared` axes whole: only the explicit mesh axes are kept (auto axes are XLA's to
  place)."""
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty:
    return MaskLayout(shape)
  explicit = {
    name
    for name, kind in zip(mesh.axis_names, mesh.axis_types)
    if kind == jax.sharding.AxisType.Explicit
  }
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))

  def explicit_only(entry: Any, shared: bool) -> Any:
    names = tuple(name for name in check.axis_names(entry) if name in explicit and not shared)
    return None if not names else names[0] if len(names) == 1 else names

  entries = tuple(explicit_only(spec[a], a in shared) for a in range(len(shape)))
  if all(entry is None for entry in entries):
    return MaskLayout(shape)
  return MaskLayout(shape, entries, mesh)


def _iota(
  layout: MaskLayout, shape: tuple[int, ...], dimension: int, axes: Sequence[int]
) -> jax.Array:
  """A uint32 iota, sharded (when the layout says so) along the layout's `axes`."""
  if layout.spec is None:
    return jax.lax.broadcasted_iota(jnp.uint32, shape, dimension)
  spec = P(*(layout.spec[a] if a in axes else None for a in range(len(shape))))
  return jax.lax.broadcasted_iota(
    jnp.uint32, shape, dimension, out_sharding=NamedSharding(layout.mesh, spec)
  )


def _uint32(size: int) -> jax.Array | np.uint32:
  """A size (an int, or a symbolic dimension under jax.export) as a uint32 scalar."""
  if jax.export.is_symbolic_dim(size):
    return jnp.asarray(size).astype(jnp.uint32)
  return np.uint32(size)


def row_keys(
  words: jax.Array | tuple[jax.Array, jax.Array], row: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The two words keying each row: Threefry-2x32 of the row's flat index under the mask words."""
  return threefry2x32(words[0], words[1], row, jnp.zeros_like(row))


def mask_bits(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """uint32 random bits of ``layout.shape``: a pure function of the key words and each
  element's index in the global mask (the block's own index plus its offset, if any)."""
  return _flipped_bits(source, layout) ^ _SIGN


def _flipped_bits(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """`mask_bits` with the top bit flipped."""
  shape = layout.shape
  if not shape:
    return _flipped_bits(source, MaskLayout((1,))).reshape(())
  *lead, last = shape
  *global_lead, global_last = layout.global_shape or shape
  # With symbolic dimensions (jax.export) the limit cannot be checked when tracing; the
  # exported function is exact for every size within it.
  concrete = not any(map(jax.export.is_symbolic_dim, (*global_lead, global_last)))
  if concrete and (math.prod(global_lead) >= 2**32 or global_last >= 2**32):
    raise ValueError(
      "jaxdrop masks need fewer than 2**32 rows (the product of all axes but the last, here "
      f"{math.prod(global_lead)}) and fewer than 2**32 columns (the last axis, here {global_last}),"
      f" got shape {layout.global_shape or shape}; reshaping x to move size into the last axis "
      "keeps the same number of elements"
    )
  offsets = source.offsets or (np.uint32(0),) * len(shape)
  rows, leading = (*lead, 1), range(len(lead))
  row = _iota(layout, rows, len(lead), leading)  # zeros, sharded like the rows
  stride = 1
  for axis in reversed(leading):
    row = row + (_iota(layout, rows, axis, leading) + offsets[axis]) * _uint32(stride)
    stride *= global_lead[axis]
  s0, s1 = row_keys(source.words, row)
  column = _iota(layout, (1,) * len(lead) + (last,), len(lead), (len(lead),)) + offsets[-1]
  return _flipped_element_bits(s0, s1, column)


class Threshold(NamedTuple):
  """A drop rate as the mask uses it.

  `t` is the uint32 threshold (a unit is dropped when its bits are below it); `any_kept` is
  False only for rate 1, whose threshold does not fit in 32 bits (its `t` is the largest
  one); `keep` and `drop` are the realised probabilities ``1 - t / 2**32`` and
  ``t / 2**32`` in the compute dtype, both computed without cancellation, and
  `inverse_keep` is ``2**32 / (2**32 - t)`` (0 at rate 1).
  All three are computed from the integers ``t`` and ``2**32 - t`` with the same float
  operations whether the rate is concrete or traced, so both give bit-identical outputs for
  the same value of the rate. `valid` is False for a traced rate outside [0, 1] or NaN.
  """

  # Arrays for a traced rate; NumPy scalars for a concrete one (`_host_threshold`).
  t: jax.Array | np.uint32
  any_kept: jax.Array | np.bool_
  keep: jax.Array | np.floating
  drop: jax.Array | np.floating
  inverse_keep: jax.Array | np.floating
  valid: jax.Array | np.bool_


def _realised(
  t: jax.Array | np.uint32, any_kept: ArrayLike, dtype: DTypeLike, xp: types.ModuleType
) -> tuple[Any, Any, Any]:
  """``(keep, drop, inverse_keep)`` from the integer threshold, with NumPy (`xp=np`, on the
  host) or jax.numpy (traced): the same float operations, so the same values."""
  kept_count = xp.where(
    t == 0, xp.asarray(_TWO32, dtype), xp.asarray(xp.uint32(0) - xp.uint32(t)).astype(dtype)
  )  # 2**32 - t
  scale = xp.asarray(1 / _TWO32, dtype)
  keep = xp.where(any_kept, kept_count * scale, 0).astype(dtype)
  drop = xp.where(any_kept, xp.asarray(t).astype(dtype) * scale, 1).astype(dtype)
  inverse_keep = xp.where(any_kept, xp.asarray(_TWO32, dtype) / kept_count, 0).astype(dtype)
  return keep, drop, inverse_keep


def _host_threshold(rate: float, dtype: DTypeLike) -> Threshold:
  """Exact threshold of a concrete rate, in float64 on the host.

  ``rate * 2**32`` is exact in float64 and Python's `round` rounds it exactly (ties to
  even, as `jnp.round`), so the realised rate is within ``2**-33`` of `rate` except where
  the clamp to ``[1, 2**32 - 1]`` applies (rates below ``2**-33`` or above ``1 - 2**-33``).
  """
  any_kept = np.bool_(rate < 1)
  t = np.uint32(0 if rate == 0 else min(max(round(rate * _TWO32), 1), _TWO32 - 1))
  with np.errstate(over="ignore"):  # 0 - t wraps around, as in uint32 arithmetic
    realised = _realised(t, any_kept, dtype, np)
  return Threshold(t, any_kept, *realised, np.bool_(True))


def round_half_even(v: jax.Array) -> jax.Array:
  """`jnp.round` of a non-negative float, from `floor` (Pallas' Triton lowering has no
  `round`): ``v + 1/2`` is exact below ``2**mantissa``, where a tie (a remainder of exactly
  1/2) goes to the even neighbour; from there on every float is an integer."""
  r = jnp.floor(v + 0.5)
  odd = r - 2 * jnp.floor(r * 0.5) == 1
  r = jnp.where((r - v == 0.5) & odd, r - 1, r)
  return jnp.where(v >= 2.0 ** jnp.finfo(v.dtype).nmant, v, r)


def _traced_threshold(rate: jax.Array, dtype: DTypeLike) -> Threshold:
  """The threshold of a traced rate: exact for the rate's value in `dtype` (float32 holds a
  rate to 24 significant bits, so float32 rates within 2**-25 of 1 are 1)."""
  rate = jnp.asarray(rate, dtype)
  t = round_half_even(rate * np.asarray(_TWO32, dtype))
  t = jnp.where(rate > 0, jnp.maximum(t, 1), 0)
  # The largest threshold below 2**32 that is an integer in `dtype` (2**32 - 256 in float32).
  largest = np.minimum(np.nextafter(np.asarray(_TWO32, dtype), 0), np.asarray(_TWO32 - 1, dtype))
  t = jnp.minimum(t, largest).astype(jnp.uint32)
  any_kept = rate < 1
  return Threshold(t, any_kept, *_realised(t, any_kept, dtype, jnp), (rate >= 0) & (rate <= 1))


@functools.partial(jax.jit, static_argnames=("shape", "out_sharding"))
def _random_bits(
  key: jax.Array, shape: tuple[int, ...], out_sharding: NamedSharding | None
) -> jax.Array:
  bits = mask_bits(MaskSource(mask_words(key)), sharded_layout(shape, out_sharding))
  if out_sharding is None:
    return bits
  # On explicit axes the layout already gave the bits their sharding (reshard types them
  # so); auto axes are a constraint for XLA's partitioner (check.out_sharding: not both).
  if check.mesh_axes(out_sharding.spec) & set(out_sharding.mesh.explicit_axes):
    return jax.sharding.reshard(bits, out_sharding)
  return jax.lax.with_sharding_constraint(bits, out_sharding)


def random_bits(
  key: jax.Array, shape: Sequence[int], *, out_sharding: NamedSharding | P | None = None
) -> jax.Array:
  r"""The uint32 random bits behind every jaxdrop mask and noise (mask stream version 2).

  For element :math:`(r, c)` of `shape`, :math:`r` the flat index of its row (every axis
  but the last) and :math:`c` its index along the last axis,

  .. math::

     (s_0, s_1) = \mathrm{Threefry2x32}_{k}(r, 0), \quad w = c \cdot \mathtt{0x9E3779B9},
     \quad \text{bits}_{r,c} = \mathrm{lowbias32}\big((s_0 + w) \oplus s_1\big)
     \oplus w \oplus \mathtt{0x80000000}

  in 32-bit unsigned arithmetic, with :math:`k` two words hashed from `key` (so the
  stream is distinct from `jax.random`'s streams of the same key). The bits of an element
  depend only on the key and its index, so any block of the array equals the same block
  drawn as part of a larger call with the same trailing size, and jaxdrop draws the same
  bits whether or not the array is sharded.

  `jaxdrop.dropout` keeps unit ``i`` exactly where ``random_bits(key, shape)[i] >= t``, with
  ``shape`` the mask's shape (that of `x`, with size 1 on `broadcast_dims`) and
  ``t = round(rate * 2**32)`` clamped to ``[1, 2**32 - 1]`` for ``0 < rate < 1``; the
  same bits give `gaussian_dropout`'s noise (from their top 24 bits) and DropBlock's seeds.
  The stream passes PractRand and TestU01 (the documentation's page on the mask stream) and
  is pinned by golden values: a change to it is a new stream version, recorded in the
  changelog.

  Args:
    key: a PRNG key, typed (`jax.random.key`, any implementation) or legacy
      (`jax.random.PRNGKey`); one key, not a batch.
    shape: the shape of the result, a sequence of non-negative ints; fewer than
      2**32 rows (the product of all axes but the last) and columns.
    out_sharding: how to shard the result, as in `jax.random.bits`: a `NamedSharding`, or a
      `PartitionSpec` of the mesh set by `jax.set_mesh`, over explicit or over auto mesh
      axes (not both). On explicit axes each device draws only its own block (call it inside
      ``jax.set_mesh``, as JAX asks for any explicitly sharded computation); the bits are the
      same whatever the sharding.

  Returns:
    A ``uint32`` array of `shape`.

  Examples:
    >>> import jax, jaxdrop
    >>> bits = jaxdrop.random_bits(jax.random.key(0), (2, 3))
    >>> bits.dtype, bits.shape
    (dtype('uint32'), (2, 3))
    >>> bool((jaxdrop.random_bits(jax.random.key(0), (4, 3))[:2] == bits).all())
    True

  References:
    Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC (2011)
    (Threefry); C. Wellons, "Prospecting for hash functions" (2018) (lowbias32).
  """
  key = as_typed_key(key, name="key", wrap=False)
  shape = check.shape(shape, "shape")
  return _random_bits(key, shape, check.out_sharding(out_sharding, len(shape), "out_sharding"))


def drop_threshold(rate: ArrayLike, dtype: DTypeLike = jnp.float32) -> Threshold:
  """The `Threshold` of a drop rate in [0, 1].

  A concrete rate (a Python or NumPy number, or a concrete array) is converted exactly on
  the host, a traced one in the graph; either way the result can be passed into a jitted
  function, where a new rate does not retrace. Any rate > 0 has ``t >= 1`` (a small rate
  never rounds to "never drop") and any rate < 1 ``t <= 2**32 - 1``.
  """
  if check.is_traced(rate):
    return _traced_threshold(rate, dtype)
  return _host_threshold(check.real_float(rate), dtype)


def keep_mask(
  source: MaskSource,
  layout: MaskLayout,
  t: jax.Array | np.uint32,
  any_kept: jax.Array | np.bool_ | bool,
) -> jax.Array:
  """Boolean keep mask of ``layout.shape``: True where the element is kept, ``bits >= t``.

  The comparison is signed (bits and threshold both offset by 2**31), which
  vectorises to one instruction where an unsigned one takes three.
  """
  bits = jax.lax.bitcast_convert_type(_flipped_bits(source, layout), jnp.int32)
  # A concrete rate's threshold is converted on the host: Pallas' Triton lowering cannot
  # bitcast a constant.
  if isinstance(t, np.generic):
    threshold: Any = np.asarray(t ^ _SIGN).view(np.int32)[()]
  else:
    threshold = jax.lax.bitcast_convert_type(t ^ _SIGN, jnp.int32)
  if isinstance(any_kept, np.bool_) and any_kept:  # concrete: no `& True` per element
    return bits >= threshold
  return (bits >= threshold) & any_kept


def bernoulli(
  source: MaskSource,
  layout: MaskLayout,
  t: jax.Array,
  any_kept: jax.Array,
  scale: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The draw of plain dropout: a Bernoulli keep mask and one scale."""
  return keep_mask(source, layout, t, any_kept), scale


def standard_normal(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """float32 N(0, 1) noise of ``layout.shape``: the inverse normal CDF of 24-bit uniforms in (0, 1).

  Written with `lax.erf_inv`, an elementwise primitive, so it keeps any sharding.
  """
  return normal_from_bits(mask_bits(source, layout))


def logistic(source: MaskSource, layout: MaskLayout) -> jax.Array:
  """float32 ``logit(u)`` of ``layout.shape``, u uniform in (0, 1): standard logistic noise.

  u is ``(2k + 1) / 2**25`` for the top 24 bits k, so ``u < rate`` exactly when the unit's bits
  are below ``rate * 2**32`` up to the low 8 bits: where `dropout` drops it for the same key.
  """
  return logistic_from_bits(mask_bits(source, layout))


def logistic_from_bits(bits: jax.Array) -> jax.Array:
  """``log(u) - log(1 - u)`` from uint32 bits, u = (2k + 1) / 2**25 for the top 24 bits k.

  ``2k + 1`` and ``2**25 - (2k + 1)`` are read from the bits as integers, so neither u nor
  ``1 - u`` is rounded to 0 or 1: the noise is finite and antisymmetric in the bits, within
  about ±17.3. (``log(u / (1 - u))`` in float32 would meet ``u = 1`` for the top 2**-25.)
  """
  odd = (bits >> 7) | 1
  mirror = (~bits >> 7) | 1  # 2**25 - odd
  return jnp.log(odd.astype(jnp.float32)) - jnp.log(mirror.astype(jnp.float32))


def normal_from_bits(bits: jax.Array) -> jax.Array:
  """N(0, 1) from uint32 bits: sqrt(2) erf^-1(2u - 1), u = (k + 1/2) / 2**24 for the top 24 bits k.

  ``2u - 1`` is exact in float32 and never reaches -1 or 1, so the noise is finite and
  symmetric, within about ±5.42. (``ndtri(u)`` would round the top u to 1 and return inf.)
  """
  symmetric = (bits >> 8).astype(jnp.float32) * np.float32(2.0**-23) + np.float32(2.0**-24 - 1)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(symmetric)
