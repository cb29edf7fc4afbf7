"""Dropout on sharded arrays: no collectives, per-shard mask generation, the unsharded result."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop

COLLECTIVES = re.compile(r"all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter")
SHAPE = (64, 256)


def _mesh(axis_type):
  return jax.make_mesh((8,), ("d",), axis_types=(axis_type,))


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("spec", [P("d", None), P(None, "d")])
@pytest.mark.parametrize("recompute", [True, False])
def test_sharded_forward_and_backward_have_no_collectives(axis_type, spec, recompute):
  mesh = _mesh(axis_type)
  key = jax.random.key(0)
  x = jax.random.normal(jax.random.key(1), SHAPE)
  expected = jaxdrop.dropout(key, x, 0.3, recompute=recompute)
  expected_grad = jax.grad(lambda x: jnp.sum(jnp.sin(jaxdrop.dropout(key, x, 0.3, recompute=recompute))))(x)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    fwd = jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.3, recompute=recompute))
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(jaxdrop.dropout(k, x, 0.3, recompute=recompute)))))
    for compiled in (fwd.lower(key, xs).compile(), grad.lower(xs, key).compile()):
      hlo = compiled.as_text()
      assert not COLLECTIVES.search(hlo), COLLECTIVES.search(hlo).group(0)
    y = fwd(key, xs)
    dx = grad(xs, key)
  assert y.sharding.is_equivalent_to(xs.sharding, 2)
  np.testing.assert_array_equal(y, expected)
  np.testing.assert_allclose(dx, expected_grad, rtol=1e-6)
  np.testing.assert_array_equal(dx == 0, expected_grad == 0)


def _global_shapes_in_program(axis_type, spec):
  """Global shapes of the mask, or of its per-row Threefry seeds, in the per-device program.

  The seeds (one per row) are sharded with the rows; with the columns sharded every device
  needs all row seeds, which are 1/256 of the mask here.
  """
  mesh = _mesh(axis_type)
  with jax.set_mesh(mesh):
    xs = jax.device_put(jnp.ones(SHAPE), NamedSharding(mesh, spec))
    hlo = jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.3)).lower(jax.random.key(0), xs).compile().as_text()
  shapes = [SHAPE] + ([(SHAPE[0], 1)] if spec == P("d", None) else [])
  return [shape for shape in shapes if f"[{shape[0]},{shape[1]}]" in hlo]


@pytest.mark.parametrize("spec", [P("d", None), P(None, "d")])
def test_auto_axes_each_device_draws_only_its_shard(spec):
  assert _global_shapes_in_program(AxisType.Auto, spec) == []


@pytest.mark.xfail(strict=True, reason="explicit axes: the counter iotas are not yet created sharded, "
                   "so every device draws the whole mask (still no collective); issue 5")
def test_explicit_axes_each_device_draws_only_its_shard():
  assert _global_shapes_in_program(AxisType.Explicit, P("d", None)) == []
