"""Structured masks: one decision shared by a whole channel or a whole example.

Channel dropout keeps or drops every unit of a feature map together; drop-path keeps or
drops a residual branch per example (or for the batch). Both are Bernoulli dropout with the
mask shared along axes, on `_dropout`'s path. DropBlock, whose blocks are also structured,
has its own module (`_block`).
"""

from __future__ import annotations

from typing import Literal

import jax
from jax.typing import ArrayLike

from . import _validate as check
from ._dropout import Autodiff, check_common, run_bernoulli


def _batch_and_channel(
  x: jax.Array, batch_axis: int | None, channel_axis: int
) -> tuple[int | None, int]:
  channel = check.axes(channel_axis, x.ndim, "channel_axis")
  if len(channel) != 1:
    raise TypeError(f"channel_axis must be one integer axis, got {channel_axis!r}")
  if batch_axis is None:
    return None, channel[0]
  batch = check.axes(batch_axis, x.ndim, "batch_axis")
  if len(batch) != 1:
    raise TypeError(f"batch_axis must be one integer axis or None, got {batch_axis!r}")
  if batch == channel:
    raise ValueError(
      f"batch_axis and channel_axis must differ, got batch_axis={batch_axis!r} "
      f"and channel_axis={channel_axis!r} for an array of {x.ndim} dimensions"
    )
  return batch[0], channel[0]


def _all_but(ndim: int, *keep: int | None) -> tuple[int, ...]:
  return tuple(axis for axis in range(ndim) if axis not in keep)


def _per_channel(
  name: str,
  kind: str,
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  channel_axis: int,
  batch_axis: int | None,
  deterministic: bool | ArrayLike,
  recompute: bool,
  autodiff: Autodiff,
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  """A Bernoulli member with one decision per (example, channel): the mask is shared elsewhere."""
  x, rate_value, deterministic, recompute, autodiff = check_common(
    x, rate, deterministic, recompute, autodiff
  )
  batch, channel = _batch_and_channel(x, batch_axis, channel_axis)
  return run_bernoulli(
    name,
    key,
    x,
    rate,
    rate_value,
    deterministic,
    shared_axes=_all_but(x.ndim, batch, channel),
    kind=kind,
    recompute=recompute,
    autodiff=autodiff,
    shard_spec=shard_spec,
  )


def channel_dropout(
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  *,
  channel_axis: int = -1,
  batch_axis: int | None = 0,
  deterministic: bool | ArrayLike = False,
  recompute: bool = True,
  autodiff: Literal["vjp", "jvp"] = "vjp",
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Drops whole feature maps: one keep decision per (example, channel).

  With :math:`m_{n,c} \sim \mathrm{Bernoulli}(1 - \text{rate})`,

  .. math::

     y_{n, \ldots, c} = x_{n, \ldots, c} \, m_{n,c} / (1 - \text{rate}),

  the mask shared over every axis but the batch and channel axes (PyTorch's
  ``dropout1d/2d/3d``, Keras' ``SpatialDropout``). Channels-last by default;
  ``channel_axis=1`` for NCHW. The derivative is the same mask and scale applied
  to the incoming gradient.

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array with a batch axis (unless ``batch_axis=None``) and a channel axis.
    rate: the probability of DROPPING each feature map, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
    channel_axis: the channel axis (default -1, channels last).
    batch_axis: the batch axis (default 0), or None for an unbatched input.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute, autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.channel_dropout(jax.random.key(0), jnp.ones((2, 4, 4, 8)), 0.5)
    >>> maps = y.reshape(2, 16, 8)          # (example, pixel, channel)
    >>> bool(jnp.all(maps.min(1) == maps.max(1)))   # each map is all 0 or all 2
    True

  References:
    Tompson, Goroshin, Jain, LeCun and Bregler, "Efficient object localization
    using convolutional networks", CVPR (2015).
  """
  return _per_channel(
    "channel_dropout",
    "inverted",
    key,
    x,
    rate,
    channel_axis,
    batch_axis,
    deterministic,
    recompute,
    autodiff,
    shard_spec,
  )


def drop_path(
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  *,
  batch_axis: int = 0,
  mode: Literal["row", "batch"] = "row",
  scale_by_keep: bool = True,
  deterministic: bool | ArrayLike = False,
  recompute: bool = True,
  autodiff: Literal["vjp", "jvp"] = "vjp",
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Stochastic depth: drops a residual branch whole, per example or for the whole batch.

  Apply it to the branch before the residual sum, ``x + drop_path(key, f(x), rate)``.
  With ``mode="row"`` each example :math:`n` keeps its branch with probability
  :math:`1 - \text{rate}`,

  .. math::

     y_n = f(x)_n \, m_n / (1 - \text{rate}), \qquad m_n \sim \mathrm{Bernoulli}(1 - \text{rate});

  with ``mode="batch"`` one decision drops or keeps the branch for the whole
  batch (torchvision's ``stochastic_depth`` modes). Survivors are scaled by
  1/keep, unless ``scale_by_keep=False`` (timm's option), which keeps them as they are
  (and :math:`\mathbb{E}[y] = (1 - \text{rate})\, f(x)`). The derivative is the same mask and
  scale applied to the gradient.

  Args:
    key: a PRNG key, as for `dropout`.
    x: the residual branch's output, a floating array with a batch axis.
    rate: the probability of DROPPING the branch, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
    batch_axis: the batch axis (default 0); ignored for ``mode="batch"``.
    mode: ``"row"`` (one decision per example) or ``"batch"`` (one for all).
    scale_by_keep: scale survivors by 1/keep (True, the default) or not (False); either way
      a deterministic call returns `x`.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute, autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.drop_path(jax.random.key(0), jnp.ones((8, 5)), 0.5)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True

  References:
    Huang, Sun, Liu, Sedra and Weinberger, "Deep networks with stochastic
    depth", ECCV (2016).
  """
  x, rate_value, deterministic, recompute, autodiff = check_common(
    x, rate, deterministic, recompute, autodiff
  )
  mode = check.choice(mode, ("row", "batch"), "mode")
  kind = "inverted" if check.static_bool(scale_by_keep, "scale_by_keep") else "unscaled"
  if x.ndim == 0:
    raise ValueError("drop_path needs an array with a batch axis, got a scalar x")
  if mode == "batch":
    shared = tuple(range(x.ndim))
  else:
    batch = check.axes(batch_axis, x.ndim, "batch_axis")
    if len(batch) != 1:
      raise TypeError(f"batch_axis must be one integer axis, got {batch_axis!r}")
    shared = _all_but(x.ndim, batch[0])
  return run_bernoulli(
    "drop_path",
    key,
    x,
    rate,
    rate_value,
    deterministic,
    shared_axes=shared,
    kind=kind,
    recompute=recompute,
    autodiff=autodiff,
    shard_spec=shard_spec,
  )
