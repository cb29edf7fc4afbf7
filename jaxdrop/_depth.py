"""Stochastic depth that skips the work: a dropped residual branch is not computed at all.

`drop_path` multiplies a branch's output by a mask, so the branch runs whatever the draw.
With one decision for the whole batch, `stochastic_depth` instead runs the branch under
`lax.cond`: when the draw drops it, neither its forward nor its backward pass is executed.
The decision is the one ``drop_path(key, y, rate, mode="batch")`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import apply_noise
from ._dropout import bernoulli_scalars, checked_key, require_key
from ._keys import mask_words
from ._mask import MaskLayout, MaskSource, drop_threshold, keep_mask
from ._structured import drop_path


def _zeros(out: jax.ShapeDtypeStruct) -> jax.Array:
  """Zeros of the branch's output type, its sharding on a mesh with explicit axes included
  (`lax.cond` needs both sides' types equal)."""
  return jnp.zeros(out.shape, out.dtype, out_sharding=out.sharding)


def stochastic_depth(
  key: jax.Array | None,
  rate: ArrayLike,
  branch: Callable[..., Any],
  x: Any,
  *args: Any,
  mode: Literal["batch", "row"] = "batch",
  batch_axis: int = 0,
  scale_by_keep: bool = True,
  deterministic: bool | ArrayLike = False,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> Any:
  r"""Stochastic depth and LayerDrop that skip a dropped branch's computation.

  Returns the residual branch's contribution, to be added to its input:
  ``x + stochastic_depth(key, rate, branch, x)``. With ``mode="batch"`` one draw
  :math:`m \sim \mathrm{Bernoulli}(1 - \text{rate})` decides for the whole call,

  .. math::

     y = \begin{cases} \mathrm{branch}(x, \ldots) / (1 - \text{rate}) & m = 1 \\
         0 & m = 0, \end{cases}

  and the branch runs under `jax.lax.cond`, so a dropped branch costs nothing, forward or
  backward (inside `jax.lax.scan` over layers with a key per layer this is LayerDrop). The
  decision is the one ``drop_path(key, branch(x), rate, mode="batch")`` draws. With
  ``mode="row"`` (one decision per example) every example's branch must be computed anyway:
  it returns ``drop_path(key, branch(x, *args), rate, batch_axis=batch_axis)``.
  ``scale_by_keep=False`` leaves a kept branch unscaled. When `deterministic`, the branch is
  returned as it is. The derivative is the branch's own, scaled, where it is kept, and zero
  where it is dropped.

  Under `jax.vmap` with a batched key or rate, `lax.cond` becomes a select and both sides are
  computed (and on a mesh with explicit axes JAX cannot batch it): keep the key unbatched, one
  decision per call, to save the work. Call it inside a jitted function: outside `jit` each
  call traces the branch again. The derivative is the branch's own, not the family's
  mask-based rule, so `recompute` and `autodiff` do not apply; `x` and `args` may hold
  anything `branch` takes (arrays, numbers, strings).

  Args:
    key: a PRNG key, as for `dropout`.
    rate: the probability of DROPPING the branch, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
    branch: the residual branch, called as ``branch(x, *args)``; for ``mode="batch"`` it may
      return any pytree of floating arrays.
    x: the branch's first argument (the residual stream).
    \*args: the branch's other arguments (for instance the layer's parameters, under `lax.scan`).
    mode: ``"batch"`` (one decision, the branch skipped when dropped) or ``"row"`` (one
      decision per example along `batch_axis`, the branch always computed).
    batch_axis: for ``mode="row"``, the batch axis of the branch's output.
    scale_by_keep: scale a kept branch by 1/keep (True, the default) or not.
    deterministic: if True, returns ``branch(x, *args)``; may be a traced boolean.
    shard_spec: for ``mode="row"`` inside `jax.shard_map`, as for `drop_path`. (The batch
      decision is one value for the whole global batch, the same in every block.)

  Returns:
    The branch's output (a pytree for ``mode="batch"``), scaled, or zeros of its shape.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> def block(h, w):
    ...   return jnp.tanh(h @ w)
    >>> h, w = jnp.ones((4, 8)), jnp.eye(8)
    >>> out = h + jaxdrop.stochastic_depth(jax.random.key(0), 0.5, block, h, w)
    >>> bool(jnp.all(out == h) | jnp.allclose(out, h + 2 * jnp.tanh(h)))
    True

  References:
    Huang, Sun, Liu, Sedra and Weinberger, "Deep networks with stochastic depth", ECCV
    (2016); Fan, Grave and Joulin, "Reducing transformer depth on demand with structured
    dropout", ICLR (2020).
  """
  if not callable(branch):
    raise TypeError(f"branch must be a callable, called as branch(x, *args), got {branch!r}")
  rate_value = check.probability(rate, "rate")
  mode = check.choice(mode, ("batch", "row"), "mode")
  if isinstance(batch_axis, (bool, np.bool_)) or not isinstance(batch_axis, (int, np.integer)):
    raise TypeError(f"batch_axis must be an integer axis, got {batch_axis!r}")
  scale_by_keep = check.static_bool(scale_by_keep, "scale_by_keep")
  deterministic = check.flag(deterministic, "deterministic")
  key = checked_key(key)
  if deterministic is True or rate_value == 0.0:
    return branch(x, *args)
  key = require_key("stochastic_depth", key, rate, deterministic)
  if mode == "row":
    return drop_path(
      key,
      branch(x, *args),
      rate,
      batch_axis=batch_axis,
      scale_by_keep=scale_by_keep,
      deterministic=deterministic,
      shard_spec=shard_spec,
    )
  (t, any_kept, mult), _ = bernoulli_scalars(
    drop_threshold(rate), jnp.asarray(deterministic), "inverted" if scale_by_keep else "unscaled"
  )
  # drop_path's mode="batch" mask: one element, shared by every axis.
  keep = keep_mask(MaskSource(mask_words(key)), MaskLayout((1,)), t, any_kept)[0]
  call = lambda: branch(x, *args)  # closed over: args need not be arrays
  out_shape = jax.eval_shape(call)
  for leaf in jax.tree.leaves(out_shape):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(
        f"branch must return floating arrays, got a leaf of dtype {jnp.dtype(leaf.dtype).name}"
      )
  # Each leaf times the scale in float32 at least, cast back once, as the family scales.
  return jax.lax.cond(
    keep,
    lambda: jax.tree.map(lambda v: apply_noise(None, mult, v), call()),
    lambda: jax.tree.map(_zeros, out_shape),
  )
