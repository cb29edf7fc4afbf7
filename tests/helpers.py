"""Plain reference implementations the tests compare jaxdrop against."""

import jax.numpy as jnp

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


def observed_mask(key, shape, rate, **kwargs):
  """The keep mask jaxdrop draws for `key`, read off its output on an array of ones."""
  return jaxdrop.dropout(key, jnp.ones(shape, jnp.float32), rate, **kwargs) != 0


def reference_dropout(mask, x, scale):
  """Textbook masked scaling, differentiated by plain autodiff (half precision computed in
  float32 and rounded once, as jaxdrop documents)."""
  work = jnp.float32 if jnp.finfo(x.dtype).bits < 32 else x.dtype
  kept = (x.astype(work) * jnp.asarray(scale, work)).astype(x.dtype)
  return jnp.where(mask, kept, jnp.zeros((), x.dtype))
