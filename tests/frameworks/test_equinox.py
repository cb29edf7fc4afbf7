"""jaxdrop.equinox: the drop-in for eqx.nn.Dropout and the family as Equinox modules.

Ported (the cases rewritten, run against ``jaxdrop.equinox.Dropout`` where Equinox used
``eqx.nn.Dropout``) from Equinox's tests, patrick-kidger/equinox:
  tests/test_nn.py    test_dropout_basic, test_dropout_inference, test_dropout_deterministic
  tests/test_tree.py  test_inference_mode
plus: inference_mode really switches a model off and on, filter_jit and filter_vmap with a key
per example, the functional call's mask for the same key, the family's unbatched defaults, a
traced p without a retrace.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
import jaxdrop.equinox as jdeqx

# --- tests/test_nn.py -----------------------------------------------------------------------------


def test_dropout_basic():
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  y = jdeqx.Dropout()(x, key=jax.random.key(1))
  assert jnp.all((y == 0) | (y == x / 0.5))
  assert jnp.any(y == 0) and jnp.any(y != 0)


@pytest.mark.parametrize("flag", ["inference", "deterministic"])
def test_dropout_inference(flag):
  dropout = jdeqx.Dropout()
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # `deterministic` is deprecated
    assert jnp.all(dropout(x, key=jax.random.key(1), **{flag: True}) == x)
    assert jnp.all(dropout(x, **{flag: True}) == x)
    off = jdeqx.Dropout(**{flag: True})
  assert jnp.all(off(x) == x)
  on = eqx.tree_at(lambda d: d.inference, off, replace=False)
  assert jnp.any(on(x, key=jax.random.key(0)) != x)


def test_deprecated_deterministic_warns():
  with pytest.warns(UserWarning, match="deprecated"):
    jdeqx.Dropout()(jnp.ones(3), deterministic=True)


# --- tests/test_tree.py ---------------------------------------------------------------------------


class Model(eqx.Module):
  linear: eqx.nn.Linear
  dropout: jdeqx.Dropout

  def __init__(self, key):
    self.linear = eqx.nn.Linear(4, 64, key=key)
    self.dropout = jdeqx.Dropout(0.5)

  def __call__(self, x, *, key=None):
    return self.dropout(self.linear(x), key=key)


def test_inference_mode_switches_dropout_off_and_on():
  model = Model(jax.random.key(0))
  assert isinstance(model.dropout, eqx.nn.Dropout) and model.dropout.inference is False
  x = jax.random.normal(jax.random.key(1), (4,))
  key = jax.random.key(2)
  evaluating = eqx.nn.inference_mode(model)
  assert model.dropout.inference is False and evaluating.dropout.inference is True
  np.testing.assert_array_equal(evaluating(x, key=key), model.linear(x))  # a key is ignored
  training = eqx.nn.inference_mode(evaluating, value=False)
  np.testing.assert_array_equal(training(x, key=key), jaxdrop.dropout(key, model.linear(x), 0.5))
  with pytest.raises(RuntimeError, match="requires a key"):
    training(x)


def test_filter_jit_and_vmap_give_each_example_its_mask():
  model = Model(jax.random.key(0))
  xs = jax.random.normal(jax.random.key(1), (8, 4))
  keys = jax.random.split(jax.random.key(2), 8)

  @eqx.filter_jit
  def forward(model, xs, keys):
    return eqx.filter_vmap(lambda x, k: model(x, key=k))(xs, keys)

  ys = forward(model, xs, keys)
  # The jitted, batched matmul may round differently from the eager one: the masks are
  # compared exactly, the values to float32 rounding.
  for i in range(8):
    expected = jaxdrop.dropout(keys[i], model.linear(xs[i]), 0.5)
    np.testing.assert_array_equal(ys[i] == 0, expected == 0)
    np.testing.assert_allclose(ys[i], expected, rtol=1e-5, atol=1e-6)
  assert not np.array_equal(ys[0] == 0, ys[1] == 0)
  np.testing.assert_allclose(
    forward(eqx.nn.inference_mode(model), xs, keys),
    jax.vmap(model.linear)(xs),
    rtol=1e-5,
    atol=1e-6,
  )


def test_p_as_an_array_changes_without_retrace():
  traces = []

  @eqx.filter_jit
  def f(layer, x, key):
    traces.append(None)
    return layer(x, key=key)

  x = jnp.ones((100, 100))
  low = float(jnp.mean(f(jdeqx.Dropout(jnp.float32(0.25)), x, jax.random.key(0)) == 0))
  high = float(jnp.mean(f(jdeqx.Dropout(jnp.float32(0.75)), x, jax.random.key(0)) == 0))
  assert len(traces) == 1
  assert abs(low - 0.25) < 0.02 and abs(high - 0.75) < 0.02  # 10,000 units: 4.3 sd bounds


# --- the family, unbatched and channels-first --------------------------------------------------

FAMILY = [
  (
    jdeqx.ChannelDropout,
    {},
    lambda k, x, p: jaxdrop.channel_dropout(k, x, p, channel_axis=0, batch_axis=None),
  ),
  (jdeqx.AlphaDropout, {}, jaxdrop.alpha_dropout),
  (
    jdeqx.FeatureAlphaDropout,
    {},
    lambda k, x, p: jaxdrop.feature_alpha_dropout(k, x, p, channel_axis=0, batch_axis=None),
  ),
  (jdeqx.GaussianDropout, {}, jaxdrop.gaussian_dropout),
  (jdeqx.DropPath, {}, lambda k, x, p: jaxdrop.drop_path(k, x, p, mode="batch")),
  (jdeqx.DropPath, {"batch_axis": 1}, lambda k, x, p: jaxdrop.drop_path(k, x, p, batch_axis=1)),
  (jdeqx.DropBlock, {"block_size": 3}, lambda k, x, p: jaxdrop.drop_block(k, x, p, 3)),
]


@pytest.mark.parametrize("module, options, functional", FAMILY)
def test_member_draws_the_functional_mask_and_switches_off(module, options, functional):
  x = jax.random.normal(jax.random.key(2), (3, 6, 6))  # one (C, H, W) example
  key = jax.random.key(7)
  layer = module(0.3, **options)
  np.testing.assert_array_equal(layer(x, key=key), functional(key, x, 0.3))
  np.testing.assert_array_equal(layer(x, key=key, inference=True), x)
  np.testing.assert_array_equal(eqx.nn.inference_mode(layer)(x, key=key), x)
  np.testing.assert_array_equal(module(0.0, **options)(x), x)  # p = 0 needs no key


def test_channel_dropout_drops_whole_channels_of_an_example():
  y = jdeqx.ChannelDropout(0.5)(jnp.ones((64, 4, 4)), key=jax.random.key(0))
  per_channel = y.reshape(64, 16)
  assert jnp.all(per_channel.min(1) == per_channel.max(1))
  assert 0 < int(jnp.sum(per_channel[:, 0] == 0)) < 64


def test_layout_fields_are_static_under_plain_jit():
  layer = jdeqx.ChannelDropout(0.5)
  x = jnp.ones((4, 3, 3))
  key = jax.random.key(0)
  np.testing.assert_array_equal(jax.jit(lambda m, x: m(x, key=key))(layer, x), layer(x, key=key))
  assert jax.tree.leaves(jdeqx.DropBlock(0.1, block_size=3)) == [0.1, False]


def test_bad_p_is_named():
  with pytest.raises(ValueError, match="p must be in"):
    jdeqx.Dropout(1.5)(jnp.ones(3), key=jax.random.key(0))
