"""Locked (variational) dropout: draw one mask, apply it at every step of a recurrent loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import AUTODIFF_MODES, Autodiff, bernoulli_scalars, checked_key
from ._keys import mask_words
from ._mask import MaskLayout, MaskSource, Threshold, drop_threshold, keep_mask


class DropoutMask(NamedTuple):
  """A drawn dropout mask: `keep` (bool) and the `scale` of kept units. A pytree.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> mask = jaxdrop.make_mask(jax.random.key(0), (2, 4), 0.5)
    >>> jax.tree.map(jnp.shape, mask)           # a pytree of two arrays
    DropoutMask(keep=(2, 4), scale=())
    >>> float(mask.scale)                       # 1 / (1 - rate)
    2.0
    >>> x = jnp.arange(8.0).reshape(2, 4)
    >>> bool(jnp.all(jaxdrop.apply_mask(mask, x) == jnp.where(mask.keep, x * mask.scale, 0)))
    True
  """

  keep: jax.Array
  scale: jax.Array


@functools.partial(jax.jit, static_argnames=("shape", "inverted"))
def _make_mask(
  key: jax.Array, threshold: Threshold, *, shape: tuple[int, ...], inverted: bool
) -> DropoutMask:
  (t, any_kept, scale), _ = bernoulli_scalars(
    threshold, jnp.bool_(False), "inverted" if inverted else "classic"
  )
  return DropoutMask(keep_mask(MaskSource(mask_words(key)), MaskLayout(shape), t, any_kept), scale)


def make_mask(
  key: jax.Array | None, shape: Sequence[int], rate: ArrayLike, *, inverted: bool = True
) -> DropoutMask:
  r"""Draws a dropout mask once, to reuse at every step of a loop (locked dropout).

  :math:`m \sim \mathrm{Bernoulli}(1 - \text{rate})` of the given shape, with
  the scale of kept units (1/keep when `inverted`, else 1). Give it the rank of
  what it is applied to, with size-1 axes where the mask is shared: e.g.
  ``(batch, features)`` for one mask per example of a recurrent state, or
  ``(1, features)`` for one mask shared by the batch. Apply it with `apply_mask`
  inside a `jax.lax.scan` and every time step sees the same mask (Gal &
  Ghahramani's variational RNN dropout).
  `jaxdrop.dropout` with ``broadcast_dims`` over the time axis gives the same
  effect on a whole ``[batch, time, features]`` sequence at once.

  Args:
    key: a PRNG key, as for `dropout`.
    shape: the mask's shape: the rank of what it is applied to, size 1 where shared.
    rate: the probability of DROPPING each unit, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: it makes the mask's scale NaN, so every output the
      mask is applied to is NaN, and with ``jax.config.update("jax_debug_nans", True)`` JAX
      reruns the call eagerly, where the check raises a ValueError naming the rate.
    inverted: scale kept units by 1/(1 - rate) (True) or not at all (False).

  Returns:
    A `DropoutMask` (``keep``: bool array of `shape`, ``scale``: float32 scalar).

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> mask = jaxdrop.make_mask(jax.random.key(0), (2, 6), 0.5)
    >>> def step(h, x):
    ...     h = jnp.tanh(x + jaxdrop.apply_mask(mask, h))
    ...     return h, h
    >>> _, hs = jax.lax.scan(step, jnp.ones((2, 6)), jnp.ones((5, 2, 6)))
    >>> hs.shape
    (5, 2, 6)

  References:
    Gal and Ghahramani, "A theoretically grounded application of dropout in
    recurrent neural networks", NeurIPS (2016).
  """
  shape = check.shape(shape, "shape")
  rate_value = check.probability(rate, "rate")
  inverted = check.static_bool(inverted, "inverted")
  key = checked_key(key)
  if rate_value == 0.0:
    return DropoutMask(jnp.ones(shape, bool), jnp.ones((), jnp.float32))
  if key is None:
    raise TypeError(
      f"make_mask needs a PRNG key (e.g. jax.random.key(0)) unless rate is a "
      f"concrete 0, got key=None with rate={rate!r}"
    )
  return _make_mask(key, drop_threshold(rate), shape=shape, inverted=inverted)


def _given(
  source: None, layout: MaskLayout, keep: jax.Array, scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
  del source, layout
  return keep, scale


def apply_mask(
  mask: DropoutMask, x: ArrayLike, *, autodiff: Literal["vjp", "jvp"] = "vjp"
) -> jax.Array:
  r"""Applies a mask from `make_mask`: :math:`y = x \cdot m \cdot \text{scale}`.

  Dropped units are exact zeros.

  The derivative is the family's one rule, :math:`\partial x = g \cdot m \cdot
  \text{scale}`; the mask itself gets no gradient. The backward pass keeps the
  mask you already hold, nothing per step.

  Args:
    mask: a `DropoutMask` from `make_mask`, broadcastable against `x` with the same rank.
    x: a floating array.
    autodiff: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> mask = jaxdrop.make_mask(jax.random.key(0), (1, 4), 0.5)
    >>> jaxdrop.apply_mask(mask, jnp.ones((3, 4))).shape
    (3, 4)
  """
  if not isinstance(mask, DropoutMask):
    raise TypeError(f"mask must be a DropoutMask from jaxdrop.make_mask, got {type(mask).__name__}")
  x = check.float_array(x, "x")
  autodiff = check.choice(autodiff, AUTODIFF_MODES, "autodiff")
  keep = jnp.asarray(mask.keep)
  if (
    keep.dtype != np.bool_
    or keep.ndim != x.ndim
    or any(m not in (1, d) for m, d in zip(keep.shape, x.shape))
  ):
    hint = tuple(1 if i < x.ndim - keep.ndim else d for i, d in enumerate(x.shape))
    raise ValueError(
      f"mask of shape {keep.shape} ({keep.dtype}) does not broadcast against x of shape "
      f"{x.shape} at the same rank: draw it with make_mask(key, shape, rate) for a shape of "
      f"the same rank as x, with size-1 axes where the mask is shared, e.g. {hint}"
    )
  scale = mask.scale
  dtype = getattr(scale, "dtype", None)
  real = (isinstance(scale, (int, float)) and not isinstance(scale, bool)) or (
    dtype is not None
    and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
  )
  if not real:
    raise TypeError(f"mask.scale must be a real scalar, got {scale!r}")
  if jnp.ndim(scale) != 0:
    raise ValueError(
      f"mask.scale must be a scalar, got shape {jnp.shape(scale)} (a batch of masks "
      "from jax.vmap(make_mask) must be applied inside jax.vmap too)"
    )
  with forward_mode_hint("apply_mask"):
    return _apply_mask(keep, jnp.asarray(scale), x, autodiff=autodiff)


@functools.partial(jax.jit, static_argnames=("autodiff",))
def _apply_mask(
  keep: jax.Array, scale: jax.Array, x: jax.Array, *, autodiff: Autodiff
) -> jax.Array:
  # Jitted, so that an eager call costs one dispatch rather than one per op.
  return noise_op(
    None, x, (keep, scale), draw=_given, mask_shape=keep.shape, recompute=False, autodiff=autodiff
  )
