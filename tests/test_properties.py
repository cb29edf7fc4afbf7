"""Property tests over shapes, dtypes, rates and options (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import inverted_scale, reference_dropout
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxdrop

DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]


@st.composite
def cases(draw):
  shape = tuple(draw(st.lists(st.integers(1, 40), min_size=0, max_size=3)))
  dims = tuple(draw(st.sets(st.integers(0, len(shape) - 1), max_size=len(shape)))) if shape else ()
  return dict(
    shape=shape,
    dtype=draw(st.sampled_from(DTYPES)),
    rate=draw(st.one_of(st.sampled_from([0.0, 1.0, 1e-7, 0.5]), st.floats(0.0, 1.0))),
    seed=draw(st.integers(0, 2**31 - 1)),
    broadcast_dims=dims,
    inverted=draw(st.booleans()),
    recompute=draw(st.booleans()),
    autodiff=draw(st.sampled_from(["vjp", "jvp"])),
  )


@settings(max_examples=30, deadline=None)
@given(cases())
def test_output_is_zero_or_scaled_and_gradient_matches(case):
  shape, dtype, rate = case["shape"], case["dtype"], case["rate"]
  key = jax.random.key(case["seed"])
  options = {k: case[k] for k in ("broadcast_dims", "inverted", "recompute", "autodiff")}
  x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 0.5, 2.0).astype(dtype)
  y = jaxdrop.dropout(key, x, rate, **options)
  assert y.shape == x.shape and y.dtype == x.dtype

  mask = jaxdrop.dropout(key, jnp.ones(shape), rate, **options) != 0
  scale = inverted_scale(rate) if case["inverted"] else 1.0
  expected = reference_dropout(mask, x, jnp.float32(scale))
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))

  for axis in case["broadcast_dims"]:
    np.testing.assert_array_equal(
      mask, jnp.broadcast_to(jnp.take(mask, jnp.array([0]), axis), shape)
    )

  g = jnp.ones(shape, dtype)
  _, vjp = jax.vjp(lambda x: jaxdrop.dropout(key, x, rate, **options), x)
  _, ref_vjp = jax.vjp(lambda x: reference_dropout(mask, x, jnp.float32(scale)), x)
  np.testing.assert_array_equal(
    np.asarray(vjp(g)[0], np.float32), np.asarray(ref_vjp(g)[0], np.float32)
  )
