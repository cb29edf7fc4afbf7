"""Plain reference implementations the tests compare jaxdrop against."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop

# Every array member of the family as f(key, x, rate, **options), on NHWC-like arrays.
MEMBERS = {
  "dropout": jaxdrop.dropout,
  "channel_dropout": jaxdrop.channel_dropout,
  "alpha_dropout": jaxdrop.alpha_dropout,
  "feature_alpha_dropout": jaxdrop.feature_alpha_dropout,
  "gaussian_dropout": jaxdrop.gaussian_dropout,
  "drop_path": jaxdrop.drop_path,
  "drop_block": lambda k, x, r, **kw: jaxdrop.drop_block(k, x, r, 3, **kw),
  "drop_connect": jaxdrop.drop_connect,
}


# Every member that takes a sharded array, as f(key, x, rate) on NHWC arrays: MEMBERS, plus the
# options and members whose sharding differs (a shared axis, the branch of stochastic depth).
SHARDED_MEMBERS = {
  **MEMBERS,
  "dropout shared over a sharded axis": lambda k, x, r: jaxdrop.dropout(
    k, x, r, broadcast_dims=(0, 3)
  ),
  "alpha_dropout shared over a sharded axis": lambda k, x, r: jaxdrop.alpha_dropout(
    k, x, r, broadcast_dims=(0, 3)
  ),
  "drop_path unscaled": lambda k, x, r: jaxdrop.drop_path(k, x, r, scale_by_keep=False),
  "gaussian_noise": jaxdrop.gaussian_noise,  # the rate serves as stddev
  "stochastic_depth, dropped": lambda k, x, r: jaxdrop.stochastic_depth(k, r, jnp.sin, x),
  # jax.random.key(3) keeps the branch with this fold_in (tests/multidevice/test_sharding.py).
  "stochastic_depth, kept": lambda k, x, r: jaxdrop.stochastic_depth(
    jax.random.fold_in(k, 0), r, jnp.sin, x
  ),
  "drop_block coupled, with noise": lambda k, x, r: jaxdrop.drop_block(
    k, x, r, 3, couple_channels=True, with_noise=True
  ),
  "zoneout": lambda k, x, r, **kw: jaxdrop.zoneout(k, -2 * x, x, r, **kw),
  "concrete_dropout": jaxdrop.concrete_dropout,
  # log alpha = log(rate / (1 - rate)): gaussian_dropout's variance.
  "variational_dropout": lambda k, x, r: jaxdrop.variational_dropout(k, x, np.log(r / (1 - r))),
}


def observed_mask(key, shape, rate, **kwargs):
  """The keep mask jaxdrop draws for `key`, read off its output on an array of ones."""
  return jaxdrop.dropout(key, jnp.ones(shape, jnp.float32), rate, **kwargs) != 0


def reference_dropout(mask, x, scale):
  """Textbook masked scaling, differentiated by plain autodiff (half precision computed in
  float32 and rounded once, as jaxdrop documents)."""
  work = jnp.float32 if jnp.finfo(x.dtype).bits < 32 else x.dtype
  kept = (x.astype(work) * jnp.asarray(scale, work)).astype(x.dtype)
  return jnp.where(mask, kept, jnp.zeros((), x.dtype))


def threshold(rate) -> int:
  """The documented 32-bit threshold of a concrete rate, with exact rationals:
  round(rate * 2**32), clamped to [1, 2**32 - 1] for 0 < rate < 1."""
  if rate == 0:
    return 0
  return min(max(round(Fraction(rate) * 2**32), 1), 2**32 - 1)


def inverted_scale(rate) -> np.float32:
  """Inverted dropout's float32 scale for a concrete rate: 2**32 / (2**32 - threshold), the
  count 2**32 - threshold rounded to float32 before the division (0 at rate 1)."""
  return np.float32(2**32) / np.float32(2**32 - threshold(rate)) if rate < 1 else np.float32(0)
