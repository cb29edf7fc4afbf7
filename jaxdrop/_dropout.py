"""`dropout`: the public function, its checks, and the traced work behind it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from . import _validate as check
from ._core import Affine, apply_noise, forward_mode_hint, noise_op
from ._keys import as_typed_key, mask_words
from ._mask import MaskSource, Threshold, bernoulli, drop_threshold

AUTODIFF_MODES = ("vjp", "jvp")
Autodiff = Literal["vjp", "jvp"]

# SELU's saturation value, -lambda * alpha (Klambauer et al. 2017): where alpha dropout sets
# dropped units, before the affine correction.
ALPHA_PRIME = -1.7580993408473766


def compute_dtype(x_dtype: DTypeLike) -> jnp.dtype:
  """Scales are computed in float32 (float64 for float64 inputs) and cast once."""
  return jnp.dtype(jnp.float64) if x_dtype == jnp.float64 else jnp.dtype(jnp.float32)


def nan_unless(valid: ArrayLike, dtype: DTypeLike) -> jax.Array:
  """0 where `valid`, NaN where not, computed as ``sqrt(0)`` or ``sqrt(-1)``: unlike
  ``where(valid, v, nan)`` it never builds a NaN on valid input, so `jax_debug_nans` stays
  quiet on valid calls (even under `jax.disable_jit`) and fires on invalid ones."""
  return jnp.sqrt(jnp.where(valid, 0, -1).astype(dtype))


def bernoulli_scalars(
  threshold: Threshold, deterministic: bool | jax.Array, kind: str
) -> tuple[tuple[jax.Array, jax.Array | np.bool_, jax.Array], Affine]:
  """Parameters of the Bernoulli draw, ``(t, any_kept, mult)``, and the affine part.

  `kind` is "inverted" (kept units times 1/keep), "classic" (kept units as they
  are, times keep at test time), "unscaled" (kept units as they are, and `x` itself at
  test time: timm's ``scale_by_keep=False``) or "alpha" (Klambauer et al.: kept units
  ``a * x + b``, dropped units ``a * alpha' + b``), with keep the realised keep
  probability of `threshold`. Deterministic calls keep every unit (``t = 0``) with the
  test-time factor, whatever the rate, as a Python ``deterministic=True`` does (classic
  dropout's test-time factor is the rate's keep probability: NaN for an invalid rate). A
  traced rate outside [0, 1] or NaN cannot raise under `jit`; while training it keeps
  every unit and makes the factor NaN, so the whole output is NaN rather than silently
  wrong.
  """
  t, any_kept, keep, drop, inverse_keep, valid = threshold
  one, zero = jnp.ones((), keep.dtype), jnp.zeros((), keep.dtype)
  affine = None
  if kind == "inverted":
    train, test = inverse_keep, one
  elif kind == "classic":
    train, test = one, keep + nan_unless(valid, keep.dtype)
  elif kind == "unscaled":
    train, test = one, one
  else:
    spread = 1 + drop * ALPHA_PRIME**2
    train = jnp.where(any_kept, jax.lax.rsqrt(jnp.where(any_kept, keep, one) * spread), zero)
    shift = jnp.where(any_kept, -train * ALPHA_PRIME * drop, zero)
    # a * alpha' + b: finite at rate 1, and there +0.0 rather than alpha' * 0 = -0.0.
    fill = jnp.where(any_kept, ALPHA_PRIME * jnp.sqrt(keep / spread), zero)
    test = one
    affine = (jnp.where(deterministic, zero, shift), fill)
  use_all = deterministic | ~valid
  t = jnp.where(use_all, jnp.uint32(0), t)
  any_kept = any_kept | use_all
  mult = jnp.where(deterministic, test, train + nan_unless(valid, keep.dtype))
  return (t, any_kept, mult), affine


def block_position(
  shard_spec: jax.sharding.PartitionSpec, shape: tuple[int, ...], shared_axes: tuple[int, ...]
) -> tuple[tuple[jax.Array, ...], tuple[int, ...]]:
  """Inside `shard_map`: this block's offset along each axis, and the global mask shape.

  `shard_spec` is how the global array is split over the enclosing shard_map's mesh
  axes (its entry of ``in_specs``); block ``i`` of an axis split into ``n`` starts at
  ``i * local_size``, the index running over the named mesh axes in order.
  """
  entries = tuple(shard_spec) + (None,) * (len(shape) - len(shard_spec))
  offsets, global_shape = [], []
  for axis, (entry, size) in enumerate(zip(entries, shape)):
    names = check.axis_names(entry)
    index: int | jax.Array = 0
    count = 1
    for name in names:
      try:
        n = jax.lax.axis_size(name)
      except NameError as err:
        raise ValueError(
          f"shard_spec={shard_spec!r} names mesh axis {name!r}, which is not an "
          "axis of an enclosing shard_map"
        ) from err
      index, count = index * n + jax.lax.axis_index(name), count * n
    shared = axis in shared_axes
    offsets.append(jnp.asarray(0 if shared else index * size, jnp.uint32))
    global_shape.append(1 if shared else size * count)
  return tuple(offsets), tuple(global_shape)


def mask_source(
  key: jax.Array,
  shape: tuple[int, ...],
  shard_spec: jax.sharding.PartitionSpec | None,
  shared_axes: tuple[int, ...] = (),
) -> tuple[MaskSource, tuple[int, ...] | None]:
  """The `MaskSource` of `key` for an array of `shape`, and the global mask shape: inside
  `shard_map` (a `shard_spec`) the block's offsets and the whole array's mask shape, else
  none."""
  if shard_spec is None:
    return MaskSource(mask_words(key)), None
  offsets, global_shape = block_position(shard_spec, shape, shared_axes)
  return MaskSource(mask_words(key), offsets), global_shape


@functools.partial(
  jax.jit, static_argnames=("shared_axes", "kind", "recompute", "autodiff", "shard_spec")
)
def _bernoulli_dropout(
  key: jax.Array,
  x: jax.Array,
  threshold: Threshold,
  deterministic: bool | jax.Array,
  *,
  shared_axes: tuple[int, ...],
  kind: str,
  recompute: bool,
  autodiff: Autodiff,
  shard_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  params, affine = bernoulli_scalars(threshold, deterministic, kind)
  source, global_shape = mask_source(key, x.shape, shard_spec, shared_axes)
  return noise_op(
    source,
    x,
    params,
    draw=bernoulli,
    affine=affine,
    mask_shape=check.mask_shape(x.shape, shared_axes),
    recompute=recompute,
    autodiff=autodiff,
    global_shape=global_shape,
  )


@jax.jit
def _scale_by_keep(x: jax.Array, threshold: Threshold) -> jax.Array:
  """Classic dropout at test time: `x` times the keep probability that training realises."""
  (_, _, mult), _ = bernoulli_scalars(threshold, jnp.bool_(True), "classic")
  return apply_noise(None, mult, x)


def check_common(
  x: ArrayLike,
  rate: ArrayLike,
  deterministic: bool | ArrayLike,
  recompute: bool,
  autodiff: Autodiff,
) -> tuple[jax.Array, float | None, bool | jax.Array, bool, Autodiff]:
  """The checks every member of the family shares; returns the normalised values."""
  return (
    check.float_array(x, "x"),
    check.probability(rate, "rate"),
    check.flag(deterministic, "deterministic"),
    check.static_bool(recompute, "recompute"),
    check.choice(autodiff, AUTODIFF_MODES, "autodiff"),
  )


@overload
def checked_key(key: jax.Array) -> jax.Array: ...
@overload
def checked_key(key: jax.Array | None) -> jax.Array | None: ...
def checked_key(key: jax.Array | None) -> jax.Array | None:
  """The key, checked as soon as it is given, even where it will not be used (deterministic,
  rate 0); None stays None. Legacy keys are returned unwrapped (`mask_words` reads both)."""
  return None if key is None else as_typed_key(key, name="key", wrap=False)


def require_key(
  name: str,
  key: jax.Array | None,
  rate: ArrayLike,
  deterministic: bool | ArrayLike,
  rate_name: str = "rate",
) -> jax.Array:
  """A key from `checked_key`, which must not be None here."""
  if key is None:
    raise TypeError(
      f"{name} needs a PRNG key (e.g. jax.random.key(0)) unless deterministic=True or "
      f"{rate_name} is a concrete 0, got key=None with {rate_name}={rate!r}, "
      f"deterministic={deterministic!r}"
    )
  return key


def run_bernoulli(
  name: str,
  key: jax.Array | None,
  x: jax.Array,
  rate: ArrayLike,
  rate_value: float | None,
  deterministic: bool | jax.Array,
  *,
  shared_axes: tuple[int, ...],
  kind: str,
  recompute: bool,
  autodiff: Autodiff,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  """The path every Bernoulli member takes once its own arguments are checked."""
  shard_spec = check.partition_spec(shard_spec, x.ndim, "shard_spec")
  key = checked_key(key)
  dtype = compute_dtype(x.dtype)
  if deterministic is True:
    return _scale_by_keep(x, drop_threshold(rate, dtype)) if kind == "classic" else x
  if rate_value == 0.0:
    return x
  key = require_key(name, key, rate, deterministic)
  threshold = drop_threshold(rate, dtype)
  with forward_mode_hint(name):
    return _bernoulli_dropout(
      key,
      x,
      threshold,
      deterministic,
      shared_axes=shared_axes,
      kind=kind,
      recompute=recompute,
      autodiff=autodiff,
      shard_spec=shard_spec,
    )


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
  shard_spec: jax.sharding.PartitionSpec | None = None,
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
  (any rate > 0 drops with probability at least ``2**-32``; a concrete rate is converted
  exactly, in float64 on the host), and the inverted
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
      probability p of the classic formulation is ``1 - rate``. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output
      NaN (never a silently wrong mask), and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly,
      where the check raises a ValueError naming the rate.
    deterministic: if True, no unit is dropped (evaluation). A Python bool, or
      a traced boolean scalar chosen at run time.
    broadcast_dims: axes along which one mask value is shared, as in Flax
      (``broadcast_dims=(1,)`` on ``[batch, time, features]`` reuses the mask at
      every time step).
    inverted: scale kept units by ``1 / (1 - rate)`` while training (True) or
      scale by ``1 - rate`` at test time (False).
    recompute: True (the default) keeps only the key for the backward pass and
      regenerates the identical mask there; False keeps the mask, 1 byte per
      mask element. Under `jit` both cost the same time (within the benchmark's
      run-to-run noise); True saves memory wherever XLA cannot fuse the mask away
      (`lax.scan` loops, eager `vjp`).
    autodiff: ``"vjp"`` registers the derivative as a `jax.custom_vjp`: reverse
      mode (`jax.grad`, `jax.vjp`, and `jax.hessian`, which is forward over
      reverse). ``"jvp"`` registers it as a `jax.custom_jvp`, which also allows
      `jax.jvp`, `jax.jacfwd` and `jax.linearize`. Both give identical values
      and gradients and keep the same residuals.
    shard_spec: only inside `jax.shard_map`, where `x` is one block of a global
      array: that array's `PartitionSpec` (its entry of ``in_specs``). The block
      then gets its slice of the global array's mask, the mask the same call on
      the whole array draws, with no collective; without it every block would
      draw the same local mask from the one key.

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
  x, rate_value, deterministic, recompute, autodiff = check_common(
    x, rate, deterministic, recompute, autodiff
  )
  shared_axes = check.axes(broadcast_dims, x.ndim, "broadcast_dims")
  kind = "inverted" if check.static_bool(inverted, "inverted") else "classic"
  return run_bernoulli(
    "dropout",
    key,
    x,
    rate,
    rate_value,
    deterministic,
    shared_axes=shared_axes,
    kind=kind,
    recompute=recompute,
    autodiff=autodiff,
    shard_spec=shard_spec,
  )
