"""Gaussian noise members: multiplicative noise with dropout's variance, and additive noise.

The noise is the standard normal of jaxdrop's generator (`_mask.standard_normal`), drawn again
from the key in the backward pass like every mask.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import (
  Autodiff,
  check_common,
  checked_key,
  compute_dtype,
  mask_source,
  nan_unless,
  require_key,
)
from ._mask import MaskLayout, MaskSource, mask_layout, standard_normal


def _gaussian_draw(
  source: MaskSource, layout: MaskLayout, sigma: jax.Array, any_kept: jax.Array
) -> tuple[jax.Array, jax.Array]:
  return any_kept, 1 + sigma * standard_normal(source, layout)


def _gaussian_sigma(
  rate: ArrayLike, dtype: DTypeLike
) -> tuple[jax.Array | np.float32, jax.Array | np.bool_, jax.Array | np.bool_]:
  """``(sigma, any_kept, valid)`` for a rate: sigma = sqrt(rate / (1 - rate)), 0 at rate 1.

  A concrete rate is converted in float64 on the host (in float32 a rate such as 1 - 1e-8
  would be 1 and give zeros instead of its huge noise); a traced one in `dtype`.
  """
  if check.is_traced(rate):
    rate = jnp.asarray(rate, dtype)
    any_kept = rate < 1
    sigma: jax.Array | float = jnp.sqrt(rate / jnp.where(any_kept, 1 - rate, 1))
    return jnp.where(any_kept, sigma, 0), any_kept, (rate >= 0) & (rate <= 1)
  rate = check.real_float(rate)
  sigma = math.sqrt(rate / (1 - rate)) if rate < 1 else 0.0
  return np.float32(sigma), np.bool_(rate < 1), np.bool_(True)


@functools.partial(jax.jit, static_argnames=("recompute", "autodiff", "shard_spec"))
def _gaussian(
  key: jax.Array,
  x: jax.Array,
  sigma: jax.Array,
  any_kept: jax.Array,
  valid: jax.Array,
  deterministic: bool | jax.Array,
  *,
  recompute: bool,
  autodiff: Autodiff,
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  # A traced rate outside [0, 1] keeps every unit with NaN noise while training: a loud output.
  sigma = jnp.where(deterministic, 0, sigma + nan_unless(valid, jnp.float32)).astype(jnp.float32)
  source, global_shape = mask_source(key, x.shape, shard_spec)
  return noise_op(
    source,
    x,
    (sigma, any_kept | deterministic | ~valid),
    draw=_gaussian_draw,
    mask_shape=x.shape,
    recompute=recompute,
    autodiff=autodiff,
    global_shape=global_shape,
  )


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
    rate: in [0, 1]; the noise variance is rate / (1 - rate). May be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
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
    x, rate, deterministic, recompute, autodiff
  )
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  if deterministic is True or rate_value == 0.0:
    return x
  key = require_key("gaussian_dropout", key, rate, deterministic)
  with forward_mode_hint("gaussian_dropout"):
    return _gaussian(
      key,
      x,
      *_gaussian_sigma(rate, compute_dtype(x.dtype)),
      deterministic,
      recompute=recompute,
      autodiff=autodiff,
      shard_spec=shard_spec,
    )


@functools.partial(jax.jit, static_argnames=("shard_spec",))
def _gaussian_noise(
  key: jax.Array,
  x: jax.Array,
  stddev: jax.Array,
  valid: bool | jax.Array,
  deterministic: bool | jax.Array,
  *,
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  source, global_shape = mask_source(key, x.shape, shard_spec)
  layout = mask_layout(x, x.shape)._replace(global_shape=global_shape)
  work = compute_dtype(x.dtype)
  # The noise does not depend on x, so the sum keeps nothing for the backward pass; stddev
  # gets no gradient, as the rates do not. A traced stddev < 0 or NaN makes the output NaN.
  sigma = jax.lax.stop_gradient(jnp.asarray(stddev, work)) + nan_unless(valid, work)
  sigma = jnp.where(deterministic, jnp.zeros((), work), sigma)
  noise = standard_normal(source, layout).astype(work)
  return (x.astype(work) + sigma * noise).astype(x.dtype)


def gaussian_noise(
  key: jax.Array | None,
  x: ArrayLike,
  stddev: ArrayLike,
  *,
  deterministic: bool | ArrayLike = False,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Additive Gaussian noise, a regulariser for training (Keras' ``GaussianNoise``).

  .. math::

     y_i = x_i + \sigma\, \varepsilon_i, \qquad \varepsilon_i \sim \mathcal{N}(0, 1),

  while training, and :math:`y = x` when `deterministic`. The noise is the
  :math:`\varepsilon` that `gaussian_dropout` multiplies by for the same key (jaxdrop's
  generator, bounded by about 5.4σ). The derivative is the identity,
  :math:`\partial x = g`; nothing is kept for the backward pass, and `stddev` gets no
  gradient.

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array; the sum is computed in float32 (float64 for float64 input) and
      cast back once.
    stddev: the noise's standard deviation :math:`\sigma \ge 0`; may be traced (a traced
      value below 0 or NaN makes the output NaN; with ``jax.config.update("jax_debug_nans",
      True)`` JAX reruns the call eagerly, where the check raises a ValueError naming it).
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.gaussian_noise(jax.random.key(0), jnp.zeros(100_000), 0.5)
    >>> print(f"{float(y.mean()):.2f} {float(y.std()):.2f}")
    0.00 0.50

  References:
    Bishop, "Training with noise is equivalent to Tikhonov regularization", Neural
    Computation 7 (1995).
  """
  x = check.float_array(x, "x")
  stddev_value = check.nonnegative(stddev, "stddev")
  deterministic = check.flag(deterministic, "deterministic")
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  if deterministic is True or stddev_value == 0.0:
    return x
  key = require_key("gaussian_noise", key, stddev, deterministic, rate_name="stddev")
  # stddev_value is None exactly when stddev is traced.
  valid = (stddev >= 0) & (stddev < jnp.inf) if check.is_traced(stddev) else True
  return _gaussian_noise(key, x, stddev, valid, deterministic, shard_spec=shard_spec)
