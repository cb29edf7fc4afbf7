"""The dropout family on the core's machinery: each member is "which mask, which scale, which fill".

Channel dropout and drop-path are Bernoulli dropout with a mask shared along
axes; alpha dropout adds an affine correction; Gaussian dropout multiplies by
normal noise; DropConnect drops weights. All of them (and DropBlock, in `_block`)
draw from the same generator and share the one derivative of `_core.noise_op`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import (AUTODIFF_MODES, block_position, check_common, checked_key, compute_dtype,
                       nan_unless, require_key, run_bernoulli)
from ._keys import mask_words
from ._mask import MaskSource, standard_normal


def _batch_and_channel(x, batch_axis, channel_axis) -> tuple[int | None, int]:
  channel = check.axes(channel_axis, x.ndim, "channel_axis")
  if len(channel) != 1:
    raise TypeError(f"channel_axis must be one integer axis, got {channel_axis!r}")
  if batch_axis is None:
    return None, channel[0]
  batch = check.axes(batch_axis, x.ndim, "batch_axis")
  if len(batch) != 1:
    raise TypeError(f"batch_axis must be one integer axis or None, got {batch_axis!r}")
  if batch == channel:
    raise ValueError(f"batch_axis and channel_axis must differ, got batch_axis={batch_axis!r} "
                     f"and channel_axis={channel_axis!r} for an array of {x.ndim} dimensions")
  return batch[0], channel[0]


def _all_but(ndim: int, *keep: int | None) -> tuple[int, ...]:
  return tuple(axis for axis in range(ndim) if axis not in keep)


def _per_channel(name, kind, key, x, rate, channel_axis, batch_axis, deterministic, recompute,
                 autodiff, shard_spec):
  """A Bernoulli member with one decision per (example, channel): the mask is shared elsewhere."""
  x, rate_value, deterministic, recompute, autodiff = check_common(
      x, rate, deterministic, recompute, autodiff)
  batch, channel = _batch_and_channel(x, batch_axis, channel_axis)
  return run_bernoulli(name, key, x, rate, rate_value, deterministic,
                       shared_axes=_all_but(x.ndim, batch, channel), kind=kind,
                       recompute=recompute, autodiff=autodiff, shard_spec=shard_spec)


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
    rate: the probability of DROPPING each feature map, in [0, 1]; may be traced.
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
  return _per_channel("channel_dropout", "inverted", key, x, rate, channel_axis, batch_axis,
                      deterministic, recompute, autodiff, shard_spec)


def alpha_dropout(
    key: jax.Array | None,
    x: ArrayLike,
    rate: ArrayLike,
    *,
    deterministic: bool | ArrayLike = False,
    recompute: bool = True,
    autodiff: Literal["vjp", "jvp"] = "vjp",
    shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Dropout for self-normalising (SELU) networks: keeps zero mean and unit variance.

  Dropped units are set to SELU's saturation value :math:`\alpha' = -\lambda\alpha
  \approx -1.7581` instead of 0, then an affine map restores the moments. With keep
  probability :math:`q = 1 - \text{rate}` and :math:`m_i \sim \mathrm{Bernoulli}(q)`,

  .. math::

     a = \left(q\,(1 + (1 - q)\,\alpha'^2)\right)^{-1/2}, \qquad
     b = -a\,\alpha'\,(1 - q), \qquad
     y_i = a\,(x_i m_i + \alpha' (1 - m_i)) + b,

  so that standard normal input gives output of mean 0 and variance 1. The
  derivative is :math:`\partial x_i = g_i\, a\, m_i`. At ``rate=1`` the output is
  exact zeros (the limit of :math:`a \alpha' + b`).

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array.
    rate: the probability of DROPPING each unit, in [0, 1]; may be traced.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute, autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> x = jax.random.normal(jax.random.key(1), (1000, 1000))
    >>> y = jaxdrop.alpha_dropout(jax.random.key(0), x, 0.2)
    >>> print(f"{abs(float(y.mean())):.2f} {float(y.std()):.2f}")
    0.00 1.00

  References:
    Klambauer, Unterthiner, Mayr and Hochreiter, "Self-normalizing neural
    networks", NeurIPS (2017).
  """
  x, rate_value, deterministic, recompute, autodiff = check_common(
      x, rate, deterministic, recompute, autodiff)
  return run_bernoulli("alpha_dropout", key, x, rate, rate_value, deterministic, shared_axes=(),
                       kind="alpha", recompute=recompute, autodiff=autodiff, shard_spec=shard_spec)


def feature_alpha_dropout(
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
  r"""Alpha dropout of whole feature maps: `alpha_dropout` with `channel_dropout`'s mask.

  .. math::

     y_{n, \ldots, c} = a\,(x_{n, \ldots, c}\, m_{n,c} + \alpha' (1 - m_{n,c})) + b

  with `a`, `b` and :math:`\alpha'` as in `alpha_dropout` and one keep decision
  per (example, channel). The derivative is :math:`g\, a\, m`.

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array with a batch axis (unless ``batch_axis=None``) and a channel axis.
    rate: the probability of DROPPING each feature map, in [0, 1]; may be traced.
    channel_axis, batch_axis: as for `channel_dropout`.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute, autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.feature_alpha_dropout(jax.random.key(0), jnp.zeros((4, 3, 5)), 0.5)
    >>> bool(jnp.all(y.min(1) == y.max(1)))   # one value per (example, channel)
    True

  References:
    Klambauer, Unterthiner, Mayr and Hochreiter, "Self-normalizing neural
    networks", NeurIPS (2017).
  """
  return _per_channel("feature_alpha_dropout", "alpha", key, x, rate, channel_axis, batch_axis,
                      deterministic, recompute, autodiff, shard_spec)


def drop_path(
    key: jax.Array | None,
    x: ArrayLike,
    rate: ArrayLike,
    *,
    batch_axis: int = 0,
    mode: Literal["row", "batch"] = "row",
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
  1/keep. The derivative is the same mask and scale applied to the gradient.

  Args:
    key: a PRNG key, as for `dropout`.
    x: the residual branch's output, a floating array with a batch axis.
    rate: the probability of DROPPING the branch, in [0, 1]; may be traced.
    batch_axis: the batch axis (default 0); ignored for ``mode="batch"``.
    mode: ``"row"`` (one decision per example) or ``"batch"`` (one for all).
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
      x, rate, deterministic, recompute, autodiff)
  mode = check.choice(mode, ("row", "batch"), "mode")
  if x.ndim == 0:
    raise ValueError("drop_path needs an array with a batch axis, got a scalar x")
  if mode == "batch":
    shared = tuple(range(x.ndim))
  else:
    batch = check.axes(batch_axis, x.ndim, "batch_axis")
    if len(batch) != 1:
      raise TypeError(f"batch_axis must be one integer axis, got {batch_axis!r}")
    shared = _all_but(x.ndim, batch[0])
  return run_bernoulli("drop_path", key, x, rate, rate_value, deterministic, shared_axes=shared,
                       kind="inverted", recompute=recompute, autodiff=autodiff, shard_spec=shard_spec)


def _gaussian_draw(source, layout, sigma, any_kept):
  return any_kept, 1 + sigma * standard_normal(source, layout)


def _gaussian_sigma(rate, dtype):
  """``(sigma, any_kept, valid)`` for a rate: sigma = sqrt(rate / (1 - rate)), 0 at rate 1.

  A concrete rate is converted in float64 on the host (in float32 a rate such as 1 - 1e-8
  would be 1 and give zeros instead of its huge noise); a traced one in `dtype`.
  """
  if check.is_traced(rate):
    rate = jnp.asarray(rate, dtype)
    any_kept = rate < 1
    sigma = jnp.sqrt(rate / jnp.where(any_kept, 1 - rate, 1))
    return jnp.where(any_kept, sigma, 0), any_kept, (rate >= 0) & (rate <= 1)
  rate = float(rate)
  sigma = math.sqrt(rate / (1 - rate)) if rate < 1 else 0.0
  return np.float32(sigma), np.bool_(rate < 1), np.bool_(True)


@functools.partial(jax.jit, static_argnames=("recompute", "autodiff", "shard_spec"))
def _gaussian(key, x, sigma, any_kept, valid, deterministic, *, recompute, autodiff, shard_spec):
  # A traced rate outside [0, 1] keeps every unit with NaN noise while training: a loud output.
  sigma = jnp.where(deterministic, 0, sigma + nan_unless(valid, jnp.float32)).astype(jnp.float32)
  offsets, global_shape = (None, None) if shard_spec is None else block_position(
      shard_spec, x.shape, ())
  return noise_op(MaskSource(mask_words(key), offsets), x, (sigma, any_kept | deterministic | ~valid),
                  draw=_gaussian_draw, mask_shape=x.shape, recompute=recompute, autodiff=autodiff,
                  global_shape=global_shape)


def gaussian_dropout(
    key: jax.Array | None,
    x: ArrayLike,
    rate: ArrayLike,
    *,
    deterministic: bool | ArrayLike = False,
    recompute: bool = True,
    autodiff: Literal["vjp", "jvp"] = "vjp",
    shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Multiplicative Gaussian noise with the variance of Bernoulli dropout at `rate`.

  .. math::

     y_i = x_i\,(1 + \sigma \varepsilon_i), \qquad \varepsilon_i \sim \mathcal{N}(0, 1),
     \qquad \sigma = \sqrt{\text{rate} / (1 - \text{rate})},

  so :math:`\mathbb{E}[y] = x` and the noise has the variance of inverted dropout's
  :math:`m / (1 - \text{rate})`. The derivative is :math:`\partial x = g\,(1 + \sigma\varepsilon)`
  with the same noise. ``rate=1`` (infinite variance) gives exact zeros, the limit
  the rest of the family shares. The normal noise is the inverse normal CDF of
  24-bit uniforms from jaxdrop's generator, in float32 whatever the input dtype,
  so it is bounded by about 5.4σ. The rate gets no gradient.

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array.
    rate: in [0, 1]; the noise variance is rate / (1 - rate). May be traced.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute: True keeps only the key for the backward pass; False keeps the
      noise (4 bytes per element).
    autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.gaussian_dropout(jax.random.key(0), jnp.ones(100_000), 0.5)
    >>> print(f"{float(y.mean()):.2f} {float(y.var()):.2f}")
    1.00 1.00

  References:
    Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov, "Dropout: a
    simple way to prevent neural networks from overfitting", JMLR 15 (2014), §10.
  """
  x, rate_value, deterministic, recompute, autodiff = check_common(
      x, rate, deterministic, recompute, autodiff)
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  if deterministic is True or rate_value == 0.0:
    return x
  key = require_key("gaussian_dropout", key, rate, deterministic)
  with forward_mode_hint("gaussian_dropout"):
    return _gaussian(key, x, *_gaussian_sigma(rate, compute_dtype(x.dtype)), deterministic,
                     recompute=recompute, autodiff=autodiff, shard_spec=shard_spec)


def drop_connect(
    key: jax.Array | None,
    params: Any,
    rate: ArrayLike,
    *,
    deterministic: bool | ArrayLike = False,
    recompute: bool = True,
    autodiff: Literal["vjp", "jvp"] = "vjp",
) -> Any:
  r"""DropConnect: drops individual weights, one independent mask per leaf of a pytree.

  For every floating leaf :math:`W` of `params`,

  .. math::

     \tilde W = W \odot M / (1 - \text{rate}), \qquad M_{ij} \sim \mathrm{Bernoulli}(1 - \text{rate}),

  each leaf with its own key, ``jax.random.fold_in(key, leaf_index)``. Survivors
  are scaled by 1/keep (inverted, as weight-dropped RNNs do), so evaluation uses
  the weights unchanged. The derivative with respect to each weight is the same
  mask and scale applied to its gradient. Call it inside the loss, on the
  parameters, so that the optimiser updates the undropped weights.

  Args:
    key: a PRNG key, as for `dropout`.
    params: a floating array or a pytree of floating arrays.
    rate: the probability of DROPPING each weight, in [0, 1]; may be traced.
    deterministic: if True, returns `params` unchanged; may be a traced boolean.
    recompute, autodiff: as for `dropout`.

  Returns:
    A pytree of the structure, shapes and dtypes of `params`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> params = {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4))}
    >>> dropped = jaxdrop.drop_connect(jax.random.key(0), params, 0.5)
    >>> bool(jnp.any(dropped["w1"] != dropped["w2"]))   # independent masks per leaf
    True

  References:
    Wan, Zeiler, Zhang, LeCun and Fergus, "Regularization of neural networks
    using DropConnect", ICML (2013).
  """
  rate_value = check.probability(rate, "rate")
  deterministic = check.flag(deterministic, "deterministic")
  recompute = check.static_bool(recompute, "recompute")
  autodiff = check.choice(autodiff, AUTODIFF_MODES, "autodiff")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    where = f"params{jax.tree_util.keystr(path)}"
    try:
      dtype = jnp.result_type(leaf)
    except TypeError as err:
      raise TypeError(f"drop_connect needs floating array leaves, got {leaf!r} at {where}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"drop_connect needs floating leaves, got dtype {np.dtype(dtype).name} at {where}")
  key = checked_key(key)
  if deterministic is True or rate_value == 0.0:
    return params
  key = require_key("drop_connect", key, rate, deterministic)
  out = [_bernoulli_leaf(jax.random.fold_in(key, i), leaf, rate, deterministic, recompute, autodiff)
         for i, (_, leaf) in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def _bernoulli_leaf(key, leaf, rate, deterministic, recompute, autodiff):
  leaf = check.float_array(leaf, "params leaf")
  return run_bernoulli("drop_connect", key, leaf, rate, None, deterministic, shared_axes=(),
                       kind="inverted", recompute=recompute, autodiff=autodiff)
