"""The drop-ins on sharded arrays: NNX on explicit axes, Linen, Equinox and Haiku on both kinds.

Ported (rewritten, run against ``jaxdrop.nnx.Dropout``) from Flax's
google/flax tests/nnx/spmd_test.py::test_out_sharding_dropout: on a mesh with explicit axes
the output keeps the input's sharding, eagerly and under jit; plus the mask is the one the
unsharded call draws, for the family and for attention_fn on a batch-sharded input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jaxdrop
import jaxdrop.nnx as jdnnx

MEMBERS = [
  (functools.partial(jdnnx.Dropout, broadcast_dims=()), jaxdrop.dropout),
  (
    functools.partial(jdnnx.Dropout, broadcast_dims=(1,)),
    functools.partial(jaxdrop.dropout, broadcast_dims=(1,)),
  ),
  (jdnnx.ChannelDropout, jaxdrop.channel_dropout),
  (jdnnx.AlphaDropout, jaxdrop.alpha_dropout),
  (jdnnx.GaussianDropout, jaxdrop.gaussian_dropout),
  (jdnnx.DropPath, jaxdrop.drop_path),
]


@pytest.fixture
def mesh():
  mesh = jax.make_mesh((2, 2), ("X", "Y"), axis_types=(AxisType.Explicit, AxisType.Explicit))
  with jax.set_mesh(mesh):
    yield mesh


@pytest.mark.parametrize("module, functional", MEMBERS)
def test_output_keeps_the_sharding_and_the_unsharded_mask(mesh, module, functional):
  x = jnp.arange(1, 33, dtype=jnp.float32).reshape(4, 8)
  sharded = jax.sharding.reshard(x, P("X", None))
  layer = module(0.5, deterministic=False, rngs=nnx.Rngs(0))
  key = nnx.clone(layer).rngs()
  y = layer(sharded)
  assert "float32[4@X,8]" in str(jax.typeof(y))
  np.testing.assert_array_equal(y, functional(key, x, 0.5))
  jitted = jax.jit(lambda x, rngs: layer(x, rngs=rngs))(sharded, nnx.Rngs(0))
  assert "float32[4@X,8]" in str(jax.typeof(jitted))


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_attention_fn_on_a_batch_sharded_input(mesh, implementation):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 4, 6, 2, 8))
  key = jax.random.key(1)
  attend = functools.partial(
    jdnnx.attention_fn,
    dropout_rng=key,
    dropout_rate=0.3,
    implementation=implementation,
    query_chunk_size=4,
    key_chunk_size=4,
  )
  expected = attend(q, k, v)
  shard = lambda a: jax.sharding.reshard(a, P("X", None, "Y", None))
  out = jax.jit(attend)(shard(q), shard(k), shard(v))
  assert "float32[4@X,6,2@Y,8]" in str(jax.typeof(out))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(expected) != np.asarray(jdnnx.attention_fn(q, k, v)))


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_linen_equinox_and_haiku_dropout_on_sharded_input(axis_type):
  import haiku as hk

  import jaxdrop.equinox
  import jaxdrop.haiku
  import jaxdrop.linen

  x = jnp.arange(1, 33, dtype=jnp.float32).reshape(4, 8)
  key = jax.random.key(0)
  linen = jaxdrop.linen.Dropout(0.5, deterministic=False)
  haiku = hk.transform(lambda x: jaxdrop.haiku.dropout(hk.next_rng_key(), 0.5, x))
  layers = {
    "linen": lambda x: linen.apply({}, x, rngs={"dropout": key}),
    "equinox": lambda x: jaxdrop.equinox.Dropout(0.5)(x, key=key),
    "haiku": lambda x: haiku.apply({}, key, x),
  }
  unsharded = {name: layer(x) for name, layer in layers.items()}
  mesh = jax.make_mesh((2, 2), ("X", "Y"), axis_types=(axis_type,) * 2)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(x, jax.NamedSharding(mesh, P("X", "Y")))
    for name, layer in layers.items():
      y = jax.jit(layer)(sharded)
      assert y.sharding.is_equivalent_to(sharded.sharding, 2), name
      np.testing.assert_array_equal(y, unsharded[name], err_msg=name)
  # Equinox passes its key on as it is (Linen and Haiku derive theirs): the functional mask.
  np.testing.assert_array_equal(unsharded["equinox"], jaxdrop.dropout(key, x, 0.5))
