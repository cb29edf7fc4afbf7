"""One process of a two-process JAX system on this machine, launched by test_two_processes.py.

Each process has 4 CPU devices; `jax.distributed` (gloo collectives) joins the two into one
system of 8 devices, and a global (2, 4) mesh ("data", "model") spans both: "data" splits
across the processes, "model" within each. Every check computes a result on global arrays
(built with `jax.make_array_from_callback`) and compares each of this process's shards with
the same computation done by this process alone, on one local device, on whole arrays: the
mask must not depend on the number of devices or processes. The checks run on meshes with
explicit and with auto axes.

    python tests/multiprocess/worker.py PROCESS_ID NUM_PROCESSES PORT

(with XLA_FLAGS and the platform set by the launcher) prints one line per check and ends with
"N passed, M failed"; the exit status is 0 only if every check passed. It stops at the first
failure.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402  (tests/helpers.py: the family as f(key, x, rate))

# The key's seed; helpers.SHARDED_MEMBERS' "stochastic_depth, kept" keeps its branch with it.
# (Keys are made inside the checks: no JAX call may come before jax.distributed.initialize.)
SEED = 3
AXIS_TYPES = (AxisType.Explicit, AxisType.Auto)
CHECKS: list[Callable[[], None]] = []


def check(fn: Callable[[], None]) -> Callable[[], None]:
  CHECKS.append(fn)
  return fn


def mesh(axis_type: AxisType) -> jax.sharding.Mesh:
  """The global (2, 4) mesh: one row of "data" per process (make_mesh orders devices so)."""
  m = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
  rows = [{d.process_index for d in row} for row in m.devices]
  assert rows == [{0}, {1}], f"expected one process per 'data' row, got {rows}"
  return m


def global_array(x: np.ndarray, m: jax.sharding.Mesh, spec: P) -> jax.Array:
  """`x` (the same in every process) as a global array sharded by `spec` over `m`."""
  return jax.make_array_from_callback(x.shape, NamedSharding(m, spec), lambda index: x[index])


def alone(fn: Callable[..., object], *args: object) -> object:
  """`fn(*args)` under jit on one local device of this process, on whole arrays."""
  device = jax.local_devices()[0]
  args = jax.tree.map(lambda a: jax.device_put(a, device), args)
  return jax.jit(fn)(*args)


def same_shards(ours: object, reference: object, exact: bool, what: str) -> None:
  """Every addressable shard of each leaf of `ours` equals that block of `reference` (bit for
  bit if `exact`, else the same zeros and values within float32 rounding)."""
  for leaf, ref in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
    ref = np.asarray(ref)
    assert leaf.shape == ref.shape, (what, leaf.shape, ref.shape)
    assert len(leaf.addressable_shards) == jax.local_device_count(), what
    for shard in leaf.addressable_shards:
      got, want = np.asarray(shard.data), ref[shard.index]
      if exact:
        np.testing.assert_array_equal(got, want, err_msg=f"{what}, shard {shard.index}")
      else:
        np.testing.assert_array_equal(got == 0, want == 0, err_msg=f"{what}, shard {shard.index}")
        np.testing.assert_allclose(
          got, want, rtol=1e-5, atol=1e-6, err_msg=f"{what}, shard {shard.index}"
        )


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@check
def dropout_on_global_arrays() -> None:
  key = jax.random.key(SEED)
  x, g = normal(0, (8, 16, 32)), normal(1, (8, 16, 32))
  fwd = lambda k, x: jaxdrop.dropout(k, x, 0.3)
  grad = jax.grad(lambda x, k, g: jnp.sum(g * fwd(k, x)))
  expected = alone(lambda k, x, g: (fwd(k, x), grad(x, k, g)), key, x, g)
  # Across the processes, within each, both, and both the other way round.
  for spec in (P("data"), P("data", "model"), P(None, "model"), P("model", "data")):
    for axis_type in AXIS_TYPES:
      m = mesh(axis_type)
      xs, gs = global_array(x, m, spec), global_array(g, m, spec)
      with jax.set_mesh(m):
        y, dx = jax.jit(fwd)(key, xs), jax.jit(grad)(xs, key, gs)
      assert y.sharding.is_equivalent_to(xs.sharding, x.ndim), (spec, y.sharding)
      same_shards((y, dx), expected, exact=True, what=f"dropout {spec} {axis_type}")


@check
def dropout_with_shard_spec_inside_shard_map() -> None:
  key = jax.random.key(SEED)
  x = normal(2, (8, 16, 32))
  expected = alone(lambda k, x: jaxdrop.dropout(k, x, 0.4, broadcast_dims=(1,)), key, x)
  for spec in (P("data", "model"), P("model", "data"), P(("data", "model"))):
    m = mesh(AxisType.Explicit)
    block = lambda k, x: jaxdrop.dropout(k, x, 0.4, broadcast_dims=(1,), shard_spec=spec)
    with jax.set_mesh(m):
      y = jax.jit(jax.shard_map(block, in_specs=(P(), spec), out_specs=spec))(
        key, global_array(x, m, spec)
      )
    same_shards(y, expected, exact=True, what=f"shard_map {spec}")


@check
def data_parallel_training_step_gradients() -> None:
  key = jax.random.key(SEED)
  x, w1, w2 = normal(3, (16, 8)), normal(4, (8, 64)) * 0.3, normal(5, (64, 1)) * 0.1
  y = np.sin(x[:, :1])

  def loss(params: dict, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["w1"])
    h = jaxdrop.dropout(key, h, 0.5)
    return jnp.mean((h @ params["w2"] - y) ** 2)

  step = jax.value_and_grad(loss)
  params = {"w1": w1, "w2": w2}
  expected = alone(step, params, x, y, key)
  for spec in (P("data"), P(("data", "model"))):  # batch over the processes, then all 8
    for axis_type in AXIS_TYPES:
      m = mesh(axis_type)
      replicated = jax.tree.map(lambda a: global_array(a, m, P()), params)
      with jax.set_mesh(m):
        value, grads = jax.jit(step)(
          replicated, global_array(x, m, spec), global_array(y, m, spec), key
        )
      # The mean's all-reduce adds in another order than one device: close, not equal.
      same_shards((value, grads), expected, exact=False, what=f"training step {spec} {axis_type}")


@check
def every_member_on_sharded_input() -> None:
  key = jax.random.key(SEED)
  x, g = normal(6, (8, 4, 4, 16)), normal(7, (8, 4, 4, 16))
  members = helpers.SHARDED_MEMBERS

  def forward_and_gradients(k: jax.Array, x: jax.Array, g: jax.Array) -> tuple:
    outs = tuple(f(k, x, 0.3) for f in members.values())
    grads = tuple(jax.grad(lambda x, f=f: jnp.sum(g * f(k, x, 0.3)))(x) for f in members.values())
    return outs, grads

  expected = alone(forward_and_gradients, key, x, g)
  spec = P("data", None, None, "model")  # batch across the processes, channels within
  for axis_type in AXIS_TYPES:
    m = mesh(axis_type)
    with jax.set_mesh(m):
      result = jax.jit(forward_and_gradients)(
        key, global_array(x, m, spec), global_array(g, m, spec)
      )
    # Members with an affine part or a per-position scale can differ in the last bit.
    same_shards(result, expected, exact=False, what=f"members {axis_type}")
    # Plain dropout, the first member, bit for bit.
    same_shards(result[0][0], expected[0][0], exact=True, what=f"dropout {axis_type}")


@check
def random_bits_with_out_shardings() -> None:
  key = jax.random.key(SEED)
  shape = (16, 64)
  expected = alone(lambda k: jaxdrop.random_bits(k, shape), key)
  for spec in (P("data", "model"), P("model", "data")):
    for axis_type in AXIS_TYPES:
      m = mesh(axis_type)
      sharding = NamedSharding(m, spec)
      with jax.set_mesh(m):
        bits = jax.jit(lambda k: jaxdrop.random_bits(k, shape), out_shardings=sharding)(key)
        drawn = jax.jit(lambda k: jaxdrop.random_bits(k, shape, out_sharding=sharding))(key)
      for result in (bits, drawn):
        assert result.sharding.is_equivalent_to(sharding, 2), result.sharding
        same_shards(result, expected, exact=True, what=f"random_bits {spec} {axis_type}")


@check
def attention_forward_and_gradients() -> None:
  key = jax.random.key(SEED)
  b, t, n, h = 4, 24, 8, 16
  q, k, v, g = (normal(10 + i, (b, t, n, h)) for i in range(4))
  spec = P("data", None, "model")  # batch across the processes, heads within
  for implementation in ("xla", "chunked"):
    attend = functools.partial(
      jaxdrop.dot_product_attention,
      dropout_key=key,
      dropout_rate=0.3,
      is_causal=True,
      implementation=implementation,
      query_chunk_size=8,
      key_chunk_size=8,
    )
    loss = lambda q, k, v, g: jnp.sum(g * attend(q, k, v))
    both = lambda q, k, v, g: (attend(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v, g))
    expected = alone(both, q, k, v, g)
    for axis_type in AXIS_TYPES:
      m = mesh(axis_type)
      with jax.set_mesh(m):
        result = jax.jit(both)(*(global_array(a, m, spec) for a in (q, k, v, g)))
      same_shards(result, expected, exact=False, what=f"attention {implementation} {axis_type}")


@check
def nnx_model_trained_under_nnx_jit() -> None:
  import optax
  from flax import nnx

  import jaxdrop.nnx

  class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
      self.hidden = nnx.Linear(8, 64, rngs=rngs)
      self.dropout = jaxdrop.nnx.Dropout(0.3, rngs=rngs)
      self.out = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.out(self.dropout(jax.nn.relu(self.hidden(x))))

  def train(x: jax.Array, y: jax.Array) -> tuple[list[float], nnx.State]:
    model = Model(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    @nnx.jit
    def step(model: Model, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(4)]
    return losses, nnx.state(model, nnx.Param)

  x = normal(20, (32, 8))
  y = np.sin(x[:, :1])
  with jax.default_device(jax.local_devices()[0]):
    expected_losses, expected = train(jnp.asarray(x), jnp.asarray(y))
  for axis_type in AXIS_TYPES:
    m = mesh(axis_type)
    with jax.set_mesh(m):
      losses, params = train(global_array(x, m, P("data")), global_array(y, m, P("data")))
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5, err_msg=str(axis_type))
    assert losses[-1] < losses[0], losses
    same_shards(
      jax.tree.leaves(params), jax.tree.leaves(expected), exact=False, what=f"NNX {axis_type}"
    )


def main(process_id: int, num_processes: int, port: int) -> int:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.distributed.initialize(
    f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
  )
  assert jax.process_count() == num_processes == 2, jax.process_count()
  assert jax.device_count() == 8, jax.device_count()
  for passed, fn in enumerate(CHECKS):
    start = time.perf_counter()
    try:
      fn()
    except Exception:
      # Stop at once: the other process, whose own shards may have passed, would wait for
      # this one in the next collective; the launcher kills it when this one exits.
      print(f"FAILED {fn.__name__}\n{traceback.format_exc()}", flush=True)
      print(f"{passed} passed, 1 failed (the remaining checks not run)", flush=True)
      os._exit(1)
    print(f"ok {fn.__name__} ({time.perf_counter() - start:.1f} s)", flush=True)
  print(f"{len(CHECKS)} passed, 0 failed", flush=True)
  jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main(*map(int, sys.argv[1:4])))
