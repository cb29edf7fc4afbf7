"""jax.export with symbolic batch and sequence sizes: every member exports, the serialized
artifact reloads and runs at several sizes, and draws the mask (and gradient) the concrete
call draws. Flax and Equinox dropout export the same way (Keras's dynamic-batch cases)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MEMBERS
from jax import export

import jaxdrop

KEY = jax.random.key(0)
# Symbolic batch and sequence sizes; drop_block's spatial axes (1, 2) must be concrete (see the
# test after the first).
# The members that are not f(key, x, rate), as such functions.
EXPORTED = dict(
  MEMBERS,
  **{
    "gaussian_noise": jaxdrop.gaussian_noise,
    "zoneout": lambda k, x, r: jaxdrop.zoneout(k, -x, x, r),
    "stochastic_depth": lambda k, x, r: jaxdrop.stochastic_depth(k, r, jnp.tanh, x),
  },
)
SPECS = {name: "b, 6, 6, 3" if name.startswith("drop_block") else "b, t, 6, 3" for name in EXPORTED}


@pytest.mark.parametrize("name", EXPORTED)
def test_member_exports_with_symbolic_sizes_and_matches_the_concrete_call(name):
  spec = SPECS[name]
  f = lambda k, x: EXPORTED[name](k, x, 0.3)
  args = (KEY, jax.ShapeDtypeStruct(export.symbolic_shape(spec), jnp.float32))
  exported = export.export(jax.jit(f))(*args)
  reloaded = export.deserialize(exported.serialize(vjp_order=1))
  for batch in (1, 3):
    x = jax.random.normal(jax.random.key(batch), (batch, 6, 6, 3))
    cotangent = jax.random.normal(jax.random.key(10 + batch), x.shape)
    # Against the concrete call under jit: the same mask (the pattern of exact zeros; for
    # dropout the values are bit-identical, see the last test), and the same values up to
    # the rounding of XLA's fusion choices (alpha's affine map, DropBlock's scale), as in
    # tests/multidevice.
    y, expected_y = reloaded.call(KEY, x), jax.jit(f)(KEY, x)
    np.testing.assert_array_equal(y == 0, expected_y == 0)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(cotangent * reloaded.call(KEY, x)))(x)
    expected = jax.jit(jax.grad(lambda x: jnp.sum(cotangent * f(KEY, x))))(x)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(grad == 0, expected == 0)


def test_drop_block_with_symbolic_spatial_sizes_is_a_clear_error():
  args = (KEY, jax.ShapeDtypeStruct(export.symbolic_shape("b, t, 6, 3"), jnp.float32))
  with pytest.raises(ValueError, match="drop_block needs concrete sizes on its spatial axes"):
    export.export(jax.jit(lambda k, x: jaxdrop.drop_block(k, x, 0.3, 3)))(*args)


def test_random_bits_of_a_symbolic_shape_are_the_concrete_bits():
  exported = export.export(jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.5)))(
    KEY, jax.ShapeDtypeStruct(export.symbolic_shape("b, 1000"), jnp.float32)
  )
  x = jax.random.normal(jax.random.key(1), (5, 1000))
  y = exported.call(KEY, x)
  np.testing.assert_array_equal(y, jaxdrop.dropout(KEY, x, 0.5))
  np.testing.assert_array_equal(y != 0, jaxdrop.random_bits(KEY, (5, 1000)) >= np.uint32(2**31))
