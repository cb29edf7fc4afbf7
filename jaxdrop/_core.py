"""The masked-scale op and its derivative: the one backward pass of the family.

Every member of the family is ``y = where(mask, x * scale, 0)`` for some mask
shape and scale, so its derivative is the same linear map applied to the
incoming cotangent (reverse mode) or tangent (forward mode):
``dx = where(mask, g * scale, 0)`` -- exact zeros where dropped, even for NaN or inf.

Two registrations of that one rule:

* ``"vjp"`` (the default): a `jax.custom_vjp`. The forward pass keeps the mask
  (1 byte per element of the mask) or, with ``recompute=True``, only the two
  key words and three scalars, and the backward pass regenerates the mask.
* ``"jvp"``: a `jax.custom_jvp` with the same rule as its tangent, so `jax.jvp`,
  `jax.jacfwd` and `jax.hessian` work; reverse mode transposes the linear tangent.
  With ``recompute=True`` the tangent's mask is under `jax.checkpoint`, so reverse
  mode again keeps only the key words.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from ._mask import keep_mask


def masked_scale(mask: jax.Array, v: jax.Array, scale: jax.Array) -> jax.Array:
  """``v * scale`` where `mask` (broadcast against `v`) is True, exact zeros elsewhere."""
  return jnp.where(mask, v * scale.astype(v.dtype), jnp.zeros((), v.dtype))


def _regenerated(mask_shape, words, t, any_kept, scale, v):
  return masked_scale(keep_mask(words, mask_shape, t, any_kept), v, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _op_vjp(mask_shape, recompute, words, x, t, any_kept, scale):
  del recompute
  return _regenerated(mask_shape, words, t, any_kept, scale, x)


def _op_vjp_fwd(mask_shape, recompute, words, x, t, any_kept, scale):
  mask = keep_mask(words, mask_shape, t, any_kept)
  residuals = (words, t, any_kept, scale) if recompute else (mask, scale)
  return masked_scale(mask, x, scale), residuals


def _op_vjp_bwd(mask_shape, recompute, residuals, g):
  if recompute:
    dx = _regenerated(mask_shape, *residuals, g)
  else:
    mask, scale = residuals
    dx = masked_scale(mask, g, scale)
  # The key words, the threshold and the scale (a function of the rate) get no gradient.
  return None, dx, None, None, None


_op_vjp.defvjp(_op_vjp_fwd, _op_vjp_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _op_jvp(mask_shape, recompute, words, x, t, any_kept, scale):
  del recompute
  return _regenerated(mask_shape, words, t, any_kept, scale, x)


@_op_jvp.defjvp
def _op_jvp_rule(mask_shape, recompute, primals, tangents):
  words, x, t, any_kept, scale = primals
  x_dot = tangents[1]
  mask = keep_mask(words, mask_shape, t, any_kept)
  # The tangent map sits under jax.checkpoint so that reverse mode keeps only its
  # inputs (the mask, or the key words) and not the zeros that `where` broadcasts.
  if recompute:
    regenerate = jax.checkpoint(functools.partial(_regenerated, mask_shape))
    y_dot = regenerate(words, t, any_kept, scale, x_dot)
  else:
    y_dot = jax.checkpoint(masked_scale)(mask, x_dot, scale)
  return masked_scale(mask, x, scale), y_dot


def masked_op(words, x, t, any_kept, scale, *, mask_shape, recompute, autodiff):
  """``where(mask, x * scale, 0)`` with the mask drawn from `words`, differentiated by hand."""
  op = _op_vjp if autodiff == "vjp" else _op_jvp
  return op(mask_shape, recompute, words, x, t, any_kept, scale)


# JAX's own message when forward mode meets a custom_vjp (pinned by a test).
_JAX_JVP_ERROR = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


@contextlib.contextmanager
def forward_mode_hint(name: str):
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
        "(same mask, same values and gradients).") from err
