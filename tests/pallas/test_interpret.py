"""The Pallas attention kernels in interpret mode over a wide matrix of options, and a GPT-style
block trained with them: too slow for the unit step (interpret mode runs each kernel program
as XLA code), so it runs in a CI step of its own:

    JAXDROP_PALLAS=1 python -m pytest -q tests/pallas

Every case compares `implementation="pallas"` with `"xla"` under the same key: outputs and the
gradients of query, key and value (the same mask, so the comparison is exact up to float
rounding), with several blocks along both sequence axes and the last ones partial.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

pytestmark = pytest.mark.skipif(
  os.environ.get("JAXDROP_PALLAS") != "1",
  reason="the Pallas kernels' interpret-mode matrix runs in its own step: "
  "JAXDROP_PALLAS=1 python -m pytest tests/pallas",
)

KEY = jax.random.key(21)
B, T, S, H = 2, 37, 53, 16
BLOCKS = {"query_chunk_size": 16, "key_chunk_size": 16}


def _inputs(n, heads_k, dtype=jnp.float32, t=T, s=S):
  keys = jax.random.split(jax.random.key(4), 3)
  q = jax.random.normal(keys[0], (B, t, n, H)).astype(dtype)
  k = jax.random.normal(keys[1], (B, s, heads_k, H)).astype(dtype)
  v = jax.random.normal(keys[2], (B, s, heads_k, H)).astype(dtype)
  return q, k, v


def _options(kind):
  return {
    "plain": {},
    "causal": {"is_causal": True},
    "lengths": {
      "query_seq_lengths": jnp.asarray([T, 20], jnp.int32),
      "key_value_seq_lengths": jnp.asarray([17, S], jnp.int32),
    },
    "causal_lengths": {
      "is_causal": True,
      "query_seq_lengths": jnp.asarray([30, T], jnp.int32),
      "key_value_seq_lengths": jnp.asarray([0, 40], jnp.int32),  # a batch element sees no key
    },
  }[kind]


def _value_and_grads(impl, q, k, v, rate, options, **extra):
  cot = jax.random.normal(jax.random.key(8), q.shape)

  def loss(q, k, v):
    out = jaxdrop.dot_product_attention(
      q, k, v, dropout_key=KEY, dropout_rate=rate, implementation=impl, **options, **extra
    )
    return jnp.sum(jnp.sin(out.astype(jnp.float32)) * cot), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def _check(q, k, v, rate, options, rtol=1e-5, gtol=1e-4, **extra):
  out, grads = _value_and_grads("pallas", q, k, v, rate, options, **BLOCKS, **extra)
  ref, ref_grads = _value_and_grads("xla", q, k, v, rate, options, **extra)
  assert out.dtype == q.dtype and all(g.dtype == q.dtype for g in grads)
  f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(f32(out), f32(ref), rtol=rtol, atol=rtol)
  for name, ours, theirs in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(f32(ours), f32(theirs), rtol=gtol, atol=gtol, err_msg=f"d{name}")


@pytest.mark.parametrize("kind", ["plain", "causal", "lengths", "causal_lengths"])
@pytest.mark.parametrize("n,heads_k", [(4, 4), (4, 2), (6, 1)])
def test_options_and_head_groups(kind, n, heads_k):
  _check(*_inputs(n, heads_k), 0.3, _options(kind))


@pytest.mark.parametrize(
  "mask_shape,causal",
  [((B, 1, T, S), False), ((1, 4, T, S), True), ((B, 1, 1, S), False), ((1, 1, T, 1), True)],
  ids=["batch", "heads-causal", "key-padding", "rows-causal"],
)
@pytest.mark.parametrize("n,heads_k", [(4, 2), (4, 4)])
def test_boolean_masks_of_every_shape(mask_shape, causal, n, heads_k):
  mask = np.random.default_rng(3).random(mask_shape) < 0.75
  mask.reshape(-1, mask_shape[-1])[0] = False  # a fully masked row (or key column)
  _check(*_inputs(n, heads_k), 0.3, {"mask": jnp.asarray(mask), "is_causal": causal})


@pytest.mark.parametrize("broadcast_dims", [(0, 1), (2,), (3,), (0, 3), (1, 2)])
def test_shared_masks(broadcast_dims):
  _check(*_inputs(4, 2), 0.4, _options("causal"), broadcast_dims=broadcast_dims)


@pytest.mark.parametrize("rate", [0.0, 1.0, 0.999])
def test_rates_at_the_ends(rate):
  _check(*_inputs(4, 2), rate, _options("causal_lengths"))


def test_traced_rate_and_deterministic():
  q, k, v = _inputs(4, 2)

  def both(impl, rate, det):
    return jaxdrop.dot_product_attention(
      q, k, v, dropout_key=KEY, dropout_rate=rate, deterministic=det, implementation=impl,
      is_causal=True, **(BLOCKS if impl == "pallas" else {}),
    )  # fmt: skip

  for rate, det in ((0.25, False), (0.25, True), (1.0, False), (0.0, False)):
    args = (jnp.float32(rate), jnp.bool_(det))
    np.testing.assert_allclose(
      jax.jit(lambda r, d: both("pallas", r, d))(*args),
      jax.jit(lambda r, d: both("xla", r, d))(*args),
      rtol=1e-5,
      atol=1e-6,
    )


@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 5e-3)])
def test_half_precision(dtype, tol):
  _check(*_inputs(4, 2, dtype), 0.2, _options("causal_lengths"), rtol=tol, gtol=4 * tol)


def test_unbatched_and_longer_sequences_with_default_blocks():
  q, k, v = _inputs(2, 1, t=150, s=130)
  _check(q[0], k[0], v[0], 0.1, {"is_causal": True})


def _gpt_loss(params, tokens, key, impl):
  """One pre-norm transformer block (causal attention with dropout, an MLP with dropout) under
  `jax.checkpoint`, next-token cross-entropy."""
  x = params["embed"][tokens]
  b, t, d = x.shape
  heads = 2

  @jax.checkpoint
  def block(x, key):
    k_attn, k_mlp = jax.random.split(key)
    h = x / jnp.sqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6)
    q, k, v = (jnp.einsum("btd,de->bte", h, params[w]).reshape(b, t, heads, d // heads)
               for w in ("wq", "wk", "wv"))  # fmt: skip
    attn = jaxdrop.dot_product_attention(
      q, k, v, dropout_key=k_attn, dropout_rate=0.1, is_causal=True, implementation=impl,
      **(BLOCKS if impl == "pallas" else {}),
    )  # fmt: skip
    x = x + jnp.einsum("bte,ed->btd", attn.reshape(b, t, d), params["wo"])
    hidden = jax.nn.gelu(jnp.einsum("btd,df->btf", x, params["w1"]))
    return x + jnp.einsum("btf,fd->btd", jaxdrop.dropout(k_mlp, hidden, 0.1), params["w2"])

  x = block(x, key)
  logits = jnp.einsum("btd,vd->btv", x, params["embed"])
  labels = jax.nn.one_hot(tokens[:, 1:], logits.shape[-1])
  return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits[:, :-1]), -1))


def test_gpt_block_trains_the_same_as_with_xla():
  vocab, d = 17, 32
  keys = jax.random.split(jax.random.key(0), 8)
  shapes = {"embed": (vocab, d), "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d),
            "w1": (d, 2 * d), "w2": (2 * d, d)}  # fmt: skip
  init = {name: jax.random.normal(key, shape) / np.sqrt(shape[0])
          for (name, shape), key in zip(shapes.items(), keys)}  # fmt: skip
  # A sequence that repeats with period 5: learnable from the previous tokens.
  tokens = jnp.asarray(np.tile(np.arange(5), (4, 8))[:, :40] % vocab, jnp.int32)

  def train(impl):
    step = jax.jit(
      lambda params, key: jax.tree.map(
        lambda p, g: p - 0.05 * g,
        params,
        jax.grad(_gpt_loss)(params, tokens, key, impl),
      )
    )
    params, losses = init, []
    for key in jax.random.split(jax.random.key(1), 10):
      losses.append(float(_gpt_loss(params, tokens, key, impl)))
      params = step(params, key)
    return np.asarray(losses)

  pallas, xla = train("pallas"), train("xla")
  np.testing.assert_allclose(pallas, xla, rtol=1e-4)
  assert pallas[-1] < 0.8 * pallas[0], pallas
