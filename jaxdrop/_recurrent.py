"""Zoneout: recurrent units keep their previous value at random, on dropout's mask.

A unit updates where `dropout` with the same key and rate would keep it, and keeps its
previous value where dropout would drop it. Two noise ops share that one mask, one keeping
the new state where it updates and one keeping the previous state elsewhere: each is the
family's `noise_op` with its own derivative, so the gradient reaches `h_new` where a unit
updated and `h_prev` where it kept its value, and nothing but the key is kept for the
backward pass. (Locked dropout, the other recurrent member, is `_locked`.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _validate as check
from ._core import apply_noise, forward_mode_hint, noise_op
from ._dropout import (
  AUTODIFF_MODES,
  Autodiff,
  checked_key,
  compute_dtype,
  mask_source,
  nan_unless,
  require_key,
)
from ._mask import MaskLayout, MaskSource, Threshold, bernoulli, drop_threshold, keep_mask

# ``combine(h_prev, h_new, (new_weight, prev_weight))``, in the compute dtype.
Combine = Callable[[jax.Array, jax.Array, tuple[jax.Array, jax.Array]], jax.Array]


def _previous(
  source: MaskSource,
  layout: MaskLayout,
  t: jax.Array,
  any_kept: jax.Array,
  testing: jax.Array,
  mult: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The complement of `bernoulli`'s draw: the units dropout would drop (while testing, all
  of them where the previous state has a weight, none at rate 0)."""
  return testing | ~keep_mask(source, layout, t, any_kept), mult


def _weights(threshold: Threshold, deterministic: bool | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each input's factor when testing, (1 - rate, rate), or 1 while training; NaN when the rate
  is invalid (a traced one outside [0, 1])."""
  _, _, keep, drop, _, valid = threshold
  one, nan = jnp.ones((), keep.dtype), nan_unless(valid, keep.dtype)
  return (jnp.where(deterministic, keep, one) + nan, jnp.where(deterministic, drop, one) + nan)


def _both(
  h_prev: jax.Array,
  h_new: jax.Array,
  threshold: Threshold,
  deterministic: bool | jax.Array,
  combine: Combine,
) -> jax.Array:
  """`combine(h_prev, h_new)` in float32 (float64 for float64 input), cast back once: the
  expectation's two weighted terms are summed before they are rounded to half precision."""
  work = compute_dtype(h_new.dtype)
  out = combine(h_prev.astype(work), h_new.astype(work), _weights(threshold, deterministic))
  return out.astype(h_new.dtype)


@jax.jit
def _expectation(h_prev: jax.Array, h_new: jax.Array, threshold: Threshold) -> jax.Array:
  """What a traced ``deterministic=True`` computes, with the same operations: each input
  times its weight, a weight of 0 giving exact zeros (rate 1 ignores an infinite h_new, as
  training does)."""

  def combine(
    h_prev: jax.Array, h_new: jax.Array, weights: tuple[jax.Array, jax.Array]
  ) -> jax.Array:
    new, prev = weights
    return apply_noise(threshold.any_kept, new, h_new) + apply_noise(threshold.t > 0, prev, h_prev)

  return _both(h_prev, h_new, threshold, jnp.bool_(True), combine)


@functools.partial(jax.jit, static_argnames=("recompute", "autodiff", "shard_spec"))
def _zoneout(
  key: jax.Array,
  h_prev: jax.Array,
  h_new: jax.Array,
  threshold: Threshold,
  deterministic: jax.Array,
  *,
  recompute: bool,
  autodiff: Autodiff,
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  source, global_shape = mask_source(key, h_new.shape, shard_spec)
  # Updated units: dropout's keep mask on h_new (unscaled); units keeping their value: its
  # complement on h_prev. When testing, every unit of both, weighted, except an input whose
  # weight is 0 (it gives exact zeros, as its mask does while training).
  testing_or_invalid = deterministic | ~threshold.valid
  t = jnp.where(testing_or_invalid, jnp.uint32(0), threshold.t)
  op = functools.partial(
    noise_op,
    mask_shape=h_new.shape,
    recompute=recompute,
    autodiff=autodiff,
    global_shape=global_shape,
  )

  def combine(
    h_prev: jax.Array, h_new: jax.Array, weights: tuple[jax.Array, jax.Array]
  ) -> jax.Array:
    new_mult, prev_mult = weights
    new_params = (t, threshold.any_kept | ~threshold.valid, new_mult)
    prev_testing = (deterministic & (threshold.t > 0)) | ~threshold.valid
    prev_params = (threshold.t, threshold.any_kept, prev_testing, prev_mult)
    return op(source, h_new, new_params, draw=bernoulli) + op(
      source, h_prev, prev_params, draw=_previous
    )

  return _both(h_prev, h_new, threshold, deterministic, combine)


def zoneout(
  key: jax.Array | None,
  h_prev: ArrayLike,
  h_new: ArrayLike,
  rate: ArrayLike,
  *,
  deterministic: bool | ArrayLike = False,
  recompute: bool = True,
  autodiff: Literal["vjp", "jvp"] = "vjp",
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Zoneout: each recurrent unit keeps its previous value with probability `rate`.

  With :math:`m_i \sim \mathrm{Bernoulli}(1 - \text{rate})` (the keep mask of
  ``dropout(key, h_new, rate)``), while training

  .. math::

     h_i = m_i\, h^{\text{new}}_i + (1 - m_i)\, h^{\text{prev}}_i,

  and when `deterministic`, the expectation
  :math:`h = \text{rate}\, h^{\text{prev}} + (1 - \text{rate})\, h^{\text{new}}`.
  While training every unit is exactly one of its two inputs; the expectation is computed in
  float32 (float64 for float64 input) and rounded once. The derivative follows the
  mask: :math:`\partial h^{\text{new}} = g\, m` and :math:`\partial h^{\text{prev}} = g\,
  (1 - m)` (and the expectation's weights when `deterministic`), so gradients flow through
  time along the kept units. Use it on the state update of a cell inside `jax.lax.scan`,
  with a new key at each step (``jax.random.fold_in(key, t)``).

  Args:
    key: a PRNG key, as for `dropout`.
    h_prev: the previous state, a floating array.
    h_new: the cell's new state, the shape and dtype of `h_prev`.
    rate: the probability that a unit KEEPS ITS PREVIOUS value (is zoned out), in [0, 1]; may be
      traced. Under `jit` a rate outside [0, 1] or NaN cannot raise: while training it makes the
      whole output NaN, and with ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call
      eagerly, where the check raises a ValueError naming the rate.
    deterministic: if True, returns the expectation above; may be a traced boolean.
    recompute: True (the default) keeps only the key for the backward pass; False keeps the
      two masks, 2 bytes per element.
    autodiff, shard_spec: as for `dropout`.

  Returns:
    An array with the shape and dtype of `h_new`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> h_prev, h_new = jnp.zeros(8), jnp.ones(8)
    >>> h = jaxdrop.zoneout(jax.random.key(0), h_prev, h_new, 0.5)
    >>> bool(jnp.all((h == 0) | (h == 1)))      # each unit is its old or its new value
    True
    >>> jaxdrop.zoneout(None, h_prev, h_new, 0.25, deterministic=True)[0]
    Array(0.75, dtype=float32)

  References:
    Krueger, Maharaj, Kramár, Pezeshki, Ballas, Ke, Goyal, Bengio, Courville and Pal,
    "Zoneout: regularizing RNNs by randomly preserving hidden activations", ICLR (2017).
  """
  h_prev = check.float_array(h_prev, "h_prev")
  h_new = check.float_array(h_new, "h_new")
  if h_prev.shape != h_new.shape or h_prev.dtype != h_new.dtype:
    raise ValueError(
      f"h_prev and h_new must have one shape and dtype, got "
      f"{h_prev.dtype.name}{list(h_prev.shape)} and "
      f"{h_new.dtype.name}{list(h_new.shape)}"
    )
  rate_value = check.probability(rate, "rate")
  deterministic = check.flag(deterministic, "deterministic")
  recompute = check.static_bool(recompute, "recompute")
  autodiff = check.choice(autodiff, AUTODIFF_MODES, "autodiff")
  shard_spec = check.partition_spec(shard_spec, h_new.ndim, "shard_spec")
  key = checked_key(key)
  if rate_value == 0.0:
    return h_new
  threshold = drop_threshold(rate, compute_dtype(h_new.dtype))
  if deterministic is True:
    return _expectation(h_prev, h_new, threshold)
  key = require_key("zoneout", key, rate, deterministic)
  with forward_mode_hint("zoneout"):
    return _zoneout(
      key,
      h_prev,
      h_new,
      threshold,
      jnp.asarray(deterministic),
      recompute=recompute,
      autodiff=autodiff,
      shard_spec=shard_spec,
    )
