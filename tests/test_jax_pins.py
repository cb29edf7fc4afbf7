"""Pins on the JAX behaviour jaxdrop relies on, so an upgrade that changes it fails here first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop import _core, _keys


def test_threefry2x32_primitive_known_answer():
  # Known-answer vector of Random123 (Salmon et al. 2011), Threefry-2x32, 20 rounds.
  a, b = _keys.threefry2x32(np.uint32(0x13198A2E), np.uint32(0x03707344),
                            np.uint32(0x243F6A88), np.uint32(0x85A308D3))
  assert (int(a), int(b)) == (0xC4923A9C, 0x483DF7A0)


def test_threefry2x32_primitive_broadcasts_and_batches():
  counts = jnp.arange(6, dtype=jnp.uint32).reshape(2, 3)
  a, b = _keys.threefry2x32(np.uint32(1), np.uint32(2), counts, counts)
  assert a.shape == b.shape == (2, 3)
  keys = jnp.arange(4, dtype=jnp.uint32)
  batched = jax.vmap(lambda k: _keys.threefry2x32(k, k, counts, counts))(keys)
  looped = [_keys.threefry2x32(k, k, counts, counts) for k in keys]
  for i in range(4):
    np.testing.assert_array_equal(batched[0][i], looped[i][0])


def test_jax_message_for_forward_mode_on_custom_vjp():
  f = jax.custom_vjp(lambda x: x)
  f.defvjp(lambda x: (x, None), lambda _, g: (g,))
  with pytest.raises(TypeError) as info:
    jax.jvp(f, (1.0,), (1.0,))
  assert _core._JAX_JVP_ERROR in str(info.value)


@pytest.mark.parametrize("impl,words", [("threefry2x32", 2), ("rbg", 4), ("unsafe_rbg", 4),
                                        ("philox4x32", 2), ("threefry4x32", 4)])
def test_key_data_layout(impl, words):
  assert jax.random.key_data(jax.random.key(0, impl=impl)).shape == (words,)


def test_mask_of_a_fixed_key_is_stable():
  # The mask is part of the public contract (reproducible experiments): a change in
  # jaxdrop or in JAX's Threefry that alters it must be deliberate.
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones(40), 0.5)
  packed = int(np.packbits(np.asarray(y[:32] != 0)).view(">u4")[0])
  assert packed == EXPECTED_FIRST_32_KEPT_BITS, hex(packed)


EXPECTED_FIRST_32_KEPT_BITS = 0xE79AFF67  # recorded on jax 0.10.2 (mask stream 2)
