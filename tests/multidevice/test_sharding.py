"""Dropout on sharded arrays: no collectives, per-shard mask generation, the unsharded result.

Runs on 8 devices (see conftest.py): 1-D meshes of 8 and 2-D ("data", "model") meshes of
4 x 2, with auto and explicit axis types, rows or columns or both sharded.
"""

import re

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop

COLLECTIVES = re.compile(r"all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter")
SHAPE = (32, 4, 4, 64)  # NHWC: batch 32, 4 x 4 maps, 64 channels
KEY = jax.random.key(3)

MEMBERS = helpers.SHARDED_MEMBERS

MESHES = {
  "1d": ((8,), ("d",), [P("d"), P(None, None, None, "d")]),
  "2d": ((4, 2), ("data", "model"), [P("data", None, None, "model"), P(("data", "model"))]),
}
CASES = [(mesh, spec) for mesh, (_, _, specs) in MESHES.items() for spec in specs]


def _mesh(name, axis_type):
  shape, names, _ = MESHES[name]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def _local_shape(spec, mesh):
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  local = list(SHAPE)
  for axis, entry in enumerate(tuple(spec) + (None,) * (len(SHAPE) - len(spec))):
    for name in entry if isinstance(entry, tuple) else (entry,) if entry else ():
      local[axis] //= sizes[name]
  return tuple(local)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
@pytest.mark.parametrize("mesh_name,spec", CASES, ids=[f"{m}-{s}" for m, s in CASES])
@pytest.mark.parametrize("name", MEMBERS)
def test_sharded_member(name, mesh_name, spec, axis_type):
  f = MEMBERS[name]
  mesh = _mesh(mesh_name, axis_type)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  expected = f(KEY, x, 0.3)
  # A linear loss with a fixed random cotangent: the gradient is the op's own backward pass,
  # g * noise, and not cos(y) * noise, whose value near a zero of cos turns a one-ulp
  # difference in y between two compilations into an arbitrary relative error.
  cotangent = jax.random.normal(jax.random.key(2), SHAPE)
  loss = lambda x, k, g: jnp.sum(g * f(k, x, 0.3))
  expected_grad = jax.grad(loss)(x, KEY, cotangent)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    gs = jax.device_put(cotangent, NamedSharding(mesh, spec))
    fwd, grad = jax.jit(lambda k, x: f(k, x, 0.3)), jax.jit(jax.grad(loss))
    for compiled in (fwd.lower(KEY, xs).compile(), grad.lower(xs, KEY, gs).compile()):
      hlo = compiled.as_text()
      found = COLLECTIVES.search(hlo)
      assert not found, f"{found.group(0)} in the per-device program"
      # Each device draws only its own part: no array of the global shape is built.
      assert f"[{','.join(map(str, SHAPE))}]" not in hlo, (
        "a global-shape array in the per-device program"
      )
    y, dx = fwd(KEY, xs), grad(xs, KEY, gs)
  assert y.sharding.is_equivalent_to(xs.sharding, x.ndim)
  assert y.addressable_shards[0].data.shape == _local_shape(spec, mesh)
  # The same mask as unsharded (the pattern of exact zeros), and the same values up to the
  # rounding of XLA's fusion choices (alpha's affine map, DropBlock's per-position scale).
  np.testing.assert_array_equal(y == 0, expected == 0)
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(dx == 0, expected_grad == 0)
  np.testing.assert_allclose(dx, expected_grad, rtol=1e-6, atol=1e-6)


def test_plain_dropout_is_bit_identical_sharded():
  x = jax.random.normal(jax.random.key(1), SHAPE)
  expected = jaxdrop.dropout(KEY, x, 0.3)
  for axis_type in (AxisType.Auto, AxisType.Explicit):
    mesh = _mesh("2d", axis_type)
    with jax.set_mesh(mesh):
      y = jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.3))(
        KEY, jax.device_put(x, NamedSharding(mesh, P("data", None, None, "model")))
      )
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_rbg_keys_stay_correct_and_local(impl):
  key = jax.random.key(5, impl=impl)
  x = jnp.ones(SHAPE)
  expected = jaxdrop.dropout(key, x, 0.5)
  mesh = _mesh("1d", AxisType.Auto)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("d")))
    fwd = jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.5))
    hlo = fwd.lower(key, xs).compile().as_text()
    y = fwd(key, xs)
  assert not COLLECTIVES.search(hlo)
  assert "rng-bit-generator" not in hlo  # jaxdrop hashes the key; it never calls its generator
  np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
  "mesh_name,spec",
  [
    ("1d", P("d")),
    ("1d", P(None, None, None, "d")),
    ("2d", P("data", None, None, "model")),
    ("2d", P(("model", "data"))),
    ("2d", P("model", "data")),
  ],
)
@pytest.mark.parametrize("broadcast_dims", [(), (0,), (1, 2)])
def test_shard_map_blocks_get_their_slice_of_the_global_mask(mesh_name, spec, broadcast_dims):
  mesh = _mesh(mesh_name, AxisType.Explicit)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  expected = jaxdrop.dropout(KEY, x, 0.3, broadcast_dims=broadcast_dims)

  def block(key, x, shard_spec):
    return jaxdrop.dropout(key, x, 0.3, broadcast_dims=broadcast_dims, shard_spec=shard_spec)

  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    f = jax.jit(jax.shard_map(lambda k, x: block(k, x, spec), in_specs=(P(), spec), out_specs=spec))
    hlo = f.lower(KEY, xs).compile().as_text()
    y = f(KEY, xs)
    naive = jax.jit(
      jax.shard_map(lambda k, x: block(k, x, None), in_specs=(P(), spec), out_specs=spec)
    )(KEY, xs)
  assert not COLLECTIVES.search(hlo)
  np.testing.assert_array_equal(y, expected)
  # Without shard_spec every block draws the same local mask: the correlation this option removes.
  shards = [np.asarray(s.data != 0) for s in naive.addressable_shards]
  assert all(np.array_equal(shards[0], s) for s in shards[1:])


def test_shard_map_gradient_and_family_members():
  mesh = _mesh("1d", AxisType.Explicit)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  spec = P("d")
  for f in (
    jaxdrop.channel_dropout,
    jaxdrop.alpha_dropout,
    jaxdrop.drop_path,
    jaxdrop.gaussian_dropout,
    jaxdrop.gaussian_noise,
    MEMBERS["zoneout"],
    jaxdrop.concrete_dropout,
    lambda k, x, r, **kw: jaxdrop.variational_dropout(k, x, jnp.log(r / (1 - r)), **kw),
  ):
    expected = f(KEY, x, 0.3)
    cotangent = jax.random.normal(jax.random.key(2), SHAPE)  # linear loss: see test_sharded_member
    expected_grad = jax.grad(lambda x: jnp.sum(cotangent * f(KEY, x, 0.3)))(x)
    with jax.set_mesh(mesh):
      xs = jax.device_put(x, NamedSharding(mesh, spec))
      g = jax.shard_map(
        lambda k, x: f(k, x, 0.3, shard_spec=spec), in_specs=(P(), spec), out_specs=spec
      )
      y = jax.jit(g)(KEY, xs)
      dx = jax.jit(jax.grad(lambda x: jnp.sum(cotangent * g(KEY, x))))(xs)
    np.testing.assert_array_equal(y == 0, expected == 0)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, expected_grad, rtol=1e-6, atol=1e-6)


def test_shard_spec_outside_shard_map_is_a_clear_error():
  with pytest.raises(
    ValueError, match="names mesh axis 'd', which is not an axis of an enclosing shard_map"
  ):
    jaxdrop.dropout(KEY, jnp.ones(SHAPE), 0.3, shard_spec=P("d"))


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_the_mask_is_the_same_on_1_2_4_and_8_devices(axis_type):
  # JAX users report random values that change with the number of shards (jax#40232,
  # jax#21232); jaxdrop's bits are a function of the key and the global index alone. The
  # same holds across two processes: tests/multiprocess.
  x = jax.random.normal(jax.random.key(1), SHAPE)
  draws = {
    "dropout": lambda k, x, sharding: jaxdrop.dropout(k, x, 0.3),
    "gaussian_dropout": lambda k, x, sharding: jaxdrop.gaussian_dropout(k, x, 0.3),
    "random_bits": lambda k, x, sharding: jaxdrop.random_bits(k, SHAPE, out_sharding=sharding),
  }
  layouts = [((1,), P("a")), ((2,), P("a")), ((4,), P(None, None, None, "a")), ((8,), P("a"))]
  layouts += [((2, 4), P("a", None, None, "b")), ((4, 2), P(("b", "a")))]
  results = []
  for shape, spec in layouts:
    names = ("a", "b")[: len(shape)]
    mesh = jax.make_mesh(
      shape, names, axis_types=(axis_type,) * len(shape), devices=jax.devices()[: np.prod(shape)]
    )
    sharding = NamedSharding(mesh, spec)
    with jax.set_mesh(mesh):
      xs = jax.device_put(x, sharding)
      out = jax.jit(lambda k, x: {name: f(k, x, sharding) for name, f in draws.items()})(KEY, xs)
    for name in draws:
      assert out[name].sharding.is_equivalent_to(sharding, x.ndim), (name, shape, spec)
    results.append(jax.device_get(out))
  for (shape, spec), result in zip(layouts[1:], results[1:]):
    for name in draws:
      np.testing.assert_array_equal(
        result[name], results[0][name], err_msg=f"{name} {shape} {spec}"
      )


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_mc_dropout_and_locked_masks_on_sharded_input(axis_type):
  x = jax.random.normal(jax.random.key(1), SHAPE)
  mask = jaxdrop.make_mask(KEY, (SHAPE[0], 1, 1, SHAPE[3]), 0.3)  # one mask per example map

  def both(x):
    mc = jaxdrop.mc_dropout(lambda k, x: jaxdrop.dropout(k, x, 0.3), KEY, 4, x, chunk_size=2)
    return mc.mean, mc.variance, jaxdrop.apply_mask(mask, x)

  expected = both(x)
  mesh = _mesh("2d", axis_type)
  spec = P("data", None, None, "model")
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    result = jax.jit(both)(xs)
  for ours, ref in zip(result, expected):
    assert ours.sharding.is_equivalent_to(xs.sharding, x.ndim)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_random_bits_out_sharding_draws_per_device(axis_type):
  mesh = _mesh("2d", axis_type)
  sharding = NamedSharding(mesh, P("data", None, None, "model"))
  with jax.set_mesh(mesh):
    f = jax.jit(lambda k: jaxdrop.random_bits(k, SHAPE, out_sharding=sharding))
    hlo = f.lower(KEY).compile().as_text()
    bits = f(KEY)
  assert not COLLECTIVES.search(hlo)
  assert f"[{','.join(map(str, SHAPE))}]" not in hlo, "a global-shape array on every device"
  assert bits.sharding.is_equivalent_to(sharding, len(SHAPE))
  np.testing.assert_array_equal(bits, jaxdrop.random_bits(KEY, SHAPE))


LEARNED = {
  "concrete_dropout": lambda k, x, p: jaxdrop.concrete_dropout(k, x, jax.nn.sigmoid(p)),
  "spatial concrete_dropout": lambda k, x, p: jaxdrop.concrete_dropout(
    k, x, jax.nn.sigmoid(p), broadcast_dims=(1, 2)
  ),
  "variational_dropout": jaxdrop.variational_dropout,
}


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
@pytest.mark.parametrize("mesh_name,spec", CASES, ids=[f"{m}-{s}" for m, s in CASES])
@pytest.mark.parametrize("name", LEARNED)
def test_learned_parameter_gradients_on_sharded_input(name, mesh_name, spec, axis_type):
  # A per-channel rate (through its logit) or log_alpha: its gradient sums over the batch and
  # the maps, so here a collective is expected; the forward pass needs none. Values and both
  # gradients equal the unsharded call's.
  f = LEARNED[name]
  mesh = _mesh(mesh_name, axis_type)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  g = jax.random.normal(jax.random.key(2), SHAPE)
  param = jnp.linspace(-2.0, 0.0, SHAPE[-1])
  loss = lambda x, p, g: jnp.sum(g * f(KEY, x, p))
  expected = f(KEY, x, param), jax.grad(loss, (0, 1))(x, param, g)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    gs = jax.device_put(g, NamedSharding(mesh, spec))
    fwd = jax.jit(lambda x, p: f(KEY, x, p))
    assert not COLLECTIVES.search(fwd.lower(xs, param).compile().as_text())
    y, (dx, dp) = fwd(xs, param), jax.jit(jax.grad(loss, (0, 1)))(xs, param, gs)
  assert y.sharding.is_equivalent_to(xs.sharding, x.ndim)
  assert dx.sharding.is_equivalent_to(xs.sharding, x.ndim)
  np.testing.assert_allclose(y, expected[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx, expected[1][0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dp, expected[1][1], rtol=1e-5, atol=1e-4)


def test_shard_map_learned_rate_gradient():
  # A per-channel rate replicated into shard_map (unvarying over the mesh): JAX sums its
  # cotangent over the blocks (the transpose of the implicit pvary), so each block's gradient
  # is already the unsharded call's.
  mesh = _mesh("1d", AxisType.Explicit)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  g = jax.random.normal(jax.random.key(2), SHAPE)
  rate = jnp.linspace(0.1, 0.6, SHAPE[-1])
  spec = P("d")
  expected = jax.grad(lambda r: jnp.sum(g * jaxdrop.concrete_dropout(KEY, x, r)))(rate)

  def block(k, x, g, r):
    return jax.grad(lambda r: jnp.sum(g * jaxdrop.concrete_dropout(k, x, r, shard_spec=spec)))(r)

  with jax.set_mesh(mesh):
    xs, gs = (jax.device_put(a, NamedSharding(mesh, spec)) for a in (x, g))
    f = jax.shard_map(block, in_specs=(P(), spec, spec, P()), out_specs=P())
    got = jax.jit(f)(KEY, xs, gs, rate)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
