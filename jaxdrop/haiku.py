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


def _rng(rng: jax.Array | None, rate: ArrayLike) -> jax.Array | None:
  """Haiku calls the key `rng`: a missing one is reported under that name."""
  if rng is None and _validate.probability(rate, "rate") != 0.0:
    raise ValueError(f"rng must be a PRNG key (hk.next_rng_key()) when rate={rate!r}, got None")
  return rng


def dropout(
  rng: jax.Array, rate: ArrayLike, x: ArrayLike, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
  """``hk.dropout(rng, rate, x, broadcast_dims)`` as `jaxdrop.dropout`.

  `rate` is the probability of DROPPING each unit, in [0, 1], and may be traced (a traced
  value outside [0, 1] makes the output NaN: `jaxdrop.dropout` says how to find it); kept
  units are scaled by ``1 / (1 - rate)``; `broadcast_dims` share one mask value.

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
  """`jaxdrop.channel_dropout` in Haiku's order: drops whole channels, one draw per example.

  Arguments as for `jaxdrop.channel_dropout` (`rate` is the probability of DROPPING each
  channel of each example); `rng` may be None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.5 if is_training else 0.0    # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.channel_dropout(hk.maybe_next_rng_key(), rate, x)
    >>> f = hk.transform(forward)
    >>> x = jnp.ones((2, 3, 4))                 # (example, position, channel)
    >>> y = f.apply({}, jax.random.key(0), x, True)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(f.apply({}, None, x, False) == x))
    True
  """
  return _channel_dropout(
    _rng(rng, rate), x, rate, channel_axis=channel_axis, batch_axis=batch_axis
  )


def alpha_dropout(rng: jax.Array, rate: ArrayLike, x: ArrayLike) -> jax.Array:
  """`jaxdrop.alpha_dropout` in Haiku's order: dropout for SELU networks.

  Arguments as for `jaxdrop.alpha_dropout`; `rng` may be None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.5 if is_training else 0.0    # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.alpha_dropout(hk.maybe_next_rng_key(), rate, x)
    >>> f = hk.transform(forward)
    >>> x = jnp.zeros((2, 8))
    >>> y = f.apply({}, jax.random.key(0), x, True)
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(f.apply({}, None, x + 1, False) == x + 1))
    True
  """
  return _alpha_dropout(_rng(rng, rate), x, rate)


def feature_alpha_dropout(
  rng: jax.Array, rate: ArrayLike, x: ArrayLike, channel_axis: int = -1, batch_axis: int | None = 0
) -> jax.Array:
  """`jaxdrop.feature_alpha_dropout` in Haiku's order: alpha dropout of whole channels.

  Arguments as for `jaxdrop.feature_alpha_dropout`; `rng` may be None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.5 if is_training else 0.0    # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.feature_alpha_dropout(hk.maybe_next_rng_key(), rate, x)
    >>> f = hk.transform(forward)
    >>> x = jnp.zeros((2, 3, 4))                # (example, position, channel)
    >>> y = f.apply({}, jax.random.key(0), x, True)
    >>> bool(jnp.all(y.min(1) == y.max(1)))     # one value per (example, channel)
    True
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(f.apply({}, None, x + 1, False) == x + 1))
    True
  """
  return _feature_alpha_dropout(
    _rng(rng, rate), x, rate, channel_axis=channel_axis, batch_axis=batch_axis
  )


def gaussian_dropout(rng: jax.Array, rate: ArrayLike, x: ArrayLike) -> jax.Array:
  """`jaxdrop.gaussian_dropout` in Haiku's order: multiplicative Gaussian noise.

  Arguments as for `jaxdrop.gaussian_dropout`; `rng` may be None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.5 if is_training else 0.0    # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.gaussian_dropout(hk.maybe_next_rng_key(), rate, x)
    >>> f = hk.transform(forward)
    >>> x, key = jnp.arange(1.0, 9.0), jax.random.key(0)
    >>> y = f.apply({}, key, x, True)
    >>> bool(jnp.all(f.apply({}, key, 2 * x, True) == 2 * y))  # same key, same noise
    True
    >>> bool(jnp.all(f.apply({}, None, x, False) == x))
    True
  """
  return _gaussian_dropout(_rng(rng, rate), x, rate)


def drop_path(
  rng: jax.Array,
  rate: ArrayLike,
  x: ArrayLike,
  batch_axis: int = 0,
  mode: Literal["row", "batch"] = "row",
) -> jax.Array:
  """`jaxdrop.drop_path` in Haiku's order: stochastic depth on a residual branch.

  Arguments as for `jaxdrop.drop_path` (`rate` is the probability of DROPPING the branch);
  `rng` may be None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.5 if is_training else 0.0    # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.drop_path(hk.maybe_next_rng_key(), rate, x)
    >>> f = hk.transform(forward)
    >>> x = jnp.ones((4, 3))                    # the branch's output, 4 examples
    >>> y = f.apply({}, jax.random.key(0), x, True)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(f.apply({}, None, x, False) == x))
    True
  """
  return _drop_path(_rng(rng, rate), x, rate, batch_axis=batch_axis, mode=mode)


def drop_block(
  rng: jax.Array,
  rate: ArrayLike,
  x: ArrayLike,
  block_size: int,
  spatial_axes: Sequence[int] = (1, 2),
) -> jax.Array:
  """`jaxdrop.drop_block` in Haiku's order: drops square blocks of NHWC feature maps.

  Arguments as for `jaxdrop.drop_block` (`block_size` has no default here); `rng` may be
  None when `rate` is 0.

  Examples:
    >>> import jax, jax.numpy as jnp, haiku as hk, jaxdrop.haiku
    >>> def forward(x, is_training):
    ...   rate = 0.25 if is_training else 0.0   # rate 0 returns x and needs no key
    ...   return jaxdrop.haiku.drop_block(hk.maybe_next_rng_key(), rate, x, 3)
    >>> f = hk.transform(forward)
    >>> x = jnp.ones((1, 6, 6, 1))
    >>> y = f.apply({}, jax.random.key(2), x, True)
    >>> print((y[0, :, :, 0] == 0).astype(int))   # dropped units: a 3 x 3 block
    [[0 0 0 0 0 0]
     [0 1 1 1 0 0]
     [0 1 1 1 0 0]
     [0 1 1 1 0 0]
     [0 0 0 0 0 0]
     [0 0 0 0 0 0]]
    >>> bool(jnp.all(f.apply({}, None, x, False) == x))
    True
  """
  return _drop_block(_rng(rng, rate), x, rate, block_size, spatial_axes=spatial_axes)
