"""`dropout`: the public function, its checks, and the traced work behind it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._keys import as_typed_key, mask_words
from ._mask import bernoulli, drop_threshold

AUTODIFF_MODES = ("vjp", "jvp")


def compute_dtype(x_dtype) -> jnp.dtype:
  """Scales are computed in float32 (float64 for float64 inputs) and cast once."""
  return jnp.dtype(jnp.float64) if x_dtype == jnp.float64 else jnp.dtype(jnp.float32)


def dropout_scalars(rate: jax.Array, deterministic: jax.Array, inverted: bool):
  """``(t, any_kept, scale)`` for the masked op, from a traced rate and flag.

  Deterministic calls keep every unit (``t = 0``) with the test-time scale: 1 when
  inverted, the keep probability when classic. A traced rate outside [0, 1] or NaN
  cannot raise under `jit`; it keeps every unit and makes the scale NaN, so the
  whole output is NaN rather than silently wrong.
  """
  t, any_kept, keep = drop_threshold(rate)
  one = jnp.ones((), rate.dtype)
  train_scale = jnp.where(any_kept, one / jnp.where(any_kept, keep, one), 0) if inverted else one
  test_scale = one if inverted else keep
  valid = (rate >= 0) & (rate <= 1)
  use_all = deterministic | ~valid
  t = jnp.where(use_all, jnp.uint32(0), t)
  any_kept = any_kept | use_all
  scale = jnp.where(deterministic, test_scale, train_scale)
  scale = jnp.where(valid, scale, jnp.nan)
  return t, any_kept, scale


@functools.partial(
    jax.jit, static_argnames=("shared_axes", "inverted", "recompute", "autodiff"))
def _dropout(key, x, rate, deterministic, *, shared_axes, inverted, recompute, autodiff):
  rate = jnp.asarray(rate, compute_dtype(x.dtype))
  t, any_kept, scale = dropout_scalars(rate, deterministic, inverted)
  return noise_op(
      mask_words(key), x, (t, any_kept, scale), draw=bernoulli,
      mask_shape=check.mask_shape(x.shape, shared_axes), recompute=recompute, autodiff=autodiff)


@jax.jit
def _scale_by_keep(x, rate):
  """Classic dropout at test time: `x` times the keep probability that training realises."""
  rate = jnp.asarray(rate, compute_dtype(x.dtype))
  _, _, scale = dropout_scalars(rate, jnp.bool_(True), inverted=False)
  return x * scale.astype(x.dtype)


def dropout(
    key: jax.Array | None,
    x: ArrayLike,
    rate: ArrayLike,
    *,
    deterministic: bool | ArrayLike = False,
    broadcast_dims: int | Sequence[int] = (),
    inverted: bool = True,
    recompute: bool = True,
    autodiff: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
  r"""Randomly zeroes units of `x` with probability `rate` (the DROP probability).

  With a keep mask :math:`m_i \sim \mathrm{Bernoulli}(1 - \text{rate})` drawn
  from `key`, inverted dropout (the default) computes, while training,

  .. math::

     y_i = \begin{cases} x_i / (1 - \text{rate}) & m_i = 1 \\ 0 & m_i = 0 \end{cases}

  and returns `x` untouched when `deterministic`. Classic ("standard") dropout,
  ``inverted=False``, returns ``x * m`` while training and ``x * (1 - rate)``
  when `deterministic`. Dropped units are exact zeros even where `x` is NaN or
  inf. The keep probability realised is ``1 - round(rate * 2**32) / 2**32``
  (any rate > 0 drops with probability at least ``2**-32``), and the inverted
  scale is one over that realised value, so :math:`\mathbb{E}[y] = x`.

  The derivative is the same mask and scale applied to the incoming gradient,
  :math:`\partial x = g \cdot m \cdot \text{scale}`; the key and the rate get none.

  Args:
    key: a PRNG key, typed (`jax.random.key`, any implementation) or legacy
      (`jax.random.PRNGKey`); one key, not a batch (`jax.vmap` over a batch of
      keys for one mask per example). May be None only when `deterministic`
      is True or `rate` is a concrete 0.
    x: a floating array of any shape; the output has its shape and dtype.
    rate: the probability of DROPPING each unit, a number in [0, 1] or a traced
      scalar (a new value does not retrace a jitted caller). The keep
      probability p of the classic formulation is ``1 - rate``.
    deterministic: if True, no unit is dropped (evaluation). A Python bool, or
      a traced boolean scalar chosen at run time.
    broadcast_dims: axes along which one mask value is shared, as in Flax
      (``broadcast_dims=(1,)`` on ``[batch, time, features]`` reuses the mask at
      every time step).
    inverted: scale kept units by ``1 / (1 - rate)`` while training (True) or
      scale by ``1 - rate`` at test time (False).
    recompute: True (the default) keeps only the key for the backward pass and
      regenerates the identical mask there; False keeps the mask, 1 byte per
      mask element. Under `jit` both cost the same time; True saves memory
      wherever XLA cannot fuse the mask away (`lax.scan` loops, eager `vjp`).
    autodiff: ``"vjp"`` registers the derivative as a `jax.custom_vjp`: reverse
      mode (`jax.grad`, `jax.vjp`, and `jax.hessian`, which is forward over
      reverse). ``"jvp"`` registers it as a `jax.custom_jvp`, which also allows
      `jax.jvp`, `jax.jacfwd` and `jax.linearize`. Both give identical values
      and gradients and keep the same residuals.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> x = jnp.ones((2, 8))
    >>> y = jaxdrop.dropout(jax.random.key(0), x, 0.5)
    >>> bool(jnp.all((y == 0) | (y == 2)))
    True
    >>> jaxdrop.dropout(None, x, 0.5, deterministic=True) is x
    True
    >>> jaxdrop.dropout(jax.random.key(0), x, 0.25, inverted=False, deterministic=True)[0, 0]
    Array(0.75, dtype=float32)

  References:
    Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov, "Dropout: a
    simple way to prevent neural networks from overfitting", JMLR 15 (2014).
  """
  x = check.float_array(x, "x")
  rate_value = check.probability(rate, "rate")
  deterministic = check.flag(deterministic, "deterministic")
  shared_axes = check.axes(broadcast_dims, x.ndim, "broadcast_dims")
  inverted = check.static_bool(inverted, "inverted")
  recompute = check.static_bool(recompute, "recompute")
  autodiff = check.choice(autodiff, AUTODIFF_MODES, "autodiff")

  if deterministic is True:
    return x if inverted else _scale_by_keep(x, rate)
  if rate_value == 0.0:
    return x
  if key is None:
    raise TypeError(
        "dropout needs a PRNG key (e.g. jax.random.key(0)) unless deterministic=True or "
        f"rate is a concrete 0, got key=None with rate={rate!r}, deterministic={deterministic!r}")
  key = as_typed_key(key, name="key")
  with forward_mode_hint("dropout"):
    return _dropout(key, x, rate, deterministic, shared_axes=shared_axes, inverted=inverted,
                    recompute=recompute, autodiff=autodiff)
