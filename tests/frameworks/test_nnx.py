"""jaxdrop.nnx: the drop-in for Flax NNX's dropout layers and attention_fn.

Ported (the cases rewritten, run against ``jaxdrop.nnx.Dropout`` where Flax used
``nnx.Dropout``) from Flax's tests, google/flax:
  tests/nnx/nn/stochastic_test.py  (internal rngs under nnx.jit, rng and argument overrides,
                                    overrides through nnx.view)
  tests/nnx/module_test.py         (set_attributes and nnx.view, with filters naming nnx.Dropout)
  tests/nnx/rngs_test.py           (stream counts under nnx.jit, reseed)
  tests/nnx/transforms_test.py     (split_rngs + vmap construction, scan over layers)
  tests/nnx/nn/attention_test.py   (MultiHeadAttention with dropout; sown attention weights)
plus the checks the issue asks for: eval()/train() switch dropout off and on, nnx.scan over layers
draws a different mask per layer, the module draws the functional call's mask for the same key,
the family members, and a rate held as state that changes without a retrace.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdrop
import jaxdrop.nnx as jdnnx

NO_RNGS = "`deterministic` is False, but no `rngs` argument was provided to Dropout"


# --- tests/nnx/nn/stochastic_test.py ------------------------------------------------------------


def test_internal_rngs_follow_the_stream_under_jit():
  traces = 0
  m1 = jdnnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=0))
  m2 = jdnnx.Dropout(rate=0.5, deterministic=False)
  rngs2 = nnx.Rngs(dropout=0).fork()

  @nnx.jit
  def f(m, x, rngs=None):
    nonlocal traces
    traces += 1
    return m(x, rngs=rngs)

  x = jnp.ones((1, 10))
  assert m1.rngs.count[...] == 0
  y1, y2 = f(m1, x), f(m2, x, rngs=rngs2)
  assert (m1.rngs.count[...], rngs2.dropout.count[...]) == (1, 1)
  np.testing.assert_array_equal(y1, y2)
  y3, y4 = f(m1, x), f(m2, x, rngs=rngs2)
  assert (m1.rngs.count[...], rngs2.dropout.count[...]) == (2, 2)
  np.testing.assert_array_equal(y3, y4)
  assert not np.array_equal(y1, y3)  # the stream moved on: a new mask
  assert traces == 2


def test_call_time_rngs_take_precedence():
  m1 = jdnnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=0))
  m2 = jdnnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=1))
  x = jnp.ones((1, 10))
  y1 = m1(x)
  assert not np.array_equal(y1, m2(x))
  np.testing.assert_array_equal(y1, m2(x, rngs=nnx.Rngs(dropout=0).fork()))


@pytest.mark.parametrize("switch", ["set_attributes", "view"])
def test_deterministic_overrides(switch):
  m = jdnnx.Dropout(rate=0.5, deterministic=False)
  x = jnp.ones((1, 10))
  np.testing.assert_array_equal(m(x, deterministic=True), x)  # the call's flag, no rngs needed

  def mode(deterministic):
    if switch == "view":
      return nnx.view(m, deterministic=deterministic)
    m.set_attributes(deterministic=deterministic)
    return m

  off = mode(True)
  np.testing.assert_array_equal(off(x), x)
  dropped = off(x, deterministic=False, rngs=nnx.Rngs(dropout=0))  # the call's flag wins
  assert not np.array_equal(dropped, x)
  with pytest.raises(ValueError, match=NO_RNGS):
    mode(False)(x)


def test_missing_rngs_or_stream_errors_say_how_to_give_one():
  x = jnp.ones((2, 4))
  with pytest.raises(ValueError, match=re.escape("rngs=nnx.Rngs(params=0, dropout=1)")) as info:
    jdnnx.Dropout(0.5)(x)
  assert info.value.args[0].endswith("deterministic=True"), info.value  # a whole sentence
  # An nnx.Rngs without the module's stream: Flax raises a bare KeyError.
  stream = re.escape("stream 'noise', which this nnx.Rngs does not have (its streams: 'params')")
  for make in (
    lambda: jdnnx.Dropout(0.5, rng_collection="noise", rngs=nnx.Rngs(params=0)),
    lambda: jdnnx.DropPath(0.5, rng_collection="noise", rngs=nnx.Rngs(params=0)),
    lambda: jdnnx.Dropout(0.5, rng_collection="noise")(x, rngs=nnx.Rngs(params=0)),
  ):
    with pytest.raises(ValueError, match=stream + ".*" + re.escape("nnx.Rngs(params=0, noise=1)")):
      make()
  # A "default" stream serves any collection, as in Flax.
  assert jdnnx.Dropout(0.5, rngs=nnx.Rngs(0))(x).shape == x.shape


# --- tests/nnx/module_test.py -----------------------------------------------------------------


class Block(nnx.Module):
  def __init__(self, rngs, dropout=jdnnx.Dropout):
    self.linear = nnx.Linear(2, 5, rngs=rngs)
    self.dropout = dropout(0.5, deterministic=False, rngs=rngs)
    self.batch_norm = nnx.BatchNorm(5, use_running_average=False, rngs=rngs)

  def __call__(self, x):
    return self.dropout(self.batch_norm(self.linear(x)))


def test_set_attributes_and_view_reach_it_through_nnx_dropout_filters():
  block = Block(nnx.Rngs(0))
  assert isinstance(block.dropout, nnx.Dropout)
  block.set_attributes(nnx.Dropout, deterministic=True)  # a filter naming Flax's class
  assert block.dropout.deterministic and not block.batch_norm.use_running_average
  block = Block(nnx.Rngs(0))
  view = nnx.view(block, only=nnx.Dropout, deterministic=True)
  assert view.dropout.deterministic and not block.dropout.deterministic
  assert view.linear.kernel is block.linear.kernel


def test_eval_and_train_switch_dropout_off_and_on():
  block = Block(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (16, 2))
  block.eval()
  # In eval mode the block is its layers without dropout: batch norm on its running averages.
  np.testing.assert_array_equal(block(x), block.batch_norm(block.linear(x)))
  block.train()
  assert np.mean(np.asarray(block(x)) == 0) > 0.3  # about half the units dropped
  block.eval()
  np.testing.assert_array_equal(block(x), block.batch_norm(block.linear(x)))


def test_jitted_train_step_follows_train_and_eval():
  block = Block(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (16, 2))
  step = nnx.jit(lambda model, x: model(x))
  a, b = step(block, x), step(block, x)
  assert not np.array_equal(a, b)  # a new key per step
  block.eval()
  np.testing.assert_array_equal(step(block, x), step(block, x))


# --- tests/nnx/rngs_test.py ---------------------------------------------------------------------


def test_call_time_rngs_counts_and_falls_back_to_the_default_stream():
  class Foo(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.dropout = jdnnx.Dropout(0.5, deterministic=False)

    def __call__(self, x, rngs):
      return self.dropout(self.linear(x), rngs=rngs)

  rngs = nnx.Rngs(0)
  m = Foo(rngs)
  assert rngs["default"].count[...] == 2  # the kernel and the bias

  @nnx.jit
  def f(m, x, rngs):
    return m(m(x, rngs), rngs)

  f(m, jnp.ones((2, 2)), rngs)
  assert rngs["default"].count[...] == 4  # one key per dropout call


def test_reseed_repeats_the_mask():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)
      self.dropout = jdnnx.Dropout(0.5, deterministic=False, rngs=rngs)

    def __call__(self, x):
      return self.dropout(self.linear(x))

  model = Model(nnx.Rngs(params=0, dropout=42))
  x = jnp.ones((1, 2))
  y1 = model(x)
  nnx.reseed(model, dropout=42)
  np.testing.assert_array_equal(y1, model(x))


# --- tests/nnx/transforms_test.py: split_rngs + vmap to build, scan over the layers -----------


def test_scan_over_layers_draws_a_mask_per_layer():
  layers = 4

  class Layer(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(4, 4, rngs=rngs)
      self.dropout = jdnnx.Dropout(0.5, deterministic=False, rngs=rngs)

  @nnx.split_rngs(splits=layers)
  @nnx.vmap(in_axes=0, out_axes=0)
  def create(rngs):
    return Layer(rngs)

  stack = create(nnx.Rngs(params=0, dropout=1))
  assert stack.linear.kernel.shape == (layers, 4, 4)

  @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
  def forward(layer, x):
    return layer.linear(x), layer.dropout(jnp.ones((8, 64)))  # each layer's mask, recorded

  x = jnp.ones((1, 4))
  _, masks = forward(stack, x)
  assert masks.shape == (layers, 8, 64)
  for i in range(layers):
    for j in range(i):
      assert not np.array_equal(masks[i], masks[j]), (i, j)
  _, again = forward(stack, x)
  assert not np.array_equal(masks, again)  # each stream moved on
  stack.eval()
  _, off = forward(stack, x)
  np.testing.assert_array_equal(off, 1.0)


def test_split_rngs_and_vmap_give_each_example_its_mask():
  layer = jdnnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  state_axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=(state_axes, 0))
  def f(layer, x):
    return layer(x)

  ys = np.asarray(f(layer, jnp.ones((4, 64))))
  assert len({row.tobytes() for row in ys}) == 4  # four examples, four masks
  assert set(np.unique(ys)) == {0.0, 2.0}


# --- the functional call's mask, and the family --------------------------------------------------

FAMILY = [
  (jdnnx.Dropout, {"broadcast_dims": (1,)}, jaxdrop.dropout),
  (jdnnx.ChannelDropout, {"channel_axis": -1}, jaxdrop.channel_dropout),
  (jdnnx.AlphaDropout, {}, jaxdrop.alpha_dropout),
  (jdnnx.FeatureAlphaDropout, {"batch_axis": 0}, jaxdrop.feature_alpha_dropout),
  (jdnnx.GaussianDropout, {}, jaxdrop.gaussian_dropout),
  (jdnnx.DropPath, {"mode": "row"}, jaxdrop.drop_path),
  (
    functools.partial(jdnnx.DropBlock, block_size=3),
    {"spatial_axes": (1, 2)},
    lambda k, x, r, **kw: jaxdrop.drop_block(k, x, r, 3, **kw),
  ),
]


@pytest.mark.parametrize("module, options, functional", FAMILY)
def test_member_draws_the_functional_mask_and_switches_off(module, options, functional):
  x = jax.random.normal(jax.random.key(2), (4, 6, 6, 3))
  layer = module(0.3, rngs=nnx.Rngs(dropout=5), **options)
  key = nnx.clone(layer).rngs()  # the key the next call draws
  expected = functional(key, x, 0.3, **options)
  np.testing.assert_array_equal(layer(x), expected)
  np.testing.assert_array_equal(layer(x, rngs=key), expected)  # an explicit key
  layer.eval()
  assert layer(x) is x
  assert nnx.view(layer, deterministic=False)(x, rngs=key) is not x


def test_rate_held_as_state_changes_without_retrace():
  traces = []
  layer = jdnnx.Dropout(nnx.Variable(jnp.float32(0.25)), rngs=nnx.Rngs(dropout=0))

  @nnx.jit
  def f(layer, x):
    traces.append(None)
    return layer(x)

  x = jnp.ones((100, 100))
  low = float(jnp.mean(f(layer, x) == 0))
  layer.rate[...] = jnp.float32(0.75)
  high = float(jnp.mean(f(layer, x) == 0))
  assert len(traces) == 1
  assert abs(low - 0.25) < 0.02 and abs(high - 0.75) < 0.02  # 10,000 units: 4.3 sd bounds


def test_traced_deterministic_is_honoured():
  layer = jdnnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  x = jnp.ones((4, 8))
  f = nnx.jit(lambda layer, x, d: layer(x, deterministic=d))
  np.testing.assert_array_equal(f(layer, x, jnp.bool_(True)), x)
  assert np.any(np.asarray(f(layer, x, jnp.bool_(False))) == 0)


@pytest.mark.parametrize("module", [jdnnx.Dropout, jdnnx.AlphaDropout, jdnnx.DropPath])
def test_rate_one_gives_zeros_without_a_key_as_flax(module):
  # Flax's Dropout returns zeros at rate 1 before drawing a key; the stream does not move.
  layer = module(1.0, rngs=nnx.Rngs(dropout=0))
  x = jnp.full((4, 3), jnp.nan)
  np.testing.assert_array_equal(layer(x), 0.0)
  assert layer.rngs.count[...] == 0
  np.testing.assert_array_equal(module(1.0)(x), 0.0)  # no rngs needed either
  grad = jax.grad(lambda x: jnp.sum(module(1.0)(x)))(jnp.ones((4, 3)))
  np.testing.assert_array_equal(grad, 0.0)


def test_view_info_describes_the_members():
  # nnx.view_info reads each set_view's documented arguments.
  class Model(nnx.Module):
    def __init__(self):
      self.drop_path = jdnnx.DropPath(0.1, rngs=nnx.Rngs(0))
      self.dropout = jdnnx.Dropout(0.1, rngs=nnx.Rngs(0))

  info = nnx.view_info(Model())
  assert "DropPath" in info and "deterministic" in info


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="rate must be in"):
    jdnnx.Dropout(1.5)
  with pytest.raises(ValueError, match="No `deterministic` argument"):
    jdnnx.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))(jnp.ones(3))
  with pytest.raises(TypeError, match="rngs must be"):
    jdnnx.Dropout(0.5, rngs=0)
  with pytest.raises(TypeError, match="rngs must be"):
    jdnnx.AlphaDropout(0.5)(jnp.ones(3), rngs="key")
  q = jnp.ones((1, 4, 1, 2))
  with pytest.raises(ValueError, match="dropout_rng must be a PRNG key"):
    jdnnx.attention_fn(q, q, q, dropout_rate=0.3)
  np.testing.assert_array_equal(
    jdnnx.attention_fn(q, q, q, dropout_rate=0.3, deterministic=True), jdnnx.attention_fn(q, q, q)
  )


# --- tests/nnx/nn/attention_test.py, and attention_fn against jaxdrop.dot_product_attention ---


def _mha(**kwargs):
  return nnx.MultiHeadAttention(
    num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0), **kwargs
  )


def test_multihead_attention_with_attention_fn():
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  flax_layer = _mha(dropout_rate=0.5)
  ours = _mha(dropout_rate=0.5, attention_fn=jdnnx.attention_fn)
  np.testing.assert_allclose(
    ours(x, deterministic=True), flax_layer(x, deterministic=True), rtol=1e-5, atol=1e-5
  )
  a, b = ours(x, deterministic=False), ours(x, deterministic=False)
  assert a.shape == x.shape and not np.array_equal(a, b)  # a new key per call
  ours.eval()
  np.testing.assert_array_equal(ours(x), ours(x))


@pytest.mark.parametrize(
  "shape, broadcast",
  [((5, 2, 4), True), ((3, 5, 2, 4), True), ((3, 5, 2, 4), False), ((2, 3, 5, 2, 4), True)],
)
def test_attention_fn_is_dot_product_attention_with_flax_arguments(shape, broadcast):
  q, k, v = jax.random.normal(jax.random.key(3), (3,) + shape)
  mask = jax.random.bernoulli(jax.random.key(4), 0.8, shape[:-3] + (1, shape[-3], shape[-3]))
  key = jax.random.key(5)
  call = lambda fn: jax.jit(
    lambda q, k, v: fn(
      q, k, v, mask=mask, dropout_rng=key, dropout_rate=0.4, broadcast_dropout=broadcast
    )
  )
  out = call(jdnnx.attention_fn)(q, k, v)
  batch = shape[:-3]
  flat = lambda a: a.reshape((-1,) + a.shape[len(batch) :]) if len(batch) > 1 else a
  dims = ((0, 1) if batch else (0,)) if broadcast else ()
  expected = jax.jit(jaxdrop.dot_product_attention, static_argnames="broadcast_dims")(
    flat(q),
    flat(k),
    flat(v),
    mask=flat(jnp.broadcast_to(mask, batch + mask.shape[-3:])),
    dropout_key=key,
    dropout_rate=0.4,
    broadcast_dims=dims,
  )
  np.testing.assert_array_equal(out, expected.reshape(out.shape))
  if len(batch) != 1:
    return
  # The options Flax does not pass reach jaxdrop through functools.partial.
  chunked = functools.partial(
    jdnnx.attention_fn, implementation="chunked", query_chunk_size=2, key_chunk_size=2
  )
  np.testing.assert_allclose(call(chunked)(q, k, v), out, rtol=1e-5, atol=1e-5)


def test_a_shared_mask_is_not_copied_per_example():
  # Several batch axes are merged into one; a (T, S) mask shared by every example must stay
  # one (T, S) array, not become one per example (which would grow with the batch).
  T = 1024  # XLA fuses a copied mask away at smaller T
  mask = jnp.tril(jnp.ones((T, T), jnp.bool_))
  temp = {}
  for batch in [(32,), (4, 8)]:
    q = jnp.ones(batch + (T, 1, 8))
    f = lambda q, m: jdnnx.attention_fn(
      q, q, q, mask=m, dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="chunked"
    )
    temp[batch] = jax.jit(f).lower(q, mask).compile().memory_analysis().temp_size_in_bytes
  # Two batch axes cost what one of the same size costs, give or take one copy of the mask;
  # a copy per example would add 32 * T * T bytes (it did: 131.7 MiB against 98.7 MiB).
  assert temp[(4, 8)] <= temp[(32,)] + 2 * T * T, temp


def test_broadcast_dropout_shares_one_mask_over_batch_and_heads():
  # With one key position, the output is the value scaled by the kept weight (0 or 1/keep).
  q = jnp.ones((3, 4, 2, 1))
  kv = jnp.ones((3, 1, 2, 1))
  out = jdnnx.attention_fn(q, kv, kv, dropout_rng=jax.random.key(0), dropout_rate=0.5)
  kept = np.asarray(out[..., 0] != 0)  # (batch, T, heads)
  assert kept.any() and not kept.all()
  assert (kept == kept[:1, :, :1]).all()


def test_sown_weights_are_flax_pre_dropout_weights():
  x = jax.random.normal(jax.random.key(1), (2, 6, 8))
  ours = _sown(_mha(dropout_rate=0.3, attention_fn=jdnnx.attention_fn, deterministic=False), x)
  flax = _sown(_mha(dropout_rate=0.3, deterministic=False), x)
  assert ours.shape == (2, 2, 6, 6)
  np.testing.assert_allclose(ours, flax, rtol=1e-6)


def _sown(layer, x):
  _, intermediates = nnx.capture(layer, nnx.Intermediate)(x, sow_weights=True)
  return intermediates["attention_weights"][0]
