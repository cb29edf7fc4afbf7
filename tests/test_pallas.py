"""`jaxdrop.pallas`: dropout's mask drawn inside a kernel, block by block.

Kernels run in Pallas interpret mode here (no accelerator) and are lowered, not run, for TPU
(Mosaic) and GPU (Triton), so that code a kernel cannot lower fails on this CPU. As in JAX's
`tests/pallas/tpu_pallas_random_test.py` (block-size-invariant sampling), the same array is
drawn with several block shapes and must not depend on them; unlike it, the reference is not
the kernel's own sampler but `jaxdrop.dropout` on the whole array, bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

import jaxdrop
import jaxdrop.pallas as jp

KEY = jax.random.key(7)
WORDS = jp.mask_words(KEY)
TRITON = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


def kernel_dropout(x, rate, block, *, backend="interpret", broadcast_dims=(), pair=True):
  """`dropout_block` in a pallas_call over `x` with blocks of `block`; `rate` a number (closed
  over) or an array (read from a ref in the kernel); the words as two scalars or the array."""
  traced = not isinstance(rate, (int, float))

  def kernel(words_ref, rate_ref, x_ref, o_ref):
    offsets = [pl.program_id(a) * block[a] for a in range(x.ndim)]
    words = (words_ref[0], words_ref[1]) if pair else words_ref[...]
    o_ref[...] = jp.dropout_block(
      words,
      x_ref[...],
      rate_ref[0] if traced else rate,
      offsets=offsets,
      global_shape=x.shape,
      broadcast_dims=broadcast_dims,
    )

  index = lambda *i: i
  if backend == "tpu":
    scalars = [pl.BlockSpec(memory_space=pltpu.SMEM)] * 2
  else:
    scalars = [pl.BlockSpec((2,), lambda *i: (0,)), pl.BlockSpec((1,), lambda *i: (0,))]
  options = {"interpret": True} if backend == "interpret" else {}
  if backend == "cuda":
    options["compiler_params"] = pltriton.CompilerParams(num_warps=4)
  return pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
    grid=tuple(pl.cdiv(size, b) for size, b in zip(x.shape, block)),
    in_specs=[*scalars, pl.BlockSpec(block, index)],
    out_specs=pl.BlockSpec(block, index),
    **options,
  )(WORDS, jnp.reshape(jnp.asarray(rate, jnp.float32), (1,)), x)


def _x(shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(1), shape).astype(dtype)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_kernel_equals_dropout(rate, dtype):
  # 20 x 44 in 8 x 16 blocks: partial blocks on both axes.
  x = _x((20, 44), dtype)
  y = kernel_dropout(x, rate, (8, 16))
  assert y.dtype == dtype
  np.testing.assert_array_equal(y, jaxdrop.dropout(KEY, x, rate))


@pytest.mark.parametrize("block", [(4, 8), (20, 4), (1, 44), (16, 32), (32, 64)])
def test_mask_does_not_depend_on_the_block_shape(block):
  # (32, 64) is larger than the array: one power-of-two block over it, as Triton wants.
  x = _x((20, 44))
  np.testing.assert_array_equal(kernel_dropout(x, 0.3, block), jaxdrop.dropout(KEY, x, 0.3))


@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_traced_rate_read_in_the_kernel(rate):
  x = _x((16, 32))
  step = jax.jit(lambda x, r: kernel_dropout(x, r, (8, 8), pair=False))
  expected = jax.jit(lambda x, r: jaxdrop.dropout(KEY, x, r))
  np.testing.assert_array_equal(step(x, jnp.float32(rate)), expected(x, jnp.float32(rate)))


@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan")])
def test_invalid_traced_rate_is_nan_as_in_dropout(rate):
  y = jax.jit(lambda x, r: kernel_dropout(x, r, (8, 8)))(_x((8, 16)), jnp.float32(rate))
  assert bool(jnp.all(jnp.isnan(y))), y


@pytest.mark.parametrize(
  "shape,block,broadcast_dims",
  [
    ((6, 12, 20), (2, 4, 8), (1,)),
    ((6, 12, 20), (4, 12, 16), (0, 2)),
    ((3, 5, 7), (2, 2, 4), ()),
    ((50,), (16,), ()),
  ],
)
def test_more_axes_and_shared_masks(shape, block, broadcast_dims):
  x = _x(shape)
  y = kernel_dropout(x, 0.4, block, broadcast_dims=broadcast_dims)
  np.testing.assert_array_equal(y, jaxdrop.dropout(KEY, x, 0.4, broadcast_dims=broadcast_dims))


def test_keep_block_outside_a_kernel_with_traced_offsets():
  x = jnp.ones((9, 10, 33))
  kept = jaxdrop.dropout(KEY, x, 0.6, broadcast_dims=(1,)) != 0
  block = jax.jit(
    lambda i, j, k: jp.keep_block(
      WORDS, 0.6, shape=(4, 3, 8), offsets=(i, j, k), global_shape=x.shape, broadcast_dims=(1,)
    )
  )
  for i, j, k in [(0, 0, 0), (5, 7, 25), (2, 1, 9)]:
    got = block(i, j, k)
    assert got.shape == (4, 3, 8) and got.dtype == jnp.bool_
    np.testing.assert_array_equal(got, kept[i : i + 4, j : j + 3, k : k + 8])


def test_dropout_block_outside_a_kernel_is_its_own_derivative():
  # In a backward kernel the derivative of a block is the same call on the incoming gradient.
  x, g = _x((12, 16)), _x((12, 16)) + 1
  dx = jax.grad(lambda x: jnp.sum(g * jaxdrop.dropout(KEY, x, 0.3)))(x)
  blocks = [
    jp.dropout_block(WORDS, g[r : r + 4], 0.3, offsets=(r, 0), global_shape=g.shape)
    for r in (0, 4, 8)
  ]
  np.testing.assert_array_equal(jnp.concatenate(blocks), dx)


def test_mask_words_of_legacy_and_typed_keys():
  np.testing.assert_array_equal(jp.mask_words(jax.random.PRNGKey(7)), WORDS)
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    jp.mask_words(jnp.zeros(3))
  with pytest.raises(ValueError, match="single PRNG key"):
    jp.mask_words(jax.random.split(KEY))


def test_mask_integer_operations_per_element():
  # The count docs/guides/pallas.md quotes: per element of a block, the integer operations
  # after the row hash (one Threefry-2x32 per row) and the column's Weyl step (per column).
  jaxpr = jax.make_jaxpr(
    lambda w, i, j: jp.keep_block(
      (w[0], w[1]), 0.1, shape=(8, 128), offsets=(i, j), global_shape=(1024, 1024)
    )
  )(WORDS, 0, 0)
  free = {"bitcast_convert_type", "broadcast_in_dim"}
  per = {(8, 128): 0, (8, 1): 0, (1, 128): 0}
  for eqn in jaxpr.eqns:
    shape = eqn.outvars[0].aval.shape
    if shape in per and eqn.primitive.name not in free and eqn.primitive.name != "iota":
      per[shape] += 1
  assert per == {(8, 128): 12, (8, 1): 120, (1, 128): 2}, per


@pytest.mark.parametrize("backend,block", [("tpu", (8, 128)), ("cuda", (16, 64))])
@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_for_tpu_and_gpu(backend, block, traced, dtype):
  def f(x, rate):
    return kernel_dropout(x, rate if traced else 0.1, block, backend=backend)

  exported = jax.export.export(jax.jit(f), platforms=(backend,), disabled_checks=[TRITON])(
    jax.ShapeDtypeStruct((64, 256), dtype), jax.ShapeDtypeStruct((), jnp.float32)
  )
  assert exported.platforms == (backend,)
  assert ("tpu_custom_call" if backend == "tpu" else "__gpu$xla.gpu.triton") in (
    exported.mlir_module()
  )


def _block(**changes):
  args = {"shape": (2, 3), "offsets": (0, 0), "global_shape": (4, 6)} | changes
  return lambda: jp.keep_block(WORDS, 0.5, **args)


@pytest.mark.parametrize(
  "call,error,match",
  [
    (_block(global_shape=(4,)), ValueError, r"global_shape=\(4,\) must have one size per axis"),
    (_block(offsets=(0,)), ValueError, r"offsets must have one entry per axis"),
    (_block(offsets=3), TypeError, r"offsets must be a sequence"),
    (_block(offsets=(0.5, 0)), TypeError, r"offsets must be integer scalars"),
    (_block(broadcast_dims=(2,)), ValueError, r"broadcast_dims"),
    (_block(shape=(2, -3)), ValueError, r"shape"),
    (lambda: jp.keep_block(WORDS, 1.5, shape=(2,), offsets=(0,), global_shape=(2,)), ValueError,
     r"rate must be in \[0, 1\] .*got 1.5"),
    (lambda: jp.keep_block(WORDS[:1], 0.5, shape=(2,), offsets=(0,), global_shape=(2,)),
     ValueError, r"words must be mask_words\(key\)"),
    (lambda: jp.keep_block((WORDS[0],), 0.5, shape=(2,), offsets=(0,), global_shape=(2,)),
     ValueError, r"words must be a pair of uint32 scalars, got 1"),
    (lambda: jp.keep_block(WORDS.astype(jnp.int32), 0.5, shape=(2,), offsets=(0,),
                           global_shape=(2,)), TypeError, r"words must be uint32"),
    (lambda: jp.keep_block(KEY, 0.5, shape=(2,), offsets=(0,), global_shape=(2,)),
     ValueError, r"words must be mask_words\(key\)"),
    (lambda: jp.dropout_block(WORDS, jnp.arange(4), 0.5, offsets=(0,), global_shape=(4,)),
     TypeError, r"x must have a floating dtype"),
  ],
)  # fmt: skip
def test_bad_arguments(call, error, match):
  with pytest.raises(error, match=match):
    call()
