"""Plain reference implementations the tests compare jaxdrop against."""

import jax.numpy as jnp

import jaxdrop


def observed_mask(key, shape, rate, **kwargs):
  """The keep mask jaxdrop draws for `key`, read off its output on an array of ones."""
  return jaxdrop.dropout(key, jnp.ones(shape, jnp.float32), rate, **kwargs) != 0


def reference_dropout(mask, x, scale):
  """Textbook masked scaling, differentiated by plain autodiff."""
  return jnp.where(mask, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))
