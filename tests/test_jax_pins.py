"""Pins on the JAX behaviour jaxdrop relies on, so an upgrade that changes it fails here first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

import jaxdrop
from jaxdrop import _core, _keys


def test_threefry2x32_known_answer():
  # Known-answer vector of Random123 (Salmon et al. 2011), Threefry-2x32, 20 rounds.
  a, b = _keys.threefry2x32(
    np.uint32(0x13198A2E), np.uint32(0x03707344), np.uint32(0x243F6A88), np.uint32(0x85A308D3)
  )
  assert (int(a), int(b)) == (0xC4923A9C, 0x483DF7A0)


def test_threefry2x32_equals_jax_primitive():
  # jaxdrop writes the hash out (JAX's CPU lowering is a rolled loop that does not fuse); it
  # must stay JAX's function: random key words and counters, eager and under jit.
  words = np.random.default_rng(0).integers(0, 2**32, (4, 1000), dtype=np.uint32)
  expected = threefry2x32_p.bind(*(jnp.asarray(w) for w in words))
  for fn in (_keys.threefry2x32, jax.jit(_keys.threefry2x32)):
    for ours, theirs in zip(fn(*words), expected):
      np.testing.assert_array_equal(ours, theirs)


def test_threefry2x32_broadcasts_and_batches():
  counts = jnp.arange(6, dtype=jnp.uint32).reshape(2, 3)
  a, b = _keys.threefry2x32(np.uint32(1), np.uint32(2), counts, counts)
  assert a.shape == b.shape == (2, 3)
  keys = jnp.arange(4, dtype=jnp.uint32)
  batched = jax.vmap(lambda k: _keys.threefry2x32(k, k, counts, counts))(keys)
  looped = [_keys.threefry2x32(k, k, counts, counts) for k in keys]
  for i in range(4):
    np.testing.assert_array_equal(batched[0][i], looped[i][0])
    np.testing.assert_array_equal(batched[1][i], looped[i][1])


def test_masks_with_short_rows_use_no_per_element_temporaries():
  # One Threefry hash per row: with a trailing axis of size 1 that is one per element, and it
  # must fuse into the mask (JAX's rolled CPU loop kept 8-12 bytes per element).
  x = jax.ShapeDtypeStruct((2**20, 1), jnp.float32)
  for f in (
    lambda k, x: jaxdrop.dropout(k, x, 0.5),
    lambda k, x: jaxdrop.drop_block(k, x, 0.5, 3, spatial_axes=(0,)),
  ):
    temp = jax.jit(f).lower(jax.random.key(0), x).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 1.01 * x.size, temp  # drop_block keeps its 1-byte seeds


def test_jax_message_for_forward_mode_on_custom_vjp():
  f = jax.custom_vjp(lambda x: x)
  f.defvjp(lambda x: (x, None), lambda _, g: (g,))
  with pytest.raises(TypeError) as info:
    jax.jvp(f, (1.0,), (1.0,))
  assert _core._JAX_JVP_ERROR in str(info.value)


@pytest.mark.parametrize(
  "impl,words",
  [("threefry2x32", 2), ("rbg", 4), ("unsafe_rbg", 4), ("philox4x32", 2), ("threefry4x32", 4)],
)
def test_key_data_layout(impl, words):
  assert jax.random.key_data(jax.random.key(0, impl=impl)).shape == (words,)


def test_mask_of_a_fixed_key_is_stable():
  # The mask is part of the public contract (reproducible experiments): a change in
  # jaxdrop or in JAX's Threefry that alters it must be deliberate.
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones(40), 0.5)
  packed = int(np.packbits(np.asarray(y[:32] != 0)).view(">u4")[0])
  assert packed == EXPECTED_FIRST_32_KEPT_BITS, hex(packed)


EXPECTED_FIRST_32_KEPT_BITS = 0xE79AFF67  # recorded on jax 0.10.2 (mask stream 2)


def test_varying_mesh_axes_are_readable_inside_shard_map():
  # The chunked attention's loop accumulators must vary over the same mesh axes as its inputs.
  from jax.sharding import PartitionSpec as P

  from jaxdrop._attention import varying_axes

  mesh = jax.make_mesh((1,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  seen = []

  def body(x, y):
    seen.append((varying_axes(x), varying_axes(y)))
    return x + y

  jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d")))(
    jnp.ones(4), jnp.ones(4)
  )
  assert seen == [(frozenset({"d"}), frozenset())]
  assert varying_axes(jnp.ones(3)) == frozenset()
