"""The noise op and its derivative: the one backward pass of the whole family.

Every member of the family multiplies `x` by noise drawn from the key and,
for the Bernoulli members, selects:

    y = where(keep, x * mult + shift, fill)

where ``draw(source, layout, *params) -> (keep, mult)`` says which units are
kept (a boolean array broadcast against `x`, or None for "all") and by what
they are multiplied (a scalar, or an array such as Gaussian noise), and the
optional ``affine = (shift, fill)`` serves alpha dropout. Whatever the member,
the derivative is the same linear map applied to the incoming cotangent
(reverse mode) or tangent (forward mode):

    dx = where(keep, g * mult, 0)

-- exact zeros where dropped, even for NaN or inf. Two registrations of that rule:

* ``"vjp"`` (the default): a `jax.custom_vjp`. The forward pass keeps
  ``(keep, mult)`` (1 byte per mask element for Bernoulli masks) or, with
  ``recompute=True``, only the key words (and block offsets) and the scalar parameters, and the
  backward pass draws the identical noise again.
* ``"jvp"``: a `jax.custom_jvp` with the same rule as its tangent, so `jax.jvp`,
  `jax.jacfwd` and `jax.linearize` work; reverse mode transposes the linear
  tangent, which sits under `jax.checkpoint` so that reverse mode keeps the same
  residuals as the ``"vjp"`` registration.

Members whose noise is learned (Concrete and variational dropout: the drop rate or the noise
variance is a parameter that training updates) differentiate the noise in its parameters too
(``grad_params=True``, reverse mode only). The forward pass then keeps the key words, the
parameters and `x`; the backward pass draws the noise again and pulls the cotangent
``g * x`` (summed over the axes the noise is broadcast along) back through ``mult(params)``:

    dparams = vjp(mult, params)(sum_to_mult_shape(where(keep, g * x, 0)))
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._mask import MaskLayout, MaskSource, mask_layout

# ``draw(source, layout, *params) -> (keep, mult)``; `source` is None for a given mask.
Draw = Callable[..., tuple[jax.Array | None, ArrayLike]]
# The draw's parameters (`*params`): arrays and scalars, functions of the rate.
Params = tuple[ArrayLike, ...]
# ``(shift, fill)`` of alpha dropout, or None.
Affine = tuple[jax.Array, jax.Array] | None


def apply_noise(
  keep: ArrayLike | None, mult: ArrayLike, v: jax.Array, affine: Affine = None
) -> jax.Array:
  """``where(keep, v * mult + shift, fill)``; without `affine`, shift and fill are 0.

  float16 and bfloat16 inputs are multiplied in float32 and the product cast back
  once: a scale such as 1/keep rounded to bfloat16 would bias E[y] (by 0.16% at
  rate 0.1), and in float16 it overflows to inf for keep below 2**-16.
  """
  work = jnp.float32 if jnp.finfo(v.dtype).bits < 32 else v.dtype
  out = v.astype(work) * jnp.asarray(mult).astype(work)
  if affine is None:
    fill = jnp.zeros((), v.dtype)
  else:
    shift, fill = affine
    out = out + shift.astype(work)
    fill = fill.astype(v.dtype)
  out = out.astype(v.dtype)
  return out if keep is None else jnp.where(keep, out, fill)


def _draw_and_apply(
  draw: Draw,
  layout: MaskLayout,
  source: MaskSource | None,
  params: Params,
  v: jax.Array,
  affine: Affine = None,
) -> jax.Array:
  keep, mult = draw(source, layout, *params)
  return apply_noise(keep, mult, v, affine)


def _sum_to(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """`v` summed over the axes along which an array of `shape` broadcasts to ``v.shape``."""
  lead = v.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(
    lead + a for a, n in enumerate(shape) if n == 1 and v.shape[lead + a] != 1
  )
  return jnp.sum(v, axes).reshape(shape) if axes else v


def _param_cotangents(
  draw: Draw,
  layout: MaskLayout,
  source: MaskSource | None,
  params: Params,
  x: jax.Array,
  g: jax.Array,
) -> tuple[jax.Array, tuple[Any, ...]]:
  """``(dx, dparams)`` of ``where(keep, x * mult(params), 0)``, the noise drawn again."""
  mult, pull, keep = jax.vjp(lambda p: draw(source, layout, *p)[::-1], params, has_aux=True)
  work = jnp.asarray(mult).dtype
  gx = g.astype(work) * x.astype(work)
  gx = gx if keep is None else jnp.where(keep, gx, 0)
  (dparams,) = pull(_sum_to(gx, jnp.shape(mult)))
  return apply_noise(keep, mult, g), dparams


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _op_vjp(
  draw: Draw,
  layout: MaskLayout,
  recompute: bool,
  grad_params: bool,
  source: MaskSource | None,
  x: jax.Array,
  params: Params,
  affine: Affine,
) -> jax.Array:
  del recompute, grad_params
  return _draw_and_apply(draw, layout, source, params, x, affine)


def _op_vjp_fwd(
  draw: Draw,
  layout: MaskLayout,
  recompute: bool,
  grad_params: bool,
  source: MaskSource | None,
  x: jax.Array,
  params: Params,
  affine: Affine,
) -> tuple[jax.Array, tuple[Any, ...]]:
  keep, mult = draw(source, layout, *params)
  if grad_params:
    residuals: tuple[Any, ...] = (source, params, x)
  else:
    residuals = (source, params) if recompute else (keep, mult)
  return apply_noise(keep, mult, x, affine), residuals


def _op_vjp_bwd(
  draw: Draw,
  layout: MaskLayout,
  recompute: bool,
  grad_params: bool,
  residuals: tuple[Any, ...],
  g: jax.Array,
) -> tuple[None, jax.Array, Any, None]:
  if grad_params:
    source, params, x = residuals
    dx, dparams = _param_cotangents(draw, layout, source, params, x, g)
    return None, dx, dparams, None
  keep, mult = draw(residuals[0], layout, *residuals[1]) if recompute else residuals
  # The key words and the parameters (functions of the rate) get no gradient.
  return None, apply_noise(keep, mult, g), None, None


_op_vjp.defvjp(_op_vjp_fwd, _op_vjp_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _op_jvp(
  draw: Draw,
  layout: MaskLayout,
  recompute: bool,
  source: MaskSource | None,
  x: jax.Array,
  params: Params,
  affine: Affine,
) -> jax.Array:
  del recompute
  return _draw_and_apply(draw, layout, source, params, x, affine)


@_op_jvp.defjvp
def _op_jvp_rule(
  draw: Draw,
  layout: MaskLayout,
  recompute: bool,
  primals: tuple[MaskSource | None, jax.Array, Params, Affine],
  tangents: tuple[Any, jax.Array, Any, Any],
) -> tuple[jax.Array, jax.Array]:
  source, x, params, affine = primals
  x_dot = tangents[1]
  keep, mult = draw(source, layout, *params)
  # The tangent map sits under jax.checkpoint so that reverse mode keeps only its
  # inputs (the noise, or the key words) and not the zeros that `where` broadcasts.
  if recompute:
    y_dot = jax.checkpoint(functools.partial(_draw_and_apply, draw, layout))(source, params, x_dot)
  else:
    y_dot = jax.checkpoint(apply_noise)(keep, mult, x_dot)
  return apply_noise(keep, mult, x, affine), y_dot


def noise_op(
  source: MaskSource | None,
  x: jax.Array,
  params: Params,
  *,
  draw: Draw,
  mask_shape: tuple[int, ...],
  recompute: bool,
  autodiff: str,
  affine: Affine = None,
  global_shape: tuple[int, ...] | None = None,
  grad_params: bool = False,
) -> jax.Array:
  """``where(keep, x * mult + shift, fill)`` with noise from `draw`, differentiated by hand.

  `draw(source, layout, *params)` gets the `MaskSource` (key words, block offsets) and
  the mask's `MaskLayout` (its shape, how `x` is sharded over explicit mesh axes, and the
  global mask shape when `x` is a block of a larger array). It must be hashable (a
  module-level function or a frozen dataclass): it is a static argument of the custom
  derivative. With `grad_params` (reverse mode, no `affine`) the parameters, floating
  arrays, get the gradient of ``mult(params)``; the backward pass draws the noise again.
  """
  layout = mask_layout(x, mask_shape)._replace(global_shape=global_shape)
  if autodiff == "vjp":
    return _op_vjp(draw, layout, recompute, grad_params, source, x, params, affine)
  assert not grad_params, "learned noise is differentiated in reverse mode only"
  return _op_jvp(draw, layout, recompute, source, x, params, affine)


# JAX's own message when forward mode meets a custom_vjp (pinned by a test).
_JAX_JVP_ERROR = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


@contextlib.contextmanager
def forward_mode_hint(name: str) -> Iterator[None]:
  """Re-raises JAX's forward-mode error on a custom_vjp with the way out spelled out.

  It catches the case where `jax.jvp`, `jax.jacfwd` or `jax.linearize` trace
  through the call itself; when the caller is jitted first (``jax.jvp(jax.jit(f))``)
  JAX raises outside this call and only the documentation can help.
  """
  try:
    yield
  except TypeError as err:
    if _JAX_JVP_ERROR not in str(err):
      raise
    raise TypeError(
      f"jaxdrop.{name} with autodiff='vjp' (the default) registers its derivative as a "
      "jax.custom_vjp, which supports reverse mode only (jax.grad, jax.vjp, jax.hessian); "
      f"for jax.jvp, jax.jacfwd or jax.linearize pass autodiff='jvp' to jaxdrop.{name} "
      "(same mask, same values and gradients)."
    ) from err
