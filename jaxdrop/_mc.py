"""Monte Carlo dropout: keep dropout on at test time and average many stochastic passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _validate as check
from ._dropout import compute_dtype
from ._keys import as_typed_key

# (count, mean, sum of squared deviations) of a chunk of samples; the last two are pytrees.
_Stats = tuple[jax.Array, Any, Any]


class MCResult(NamedTuple):
  """Predictive `mean` and `variance` over the samples (pytrees like `fn`'s output), and
  the `samples` themselves (leading axis `num_samples`), or None when not returned.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> def predict(key, x):
    ...   return {"y": jaxdrop.dropout(key, x, 0.5)}
    >>> mean, variance, samples = jaxdrop.mc_dropout(predict, jax.random.key(0), 16, jnp.ones(3))
    >>> mean["y"].shape, variance["y"].shape, samples["y"].shape
    ((3,), (3,), (16, 3))
    >>> bool(jnp.allclose(variance["y"], samples["y"].var(0)))
    True
    >>> r = jaxdrop.mc_dropout(predict, jax.random.key(0), 16, jnp.ones(3), return_samples=False)
    >>> r.samples is None, bool(jnp.allclose(r.mean["y"], mean["y"]))
    (True, True)
  """

  mean: Any
  variance: Any
  samples: Any


def _moments(samples: Any) -> tuple[Any, Any]:
  # Accumulated in float32 (float64 for float64 samples), cast explicitly: no implicit
  # promotion, so it also runs under jax_numpy_dtype_promotion="strict".
  acc = lambda s: s.astype(compute_dtype(s.dtype))
  return (
    jax.tree.map(lambda s: acc(s).mean(0), samples),
    jax.tree.map(lambda s: acc(s).var(0), samples),
  )


def _combine(a: _Stats, b: _Stats) -> _Stats:
  """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
  (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
  n = n_a + n_b
  delta = jax.tree.map(lambda x, y: y - x, mean_a, mean_b)
  as_dtype_of = lambda v, d: jnp.asarray(v).astype(
    jnp.result_type(d)
  )  # explicit, for strict promotion
  mean = jax.tree.map(lambda m, d: m + d * as_dtype_of(n_b / n, d), mean_a, delta)
  m2 = jax.tree.map(
    lambda x, y, d: x + y + d * d * as_dtype_of(n_a * n_b / n, d), m2_a, m2_b, delta
  )
  return n, mean, m2


def mc_dropout(
  fn: Callable[..., Any],
  key: jax.Array,
  num_samples: int,
  *args: Any,
  chunk_size: int | None = None,
  return_samples: bool = True,
) -> MCResult:
  r"""Runs a stochastic ``fn(key, *args)`` for `num_samples` keys; returns mean, variance, samples.

  With keys :math:`k_1, \ldots, k_T` split from `key`,

  .. math::

     \hat\mu = \frac{1}{T} \sum_t f(k_t, \ldots), \qquad
     \hat\sigma^2 = \frac{1}{T} \sum_t \left(f(k_t, \ldots) - \hat\mu\right)^2,

  the predictive mean and (population) variance of MC dropout. `fn` runs under
  `jax.vmap` over the keys, so it should use its key for every dropout call
  (split inside as needed) with ``deterministic=False``. Works under `jit`
  (`num_samples` and `chunk_size` are static). With `chunk_size`, the samples
  are evaluated `chunk_size` at a time (a `lax.map` or `lax.scan` over chunks),
  and with ``return_samples=False`` only running moments are kept, so the memory
  does not grow with `num_samples`. Moments accumulate in at least float32.

  Args:
    fn: ``fn(key, *args) -> pytree of arrays``, stochastic through `key` (the key
      comes first).
    key: a PRNG key; sample `t` uses ``jax.random.split(key, num_samples)[t]``.
    num_samples: how many stochastic passes, T.
    *args: passed to every call of `fn` (not batched).
    chunk_size: evaluate this many samples at a time (None: all at once).
    return_samples: also return the stacked samples (memory grows with T).

  Returns:
    An `MCResult` (mean, variance, samples); samples is None unless `return_samples`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> def predict(key, x):
    ...     return jaxdrop.dropout(key, x, 0.5).sum()
    >>> result = jaxdrop.mc_dropout(predict, jax.random.key(0), 256, jnp.ones(100))
    >>> result.samples.shape, round(float(result.mean) / 100, 1)
    ((256,), 1.0)

  References:
    Gal and Ghahramani, "Dropout as a Bayesian approximation: representing model
    uncertainty in deep learning", ICML (2016).
  """
  if not callable(fn):
    raise TypeError(f"fn must be callable as fn(key, *args), got {type(fn).__name__}")
  num_samples = check.positive_int(num_samples, "num_samples")
  if chunk_size is not None:
    chunk_size = min(check.positive_int(chunk_size, "chunk_size"), num_samples)
  keys = jax.random.split(as_typed_key(key, name="key"), num_samples)

  def one(k: jax.Array) -> Any:
    try:
      return fn(k, *args)
    except TypeError as err:
      if "PRNG key" not in str(err):
        raise
      raise TypeError(
        f"mc_dropout calls fn(key, *args), the key first, with a fresh key per "
        f"sample; calling fn raised: {err}"
      ) from err

  if return_samples or chunk_size is None:
    samples = jax.lax.map(one, keys, batch_size=chunk_size) if chunk_size else jax.vmap(one)(keys)
    mean, variance = _moments(samples)
    return MCResult(mean, variance, samples if return_samples else None)

  def chunk_stats(chunk_keys: jax.Array) -> _Stats:
    mean, variance = _moments(jax.vmap(one)(chunk_keys))
    n = chunk_keys.shape[0]  # counts as floats: their products below would overflow int32
    return jnp.float32(n), mean, jax.tree.map(lambda v: v * n, variance)

  full, rest = divmod(num_samples, chunk_size)
  chunks = keys[: full * chunk_size].reshape(full, chunk_size)
  first = chunk_stats(chunks[0])

  def body(state: _Stats, chunk_keys: jax.Array) -> tuple[_Stats, None]:
    return _combine(state, chunk_stats(chunk_keys)), None

  state, _ = jax.lax.scan(body, first, chunks[1:])
  if rest:
    state = _combine(state, chunk_stats(keys[full * chunk_size :]))
  n, mean, m2 = state
  return MCResult(mean, jax.tree.map(lambda m: m / n.astype(m.dtype), m2), None)
