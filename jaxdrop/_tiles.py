"""One tile of a mask, drawn where only the tile is at hand: inside a kernel.

The mask's bits are a function of the key words and each element's global index (`_mask`), so
a kernel that works on one block of an array computes that block of `dropout`'s mask from
the block's offsets alone, with integer operations and no RNG hardware: the same bits on CPU,
GPU and TPU and in a forward and a backward kernel whatever their block sizes. This module
only checks the arguments and names the pieces; the formula, the threshold and the scaling
are `_mask`'s and `_core`'s, shared with `dropout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _keys
from . import _validate as check
from ._core import apply_noise
from ._dropout import bernoulli_scalars, compute_dtype
from ._mask import MaskLayout, MaskSource, drop_threshold, keep_mask


def mask_words(key: jax.Array) -> jax.Array:
  """The two uint32 words every jaxdrop mask of `key` is drawn from, ``uint32[2]``.

  Compute them outside the kernel and pass them in (on TPU, in SMEM or by scalar prefetch);
  `keep_block` and `dropout_block` take them inside.

  Args:
    key: a PRNG key, typed (`jax.random.key`, any implementation) or legacy
      (`jax.random.PRNGKey`); one key, not a batch.

  Returns:
    A ``uint32`` array of shape ``(2,)``.

  Examples:
    >>> import jax, jaxdrop.pallas
    >>> jaxdrop.pallas.mask_words(jax.random.key(0)).dtype
    dtype('uint32')
  """
  return _keys.mask_words(_keys.as_typed_key(key, name="key", wrap=False))


def _words(words: Any) -> tuple[jax.Array, jax.Array]:
  """`words` as two uint32 scalars: from a ``(2,)`` array or a pair of scalars."""
  if isinstance(words, (tuple, list)):
    pair = tuple(words)
  else:
    if not hasattr(words, "shape") or words.shape != (2,):
      raise ValueError(
        "words must be mask_words(key), a uint32 array of shape (2,), or a pair of uint32 "
        f"scalars, got {type(words).__name__} of shape {getattr(words, 'shape', None)}"
      )
    pair = (words[0], words[1])
  if len(pair) != 2 or any(np.shape(w) != () for w in pair):
    raise ValueError(
      f"words must be a pair of uint32 scalars, got {len(pair)} items of shapes "
      f"{[np.shape(w) for w in pair]}"
    )
  for w in pair:
    if jnp.result_type(w) != jnp.uint32:
      raise TypeError(f"words must be uint32 (mask_words(key)), got {jnp.result_type(w).name}")
  return pair[0], pair[1]


def _block_layout(
  shape: Sequence[int],
  offsets: Sequence[ArrayLike],
  global_shape: Sequence[int],
  broadcast_dims: int | Sequence[int],
) -> tuple[MaskLayout, tuple[Any, ...], tuple[int, ...]]:
  """The mask layout of a block, its offsets as uint32 (0 on shared axes), the shape."""
  shape = check.shape(shape, "shape")
  global_shape = check.shape(global_shape, "global_shape")
  if len(global_shape) != len(shape):
    raise ValueError(
      f"global_shape={global_shape} must have one size per axis of shape={shape} "
      f"({len(shape)} axes)"
    )
  if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence):
    raise TypeError(
      f"offsets must be a sequence of integers (one per axis), got {type(offsets).__name__}"
    )
  if len(offsets) != len(shape):
    raise ValueError(
      f"offsets must have one entry per axis of shape={shape}, got {len(offsets)}: {offsets!r}"
    )
  for offset in offsets:
    if not jnp.issubdtype(jnp.result_type(offset), jnp.integer) or np.ndim(offset) != 0:
      raise TypeError(f"offsets must be integer scalars, got {offsets!r}")
  shared = check.axes(broadcast_dims, len(shape), "broadcast_dims")
  starts = tuple(
    np.uint32(0) if axis in shared else jnp.asarray(offset).astype(jnp.uint32)
    for axis, offset in enumerate(offsets)
  )
  layout = MaskLayout(
    check.mask_shape(shape, shared), global_shape=check.mask_shape(global_shape, shared)
  )
  return layout, starts, shape


def _scalars(rate: ArrayLike, dtype: Any) -> tuple[Any, Any, Any]:
  """``(t, any_kept, scale)`` of inverted dropout at `rate`, as `dropout` computes them: host
  constants for a concrete rate (a kernel needs no work for them), traced values for a traced
  one (invalid: every unit kept, the scale NaN)."""
  threshold = drop_threshold(rate, dtype)
  if isinstance(threshold.t, np.generic):
    return threshold.t, threshold.any_kept, threshold.inverse_keep
  return bernoulli_scalars(threshold, False, "inverted")[0]


def keep_block(
  words: Any,
  rate: ArrayLike,
  *,
  shape: Sequence[int],
  offsets: Sequence[ArrayLike],
  global_shape: Sequence[int],
  broadcast_dims: int | Sequence[int] = (),
) -> jax.Array:
  """The kept units of one block of `jaxdrop.dropout`'s mask, computed where it is used.

  For a block of `shape` at `offsets` in an array of `global_shape`, the result is
  ``jaxdrop.dropout(key, ones(global_shape), rate, broadcast_dims=...) != 0`` on that block,
  bit for bit (for ``0 < rate < 1``), from `words` (``mask_words(key)``) and the element
  indices alone: one Threefry-2x32 per row of the block and twelve integer operations per
  element (the comparison included), no random-number hardware, so it runs inside a Pallas kernel on
  GPU (Triton) and TPU (Mosaic) as in interpret mode.

  Args:
    words: ``mask_words(key)``, a ``uint32[2]`` array, or its two entries as uint32
      scalars (read from an SMEM ref or a scalar-prefetch argument).
    rate: the DROP probability, a number in [0, 1] or a traced scalar (read in the kernel).
      A traced rate outside [0, 1] or NaN keeps every unit (`dropout_block` then returns
      NaN, as `dropout` does).
    shape: the block's shape; it may reach past the array's end (a power-of-two block over a
      shorter row): the units there get bits too, which the kernel discards.
    offsets: the block's first index along each axis of the global array, integers or
      traced integer scalars (``pl.program_id(0) * block``).
    global_shape: the whole array's shape, the one `dropout` is called on.
    broadcast_dims: axes along which the mask is shared, as in `dropout`.

  Returns:
    A boolean array of `shape`, True where the unit is kept.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop, jaxdrop.pallas
    >>> key, x = jax.random.key(0), jnp.ones((4, 6))
    >>> kept = jaxdrop.pallas.keep_block(
    ...   jaxdrop.pallas.mask_words(key), 0.5, shape=(2, 3), offsets=(2, 3), global_shape=x.shape
    ... )
    >>> bool((kept == (jaxdrop.dropout(key, x, 0.5)[2:, 3:] != 0)).all())
    True
  """
  layout, starts, shape = _block_layout(shape, offsets, global_shape, broadcast_dims)
  if check.probability(rate, "rate") == 0:
    return jnp.ones(shape, jnp.bool_)
  t, any_kept, _ = _scalars(rate, jnp.float32)
  keep = keep_mask(MaskSource(_words(words), starts), layout, t, any_kept)
  return jnp.broadcast_to(keep, shape)


def dropout_block(
  words: Any,
  x: jax.Array,
  rate: ArrayLike,
  *,
  offsets: Sequence[ArrayLike],
  global_shape: Sequence[int],
  broadcast_dims: int | Sequence[int] = (),
) -> jax.Array:
  r"""One block of `jaxdrop.dropout` (inverted), for use inside a kernel.

  `x` is the block at `offsets` of an array of `global_shape`; the result equals
  ``jaxdrop.dropout(key, X, rate, broadcast_dims=...)`` on that block bit for bit, where
  ``X`` is the whole array: :math:`y = x / (1 - \text{rate})` where `keep_block` keeps the
  unit and 0 where it drops it (exact zeros even for NaN or inf). float16 and bfloat16 are
  scaled in float32 and rounded once, as `dropout` does. In a backward kernel, the same call
  on the incoming gradient block is the derivative.

  Args:
    words: ``mask_words(key)`` or its two entries as uint32 scalars.
    x: the block, a floating array.
    rate: the DROP probability, a number in [0, 1] or a traced scalar; a traced rate
      outside [0, 1] or NaN gives NaN.
    offsets: the block's first index along each axis of the global array.
    global_shape: the whole array's shape.
    broadcast_dims: axes along which the mask is shared, as in `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop, jaxdrop.pallas
    >>> key, x = jax.random.key(0), jnp.arange(24.0).reshape(4, 6)
    >>> block = jaxdrop.pallas.dropout_block(
    ...   jaxdrop.pallas.mask_words(key), x[2:, 3:], 0.5, offsets=(2, 3), global_shape=x.shape
    ... )
    >>> bool((block == jaxdrop.dropout(key, x, 0.5)[2:, 3:]).all())
    True
  """
  x = check.float_array(x, "x")
  layout, starts, _ = _block_layout(x.shape, offsets, global_shape, broadcast_dims)
  if check.probability(rate, "rate") == 0:
    return x
  t, any_kept, mult = _scalars(rate, compute_dtype(x.dtype))
  return apply_noise(keep_mask(MaskSource(_words(words), starts), layout, t, any_kept), mult, x)
