"""Forward semantics of jaxdrop.dropout: exact values, options, keys, transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import inverted_scale, observed_mask

import jaxdrop

SHAPE = (16, 100)
FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]


def _x(shape=SHAPE, dtype=jnp.float32, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_every_output_is_zero_or_scaled_input(dtype, rate):
  x = _x(dtype=dtype)
  y = jaxdrop.dropout(jax.random.key(3), x, rate)
  assert y.dtype == x.dtype and y.shape == x.shape
  mask = observed_mask(jax.random.key(3), SHAPE, rate)
  # The scale is one over the realised keep probability, computed exactly from the rate.
  scale = inverted_scale(rate)
  # Half precision is scaled in float32 and rounded once.
  np.testing.assert_array_equal(
    y, jnp.where(mask, (x.astype(jnp.float32) * scale).astype(dtype), 0)
  )
  assert 0 < mask.sum() < mask.size


def test_classic_mode_keeps_units_unscaled_and_scales_at_test_time():
  x = _x()
  key = jax.random.key(4)
  y = jaxdrop.dropout(key, x, 0.3, inverted=False)
  mask = observed_mask(key, SHAPE, 0.3)
  np.testing.assert_array_equal(y, jnp.where(mask, x, 0))
  test_time = jaxdrop.dropout(key, x, 0.3, inverted=False, deterministic=True)
  np.testing.assert_array_equal(test_time, x * (1 - np.float32(0.3)))


def test_inverted_and_classic_draw_the_same_mask():
  key = jax.random.key(5)
  x = _x()
  a = jaxdrop.dropout(key, x, 0.4) != 0
  b = jaxdrop.dropout(key, x, 0.4, inverted=False) != 0
  np.testing.assert_array_equal(a, b)


def test_deterministic_returns_input_itself():
  x = _x()
  assert jaxdrop.dropout(jax.random.key(0), x, 0.5, deterministic=True) is x
  assert jaxdrop.dropout(None, x, 0.5, deterministic=True) is x


def test_rate_zero_returns_input_itself_and_needs_no_key():
  x = _x()
  assert jaxdrop.dropout(None, x, 0.0) is x
  assert jaxdrop.dropout(jax.random.key(0), x, 0) is x


@pytest.mark.parametrize("inverted", [True, False])
def test_traced_deterministic_selects_at_run_time(inverted):
  x = _x()
  key = jax.random.key(6)
  f = jax.jit(lambda det: jaxdrop.dropout(key, x, 0.5, deterministic=det, inverted=inverted))
  train = jaxdrop.dropout(key, x, 0.5, inverted=inverted)
  evaluation = jaxdrop.dropout(key, x, 0.5, inverted=inverted, deterministic=True)
  np.testing.assert_array_equal(f(jnp.bool_(False)), train)
  np.testing.assert_array_equal(f(jnp.bool_(True)), evaluation)


@pytest.mark.parametrize("inverted", [True, False])
def test_rate_one_gives_exact_zeros_and_no_nan(inverted):
  x = _x().at[0, 0].set(jnp.inf).at[0, 1].set(jnp.nan)
  y = jaxdrop.dropout(jax.random.key(0), x, 1.0, inverted=inverted)
  np.testing.assert_array_equal(y, jnp.zeros_like(x))
  traced = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(0), x, r, inverted=inverted))(1.0)
  np.testing.assert_array_equal(traced, jnp.zeros_like(x))


def test_dropped_units_are_exact_zeros_even_for_nan_and_inf():
  x = jnp.full(SHAPE, jnp.nan).at[::2].set(jnp.inf)
  y = jaxdrop.dropout(jax.random.key(7), x, 0.5)
  mask = observed_mask(jax.random.key(7), SHAPE, 0.5)
  np.testing.assert_array_equal(y == 0, ~mask)


def test_traced_rate_zero_is_identity():
  x = _x()
  y = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(0), x, r))(0.0)
  np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_traced_invalid_rate_poisons_the_output_with_nan(bad):
  x = _x()
  y = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(0), x, r))(bad)
  assert bool(jnp.all(jnp.isnan(y)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float32_rate_does_not_upcast(dtype):
  x = _x(dtype=dtype)
  y = jaxdrop.dropout(jax.random.key(0), x, jnp.float32(0.2))
  assert y.dtype == dtype
  y = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(0), x, r))(jnp.float32(0.2))
  assert y.dtype == dtype


def test_float16_high_rate_has_no_overflow():
  # 1/keep exceeds float16's range for keep < 2**-16: kept units must still be finite and exact.
  x = jnp.full(2**20, 1e-4, jnp.float16).at[: 2**19].set(0)
  y = jaxdrop.dropout(jax.random.key(0), x, 0.99999)
  kept = y != 0
  assert not bool(jnp.any(jnp.isnan(y) | jnp.isinf(y)))
  assert int(kept[2**19 :].sum()) > 0
  expected = jnp.float32(1e-4).astype(jnp.float16).astype(jnp.float32) * inverted_scale(0.99999)
  np.testing.assert_allclose(np.asarray(y[2**19 :][kept[2**19 :]], np.float32), expected, rtol=1e-3)


def test_bfloat16_scaling_is_not_biased_by_rounding_the_scale():
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones(8, jnp.bfloat16), 0.1)
  kept = np.asarray(y[y != 0], np.float32)
  np.testing.assert_array_equal(
    kept, np.float32(jnp.float32(1 / np.float32(0.9)).astype(jnp.bfloat16))
  )


def test_classic_test_time_scales_half_precision_in_float32():
  x = jnp.full(4, 3.0, jnp.bfloat16)
  y = jaxdrop.dropout(None, x, 0.1, inverted=False, deterministic=True)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, (jnp.float32(3.0) * (1 - np.float32(0.1))).astype(jnp.bfloat16))


def test_float64_rate_just_below_one_scales_by_the_realised_keep():
  with jax.enable_x64(True):
    from jaxdrop import _mask

    t, any_kept, keep, *_ = _mask.drop_threshold(jnp.float64(1 - 1e-12), jnp.float64)
    assert int(t) == 2**32 - 1 and bool(any_kept) and float(keep) == 2.0**-32


def test_float64_input_keeps_float64():
  with jax.enable_x64(True):
    x = jnp.linspace(-1, 1, 4096, dtype=jnp.float64)
    y = jaxdrop.dropout(jax.random.key(0), x, 0.3)
    assert y.dtype == jnp.float64
    mask = y != 0
    # float64 keeps the rate's precision: the scale is 1 / (realised keep probability).
    realised_keep = 1 - round(0.3 * 2**32) / 2**32
    np.testing.assert_array_equal(y[mask], x[mask] * (1 / realised_keep))


@pytest.mark.parametrize("dims", [(0,), (1,), (-1,), (0, 2)])
def test_broadcast_dims_share_the_mask(dims):
  shape = (6, 7, 40)
  y = jaxdrop.dropout(jax.random.key(8), jnp.ones(shape), 0.5, broadcast_dims=dims)
  kept = y != 0
  for axis in dims:
    first = jnp.take(kept, jnp.array([0]), axis=axis)
    np.testing.assert_array_equal(kept, jnp.broadcast_to(first, shape))
  assert 0 < kept.sum() < kept.size


def test_scalar_input():
  y = jaxdrop.dropout(jax.random.key(0), jnp.float32(3.0), 0.5)
  assert y.shape == () and float(y) in (0.0, 6.0)


def test_empty_input():
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones((0, 5)), 0.5)
  assert y.shape == (0, 5)


class TestKeys:
  @pytest.mark.parametrize(
    "impl", ["threefry2x32", "rbg", "unsafe_rbg", "philox4x32", "threefry4x32"]
  )
  def test_every_key_implementation_draws_a_mask(self, impl):
    key = jax.random.key(0, impl=impl)
    y = jaxdrop.dropout(key, jnp.ones((64, 64)), 0.5)
    assert 0.4 < float((y == 0).mean()) < 0.6
    np.testing.assert_array_equal(y, jaxdrop.dropout(key, jnp.ones((64, 64)), 0.5))

  def test_legacy_key_equals_its_wrapped_typed_key(self):
    legacy = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(
      jaxdrop.dropout(legacy, _x(), 0.5),
      jaxdrop.dropout(jax.random.wrap_key_data(legacy), _x(), 0.5),
    )

  def test_same_key_same_mask_eager_jit_clone_repeat(self):
    key = jax.random.key(11)
    x = _x()
    eager = jaxdrop.dropout(key, x, 0.5)
    np.testing.assert_array_equal(eager, jaxdrop.dropout(key, x, 0.5))
    np.testing.assert_array_equal(eager, jax.jit(jaxdrop.dropout)(key, x, 0.5))
    np.testing.assert_array_equal(eager, jaxdrop.dropout(jax.random.clone(key), x, 0.5))
    np.testing.assert_array_equal(
      eager, jax.jit(jax.jit(lambda k: jaxdrop.dropout(k, x, 0.5)))(key)
    )

  def test_different_keys_different_masks(self):
    masks = [observed_mask(k, SHAPE, 0.5) for k in jax.random.split(jax.random.key(0), 8)]
    for i in range(len(masks)):
      for j in range(i):
        agree = float((masks[i] == masks[j]).mean())
        assert 0.4 < agree < 0.6, (i, j, agree)

  def test_mask_differs_from_jax_random_stream_of_the_same_key(self):
    # Domain separation: the mask is not bernoulli(key) re-expressed.
    key = jax.random.key(0)
    ours = observed_mask(key, (4096,), 0.5)
    theirs = jax.random.bernoulli(key, 0.5, (4096,))
    assert 0.45 < float((ours == theirs).mean()) < 0.55


class TestTransforms:
  def test_vmap_over_keys_equals_loop(self):
    keys = jax.random.split(jax.random.key(1), 5)
    xs = _x((5, 3, 40))
    batched = jax.vmap(lambda k, x: jaxdrop.dropout(k, x, 0.5))(keys, xs)
    looped = jnp.stack([jaxdrop.dropout(k, x, 0.5) for k, x in zip(keys, xs)])
    np.testing.assert_array_equal(batched, looped)

  def test_vmap_with_legacy_keys_equals_loop(self):
    keys = jax.random.key_data(jax.random.split(jax.random.key(1), 4))
    xs = _x((4, 50))
    batched = jax.vmap(lambda k, x: jaxdrop.dropout(k, x, 0.5))(keys, xs)
    looped = jnp.stack([jaxdrop.dropout(k, x, 0.5) for k, x in zip(keys, xs)])
    np.testing.assert_array_equal(batched, looped)

  @pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
  def test_vmap_over_rbg_keys_gives_per_example_masks(self, impl):
    keys = jax.random.split(jax.random.key(1, impl=impl), 4)
    xs = jnp.ones((4, 256))
    batched = jax.vmap(lambda k, x: jaxdrop.dropout(k, x, 0.5))(keys, xs)
    looped = jnp.stack([jaxdrop.dropout(k, x, 0.5) for k, x in zip(keys, xs)])
    np.testing.assert_array_equal(batched, looped)
    assert not bool(jnp.all(batched[0] == batched[1]))

  def test_unbatched_key_under_vmap_shares_one_mask(self):
    xs = jnp.ones((3, 64))
    y = jax.vmap(lambda x: jaxdrop.dropout(jax.random.key(2), x, 0.5))(xs)
    np.testing.assert_array_equal(y[0], y[1])
    np.testing.assert_array_equal(y[0], y[2])

  def test_vmap_over_rates(self):
    rates = jnp.array([0.0, 0.5, 1.0])
    y = jax.vmap(lambda r: jaxdrop.dropout(jax.random.key(0), jnp.ones(4096), r))(rates)
    np.testing.assert_array_equal(y[0], jnp.ones(4096))
    np.testing.assert_array_equal(y[2], jnp.zeros(4096))
    np.testing.assert_array_equal(y[1], jaxdrop.dropout(jax.random.key(0), jnp.ones(4096), 0.5))

  def test_scan_draws_a_fresh_mask_per_step_from_split_keys(self):
    keys = jax.random.split(jax.random.key(0), 6)
    x = _x((32,))

    def step(carry, key):
      return carry, jaxdrop.dropout(key, x, 0.5)

    _, ys = jax.lax.scan(step, None, keys)
    for i, k in enumerate(keys):
      np.testing.assert_array_equal(ys[i], jaxdrop.dropout(k, x, 0.5))

  def test_under_checkpoint(self):
    key = jax.random.key(0)
    x = _x()
    f = jax.checkpoint(lambda x: jaxdrop.dropout(key, x, 0.5))
    np.testing.assert_array_equal(f(x), jaxdrop.dropout(key, x, 0.5))

  def test_new_keys_and_rates_do_not_retrace(self):
    traces = []

    @jax.jit
    def f(key, x, rate):
      traces.append(1)
      return jaxdrop.dropout(key, x, rate)

    x = _x()
    for seed, rate in [(0, 0.1), (1, 0.5), (2, 0.9), (3, 0.0)]:
      f(jax.random.key(seed), x, rate).block_until_ready()
    assert len(traces) == 1

  def test_eager_calls_with_new_rates_do_not_recompile(self):
    # Eager calls go through one jitted private function; rates are traced arguments.
    from jaxdrop import _dropout as impl

    x = _x()
    jaxdrop.dropout(jax.random.key(0), x, 0.1)
    before = impl._bernoulli_dropout._cache_size()
    for rate in (0.2, 0.3, 0.7):
      jaxdrop.dropout(jax.random.key(1), x, rate)
    assert impl._bernoulli_dropout._cache_size() == before


def test_classic_test_time_with_traced_invalid_rate_is_nan():
  y = jax.jit(lambda r: jaxdrop.dropout(None, jnp.ones(4), r, inverted=False, deterministic=True))(
    jnp.nan
  )
  assert bool(jnp.all(jnp.isnan(y)))


def test_classic_expectation_matches_test_time_in_float64():
  # Training keeps units with the realised probability; test time scales by that same value.
  with jax.enable_x64(True):
    x = jnp.ones(8, jnp.float64)
    test_time = jaxdrop.dropout(None, x, 0.3, inverted=False, deterministic=True)
    np.testing.assert_array_equal(test_time, 1 - round(0.3 * 2**32) / 2**32)
