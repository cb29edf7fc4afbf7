"""DropConnect: dropout of weights, an independent Bernoulli mask per leaf of a pytree."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._dropout import AUTODIFF_MODES, Autodiff, checked_key, require_key, run_bernoulli


def drop_connect(
  key: jax.Array | None,
  params: Any,
  rate: ArrayLike,
  *,
  deterministic: bool | ArrayLike = False,
  recompute: bool = True,
  autodiff: Literal["vjp", "jvp"] = "vjp",
) -> Any:
  r"""DropConnect: drops individual weights, one independent mask per leaf of a pytree.

  For every floating leaf :math:`W` of `params`,

  .. math::

     \tilde W = W \odot M / (1 - \text{rate}), \qquad
     M_{ij} \sim \mathrm{Bernoulli}(1 - \text{rate}),

  each leaf with its own key, ``jax.random.fold_in(key, leaf_index)``. Survivors
  are scaled by 1/keep (inverted, as weight-dropped RNNs do), so evaluation uses
  the weights unchanged. The derivative with respect to each weight is the same
  mask and scale applied to its gradient. Call it inside the loss, on the
  parameters, so that the optimiser updates the undropped weights.

  Args:
    key: a PRNG key, as for `dropout`.
    params: a floating array or a pytree of floating arrays.
    rate: the probability of DROPPING each weight, in [0, 1]; may be traced. Under `jit` a rate
      outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN, and with
      ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where the check
      raises a ValueError naming the rate.
    deterministic: if True, returns `params` unchanged; may be a traced boolean.
    recompute, autodiff: as for `dropout`.

  Returns:
    A pytree of the structure, shapes and dtypes of `params`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> params = {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4))}
    >>> dropped = jaxdrop.drop_connect(jax.random.key(0), params, 0.5)
    >>> bool(jnp.any(dropped["w1"] != dropped["w2"]))   # independent masks per leaf
    True

  References:
    Wan, Zeiler, Zhang, LeCun and Fergus, "Regularization of neural networks
    using DropConnect", ICML (2013).
  """
  rate_value = check.probability(rate, "rate")
  deterministic = check.flag(deterministic, "deterministic")
  recompute = check.static_bool(recompute, "recompute")
  autodiff = check.choice(autodiff, AUTODIFF_MODES, "autodiff")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    where = f"params{jax.tree_util.keystr(path)}"
    try:
      dtype = jnp.result_type(leaf)
    except TypeError as err:
      raise TypeError(f"drop_connect needs floating array leaves, got {leaf!r} at {where}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"drop_connect needs floating leaves, got dtype {np.dtype(dtype).name} at {where}"
      )
  key = checked_key(key)
  if deterministic is True or rate_value == 0.0:
    return params
  key = require_key("drop_connect", key, rate, deterministic)
  out = [
    _bernoulli_leaf(jax.random.fold_in(key, i), leaf, rate, deterministic, recompute, autodiff)
    for i, (_, leaf) in enumerate(leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, out)


def _bernoulli_leaf(
  key: jax.Array,
  leaf: ArrayLike,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
  recompute: bool,
  autodiff: Autodiff,
) -> jax.Array:
  leaf = check.float_array(leaf, "params leaf")
  return run_bernoulli(
    "drop_connect",
    key,
    leaf,
    rate,
    None,
    deterministic,
    shared_axes=(),
    kind="inverted",
    recompute=recompute,
    autodiff=autodiff,
  )
