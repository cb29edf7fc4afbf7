"""Every drop-in on sharded arrays, auto and explicit axes; NNX cases ported from Flax.

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


def _drop_ins(key):
  """Every drop-in module of the four frameworks, training, as a function of NHWC `x`."""
  import haiku as hk

  import jaxdrop.equinox as jdeqx
  import jaxdrop.haiku as jdhk
  import jaxdrop.linen as jdlinen

  linen = {
    name: (lambda m: lambda x: m.apply({}, x, rngs={"dropout": key}))(m)
    for name, m in {
      "Dropout": jdlinen.Dropout(0.5, deterministic=False),
      "ChannelDropout": jdlinen.ChannelDropout(0.5, deterministic=False),
      "FeatureAlphaDropout": jdlinen.FeatureAlphaDropout(0.5, deterministic=False),
      "AlphaDropout": jdlinen.AlphaDropout(0.5, deterministic=False),
      "GaussianDropout": jdlinen.GaussianDropout(0.5, deterministic=False),
      "DropPath": jdlinen.DropPath(0.5, deterministic=False),
      "DropBlock": jdlinen.DropBlock(0.5, deterministic=False, block_size=3),
    }.items()
  }
  per_example = {"channel_axis": -1, "batch_axis": 0}  # Equinox's default is one example
  equinox = {
    name: (lambda m: lambda x: m(x, key=key))(m)
    for name, m in {
      "Dropout": jdeqx.Dropout(0.5),
      "ChannelDropout": jdeqx.ChannelDropout(0.5, **per_example),
      "FeatureAlphaDropout": jdeqx.FeatureAlphaDropout(0.5, **per_example),
      "AlphaDropout": jdeqx.AlphaDropout(0.5),
      "GaussianDropout": jdeqx.GaussianDropout(0.5),
      "DropPath": jdeqx.DropPath(0.5, batch_axis=0),
      "DropBlock": jdeqx.DropBlock(0.5, block_size=3),
    }.items()
  }
  haiku = {
    name: (
      lambda f: lambda x: hk.transform(lambda x: f(hk.next_rng_key(), 0.5, x)).apply({}, key, x)
    )(f)
    for name, f in {
      "dropout": jdhk.dropout,
      "channel_dropout": jdhk.channel_dropout,
      "feature_alpha_dropout": jdhk.feature_alpha_dropout,
      "alpha_dropout": jdhk.alpha_dropout,
      "gaussian_dropout": jdhk.gaussian_dropout,
      "drop_path": jdhk.drop_path,
      "drop_block": lambda rng, rate, x: jdhk.drop_block(rng, rate, x, 3),
    }.items()
  }
  nnx_modules = {
    "Dropout": jdnnx.Dropout,
    "ChannelDropout": jdnnx.ChannelDropout,
    "FeatureAlphaDropout": jdnnx.FeatureAlphaDropout,
    "AlphaDropout": jdnnx.AlphaDropout,
    "GaussianDropout": jdnnx.GaussianDropout,
    "DropPath": jdnnx.DropPath,
    "DropBlock": functools.partial(jdnnx.DropBlock, block_size=3),
  }
  nnx_layers = {
    name: (lambda make: lambda x: make(0.5, deterministic=False)(x, rngs=key))(make)
    for name, make in nnx_modules.items()
  }
  layers = {"linen": linen, "equinox": equinox, "haiku": haiku, "nnx": nnx_layers}
  return {f"{framework} {name}": f for framework, fs in layers.items() for name, f in fs.items()}


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_every_drop_in_on_sharded_input(axis_type):
  x = jax.random.normal(jax.random.key(2), (4, 6, 6, 8))  # NHWC
  key = jax.random.key(0)
  layers = _drop_ins(key)
  unsharded = jax.jit(lambda x: {name: f(x) for name, f in layers.items()})(x)
  mesh = jax.make_mesh((2, 2), ("X", "Y"), axis_types=(axis_type,) * 2)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(x, jax.NamedSharding(mesh, P("X", None, None, "Y")))
    out = jax.jit(lambda x: {name: f(x) for name, f in layers.items()})(sharded)
  for name, y in out.items():
    assert y.sharding.is_equivalent_to(sharded.sharding, 4), name
    np.testing.assert_array_equal(y == 0, unsharded[name] == 0, err_msg=name)
    np.testing.assert_allclose(y, unsharded[name], rtol=1e-6, atol=1e-6, err_msg=name)
  # Equinox passes its key on as it is (Linen, Haiku and NNX derive theirs): the functional mask.
  np.testing.assert_array_equal(out["equinox Dropout"], jaxdrop.dropout(key, x, 0.5))
