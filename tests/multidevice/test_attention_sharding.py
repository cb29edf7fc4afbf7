"""Attention dropout on arrays sharded over batch and heads: no collectives, the unsharded mask.

Runs on 8 devices (see conftest.py), auto and explicit axis types (explicit is what
`jax.make_mesh` builds by default): batch over "data" and heads over "model", the layout of
data- and tensor-parallel transformers.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop

COLLECTIVES = re.compile(r"all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter")
KEY = jax.random.key(5)


AXIS_TYPES = pytest.mark.parametrize(
  "axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"]
)


@AXIS_TYPES
@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize(
  "spec,heads_k",
  [
    (P("data"), 8),
    (P("data", None, "model"), 8),
    (P(None, None, ("data", "model")), 8),
    (P("data", None, "model"), 4),
  ],
  ids=["batch", "batch-heads", "heads", "batch-heads-gqa-masks"],
)
def test_sharded_attention_matches_unsharded_without_collectives(impl, spec, heads_k, axis_type):
  b, t, n, h = 8, 24, 8, 16
  q = jax.random.normal(jax.random.key(0), (b, t, n, h))
  k, v = (jax.random.normal(jax.random.key(i), (b, t, heads_k, h)) for i in (1, 2))
  cot = jax.random.normal(jax.random.key(9), (b, t, n, h))
  extra = {}
  if heads_k < n:  # grouped-query attention with a head bias, a boolean mask and key lengths
    extra = {
      "bias": jax.random.normal(jax.random.key(4), (1, n, 1, t)),
      "mask": jax.random.bernoulli(jax.random.key(5), 0.8, (b, 1, t, t)),
      "key_value_seq_lengths": jnp.arange(b, dtype=jnp.int32) + t - b,
    }

  def attend(q, k, v):
    return jaxdrop.dot_product_attention(
      q,
      k,
      v,
      dropout_key=KEY,
      dropout_rate=0.3,
      is_causal=True,
      implementation=impl,
      query_chunk_size=8,
      key_chunk_size=8,
      **extra,
    )

  loss = lambda q, k, v, g: jnp.sum(g * attend(q, k, v))
  expected, expected_grads = attend(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v, cot)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  put = lambda a: jax.device_put(a, NamedSharding(mesh, spec))
  args = tuple(map(put, (q, k, v)))
  fwd, grad = jax.jit(attend), jax.jit(jax.grad(loss, (0, 1, 2)))
  with jax.set_mesh(mesh):
    for compiled in (fwd.lower(*args).compile(), grad.lower(*args, put(cot)).compile()):
      hlo = compiled.as_text()
      found = COLLECTIVES.search(hlo)
      assert not found, f"{found.group(0)} in the per-device program"
      if impl == "chunked":  # each device draws only its part of each block's mask
        assert not re.search(rf"u32\[{b},{n},8,8\]", hlo), "a whole-batch mask block"
    results = [(fwd(*args), grad(*args, put(cot)))]
  if axis_type == AxisType.Explicit:  # the arrays carry their mesh: no context needed
    results.append((fwd(*args), grad(*args, put(cot))))
  for y, grads in results:
    assert y.sharding.is_equivalent_to(args[0].sharding, 4), (y.sharding, args[0].sharding)
    np.testing.assert_array_equal(y == 0, expected == 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    for ours, ref, arg in zip(grads, expected_grads, args):
      assert ours.sharding.is_equivalent_to(arg.sharding, 4)
      np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [P("data", None, "model"), P(None, None, ("data", "model"))])
def test_pallas_in_shard_map_with_masks_and_lengths(spec):
  # Kernels whose loops have a fixed trip count (not causal-skipping: a mask, key lengths or
  # no causality) inside shard_map, in interpret mode (see `_pallas._bound`). With the
  # lengths split over the batch, Pallas' interpreter reads a varying length at a program id
  # and JAX's own check refuses it ("pass check_vma=False", a JAX bug in interpret mode; the
  # attention guide says so): that case runs with check_vma=False.
  b, t, s, n, h = 8, 20, 12, 8, 16
  q = jax.random.normal(jax.random.key(0), (b, t, n, h))
  k, v = (jax.random.normal(jax.random.key(i), (b, s, n, h)) for i in (1, 2))
  mask = jnp.asarray(np.random.default_rng(0).random((b, n, t, s)) < 0.8)
  lengths = jnp.asarray([12, 3, 0, 12, 7, 12, 1, 12], jnp.int32)
  options = dict(dropout_key=KEY, dropout_rate=0.3, implementation="pallas",
                 query_chunk_size=8, key_chunk_size=8)  # fmt: skip
  attend = lambda q, k, v, m, kl, **o: jaxdrop.dot_product_attention(
    q, k, v, mask=m, key_value_seq_lengths=kl, **options, **o
  )
  loss = lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v, mask, lengths)))
  expected = attend(q, k, v, mask, lengths)
  expected_grads = jax.grad(loss, (0, 1, 2))(q, k, v)
  mask_spec, lengths_spec = P(spec[0], spec[2]), P(spec[0])  # the mask is (B, N, T, S)
  sharded = jax.shard_map(
    functools.partial(attend, shard_spec=spec),
    in_specs=(spec, spec, spec, mask_spec, lengths_spec),
    out_specs=spec,
    check_vma=spec[0] is None,
  )
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    args = [put(q, spec), put(k, spec), put(v, spec), put(mask, mask_spec)]
    args.append(put(lengths, lengths_spec))
    y = jax.jit(sharded)(*args)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(sharded(*a))), (0, 1, 2)))(*args)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  for ours, ref in zip(grads, expected_grads):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@AXIS_TYPES
def test_pallas_on_sharded_arrays_is_correct_but_gathers(axis_type):
  # The kernels are custom calls XLA does not partition: on sharded arrays they run on gathered
  # inputs (documented: inside shard_map each device computes its own block). The values,
  # gradients and output sharding must still be right on both axis types.
  q, k, v = (jax.random.normal(jax.random.key(i), (8, 20, 8, 16)) for i in range(3))
  options = dict(dropout_key=KEY, dropout_rate=0.3, is_causal=True, implementation="pallas")
  attend = lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, **options)
  loss = lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v)))
  expected, expected_grads = attend(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  spec = P("data", None, "model")
  with jax.set_mesh(mesh):
    args = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (q, k, v)]
    y = jax.jit(attend)(*args)
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(*args)
  if axis_type == AxisType.Explicit:
    assert y.sharding.spec == P("data", None, "model", None)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  for ours, ref in zip(grads, expected_grads):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "chunked", "pallas"])
@pytest.mark.parametrize(
  "spec,broadcast_dims",
  [
    (P("data", None, "model"), ()),
    (P("data", None, "model"), (0, 1)),
    (P(None, None, ("data", "model")), (0,)),
  ],
)
def test_shard_map_blocks_draw_their_part_of_the_global_mask(impl, spec, broadcast_dims):
  b, t, n, h = 8, 20, 8, 16
  q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, h)) for i in range(3))
  options = dict(
    dropout_key=KEY,
    dropout_rate=0.4,
    is_causal=True,
    implementation=impl,
    broadcast_dims=broadcast_dims,
    query_chunk_size=8,
    key_chunk_size=8,
  )
  expected = jaxdrop.dot_product_attention(q, k, v, **options)
  cot = jax.random.normal(jax.random.key(9), (b, t, n, h))
  expected_grads = jax.grad(
    lambda q, k, v: jnp.sum(cot * jaxdrop.dot_product_attention(q, k, v, **options)), (0, 1, 2)
  )(q, k, v)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  attend = jax.jit(
    jax.shard_map(
      lambda q, k, v, g: g * jaxdrop.dot_product_attention(q, k, v, **options, shard_spec=spec),
      in_specs=(spec,) * 4,
      out_specs=spec,
    )
  )
  with jax.set_mesh(mesh):
    put = lambda a: jax.device_put(a, NamedSharding(mesh, spec))
    args = tuple(map(put, (q, k, v)))
    hlo = attend.lower(*args, put(cot)).compile().as_text()
    y = attend(*args, put(jnp.ones_like(q)))
    grads = jax.jit(jax.grad(lambda q, k, v, g: jnp.sum(attend(q, k, v, g)), (0, 1, 2)))(
      *args, put(cot)
    )
  assert not COLLECTIVES.search(hlo)
  np.testing.assert_array_equal(y == 0, expected == 0)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  for ours, ref in zip(grads, expected_grads):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_shard_spec_over_the_sequence_is_a_clear_error():
  q = jnp.ones((2, 8, 4, 16))
  with pytest.raises(ValueError, match="may split only the batch and head axes"):
    jaxdrop.dot_product_attention(
      q, q, q, dropout_key=KEY, dropout_rate=0.1, shard_spec=P(None, "data")
    )
