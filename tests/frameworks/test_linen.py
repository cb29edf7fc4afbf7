"""jaxdrop.linen: the drop-in for Flax Linen's dropout layers and attention_fn.

Ported (the cases rewritten, run against ``jaxdrop.linen`` where Flax used ``nn.Dropout`` and
the default attention function) from Flax's tests, google/flax:
  tests/linen/linen_test.py            StochasticTest (keys, deterministic, rate statistics,
                                       rates 0 and 1 with a finite gradient, broadcast_dims,
                                       an explicit rng)
  tests/linen/linen_attention_test.py  (MultiHeadDotProductAttention with dropout, explicit
                                       dropout_rng, dropout disabled, sown weights' dtype,
                                       the einsum hooks' errors)
plus: the module draws the functional call's mask for the same key, the deterministic
attribute and argument switch it, the family members, a traced rate.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import initializers

import jaxdrop
import jaxdrop.linen as jdlinen


def _apply(module, x, key, **kwargs):
  return module.apply({}, x, rngs={"dropout": key}, **kwargs)


# --- tests/linen/linen_test.py: StochasticTest -------------------------------------------------


def test_keys_and_deterministic():
  key1, key2 = jax.random.split(jax.random.key(0))
  module = jdlinen.Dropout(rate=0.5)
  x = jnp.ones((20, 20))
  assert not np.array_equal(
    _apply(module, x, key1, deterministic=False), _apply(module, x, key2, deterministic=False)
  )
  np.testing.assert_array_equal(_apply(module, x, key1, deterministic=True), x)
  np.testing.assert_array_equal(_apply(module, x, key2, deterministic=True), x)


def test_rate_statistics():
  # Flax checks the kept fraction of 10 x 100 x 100 units within 4 standard deviations at
  # rates 0.1 to 0.9; so do we, with the rate traced: one compilation for the nine rates.
  keys = jax.random.split(jax.random.key(0), 10)
  run = jax.jit(
    jax.vmap(
      lambda k, rate: _apply(
        jdlinen.Dropout(rate=rate, deterministic=False), jnp.ones((100, 100)), k
      ),
      in_axes=(0, None),
    )
  )
  for rate in np.arange(0.1, 1.0, 0.1):
    ys = run(keys, rate)
    n = ys.size
    kept = float(jnp.mean(ys > 0))
    bound = 4 * np.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < bound, (rate, kept, bound)


def test_rates_zero_and_one_with_finite_gradient():
  key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
  x = jnp.ones((20, 20))
  np.testing.assert_array_equal(_apply(jdlinen.Dropout(0.0), x, key1, deterministic=False), x)
  everything = jdlinen.Dropout(1.0)
  np.testing.assert_array_equal(_apply(everything, x, key2, deterministic=False), 0.0)
  grad = jax.grad(lambda x: jnp.sum(_apply(everything, x, key3, deterministic=False)))(x)
  np.testing.assert_array_equal(grad, 0.0)  # finite: no NaN at rate 1
  # As in Flax, rate 1 needs no dropout rng.
  np.testing.assert_array_equal(everything.apply({}, x, deterministic=False), 0.0)


@pytest.mark.parametrize(
  "ndim, broadcast_dims",
  [(2, (1,)), (2, (0,)), (3, (1, 2)), (3, (1,)), (4, (0, 2, 3)), (4, (0, 1)), (4, (3,))],
)
def test_broadcast_dims_share_the_mask(ndim, broadcast_dims):
  module = jdlinen.Dropout(rate=0.5, broadcast_dims=broadcast_dims, deterministic=False)
  out = np.asarray(_apply(module, jnp.ones((10,) * ndim), jax.random.key(0)))
  # Along the broadcast axes every value equals the first; across the others both occur.
  first = out[tuple(slice(0, 1) if axis in broadcast_dims else slice(None) for axis in range(ndim))]
  np.testing.assert_array_equal(out, np.broadcast_to(first, out.shape))
  assert set(np.unique(first)) == {0.0, 2.0}


def test_explicit_rng_repeats_the_mask():
  class Foo(nn.Module):
    @nn.compact
    def __call__(self, x):
      key = self.make_rng("dropout")
      x1 = jdlinen.Dropout(rate=0.5, deterministic=False)(x, rng=key)
      x2 = jdlinen.Dropout(rate=0.5, deterministic=False)(x, rng=jax.random.clone(key))
      return x1, x2

  x1, x2 = _apply(Foo(), jnp.ones((20, 20)), jax.random.key(0))
  np.testing.assert_array_equal(x1, x2)


# --- the functional call's mask, the mode switch, the family -------------------------------------

FAMILY = [
  (jdlinen.Dropout, {"broadcast_dims": (1,)}, jaxdrop.dropout),
  (jdlinen.ChannelDropout, {"channel_axis": -1}, jaxdrop.channel_dropout),
  (jdlinen.AlphaDropout, {}, jaxdrop.alpha_dropout),
  (jdlinen.FeatureAlphaDropout, {"batch_axis": 0}, jaxdrop.feature_alpha_dropout),
  (jdlinen.GaussianDropout, {}, jaxdrop.gaussian_dropout),
  (jdlinen.DropPath, {"mode": "row"}, jaxdrop.drop_path),
  (
    functools.partial(jdlinen.DropBlock, block_size=3),
    {"spatial_axes": (1, 2)},
    lambda k, x, r, **kw: jaxdrop.drop_block(k, x, r, 3, **kw),
  ),
]


@pytest.mark.parametrize("module, options, functional", FAMILY)
def test_member_draws_the_functional_mask_and_switches_off(module, options, functional):
  x = jax.random.normal(jax.random.key(2), (4, 6, 6, 3))
  key = jax.random.key(7)
  expected = functional(key, x, 0.3, **options)
  layer = module(0.3, **options)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=False, rng=key), expected)
  assert isinstance(layer, nn.Module)

  class Model(nn.Module):
    train: bool

    @nn.compact
    def __call__(self, x):
      return module(0.3, deterministic=not self.train, **options)(x)

  np.testing.assert_array_equal(Model(train=False).apply({}, x), x)  # no key needed
  dropped = Model(train=True).apply({}, x, rngs={"dropout": key})
  assert not np.array_equal(dropped, x)
  with pytest.raises(ValueError, match="deterministic"):  # set twice, as in Flax
    module(0.3, deterministic=True, **options).apply({}, x, deterministic=False, rng=key)


def test_is_an_nn_dropout_and_takes_a_traced_rate():
  assert isinstance(jdlinen.Dropout(0.5), nn.Dropout)
  f = jax.jit(
    lambda rate, key: jdlinen.Dropout(rate, deterministic=False).apply(
      {}, jnp.ones((100, 100)), rng=key
    )
  )
  low = float(jnp.mean(f(0.25, jax.random.key(0)) == 0))
  high = float(jnp.mean(f(0.75, jax.random.key(0)) == 0))
  assert f._cache_size() == 1
  assert abs(low - 0.25) < 0.02 and abs(high - 0.75) < 0.02  # 10,000 units: 4.3 sd bounds


def test_bad_rate_is_named():
  with pytest.raises(ValueError, match="rate must be in"):
    jdlinen.Dropout(1.5).apply({}, jnp.ones(3), deterministic=False, rng=jax.random.key(0))


# --- tests/linen/linen_attention_test.py ---------------------------------------------------------


def _attention(**kwargs):
  return nn.MultiHeadDotProductAttention(
    num_heads=8,
    qkv_features=16,
    kernel_init=initializers.ones,
    bias_init=initializers.zeros,
    attention_fn=jdlinen.attention_fn,
    **kwargs,
  )


def test_self_attention_with_dropout():
  x = jnp.ones((4, 2, 3, 5))
  rng1, rng2 = jax.random.split(jax.random.key(0))
  y, _ = _attention(dropout_rate=0.1, deterministic=False).init_with_output(
    {"params": rng1, "dropout": rng2}, x
  )
  assert y.shape == x.shape


def test_explicit_dropout_rng():
  def clone(key):
    return jax.tree.map(jax.random.clone, key)

  class Foo(nn.Module):
    @nn.compact
    def __call__(self, x, dropout_rng=None):
      a = _attention(dropout_rate=0.5, deterministic=False)(x, x, dropout_rng=dropout_rng)
      if dropout_rng is not None:
        dropout_rng = clone(dropout_rng)
      b = _attention(dropout_rate=0.5, deterministic=False)(x, x, dropout_rng=dropout_rng)
      return a, b

  module = Foo()
  rng1, rng2, rng3, rng4 = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(jax.random.key(1), (4, 2, 3, 5))
  rngs = {"params": rng1, "dropout": rng2}
  v = module.init(rngs, x)
  a, b = module.apply(v, x, rngs=clone(rngs))
  c, d = module.apply(v, x, rngs={"dropout": clone(rng2)})
  e, f = module.apply(v, x, rngs={"dropout": rng3})
  assert not (a == b).all() and (a == c).all() and (b == d).all()
  assert not (a == e).all() and not (b == f).all()
  a, b = module.apply(v, x, rngs=clone(rngs), dropout_rng=rng4)
  assert (a == b).all()
  a, b = module.apply(v, x, dropout_rng=clone(rng4))
  assert (a == b).all() and a.shape == b.shape == x.shape


def test_dropout_disabled_ignores_keys_and_matches_flax():
  x = jax.random.normal(jax.random.key(1), (4, 2, 3, 5))
  rng1, rng2, rng3, rng4 = jax.random.split(jax.random.key(0), 4)
  module = _attention(dropout_rate=0.5)
  variables = module.init({"params": rng1}, x, deterministic=True)
  y1 = module.apply(variables, x, deterministic=True, rngs={"dropout": rng2})
  y2 = module.apply(variables, x, deterministic=True, rngs={"dropout": rng4})
  np.testing.assert_array_equal(y1, y2)
  flax_module = module.clone(attention_fn=nn.dot_product_attention)
  np.testing.assert_allclose(
    y1, flax_module.apply(variables, x, deterministic=True), rtol=1e-5, atol=1e-5
  )
  zero = _attention(dropout_rate=0.0)
  np.testing.assert_array_equal(zero.apply(variables, x, deterministic=False), y1)


@pytest.mark.parametrize("force_fp32, dtype", [(True, jnp.float32), (False, jnp.bfloat16)])
def test_sown_weights_in_mixed_precision(force_fp32, dtype):
  x = jax.random.uniform(jax.random.key(0), (2, 4))
  mha = nn.MultiHeadDotProductAttention(
    num_heads=2,
    qkv_features=4,
    force_fp32_for_softmax=force_fp32,
    deterministic=False,
    dtype=jnp.bfloat16,
    attention_fn=jdlinen.attention_fn,
  )
  variables = mha.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
  _, state = mha.apply(variables, x, mutable=["intermediates"], sow_weights=True)
  weights = state["intermediates"]["attention_weights"][0]
  assert weights.dtype == dtype
  flax_mha = mha.clone(attention_fn=nn.dot_product_attention)
  with jax.numpy_dtype_promotion("standard"):  # Flax's float32 weights meet bfloat16 values
    _, flax_state = flax_mha.apply(variables, x, mutable=["intermediates"], sow_weights=True)
  np.testing.assert_array_equal(weights, flax_state["intermediates"]["attention_weights"][0])


@pytest.mark.parametrize(
  "hooks",
  [
    {"qk_attn_weights_einsum": jnp.einsum, "attn_weights_value_einsum": jnp.einsum},
    {"qk_attn_weights_einsum": jnp.einsum},
    {"einsum_dot_general": jax.lax.dot_general},
  ],
)
def test_einsum_hooks_are_refused_by_name(hooks):
  q = jnp.ones((1, 4, 1, 2))
  with pytest.raises(ValueError, match=next(iter(hooks))):
    jdlinen.attention_fn(q, q, q, **hooks)


def test_precision_reaches_the_matmuls():
  # CPU computes float32 matmuls exactly at every precision, so the lowered program is checked:
  # HIGHEST must appear on its dot products, and only when asked for.
  q = jnp.ones((2, 6, 2, 4))
  lowered = lambda precision: (
    jax.jit(lambda q: jdlinen.attention_fn(q, q, q, precision=precision)).lower(q).as_text()
  )
  assert "HIGHEST" not in lowered(None)
  assert lowered(jax.lax.Precision.HIGHEST).count("HIGHEST") >= 2  # logits and output
  assert lowered("highest") == lowered((jax.lax.Precision.HIGHEST,) * 2)
  with pytest.raises(ValueError, match="precision"):
    jdlinen.attention_fn(q, q, q, precision=3)
