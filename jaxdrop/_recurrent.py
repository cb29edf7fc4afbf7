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
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _validate as check
from ._core import apply_noise, forward_mode_hint, noise_op
from ._dropout import (AUTODIFF_MODES, block_position, checked_key, compute_dtype, nan_unless,
                       require_key)
from ._keys import mask_words
from ._mask import MaskSource, bernoulli, drop_threshold, keep_mask


def _previous(source, layout, t, any_kept, deterministic, mult):
  """The complement of `bernoulli`'s draw: the units dropout would drop (all when testing)."""
  return deterministic | ~keep_mask(source, layout, t, any_kept), mult


def _weights(threshold, deterministic):
  """Each input's factor when testing, (1 - rate, rate), or 1 while training; NaN when the rate
  is invalid (a traced one outside [0, 1])."""
  _, _, keep, drop, _, valid = threshold
  one, nan = jnp.ones((), keep.dtype), nan_unless(valid, keep.dtype)
  return (jnp.where(deterministic, keep, one) + nan, jnp.where(deterministic, drop, one) + nan)


@jax.jit
def _expectation(h_prev, h_new, threshold):
  """What a traced ``deterministic=True`` computes, with the same operations."""
  new, prev = _weights(threshold, jnp.bool_(True))
  return apply_noise(None, new, h_new) + apply_noise(None, prev, h_prev)


@functools.partial(jax.jit, static_argnames=("recompute", "autodiff", "shard_spec"))
def _zoneout(key, h_prev, h_new, threshold, deterministic, *, recompute, autodiff, shard_spec):
  offsets, global_shape = (None, None) if shard_spec is None else block_position(
      shard_spec, h_new.shape, ())
  source = MaskSource(mask_words(key), offsets)
  # Updated units: dropout's keep mask on h_new (unscaled); units keeping their value: its
  # complement on h_prev. When testing, every unit of both, weighted.
  new_mult, prev_mult = _weights(threshold, deterministic)
  testing_or_invalid = deterministic | ~threshold.valid
  t = jnp.where(testing_or_invalid, jnp.uint32(0), threshold.t)
  new_params = (t, threshold.any_kept | testing_or_invalid, new_mult)
  prev_params = (threshold.t, threshold.any_kept, testing_or_invalid, prev_mult)
  op = functools.partial(noise_op, mask_shape=h_new.shape, recompute=recompute,
                         autodiff=autodiff, global_shape=global_shape)
  return (op(source, h_new, new_params, draw=bernoulli)
          + op(source, h_prev, prev_params, draw=_previous))


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
  While training every unit is exactly one of its two inputs. The derivative follows the
  mask: :math:`\partial h^{\text{new}} = g\, m` and :math:`\partial h^{\text{prev}} = g\,
  (1 - m)` (and the expectation's weights when `deterministic`), so gradients flow through
  time along the kept units. Use it on the state update of a cell inside `jax.lax.scan`,
  with a new key at each step (``jax.random.fold_in(key, t)``).

  Args:
    key: a PRNG key, as for `dropout`.
    h_prev: the previous state, a floating array.
    h_new: the cell's new state, the shape and dtype of `h_prev`.
    rate: the probability that a unit KEEPS ITS PREVIOUS value (is zoned out), in [0, 1];
      may be traced.
    deterministic: if True, returns the expectation above; may be a traced boolean.
    recompute, autodiff, shard_spec: as for `dropout`.

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
    raise ValueError(f"h_prev and h_new must have one shape and dtype, got "
                     f"{h_prev.dtype.name}{list(h_prev.shape)} and "
                     f"{h_new.dtype.name}{list(h_new.shape)}")
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
    return _zoneout(key, h_prev, h_new, threshold, jnp.asarray(deterministic),
                    recompute=recompute, autodiff=autodiff, shard_spec=shard_spec)
