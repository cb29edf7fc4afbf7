"""Concrete dropout: a relaxed Bernoulli mask whose drop rate is learned by gradient descent.

The relaxed mask is a smooth function of the rate and of logistic noise from jaxdrop's
generator (`_mask.logistic`), so `noise_op` differentiates it in the rate as well
(``grad_params=True``) and, as for every member, draws the noise again in the backward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import checked_key, compute_dtype, mask_source, nan_unless, require_key
from ._mask import MaskLayout, MaskSource, logistic


def _concrete_draw(
  source: MaskSource,
  layout: MaskLayout,
  logit_rate: jax.Array,
  inverse_keep: jax.Array,
  inverse_temperature: jax.Array,
  on: jax.Array,
) -> tuple[None, jax.Array]:
  """The relaxed keep ``sigmoid((logit(u) - logit(rate)) / temperature)`` over ``1 - rate``."""
  z = (logistic(source, layout) - logit_rate) * inverse_temperature
  return None, jnp.where(on > 0, jax.nn.sigmoid(z) * inverse_keep, 1)


@functools.partial(jax.jit, static_argnames=("shared_axes", "shard_spec"))
def _concrete(
  key: jax.Array,
  x: jax.Array,
  rate: jax.Array,
  temperature: jax.Array,
  deterministic: bool | jax.Array,
  *,
  shared_axes: tuple[int, ...],
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  work = compute_dtype(x.dtype)
  rate = rate.astype(work)
  temperature = jnp.asarray(temperature).astype(work)
  # A traced rate outside [0, 1) or temperature <= 0 makes the output NaN while training.
  valid = (rate >= 0) & (rate < 1) & (temperature > 0)
  logit_rate = jnp.log(rate) - jnp.log1p(-rate)
  inverse_keep = 1 / (1 - rate) + nan_unless(valid, work)
  on = jnp.where(deterministic, 0, 1).astype(work)
  source, global_shape = mask_source(key, x.shape, shard_spec, shared_axes)
  return noise_op(
    source,
    x,
    (logit_rate, inverse_keep, 1 / temperature, on),
    draw=_concrete_draw,
    mask_shape=check.mask_shape(x.shape, shared_axes),
    recompute=True,
    autodiff="vjp",
    global_shape=global_shape,
    grad_params=True,
  )


def concrete_dropout(
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  *,
  temperature: ArrayLike = 0.1,
  broadcast_dims: int | Sequence[int] = (),
  deterministic: bool | ArrayLike = False,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Concrete dropout: dropout with a relaxed (continuous) mask, differentiable in the rate.

  With :math:`u_i` uniform in (0, 1) drawn from `key` and temperature :math:`t`,

  .. math::

     \tilde z_i = \sigma\!\left(\frac{\log \text{rate} - \log(1 - \text{rate})
        + \log u_i - \log(1 - u_i)}{t}\right), \qquad
     y_i = x_i\, \frac{1 - \tilde z_i}{1 - \text{rate}},

  where :math:`\tilde z_i \in (0, 1)` is the relaxed "dropped" indicator (:math:`\sigma` the
  logistic sigmoid). As :math:`t \to 0` it becomes a Bernoulli(rate) draw, and the drop
  pattern becomes `dropout`'s mask for the same key and rate (the same random bits: a unit is
  dropped where :math:`u_i < \text{rate}`). Unlike `dropout`'s, this mask is a smooth function
  of the rate, so training can learn the rate (typically through a logit, with
  `concrete_dropout_regularizer` in the loss) instead of a grid search.

  The derivative: :math:`\partial x = g\,(1 - \tilde z)/(1 - \text{rate})` and
  :math:`\partial\,\text{rate} = \sum g\,x\,\partial_{\text{rate}}
  [(1 - \tilde z)/(1 - \text{rate})]` (summed where the rate is broadcast), both computed from
  the noise drawn again from the key: the backward pass keeps the key words, the rate and `x`,
  no per-element noise or mask. The temperature gets its gradient too. Reverse mode only
  (`jax.grad`, `jax.vjp`).

  Args:
    key: a PRNG key, as for `dropout`. May be None only when `deterministic` is True or the
      rate is a concrete 0.
    x: a floating array; the output has its shape and dtype (half-precision inputs are
      multiplied in float32 and cast once).
    rate: the probability of DROPPING each unit, in [0, 1) (the reference code's ``p``): a
      scalar, or an array that broadcasts to `x`'s shape (one rate per unit or per channel).
      May be traced. For a finite gradient keep it inside (0, 1), for instance
      ``jax.nn.sigmoid(logit)``. A traced rate outside [0, 1) makes the output NaN while
      training.
    temperature: the relaxation's temperature :math:`t > 0`; 0.1 as in Gal et al.'s
      reference code (their spatial variant for convolutions uses 2/3). May be traced.
    broadcast_dims: axes along which one noise value is shared, as for `dropout`: the spatial
      axes of a feature map give the spatial (per-channel) form of Concrete dropout for
      convolutions.
    deterministic: if True, returns `x` (evaluation without sampling); may be a traced
      boolean. For MC-dropout predictions keep it False at test time.
    shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> x = jnp.ones(100_000)
    >>> y = jaxdrop.concrete_dropout(jax.random.key(0), x, 0.2)
    >>> print(f"{float(y.mean()):.2f} {float((y < 0.1).mean()):.2f}")  # mean 1; 16% near 0
    1.00 0.16
    >>> rate_grad = jax.grad(lambda r: jaxdrop.concrete_dropout(jax.random.key(0), x, r).var())
    >>> bool(rate_grad(0.2) > 0)  # a higher rate, noisier activations
    True

  References:
    Gal, Hron and Kendall, "Concrete Dropout", NeurIPS 2017.
    Maddison, Mnih and Teh, "The Concrete distribution", ICLR 2017; Jang, Gu and Poole,
    "Categorical reparameterization with Gumbel-softmax", ICLR 2017.
  """
  x = check.float_array(x, "x")
  rate_array, rate_values = check.real_array(
    rate, "rate", x.shape, "a drop probability in [0, 1), or an array of them"
  )
  if rate_values is not None and not np.all((rate_values >= 0) & (rate_values < 1)):
    raise ValueError(
      "rate must be in [0, 1) for concrete_dropout (the probability of dropping a unit; "
      f"at 1 the relaxed mask divides by 0), got {rate!r}"
    )
  temperature_value = check.nonnegative(temperature, "temperature")
  if temperature_value == 0.0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  deterministic = check.flag(deterministic, "deterministic")
  shared_axes = check.axes(broadcast_dims, x.ndim, "broadcast_dims")
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  if deterministic is True or (rate_values is not None and not rate_values.any()):
    return x
  key = require_key("concrete_dropout", key, rate, deterministic)
  with forward_mode_hint("concrete_dropout"):
    return _concrete(
      key,
      x,
      rate_array,
      temperature,
      deterministic,
      shared_axes=shared_axes,
      shard_spec=shard_spec,
    )


def concrete_dropout_regularizer(
  rate: ArrayLike,
  kernel: ArrayLike,
  *,
  input_dim: int,
  weight_regularizer: ArrayLike,
  dropout_regularizer: ArrayLike,
) -> jax.Array:
  r"""Concrete dropout's regulariser for one layer: the KL term of its variational objective.

  For a layer whose input is dropped at `rate` :math:`p` and whose weights are `kernel`
  :math:`W`,

  .. math::

     R(p, W) = \lambda_w \frac{\lVert W \rVert^2}{1 - p}
       + \lambda_p\, K \left(p \log p + (1 - p) \log(1 - p)\right),

  with :math:`K` = `input_dim`, the number of dropped units per example. The first term is
  weight decay scaled by the keep probability; the second is minus :math:`K` times the
  entropy of Bernoulli(p), which is what pushes the rate up (towards 1/2) against the data
  term. Add it, per dropped layer, to the mean loss over a batch.

  With one rate per input unit (:math:`p_k`, `concrete_dropout` given an array of rates), the
  KL is the sum of the units' terms: each row of weights :math:`W_k` that unit :math:`k`
  feeds is scaled by its own keep probability,

  .. math::

     R(p, W) = \sum_{k=1}^{K} \left( \lambda_w \frac{\lVert W_k \rVert^2}{1 - p_k}
       + \lambda_p \left(p_k \log p_k + (1 - p_k) \log(1 - p_k)\right) \right).

  Pass such a `rate` shaped to broadcast against `kernel` along its input axis: ``(K, 1)``
  for a Flax ``(in, out)`` kernel and a Flax ``(h, w, in, out)`` convolution kernel, ``(K,)``
  for an Equinox ``(out, in)`` weight, ``(K, 1, 1)`` for an Equinox ``(out, in, h, w)``
  convolution weight. Only the count is checked: `K` rates that broadcast along another axis
  of size `K` (a square kernel, a 3 x 3 window over 3 channels) scale the wrong weights. The
  modules' ``regularizer`` lays their rates along the right axis.

  The reference code's defaults, for N training examples and a prior length scale l:
  ``weight_regularizer = l**2 / N`` and ``dropout_regularizer = 2 / N`` (for a Gaussian
  likelihood with precision :math:`\tau` the paper has ``2 / (tau * N)``; the reference code
  folds :math:`\tau` into the loss). For a convolution with the spatial form (one rate per
  channel map, `concrete_dropout` with the spatial axes in ``broadcast_dims``), `input_dim`
  is the number of input channels.

  Differentiable in `rate` and `kernel`; keep the rates inside (0, 1) for a finite value (at 0
  or 1 the entropy term is 0 by continuity, the first term may be inf).

  Args:
    rate: the layer's drop probability: a scalar, or `input_dim` of them (one per input unit)
      in an array that broadcasts to `kernel`'s shape, as above. Traced or concrete.
    kernel: the weights applied to the dropped input (any shape; its squares are summed, per
      input unit for per-unit rates).
    input_dim: K, the number of units dropped per example (features of a dense input,
      channels of a convolution's input): a positive int.
    weight_regularizer: :math:`\lambda_w \ge 0` (``l**2 / N`` in the reference code).
    dropout_regularizer: :math:`\lambda_p \ge 0` (``2 / N`` in the reference code).

  Returns:
    A float32 scalar (float64 for float64 inputs).

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> n = 1000  # training examples
    >>> w = jnp.full((8, 4), 0.5)
    >>> r = jaxdrop.concrete_dropout_regularizer(
    ...   0.5, w, input_dim=8, weight_regularizer=1e-4**2 / n, dropout_regularizer=2 / n
    ... )
    >>> print(f"{float(r):.5f}")  # 2/1000 * 8 * log(1/2)
    -0.01109
    >>> per_unit = jnp.full((8, 1), 0.5)  # one rate per input unit of the (in, out) kernel
    >>> r2 = jaxdrop.concrete_dropout_regularizer(
    ...   per_unit, w, input_dim=8, weight_regularizer=1e-4**2 / n, dropout_regularizer=2 / n
    ... )
    >>> bool(jnp.allclose(r, r2))  # equal rates: the scalar rate's value
    True

  References:
    Gal, Hron and Kendall, "Concrete Dropout", NeurIPS 2017 (eq. 3 and its reference code).
  """
  kernel = check.float_array(kernel, "kernel")
  dim = check.positive_int(input_dim, "input_dim")
  what = f"a drop probability in [0, 1], or input_dim = {dim} of them"
  rate_array, rate_values = check.real_array(rate, "rate", kernel.shape, what, "kernel")
  if rate_array.size not in (1, dim):
    raise ValueError(
      f"rate must be a scalar or hold one rate per input unit (input_dim = {dim}), got "
      f"shape {np.shape(rate)} ({rate_array.size} rates)"
    )
  if rate_values is not None and not np.all((rate_values >= 0) & (rate_values <= 1)):
    raise ValueError(f"rate must be in [0, 1] (the probability of dropping a unit), got {rate!r}")
  check.nonnegative(weight_regularizer, "weight_regularizer")
  check.nonnegative(dropout_regularizer, "dropout_regularizer")
  return _regularizer(rate_array, kernel, dim, weight_regularizer, dropout_regularizer)


@jax.jit
def _regularizer(
  rate: jax.Array,
  kernel: jax.Array,
  input_dim: int | jax.Array,
  weight_regularizer: ArrayLike,
  dropout_regularizer: ArrayLike,
) -> jax.Array:
  work = compute_dtype(kernel.dtype)
  p = rate.astype(work)
  # |W_k|^2 per unit (the whole kernel's for a scalar rate), then over its keep probability
  other_axes = tuple(i for i, n in enumerate(p.shape) if n == 1)
  squares = jnp.sum(jnp.square(kernel.astype(work)), axis=other_axes, keepdims=True)
  weight_term = jnp.asarray(weight_regularizer).astype(work) * jnp.sum(squares / (1 - p))
  negentropy = jax.scipy.special.xlogy(p, p) + jax.scipy.special.xlogy(1 - p, 1 - p)
  # A scalar rate stands for input_dim equal ones; an array holds input_dim of them.
  units = input_dim // p.size
  dropout_term = jnp.asarray(dropout_regularizer).astype(work) * units * jnp.sum(negentropy)
  return weight_term + dropout_term


def initial_logit(init_rate: float, rate_shape: Sequence[int] = ()) -> jax.Array:
  """The logits a module's trainable rates start from: ``log(init_rate / (1 - init_rate))``
  in an array of `rate_shape` (``()``: one rate for the layer)."""
  value = check.probability(init_rate, "init_rate")
  if value is None or not 0.0 < value < 1.0:
    raise ValueError(f"init_rate must be a concrete number in (0, 1), got {init_rate!r}")
  shape = check.shape(rate_shape, "rate_shape")
  return jnp.full(shape, math.log(value) - math.log1p(-value), jnp.float32)


def module_regularizer(
  rate: jax.Array,
  kernel: ArrayLike,
  axis: int,
  input_dim: int | None,
  weight_regularizer: float,
  dropout_regularizer: float,
  name: str = "kernel",
) -> jax.Array:
  """`concrete_dropout_regularizer` for a module's rates (a scalar, or one per unit in any
  shape) and the `kernel` its output feeds, whose input axis is `axis` (the framework's
  layout): the rates are laid along that axis, and `input_dim` defaults to its size."""
  kernel = check.float_array(kernel, name)
  if rate.ndim:
    shape = [1] * kernel.ndim
    shape[axis] = -1
    rate = rate.reshape(shape)
  return concrete_dropout_regularizer(
    rate,
    kernel,
    input_dim=kernel.shape[axis] if input_dim is None else input_dim,
    weight_regularizer=weight_regularizer,
    dropout_regularizer=dropout_regularizer,
  )
