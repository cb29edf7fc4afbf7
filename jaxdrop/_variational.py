"""Variational dropout: Gaussian multiplicative noise whose variance is a learned parameter.

The noise is `gaussian_dropout`'s (the standard normal of jaxdrop's generator) scaled by
``sqrt(alpha)``; `noise_op` differentiates it in ``log_alpha`` (``grad_params=True``) from the
noise drawn again in the backward pass. The KL approximation and the locally reparameterised
dense layer of sparse variational dropout live here too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import checked_key, compute_dtype, mask_source, nan_unless, require_key
from ._mask import MaskLayout, MaskSource, mask_layout, standard_normal

# Molchanov, Ashukha and Vetrov (2017), eq. 14: -KL ~ k1 sigmoid(k2 + k3 log_alpha)
# - log1p(1 / alpha) / 2 - k1.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


def _variational_draw(
  source: MaskSource, layout: MaskLayout, log_alpha: jax.Array, on: jax.Array
) -> tuple[None, jax.Array]:
  sigma = jnp.where(on > 0, jnp.exp(0.5 * log_alpha), 0)
  return None, 1 + sigma * standard_normal(source, layout)


@functools.partial(jax.jit, static_argnames=("shared_axes", "shard_spec"))
def _variational(
  key: jax.Array,
  x: jax.Array,
  log_alpha: jax.Array,
  deterministic: bool | jax.Array,
  *,
  shared_axes: tuple[int, ...],
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  work = compute_dtype(x.dtype)
  log_alpha = log_alpha.astype(work)
  # A traced log_alpha that is NaN or +inf makes the output NaN while training (-inf is alpha 0).
  log_alpha = log_alpha + nan_unless(log_alpha < jnp.inf, work)
  on = jnp.where(deterministic, 0, 1).astype(work)
  source, global_shape = mask_source(key, x.shape, shard_spec, shared_axes)
  return noise_op(
    source,
    x,
    (log_alpha, on),
    draw=_variational_draw,
    mask_shape=check.mask_shape(x.shape, shared_axes),
    recompute=True,
    autodiff="vjp",
    global_shape=global_shape,
    grad_params=True,
  )


def _log_alpha(value: ArrayLike, shape: tuple[int, ...]) -> jax.Array:
  log_alpha, values = check.real_array(
    value, "log_alpha", shape, "a real log-variance ratio, or an array of them"
  )
  if values is not None and not np.all(values < np.inf):
    raise ValueError(f"log_alpha must be < inf and not NaN (-inf is no noise), got {value!r}")
  return log_alpha


def variational_dropout(
  key: jax.Array | None,
  x: ArrayLike,
  log_alpha: ArrayLike,
  *,
  broadcast_dims: int | Sequence[int] = (),
  deterministic: bool | ArrayLike = False,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Variational (Gaussian) dropout with a learned noise variance.

  .. math::

     y_i = x_i\,(1 + \sqrt{\alpha_i}\,\varepsilon_i), \qquad
     \varepsilon_i \sim \mathcal{N}(0, 1), \qquad \alpha = e^{\log\alpha},

  so :math:`\mathbb{E}[y] = x`. :math:`\alpha = \text{rate} / (1 - \text{rate})` gives
  `gaussian_dropout` at that rate (the same :math:`\varepsilon` for the same key); here
  `log_alpha` is a parameter trained with the rest of the model, per unit, per channel or per
  weight (pass the weights as `x` for noise on weights), with `variational_dropout_kl` in the
  loss. Large :math:`\alpha` marks units (or weights) that carry no signal and can be pruned.

  The derivative: :math:`\partial x = g\,(1 + \sqrt{\alpha}\,\varepsilon)` and
  :math:`\partial \log\alpha = \sum g\,x\,\sqrt{\alpha}\,\varepsilon / 2` (summed where
  `log_alpha` is broadcast), from :math:`\varepsilon` drawn again from the key: the backward
  pass keeps the key words, `log_alpha` and `x`, no per-element noise. Reverse mode only.

  Args:
    key: a PRNG key, as for `dropout`. May be None only when `deterministic` is True.
    x: a floating array; the output has its shape and dtype.
    log_alpha: :math:`\log\alpha`, a scalar or an array that broadcasts to `x`'s shape; may
      be traced. ``-inf`` is no noise. Unbounded :math:`\alpha` makes training noisy: the
      papers clip it (Kingma et al. to :math:`\alpha \le 1`, Molchanov et al. to
      :math:`\log\alpha \in [-10, 10]`), which is left to the caller. A traced NaN or
      ``+inf`` makes the output NaN while training.
    broadcast_dims: axes along which one noise value is shared, as for `dropout`.
    deterministic: if True, returns `x` (the posterior mean); may be a traced boolean.
    shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.variational_dropout(jax.random.key(0), jnp.ones(100_000), jnp.log(0.25))
    >>> print(f"{float(y.mean()):.2f} {float(y.var()):.2f}")  # variance alpha = 0.25
    1.00 0.25

  References:
    Kingma, Salimans and Welling, "Variational dropout and the local reparameterization
    trick", NeurIPS 2015.
    Molchanov, Ashukha and Vetrov, "Variational dropout sparsifies deep neural networks",
    ICML 2017.
  """
  x = check.float_array(x, "x")
  log_alpha = _log_alpha(log_alpha, x.shape)
  deterministic = check.flag(deterministic, "deterministic")
  shared_axes = check.axes(broadcast_dims, x.ndim, "broadcast_dims")
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  if deterministic is True:
    return x
  key = require_key("variational_dropout", key, log_alpha, deterministic, "log_alpha")
  with forward_mode_hint("variational_dropout"):
    return _variational(
      key, x, log_alpha, deterministic, shared_axes=shared_axes, shard_spec=shard_spec
    )


def variational_dropout_kl(log_alpha: ArrayLike) -> jax.Array:
  r"""Molchanov et al.'s approximation of variational dropout's KL term, per element.

  .. math::

     \mathrm{KL}(\log\alpha) \approx k_1 - k_1\,\sigma(k_2 + k_3 \log\alpha)
       + \tfrac12 \log(1 + 1/\alpha),

  with :math:`k_1 = 0.63576`, :math:`k_2 = 1.87320`, :math:`k_3 = 1.48695` (their fit to
  the KL divergence from the log-uniform prior, accurate to about 0.01 for every
  :math:`\alpha`). It falls towards 0 as :math:`\alpha \to \infty` (so training is free to
  make a weight pure noise, which is what sparsifies) and grows like
  :math:`-\tfrac12\log\alpha` as :math:`\alpha \to 0`. Sum it over the parameters and add
  it to the negative log-likelihood of the whole training set (or divide it by N for a
  per-example loss).

  Args:
    log_alpha: any real array (or scalar); the :math:`\log(1 + 1/\alpha)` term is computed
      as ``softplus(-log_alpha)``, finite for every finite input.

  Returns:
    The approximate KL of each element: an array of `log_alpha`'s shape, float32 (float64
    for float64 input).

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> kl = jaxdrop.variational_dropout_kl(jnp.array([-4.0, 0.0, 8.0]))
    >>> [round(float(v), 3) for v in kl]
    [2.634, 0.431, 0.0]

  References:
    Molchanov, Ashukha and Vetrov, "Variational dropout sparsifies deep neural networks",
    ICML 2017, eq. 14.
  """
  log_alpha, _ = check.real_array(log_alpha, "log_alpha", np.shape(log_alpha), "a real array")
  return _kl(log_alpha)


@jax.jit
def _kl(log_alpha: jax.Array) -> jax.Array:
  log_alpha = log_alpha.astype(compute_dtype(log_alpha.dtype))
  return _K1 - _K1 * jax.nn.sigmoid(_K2 + _K3 * log_alpha) + 0.5 * jax.nn.softplus(-log_alpha)


def variational_dense(
  key: jax.Array | None,
  x: ArrayLike,
  kernel: ArrayLike,
  log_alpha: ArrayLike,
  *,
  threshold: float | None = 3.0,
  deterministic: bool | ArrayLike = False,
) -> jax.Array:
  r"""A dense layer with per-weight variational dropout, by the local reparameterisation trick.

  While training, each output is drawn from the Gaussian that the per-weight noise
  :math:`w_{ij}(1 + \sqrt{\alpha_{ij}}\,\varepsilon_{ij})` induces on it:

  .. math::

     y = \mu + \sqrt{v}\,\varepsilon, \qquad \mu = x W, \qquad
     v = x^2 (\alpha \odot W^2), \qquad \varepsilon \sim \mathcal{N}(0, 1),

  one noise value per output (not per weight), which is cheaper and has a lower-variance
  gradient than sampling the weights. When `deterministic`, the weights whose
  :math:`\log\alpha` reaches `threshold` are pruned: :math:`y = x\,(W \odot [\log\alpha <
  \text{threshold}])` (Molchanov et al. use 3, i.e. a dropout rate above 95%).

  Gradients in `x`, `kernel` and `log_alpha` come from ordinary autodiff of these formulas
  with the noise drawn from `key` (jaxdrop's generator, the noise of `gaussian_dropout`).
  Add `variational_dropout_kl` of `log_alpha` to the loss. Molchanov et al. parameterise
  :math:`\log\alpha = \log\sigma^2 - \log W^2` and clip it to [-10, 10]; that choice is the
  caller's.

  Args:
    key: a PRNG key, as for `dropout`. May be None only when `deterministic` is True.
    x: inputs of shape ``(..., in_features)``, floating.
    kernel: weights of shape ``(in_features, out_features)``, x's dtype.
    log_alpha: per-weight :math:`\log\alpha`, an array that broadcasts to `kernel`'s shape
      (a scalar, a row per input, a column per output, or one per weight).
    threshold: the pruning threshold on :math:`\log\alpha` for deterministic calls; None
      keeps every weight.
    deterministic: if True, the pruned layer's deterministic output; may be traced.

  Returns:
    An array of shape ``(..., out_features)`` and x's dtype.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> w = jnp.eye(3)
    >>> log_alpha = jnp.array([[-8.0], [0.0], [5.0]])  # per input row: the last is pruned
    >>> jaxdrop.variational_dense(None, jnp.ones((1, 3)), w, log_alpha, deterministic=True)
    Array([[1., 1., 0.]], dtype=float32)

  References:
    Kingma, Salimans and Welling, "Variational dropout and the local reparameterization
    trick", NeurIPS 2015.
    Molchanov, Ashukha and Vetrov, "Variational dropout sparsifies deep neural networks",
    ICML 2017.
  """
  x = check.float_array(x, "x")
  kernel = check.float_array(kernel, "kernel")
  if kernel.ndim != 2 or x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
    raise ValueError(
      "variational_dense takes x of shape (..., in_features) and kernel of shape "
      f"(in_features, out_features), got x {x.shape} and kernel {kernel.shape}"
    )
  if kernel.dtype != x.dtype:
    raise TypeError(f"kernel's dtype {kernel.dtype} must be x's dtype {x.dtype}")
  log_alpha = _log_alpha(log_alpha, kernel.shape)
  threshold = _threshold(threshold)
  deterministic = check.flag(deterministic, "deterministic")
  key = checked_key(key)
  if deterministic is True:
    return _pruned(x, kernel, log_alpha, threshold=threshold)
  key = require_key("variational_dense", key, log_alpha, deterministic, "log_alpha")
  if deterministic is False:
    return _sampled(key, x, kernel, log_alpha)
  return _either(key, x, kernel, log_alpha, deterministic, threshold=threshold)


def _threshold(value: Any) -> float | None:
  """None, or a concrete real number (it is static: a new value compiles anew)."""
  if value is None:
    return None
  if check.is_traced(value) or isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
    raise TypeError(f"threshold must be a concrete real number or None, got {value!r}")
  try:
    number = float(value)
  except (TypeError, ValueError) as err:
    raise TypeError(f"threshold must be a concrete real number or None, got {value!r}") from err
  if np.isnan(number):
    raise ValueError(f"threshold must not be NaN, got {value!r}")
  return number


@functools.partial(jax.jit, static_argnames=("threshold",))
def _pruned(
  x: jax.Array, kernel: jax.Array, log_alpha: jax.Array, *, threshold: float | None
) -> jax.Array:
  kept = kernel if threshold is None else jnp.where(log_alpha < threshold, kernel, 0)
  return x @ kept


@jax.jit
def _sampled(key: jax.Array, x: jax.Array, kernel: jax.Array, log_alpha: jax.Array) -> jax.Array:
  work = compute_dtype(x.dtype)
  xw, kw = x.astype(work), kernel.astype(work)
  mean = xw @ kw
  variance = jnp.square(xw) @ (jnp.exp(log_alpha.astype(work)) * jnp.square(kw))
  source, _ = mask_source(key, mean.shape, None)
  noise = standard_normal(source, mask_layout(mean, mean.shape)).astype(work)
  # 1e-8 as Molchanov et al.: the square root's gradient stays finite where v is 0.
  return (mean + jnp.sqrt(variance + 1e-8) * noise).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("threshold",))
def _either(
  key: jax.Array,
  x: jax.Array,
  kernel: jax.Array,
  log_alpha: jax.Array,
  deterministic: jax.Array,
  *,
  threshold: float | None,
) -> jax.Array:
  return jax.lax.cond(
    deterministic,
    lambda: _pruned(x, kernel, log_alpha, threshold=threshold),
    lambda: _sampled(key, x, kernel, log_alpha),
  )
