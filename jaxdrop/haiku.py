"""Haiku-style functions over jaxdrop: ``hk.dropout``'s argument order for the whole family.

Swap ``hk.dropout(hk.next_rng_key(), rate, x)`` for
``jaxdrop.haiku.dropout(hk.next_rng_key(), rate, x)``: the key first, then the rate, then the
array, as Haiku orders them. Haiku has no train/eval switch of its own (a transformed function
decides with its own ``is_training`` argument), so these are plain functions: they need no
Haiku import and work inside and outside ``hk.transform``. Differences from ``hk.dropout``:
``rate=1`` is allowed (every unit dropped, zero gradient) where Haiku raises, and the mask is
jaxdrop's, with its key-only backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
from jax.typing import ArrayLike

from . import _validate
from ._alpha import alpha_dropout as _alpha_dropout
from ._alpha import feature_alpha_dropout as _feature_alpha_dropout
from ._block import drop_block as _drop_block
from ._dropout import dropout as _dropout
from ._noise import gaussian_dropout as _gaussian_dropout
from ._structured import channel_dropout as _channel_dropout
from ._structured import drop_path as _drop_path

__all__ = [
  "dropout",
  "channel_dropout",
  "alpha_dropout",
  "feature_alpha_dropout",
  "gaussian_dropout",
  "drop_path",
  "drop_block",
]


def _rng(rng, rate):
  """Haiku calls the key `rng`: a missing one is reported under that name."""
  if rng is None and _validate.probability(rate, "rate") != 0.0:
    raise ValueError(f"rng must be a PRNG key (hk.next_rng_key()) when rate={rate!r}, got None")
  return rng


def dropout(
  rng: jax.Array, rate: ArrayLike, x: ArrayLike, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
  """``hk.dropout(rng, rate, x, broadcast_dims)`` as `jaxdrop.dropout`.

  `rate` is the probability of DROPPING each unit, in [0, 1], and may be traced; kept units
  are scaled by ``1 / (1 - rate)``; `broadcast_dims` share one mask value.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x):
    ...   return jaxdrop.haiku.dropout(hk.next_rng_key(), 0.5, x)
    >>> f = hk.transform(forward)
    >>> y = f.apply({}, jax.random.key(0), jnp.ones((2, 8)))
    >>> bool(jnp.all((y == 0) | (y == 2)))
    True
  """
  return _dropout(_rng(rng, rate), x, rate, broadcast_dims=broadcast_dims)


def channel_dropout(
  rng: jax.Array, rate: ArrayLike, x: ArrayLike, channel_axis: int = -1, batch_axis: int | None = 0
) -> jax.Array:
  """`jaxdrop.channel_dropout` in Haiku's order: drops whole channels, one draw per example."""
  return _channel_dropout(
    _rng(rng, rate), x, rate, channel_axis=channel_axis, batch_axis=batch_axis
  )


def alpha_dropout(rng: jax.Array, rate: ArrayLike, x: ArrayLike) -> jax.Array:
  """`jaxdrop.alpha_dropout` in Haiku's order: dropout for SELU networks."""
  return _alpha_dropout(_rng(rng, rate), x, rate)


def feature_alpha_dropout(
  rng: jax.Array, rate: ArrayLike, x: ArrayLike, channel_axis: int = -1, batch_axis: int | None = 0
) -> jax.Array:
  """`jaxdrop.feature_alpha_dropout` in Haiku's order: alpha dropout of whole channels."""
  return _feature_alpha_dropout(
    _rng(rng, rate), x, rate, channel_axis=channel_axis, batch_axis=batch_axis
  )


def gaussian_dropout(rng: jax.Array, rate: ArrayLike, x: ArrayLike) -> jax.Array:
  """`jaxdrop.gaussian_dropout` in Haiku's order: multiplicative Gaussian noise."""
  return _gaussian_dropout(_rng(rng, rate), x, rate)


def drop_path(
  rng: jax.Array,
  rate: ArrayLike,
  x: ArrayLike,
  batch_axis: int = 0,
  mode: Literal["row", "batch"] = "row",
) -> jax.Array:
  """`jaxdrop.drop_path` in Haiku's order: stochastic depth on a residual branch."""
  return _drop_path(_rng(rng, rate), x, rate, batch_axis=batch_axis, mode=mode)


def drop_block(
  rng: jax.Array,
  rate: ArrayLike,
  x: ArrayLike,
  block_size: int,
  spatial_axes: Sequence[int] = (1, 2),
) -> jax.Array:
  """`jaxdrop.drop_block` in Haiku's order: drops square blocks of NHWC feature maps."""
  return _drop_block(_rng(rng, rate), x, rate, block_size, spatial_axes=spatial_axes)
