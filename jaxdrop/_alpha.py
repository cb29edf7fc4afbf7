"""Alpha dropout: dropout for self-normalising (SELU) networks, per unit and per channel.

Dropped units go to SELU's saturation value and an affine map restores zero mean and unit
variance; the Bernoulli path is `_dropout`'s with the "alpha" kind, and the per-channel mask
is `channel_dropout`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
from jax.typing import ArrayLike

from . import _validate as check
from ._dropout import check_common, run_bernoulli
from ._structured import _per_channel


def alpha_dropout(
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  *,
  deterministic: bool | ArrayLike = False,
  broadcast_dims: int | Sequence[int] = (),
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
    rate: the probability of DROPPING each unit, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    broadcast_dims: axes along which one mask value is shared, as for `dropout` (Keras'
      ``AlphaDropout(noise_shape=...)`` with 1 on those axes).
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
    x, rate, deterministic, recompute, autodiff
  )
  shared_axes = check.axes(broadcast_dims, x.ndim, "broadcast_dims")
  return run_bernoulli(
    "alpha_dropout",
    key,
    x,
    rate,
    rate_value,
    deterministic,
    shared_axes=shared_axes,
    kind="alpha",
    recompute=recompute,
    autodiff=autodiff,
    shard_spec=shard_spec,
  )


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
    rate: the probability of DROPPING each feature map, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
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
  return _per_channel(
    "feature_alpha_dropout",
    "alpha",
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
