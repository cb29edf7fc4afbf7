"""jaxdrop.dot_product_attention: the same attention as jax.nn.dot_product_attention, the same
mask as jaxdrop.dropout on the weights, and a chunked implementation equal to the materialised one.

Upstream tests this covers and extends: JAX `tests/nn_test.py` (testDotProductAttention:
dtypes, grouped-query attention, vmap, outputs and vjp against the xla reference;
testDotProductAttentionMask: causal, padding and boolean masks; the bias gradient test) and
Flax `tests/linen/linen_attention_test.py` (attention dropout, broadcast_dropout).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

KEY = jax.random.key(3)
DROP_KEY = jax.random.key(11)
Z = 5.0


def _jax_nn(*args, **options):
  """The reference, under standard promotion (it promotes float16 and integer biases
  implicitly, which the suite's strict-promotion run would refuse)."""
  with jax.numpy_dtype_promotion("standard"):
    return jax.nn.dot_product_attention(*args, **options)


def _inputs(b=2, t=19, s=13, n=4, k=2, h=8, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (b, t, n, h), jnp.float32).astype(dtype)
  kk = jax.random.normal(keys[1], (b, s, k, h), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, s, k, h), jnp.float32).astype(dtype)
  return q, kk, v


def _options(kind, b, n, t, s):
  """Attention options of one kind: masks, bias, lengths (some rows fully masked)."""
  rng = np.random.default_rng(1)
  if kind == "plain":
    return {}
  if kind == "causal":
    return {"is_causal": True}
  if kind == "bias":
    return {"bias": jnp.asarray(rng.normal(size=(b, n, t, s)), jnp.float32)}
  if kind == "head_bias":
    return {"bias": jnp.asarray(rng.normal(size=(1, n, 1, s)), jnp.float32), "is_causal": True}
  if kind == "mask":
    mask = rng.random((b, 1, t, s)) < 0.7
    mask[0, 0, 3] = False  # a fully masked row: jax.nn averages the values over every key
    return {"mask": jnp.asarray(mask)}
  if kind == "causal_mask":
    mask = rng.random((1, n, t, s)) < 0.8
    mask[0, 1, 5, :6] = False  # masked wherever causality lets it look: averages all keys
    return {"mask": jnp.asarray(mask), "is_causal": True}
  if kind == "lengths":
    return {
      "query_seq_lengths": jnp.asarray([t - 4, 3], jnp.int32),
      "key_value_seq_lengths": jnp.asarray([s, 0], jnp.int32),
      "is_causal": True,
    }
  raise ValueError(kind)


KINDS = ["plain", "causal", "bias", "head_bias", "mask", "causal_mask", "lengths"]
CHUNKS = {"query_chunk_size": 8, "key_chunk_size": 5}  # neither divides T = 19 or S = 13


def _attend(q, k, v, impl, rate=0.0, **options):
  return jax.jit(
    lambda q, k, v: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=DROP_KEY, dropout_rate=rate, implementation=impl, **CHUNKS, **options
    )
  )(q, k, v)


def _grads(fn, q, k, v, options):
  """Gradients of a nonlinear loss in q, k, v and (if given) the bias."""
  bias = options.pop("bias", None)
  cot = jax.random.normal(jax.random.key(5), q.shape, jnp.float32)

  def loss(q, k, v, bias):
    out = fn(q, k, v, **options, **({} if bias is None else {"bias": bias}))
    return jnp.sum(jnp.sin(out.astype(jnp.float32)) * cot)

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  return jax.jit(jax.grad(loss, argnums))(q, k, v, bias)


def _close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(
      np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize(
  "kind,heads_k", [(kind, 2) for kind in KINDS] + [("causal_mask", 4), ("causal_mask", 1)]
)
@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_without_dropout_equals_jax_nn(kind, impl, heads_k):
  q, k, v = _inputs(k=heads_k)
  options = _options(kind, 2, 4, 19, 13)
  expected = _jax_nn(q, k, v, **options, implementation="xla")
  for det in ({"dropout_rate": 0.0}, {"dropout_rate": 0.5, "deterministic": True}):
    out = jax.jit(
      lambda q, k, v: jaxdrop.dot_product_attention(
        q, k, v, **options, **det, implementation=impl, **CHUNKS
      )
    )(q, k, v)
    _close(out, expected, rtol=1e-5, atol=1e-6)
  # A traced deterministic=True takes the dropout path (for "xla", jaxdrop's own materialised
  # computation rather than jax.nn's): it must compute the same attention.
  out = jax.jit(
    lambda q, k, v, det: jaxdrop.dot_product_attention(
      q,
      k,
      v,
      **options,
      dropout_key=DROP_KEY,
      dropout_rate=0.5,
      deterministic=det,
      implementation=impl,
      **CHUNKS,
    )
  )(q, k, v, jnp.bool_(True))
  _close(out, expected, rtol=1e-5, atol=1e-6)
  ours = _grads(lambda *a, **o: _attend(*a, impl, **o), q, k, v, dict(options))
  theirs = _grads(lambda *a, **o: _jax_nn(*a, **o, implementation="xla"), q, k, v, dict(options))
  _close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "kind,rate", [(kind, 0.5) for kind in KINDS] + [("causal_mask", 0.1), ("plain", 1.0)]
)
def test_chunked_equals_xla_with_dropout(kind, rate):
  q, k, v = _inputs(k=2)
  options = _options(kind, 2, 4, 19, 13)
  _close(
    _attend(q, k, v, "chunked", rate, **options),
    _attend(q, k, v, "xla", rate, **options),
    rtol=1e-5,
    atol=1e-6,
  )
  ours = _grads(lambda *a, **o: _attend(*a, "chunked", rate, **o), q, k, v, dict(options))
  ref = _grads(lambda *a, **o: _attend(*a, "xla", rate, **o), q, k, v, dict(options))
  _close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "pallas"])
@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 5e-3)])
def test_half_precision_blocked_close_to_xla(impl, dtype, tol):
  q, k, v = _inputs(dtype=dtype)
  options = _options("causal_mask", 2, 4, 19, 13)
  out = _attend(q, k, v, impl, 0.2, **options)
  assert out.dtype == dtype
  _close(out, _attend(q, k, v, "xla", 0.2, **options), rtol=tol, atol=tol)
  grads = _grads(lambda *a, **o: _attend(*a, impl, 0.2, **o), q, k, v, dict(options))
  assert all(g.dtype == dtype for g in grads)
  _close(
    grads,
    _grads(lambda *a, **o: _attend(*a, "xla", 0.2, **o), q, k, v, dict(options)),
    rtol=4 * tol,
    atol=4 * tol,
  )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("impl,rate", [("xla", 0.0), ("xla", 0.2), ("chunked", 0.2)])
def test_half_precision_under_jit_and_strict_promotion(impl, rate, dtype):
  # jax.nn's float16 logits under jit are refused by CPU's dot_general ('F16_F16_F32'), and
  # its bfloat16 gradient promotes implicitly: jaxdrop's no-dropout path used to call it.
  # (float32 runs under jit throughout this file, and under strict promotion in CI's strict run.)
  q, k, v = _inputs(dtype=dtype)
  options = _options("causal_mask", 2, 4, 19, 13)
  attend = lambda q, k, v: jaxdrop.dot_product_attention(
    q, k, v, **options, dropout_key=DROP_KEY, dropout_rate=rate, implementation=impl, **CHUNKS
  )
  loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) ** 2)
  with jax.numpy_dtype_promotion("strict"):
    out = jax.jit(attend)(q, k, v)
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)
  assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
  # float32 computation of the same attention (same mask), rounded once at the end.
  wide = [a.astype(jnp.float32) for a in (q, k, v)]
  tol = {jnp.float16: 5e-3, jnp.bfloat16: 3e-2}[dtype]
  _close(out, attend(*wide), rtol=tol, atol=tol)
  _close(grads, jax.grad(loss, (0, 1, 2))(*wide), rtol=4 * tol, atol=4 * tol)


def _revealed_weights(impl, rate, broadcast_dims=(), batched=True, **options):
  """With value = one-hot keys, the output's last axis is the (dropped) weights row itself."""
  b, t, s, n = 2, 10, 6, 3
  q, k, _ = _inputs(b=b, t=t, s=s, n=n, k=n, h=s)
  v = jnp.broadcast_to(jnp.eye(s)[None, :, None, :], (b, s, n, s))
  if not batched:
    q, k, v = q[0], k[0], v[0]
  out = jaxdrop.dot_product_attention(
    q,
    k,
    v,
    dropout_key=DROP_KEY,
    dropout_rate=rate,
    broadcast_dims=broadcast_dims,
    implementation=impl,
    query_chunk_size=4,
    key_chunk_size=4,
    **options,
  )
  weights = jnp.moveaxis(out, -2, -3)  # (..., T, N, S) -> (..., N, T, S)
  plain = _jax_nn(q, k, v, **options)
  return weights, jnp.moveaxis(plain, -2, -3)


@pytest.mark.parametrize("impl", ["xla", "chunked", "pallas"])
@pytest.mark.parametrize(
  "broadcast_dims,batched", [((), True), ((0, 1), True), ((1,), True), ((), False), ((0,), False)]
)
def test_zero_pattern_is_dropouts_mask_on_the_weights(impl, broadcast_dims, batched):
  rate = 0.4
  weights, plain = _revealed_weights(impl, rate, broadcast_dims, batched, is_causal=True)
  mask = jaxdrop.dropout(DROP_KEY, jnp.ones(plain.shape), rate, broadcast_dims=broadcast_dims) != 0
  allowed = plain != 0  # causal zeros
  np.testing.assert_array_equal(weights != 0, mask & allowed)
  np.testing.assert_allclose(weights, jnp.where(mask, plain / (1 - rate), 0), rtol=1e-5, atol=1e-6)


def test_dropped_fraction_of_weights_is_binomial():
  q, k, v = _inputs(b=4, t=64, s=64, n=4, k=4, h=64)
  v = jnp.broadcast_to(jnp.eye(64)[None, :, None, :], (4, 64, 4, 64))
  rate = 0.3
  out = jaxdrop.dot_product_attention(
    q,
    k,
    v,
    dropout_key=DROP_KEY,
    dropout_rate=rate,
    implementation="chunked",
    query_chunk_size=16,
    key_chunk_size=16,
  )
  n = out.size
  dropped = int(jnp.sum(out == 0))
  assert abs(dropped - n * rate) <= Z * math.sqrt(n * rate * (1 - rate)), (dropped, n * rate)


@pytest.mark.parametrize("impl", ["xla", "chunked", "pallas"])
def test_traced_rate_and_deterministic_do_not_retrace(impl):
  q, k, v = _inputs()
  traces = []

  @jax.jit
  def f(rate, det):
    traces.append(1)
    return jaxdrop.dot_product_attention(
      q,
      k,
      v,
      dropout_key=DROP_KEY,
      dropout_rate=rate,
      deterministic=det,
      implementation=impl,
      **CHUNKS,
    )

  expected = _jax_nn(q, k, v)
  _close(f(0.3, jnp.bool_(True)), expected, 1e-5, 1e-6)
  _close(f(0.0, jnp.bool_(False)), expected, 1e-5, 1e-6)
  np.testing.assert_array_equal(f(1.0, jnp.bool_(False)), jnp.zeros_like(q))
  _close(f(0.3, jnp.bool_(False)), _attend(q, k, v, impl, 0.3), 1e-6, 1e-6)
  assert bool(jnp.all(jnp.isnan(f(1.5, jnp.bool_(False)))))  # an invalid traced rate is loud
  assert len(traces) == 1


def test_composes_with_vmap_scan_and_checkpoint():
  q, k, v = _inputs()
  keys = jax.random.split(DROP_KEY, 3)

  def layer(x, key, impl):
    return jaxdrop.dot_product_attention(
      x, k, v, dropout_key=key, dropout_rate=0.2, implementation=impl, is_causal=True, **CHUNKS
    )

  def stack(x, impl):
    body = jax.checkpoint(lambda x, key: (layer(x, key, impl), None))
    return jnp.sum(jax.lax.scan(body, x, keys)[0] ** 2)

  _close(
    jax.jit(jax.grad(stack), static_argnums=1)(q, "chunked"), jax.grad(stack)(q, "xla"), 1e-4, 1e-5
  )
  # vmap over the batch (one example at a time, unbatched) with per-example keys.
  per_example = jax.vmap(
    lambda q, k, v, key: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=key, dropout_rate=0.2, implementation="chunked", **CHUNKS
    )
  )
  out = per_example(q, k, v, jax.random.split(DROP_KEY, 2))
  for i, key in enumerate(jax.random.split(DROP_KEY, 2)):
    _close(
      out[i],
      jaxdrop.dot_product_attention(
        q[i], k[i], v[i], dropout_key=key, dropout_rate=0.2, implementation="xla"
      ),
      1e-5,
      1e-6,
    )


def _temp_bytes(impl, t):
  q, k, v = (jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32) for _ in range(3))

  def loss(q, k, v):
    return jnp.sum(
      jaxdrop.dot_product_attention(
        q,
        k,
        v,
        dropout_key=DROP_KEY,
        dropout_rate=0.1,
        is_causal=True,
        implementation=impl,
        query_chunk_size=128,
        key_chunk_size=128,
      )
    )

  compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(q, k, v).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly():
  small, large = _temp_bytes("chunked", 1024), _temp_bytes("chunked", 2048)
  assert large <= 2.2 * small, (small, large)
  # The materialised weights alone (2 x 2048 x 2048 float32) are 32 MiB.
  assert large * 8 <= _temp_bytes("xla", 2048), (large, _temp_bytes("xla", 2048))


def test_default_implementation_by_size():
  q, k, v = _inputs()
  jaxpr = str(jax.make_jaxpr(lambda q: jaxdrop.dot_product_attention(q, k, v))(q))
  assert "custom_vjp_call" not in jaxpr  # small: materialised
  big = jax.ShapeDtypeStruct((1, 4096, 2, 8), jnp.float32)
  jaxpr = str(jax.make_jaxpr(lambda q: jaxdrop.dot_product_attention(q, q, q))(big))
  assert "custom_vjp_call" in jaxpr  # 2 * 4096 * 4096 weights > 2**24: chunked


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_logits_below_the_masking_value_and_half_precision_masks_match_jax_nn(impl):
  # A finfo.min bias row (logits below the value masked logits take) stays finite; in float16
  # the masked logits are float32's large negative as in jax.nn, so a bias of -1e5 on the
  # allowed keys still beats the masked ones.
  q, k, v = _inputs()
  bias = np.zeros((2, 4, 19, 13), np.float32)
  bias[0, 1, 2] = np.finfo(np.float32).min
  bias[1, :, 4, :5] = -1e5
  mask = np.ones((2, 1, 19, 13), bool)
  mask[1, 0, 4, 5:] = False
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.float16, 5e-3)):
    args = [a.astype(dtype) for a in (q, k, v)]
    expected = _jax_nn(*args, bias=jnp.asarray(bias), mask=jnp.asarray(mask))
    for det in ({"dropout_rate": 0.0}, {"dropout_rate": 0.5, "deterministic": jnp.bool_(True)}):
      out = jaxdrop.dot_product_attention(
        *args,
        bias=jnp.asarray(bias),
        mask=jnp.asarray(mask),
        dropout_key=DROP_KEY,
        implementation=impl,
        **det,
        **CHUNKS,
      )
      assert bool(jnp.all(jnp.isfinite(out)))
      _close(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_empty_sequences_and_unbatched_gradients(impl):
  q, k, v = _inputs()
  for t, s in ((0, 13), (19, 0)):
    out = jaxdrop.dot_product_attention(
      q[:, :t], k[:, :s], v[:, :s], dropout_key=DROP_KEY, dropout_rate=0.3, implementation=impl
    )
    np.testing.assert_array_equal(out, _jax_nn(q[:, :t], k[:, :s], v[:, :s]))
  empty = jaxdrop.dot_product_attention(q[..., :0], k[..., :0], v[..., :0], implementation=impl)
  assert empty.shape == (2, 19, 4, 0)  # a head size of 0: nothing to scale
  unbatched = lambda impl: lambda q, k, v, **o: _attend(q[0], k[0], v[0], impl, 0.3, **o)[None]
  _close(
    _grads(unbatched(impl), q, k, v, _options("causal_mask", 2, 4, 19, 13)),
    _grads(unbatched("xla"), q, k, v, _options("causal_mask", 2, 4, 19, 13)),
    1e-4,
    1e-5,
  )


def test_forward_mode_needs_xla_and_says_so():
  q, k, v = _inputs()
  f = lambda impl: (
    lambda q: jnp.sum(
      jaxdrop.dot_product_attention(
        q, k, v, dropout_key=DROP_KEY, dropout_rate=0.3, implementation=impl, **CHUNKS
      )
    )
  )
  with pytest.raises(TypeError, match="implementation='xla'"):
    jax.jvp(f("chunked"), (q,), (q,))
  _, tangent = jax.jvp(f("xla"), (q,), (q,))
  np.testing.assert_allclose(tangent, jnp.vdot(jax.grad(f("xla"))(q), q), rtol=1e-4)


def test_bias_shapes_dtypes_and_scale_as_jax_nn_accepts_them():
  q, k, v = _inputs()
  for bias in (jnp.ones((19, 13)), jnp.ones((4, 19, 13), jnp.int32), jnp.ones((1, 13))):
    for impl in ("xla", "chunked"):
      out = jaxdrop.dot_product_attention(
        q, k, v, bias=bias, scale=jnp.float32(0.5), implementation=impl, **CHUNKS
      )
      _close(out, _jax_nn(q, k, v, bias=bias, scale=0.5), 1e-5, 1e-6)
  with pytest.raises(TypeError, match="scale must be a concrete real number"):
    jax.jit(lambda s: jaxdrop.dot_product_attention(q, k, v, scale=s))(0.5)


@pytest.mark.parametrize(
  "call,error,match",
  [
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k[:, :, :0], v[:, :, :0]),
      ValueError,
      r"key and value must have at least one head, got key \(2, 13, 0, 8\)",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, dropout_rate=0.1),
      TypeError,
      "needs a PRNG key",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(
        q, k, v, dropout_key=DROP_KEY, dropout_rate=1.5
      ),
      ValueError,
      "dropout_rate must be in",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k[:, :, :1, :4], v),
      ValueError,
      "key and value must have shape",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(
        q, jnp.ones((2, 13, 3, 8)), jnp.ones((2, 13, 3, 8))
      ),
      ValueError,
      "multiple of the number of key/value heads",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k.astype(jnp.bfloat16), v),
      TypeError,
      "share one dtype",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, mask=jnp.ones((2, 4, 19, 13))),
      TypeError,
      "mask must be boolean",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, bias=jnp.ones((2, 3, 19, 13))),
      ValueError,
      "bias must broadcast",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, bias=jnp.ones((1, 2, 4, 19, 13))),
      ValueError,
      "bias must broadcast",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(
        q, k, v, query_seq_lengths=jnp.ones(3, jnp.int32)
      ),
      ValueError,
      r"query_seq_lengths must be an integer array of shape \(2,\)",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, implementation="flash"),
      ValueError,
      "implementation must be one of",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, query_chunk_size=0),
      ValueError,
      "query_chunk_size must be a positive integer",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, broadcast_dims=(4,)),
      ValueError,
      "broadcast_dims has axis 4",
    ),
    (
      lambda q, k, v: jaxdrop.dot_product_attention(DROP_KEY, k, v),
      TypeError,
      "query is a PRNG key",
    ),
    (lambda q, k, v: jaxdrop.dot_product_attention(q[0], k, v), ValueError, "all be"),
  ],
)
def test_bad_input(call, error, match):
  q, k, v = _inputs()
  with pytest.raises(error, match=match):
    call(q, k, v)
