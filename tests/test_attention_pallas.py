"""dot_product_attention(implementation="pallas"): the Pallas kernels, in interpret mode on this
CPU, against "xla" with the same key (values and gradients), and lowered for GPU (Triton) and
TPU (Mosaic) so that a kernel either backend cannot compile fails here.

Small shapes only (interpret mode is slow); the wide matrix of options and a model trained
with the kernels run in their own CI step, tests/pallas. Upstream tests covered: JAX's
`tests/pallas/gpu_ops_test.py` (FusedAttentionTest: causal, batch and head sizes, forward and
backward against the reference) and `tests/pallas/tpu_flash_attention_test.py`; unlike them,
the reference here has the same dropout mask.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import DROP_KEY, _attend, _close, _grads, _inputs, _jax_nn, _options

import jaxdrop

TRITON = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
TPU = jax.export.DisabledSafetyCheck.custom_call("tpu_custom_call")


@pytest.mark.parametrize(
  "kind,heads_k,rate",
  [
    ("plain", 2, 0.5),
    ("causal", 1, 0.5),
    ("lengths", 2, 0.5),
    ("causal", 4, 0.1),
    ("plain", 2, 1.0),
    ("mask", 2, 0.5),  # a fully masked row: averaged over every key, as jax.nn does
    ("causal_mask", 1, 0.3),
  ],
)
def test_pallas_equals_xla_with_dropout(kind, heads_k, rate):
  # T = 19, S = 13 in blocks of 8 and 5: partial blocks on both axes.
  q, k, v = _inputs(k=heads_k)
  options = _options(kind, 2, 4, 19, 13)
  out = _attend(q, k, v, "pallas", rate, **options)
  _close(out, _attend(q, k, v, "xla", rate, **options), rtol=1e-5, atol=1e-6)
  ours = _grads(lambda *a, **o: _attend(*a, "pallas", rate, **o), q, k, v, dict(options))
  ref = _grads(lambda *a, **o: _attend(*a, "xla", rate, **o), q, k, v, dict(options))
  _close(ours, ref, rtol=1e-4, atol=1e-5)


def test_pallas_without_dropout_equals_jax_nn():
  q, k, v = _inputs()
  options = _options("lengths", 2, 4, 19, 13)
  expected = _jax_nn(q, k, v, **options, implementation="xla")
  attend = jax.jit(
    lambda q, k, v, det: jaxdrop.dot_product_attention(
      q, k, v, **options, dropout_key=DROP_KEY, dropout_rate=0.5, deterministic=det,
      implementation="pallas",
    )
  )  # fmt: skip
  _close(attend(q, k, v, jnp.bool_(True)), expected, rtol=1e-5, atol=1e-6)
  _close(_attend(q, k, v, "pallas", 0.0, **options), expected, rtol=1e-5, atol=1e-6)


def test_block_sizes_follow_each_backend():
  from jaxdrop._attention._pallas import block_sizes

  # Mosaic TPU tiles queries by 8 and keys by 128; Triton needs powers of two from 16.
  assert block_sizes("mosaic", 1000, 3000, None, None) == (128, 128)
  assert block_sizes("mosaic", 19, 13, 8, 5) == (8, 128)
  assert block_sizes("mosaic", 19, 13, 30, 200) == (24, 128)
  assert block_sizes("triton", 1000, 3000, None, None) == (64, 64)
  assert block_sizes("triton", 19, 13, 8, 5) == (16, 16)
  assert block_sizes("triton", 1000, 3000, 100, 33) == (128, 64)
  assert block_sizes("interpret", 19, 13, 8, 5) == (8, 5)
  assert block_sizes("interpret", 19, 13, None, None) == (24, 16)


def _subjaxprs(params):
  """The jaxprs among an equation's parameters (loop bodies, branches, kernels)."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _kernel_jaxprs(fn, *args):
  """The jaxprs of the pallas_calls `fn` makes (the kernels' bodies)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        found.append(eqn.params["jaxpr"])
      for sub in _subjaxprs(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_mask_integer_operations_per_weight():
  # docs/guides/attention.md quotes this count beside the matrix products' 4 H FLOPs per weight:
  # the integer and boolean operations on (block_q, block_k) arrays in the forward kernel.
  q = jnp.ones((1, 64, 2, 32))
  attend = lambda q, rate: jaxdrop.dot_product_attention(
    q, q, q, dropout_key=DROP_KEY, dropout_rate=rate, implementation="pallas"
  )
  counts = []
  for rate in (0.1, 0.0):
    kernel = _kernel_jaxprs(lambda q: attend(q, rate), q)[0]
    ops = []

    def walk(jaxpr, ops=ops):
      for eqn in jaxpr.eqns:
        aval = eqn.outvars[0].aval if eqn.outvars else None
        if (
          aval is not None
          and aval.shape == (64, 64)
          and not jnp.issubdtype(aval.dtype, jnp.floating)
          and eqn.primitive.name not in ("bitcast_convert_type", "broadcast_in_dim")
        ):
          ops.append(eqn.primitive.name)
        for sub in _subjaxprs(eqn.params):
          walk(sub)

    walk(kernel)
    counts.append(len(ops))
  with_mask, without = counts
  # The mask's 12, as in jaxdrop.pallas.keep_block (the row hash is per row of the block).
  assert (with_mask, without) == (12, 0), (with_mask, without)


def test_empty_arrays_and_64_bit_mode():
  # An empty batch: nothing to compute, the materialised path answers.
  q, k, v = _inputs()
  args = [a[:0] for a in (q, k, v)]
  np.testing.assert_array_equal(_attend(*args, "pallas", 0.3), _attend(*args, "xla", 0.3))
  # Under jax_enable_x64 the kernels' index arithmetic stays int32.
  with jax.enable_x64(True):
    options = _options("causal_mask", 2, 4, 19, 13)
    _close(_attend(q, k, v, "pallas", 0.3, **options), _attend(q, k, v, "xla", 0.3, **options),
           rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("dtype,h", [(jnp.bfloat16, 64), (jnp.float32, 80)])
def test_pallas_lowers_for_gpu_and_tpu_forward_and_gradient(platform, dtype, h):
  # H = 80 is not a power of two, which Triton needs (the head size is padded for it).
  b, t, s, n, kh = 2, 300, 200, 4, 2

  mask = jnp.asarray(np.random.default_rng(0).random((1, n, t, s)) < 0.9)

  def attend(q, k, v, key, rate, q_lengths):
    return jaxdrop.dot_product_attention(
      q, k, v, mask=mask, dropout_key=key, dropout_rate=rate, is_causal=True,
      query_seq_lengths=q_lengths, implementation="pallas",
    )  # fmt: skip

  grad = jax.grad(lambda *a: jnp.sum(attend(*a).astype(jnp.float32)), (0, 1, 2))
  args = (
    jax.ShapeDtypeStruct((b, t, n, h), dtype),
    jax.ShapeDtypeStruct((b, s, kh, h), dtype),
    jax.ShapeDtypeStruct((b, s, kh, h), dtype),
    jax.random.key(0),
    jax.ShapeDtypeStruct((), jnp.float32),
    jax.ShapeDtypeStruct((b,), jnp.int32),
  )
  target = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
  for fn, kernels in ((attend, 1), (grad, 3)):
    exported = jax.export.export(jax.jit(fn), platforms=(platform,), disabled_checks=[TRITON, TPU])(
      *args
    )
    assert (
      exported.mlir_module().count(f"@{target}") + exported.mlir_module().count(f'"{target}"')
      >= kernels
    ), (platform, fn)


def test_pallas_refuses_what_it_cannot_take():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match="implementation='pallas' does not take a bias"):
    jaxdrop.dot_product_attention(q, k, v, bias=jnp.ones((19, 13)), implementation="pallas")
  loss = lambda q: jnp.sum(
    jaxdrop.dot_product_attention(q, k, v, dropout_key=DROP_KEY, dropout_rate=0.3,
                                  implementation="pallas") ** 2
  )  # fmt: skip
  with pytest.raises(TypeError, match="second derivatives .* pass implementation='xla'"):
    jax.grad(lambda q: jnp.sum(jax.grad(loss)(q)))(q)
  with pytest.raises(TypeError, match="implementation='pallas' has a hand-written"):
    jax.jvp(loss, (q,), (q,))
  b, t = jax.export.symbolic_shape("b, t")
  spec = jax.ShapeDtypeStruct((b, t, 4, 8), jnp.float32)
  attend = jax.jit(lambda q: jaxdrop.dot_product_attention(q, q, q, implementation="pallas"))
  with pytest.raises(ValueError, match=r"needs concrete sizes .* got query batch b"):
    jax.export.export(attend)(spec)
  spec = jax.ShapeDtypeStruct((2, t, 4, 8), jnp.float32)
  with pytest.raises(ValueError, match=r"needs concrete sizes .* got query length t"):
    jax.export.export(attend)(spec)
  with pytest.raises(ValueError, match="query_chunk_size must be a positive integer or None"):
    jaxdrop.dot_product_attention(q, k, v, implementation="pallas", query_chunk_size=0)
