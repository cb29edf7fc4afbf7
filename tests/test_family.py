"""The dropout family: each member's defining property, exact gradients, and the shared contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MEMBERS, observed_mask, reference_dropout

import jaxdrop
from jaxdrop._block import _coverage, coverage_table, seed_rate
from jaxdrop._dropout import ALPHA_PRIME

Z = 5.0
KEY = jax.random.key(7)

SHAPE = (4, 8, 8, 6)


def _x(shape=SHAPE, dtype=jnp.float32, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


class TestSharedContract:
  @pytest.mark.parametrize("name", MEMBERS)
  @pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
  def test_dtype_and_shape_kept(self, name, dtype):
    y = MEMBERS[name](KEY, _x(dtype=dtype), 0.3)
    assert y.dtype == dtype and y.shape == SHAPE

  @pytest.mark.parametrize("name", MEMBERS)
  def test_deterministic_returns_input(self, name):
    x = _x()
    assert MEMBERS[name](KEY, x, 0.3, deterministic=True) is x
    traced = jax.jit(lambda d: MEMBERS[name](KEY, x, 0.3, deterministic=d))(jnp.bool_(True))
    np.testing.assert_array_equal(traced, x)

  @pytest.mark.parametrize("name", MEMBERS)
  def test_rate_zero_and_one_never_nan(self, name):
    x = _x().at[0, 0, 0, 0].set(jnp.inf)
    assert MEMBERS[name](None, x, 0.0) is x
    for rate in (0.0, 1.0):
      y = jax.jit(lambda r: MEMBERS[name](KEY, x, r))(rate)
      if rate == 0.0:
        np.testing.assert_array_equal(y, x)
      else:
        np.testing.assert_array_equal(y, jnp.zeros_like(x))
      grad = jax.grad(
        lambda x: jnp.sum(jnp.where(jnp.isfinite(x), MEMBERS[name](KEY, x, rate), 0))
      )(x)
      assert not bool(jnp.any(jnp.isnan(grad)))

  @pytest.mark.parametrize("name", MEMBERS)
  def test_traced_rate_does_not_retrace_and_matches_eager(self, name):
    traces = []

    @jax.jit
    def f(key, x, rate):
      traces.append(1)
      return MEMBERS[name](key, x, rate)

    x = _x()
    # Traced, a rate is its float32 value; eager, the same float32 value gives the same result.
    for rate in map(np.float32, (0.1, 0.3, 0.6)):
      np.testing.assert_array_equal(f(KEY, x, rate), MEMBERS[name](KEY, x, rate))
    assert len(traces) == 1

  @pytest.mark.parametrize("name", MEMBERS)
  def test_traced_invalid_rate_is_nan(self, name):
    y = jax.jit(lambda r: MEMBERS[name](KEY, _x(), r))(1.5)
    assert bool(jnp.all(jnp.isnan(y)))

  @pytest.mark.parametrize("name", MEMBERS)
  def test_bad_rate_and_missing_key(self, name):
    with pytest.raises(ValueError, match="rate must be in"):
      MEMBERS[name](KEY, _x(), 1.2)
    with pytest.raises(TypeError, match="needs a PRNG key"):
      MEMBERS[name](None, _x(), 0.5)

  @pytest.mark.parametrize("name", MEMBERS)
  @pytest.mark.parametrize("recompute", [True, False])
  def test_modes_bit_identical_and_forward_mode(self, name, recompute):
    x = _x()
    cot = _x(seed=2)
    results = []
    for autodiff in ("vjp", "jvp"):
      f = lambda x: MEMBERS[name](KEY, x, 0.3, recompute=recompute, autodiff=autodiff)
      y, vjp = jax.vjp(f, x)
      results.append((y, vjp(cot)[0]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    f = lambda x: MEMBERS[name](KEY, x, 0.3, recompute=recompute, autodiff="jvp")
    _, tangent = jax.jvp(f, (x,), (cot,))
    # The op is linear in x: its tangent along cot is its vjp's transpose, i.e. f applied to cot
    # minus the affine part, which f(0) carries.
    np.testing.assert_allclose(tangent, f(cot) - f(jnp.zeros_like(x)), rtol=1e-6, atol=1e-6)

  @pytest.mark.parametrize("name", MEMBERS)
  @pytest.mark.parametrize("recompute", [True, False])
  @pytest.mark.parametrize("autodiff", ["vjp", "jvp"])
  def test_backward_residuals(self, name, recompute, autodiff):
    # recompute=True keeps the key words and scalars only; False keeps the noise: a 1-byte mask
    # (Gaussian: its float32 multiplier; DropBlock: the mask plus a per-position scale). The
    # same under autodiff="jvp" (DropBlock's jvp once also kept its per-position tables).
    x = jnp.ones((8, 32, 32, 4))
    f = lambda x: MEMBERS[name](KEY, x, 0.3, recompute=recompute, autodiff=autodiff)
    _, vjp = jax.vjp(f, x)
    per_element = sum(leaf.nbytes for leaf in jax.tree.leaves(vjp)) / x.size
    limit = {"gaussian_dropout": 4.0, "drop_block": 1 + 4 * 32 * 32 / x.size}.get(name, 1.0)
    limit = 0.001 if recompute else limit + 0.001
    assert per_element <= limit, [(l.shape, l.dtype) for l in jax.tree.leaves(vjp)]

  @pytest.mark.parametrize("name", MEMBERS)
  def test_vmap_over_keys_equals_loop(self, name):
    keys = jax.random.split(KEY, 3)
    xs = jnp.stack([_x(seed=s) for s in range(3)])
    batched = jax.vmap(lambda k, x: MEMBERS[name](k, x, 0.4))(keys, xs)
    for i in range(3):
      np.testing.assert_array_equal(batched[i], MEMBERS[name](keys[i], xs[i], 0.4))


def _binomial_bound(n, p):
  return Z * math.sqrt(n * p * (1 - p))


class TestChannelDropout:
  @pytest.mark.parametrize(
    "channel_axis,batch_axis,shape",
    [(-1, 0, (16, 5, 5, 12)), (1, 0, (16, 12, 5, 5)), (-1, None, (5, 5, 12)), (1, 0, (16, 12, 40))],
  )
  def test_whole_maps_dropped_and_survivors_scaled(self, channel_axis, batch_axis, shape):
    x = _x(shape)
    y = jaxdrop.channel_dropout(KEY, x, 0.4, channel_axis=channel_axis, batch_axis=batch_axis)
    kept = y != 0
    axes = tuple(
      a
      for a in range(len(shape))
      if a not in {channel_axis % len(shape)} | ({batch_axis} if batch_axis is not None else set())
    )
    np.testing.assert_array_equal(kept.all(axes), kept.any(axes))  # each map all or nothing
    np.testing.assert_array_equal(y[kept], (x * (1 / np.float32(0.6)))[kept])

  def test_fraction_of_maps_dropped(self):
    n_maps = 2048 * 128
    y = jaxdrop.channel_dropout(KEY, jnp.ones((2048, 2, 2, 128)), 0.3)
    dropped = int((y[:, 0, 0, :] == 0).sum())
    assert abs(dropped - 0.3 * n_maps) <= _binomial_bound(n_maps, 0.3)

  def test_gradient_equals_reference(self):
    x = _x()
    mask = observed_mask(KEY, SHAPE, 0.5, broadcast_dims=(1, 2))
    np.testing.assert_array_equal(
      mask, jaxdrop.channel_dropout(KEY, jnp.ones(SHAPE), 0.5) != 0
    )  # the same draw
    g = jax.grad(lambda x: jnp.sum(jnp.sin(jaxdrop.channel_dropout(KEY, x, 0.5))))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(reference_dropout(mask, x, 2.0))))(x)
    np.testing.assert_array_equal(g, ref)

  @pytest.mark.parametrize(
    "kwargs,error,match",
    [
      (dict(channel_axis=4), ValueError, "channel_axis has axis 4, out of range"),
      (dict(batch_axis=-5), ValueError, "batch_axis has axis -5, out of range"),
      (dict(channel_axis=0), ValueError, "batch_axis and channel_axis must differ"),
      (dict(channel_axis=(1, 2)), TypeError, "channel_axis must be one integer axis"),
    ],
  )
  def test_bad_axes(self, kwargs, error, match):
    with pytest.raises(error, match=match):
      jaxdrop.channel_dropout(KEY, _x(), 0.5, **kwargs)


class TestAlphaDropout:
  @staticmethod
  def _affine(rate):
    # Klambauer et al. (and PyTorch's alpha_dropout), written out independently.
    q = 1 - rate
    a = (q * (1 + rate * ALPHA_PRIME**2)) ** -0.5
    b = -a * ALPHA_PRIME * rate
    return a, b

  @pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
  def test_selu_moments_on_a_million_samples(self, rate):
    n = 2**20
    y = np.asarray(jaxdrop.alpha_dropout(KEY, _x((n,)), rate), np.float64)
    mean, var = y.mean(), y.var()
    m4 = ((y - mean) ** 4).mean()
    assert abs(mean) <= Z / math.sqrt(n), mean
    assert abs(var - 1) <= Z * math.sqrt((m4 - var**2) / n), var

  def test_exact_values_and_gradient(self):
    rate = 0.3
    x = _x()
    a, b = self._affine(np.float64(np.float32(rate)))
    mask = observed_mask(KEY, SHAPE, rate)
    y = jaxdrop.alpha_dropout(KEY, x, rate)
    np.testing.assert_allclose(
      y, np.where(mask, a * x + b, a * ALPHA_PRIME + b), rtol=1e-6, atol=1e-6
    )
    g = jax.grad(lambda x: jnp.sum(jnp.sin(jaxdrop.alpha_dropout(KEY, x, rate))))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(jnp.where(mask, a * x + b, a * ALPHA_PRIME + b))))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g == 0, ~mask)

  def test_feature_alpha_drops_whole_maps_and_keeps_moments(self):
    y = jaxdrop.feature_alpha_dropout(KEY, jnp.zeros((64, 3, 3, 32)), 0.5)
    flat = y.reshape(64, 9, 32)
    np.testing.assert_array_equal(flat.min(1), flat.max(1))
    n = 2**20
    x = _x((n // 64, 64))  # maps of size 1: moments as for alpha_dropout
    y = np.asarray(jaxdrop.feature_alpha_dropout(KEY, x[:, None, :], 0.2), np.float64)
    assert abs(y.mean()) <= Z / math.sqrt(n) and abs(y.var() - 1) <= 0.02


class TestGaussianDropout:
  @pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
  def test_noise_moments_and_normality(self, rate):
    n = 2**20
    noise = np.asarray(jaxdrop.gaussian_dropout(KEY, jnp.ones(n), rate), np.float64)
    var = rate / (1 - rate)
    assert abs(noise.mean() - 1) <= Z * math.sqrt(var / n)
    assert abs(noise.var() - var) <= Z * var * math.sqrt(2 / n)
    within = np.mean(np.abs(noise - 1) < math.sqrt(var))  # P(|N(0,1)| < 1) = 0.6827
    assert abs(within - 0.682689) <= _binomial_bound(n, 0.682689) / n

  def test_noise_is_finite_and_symmetric_at_the_extreme_bits(self):
    from jaxdrop._mask import normal_from_bits

    bits = jnp.array([0, 255, 256, 2**31, 2**32 - 257, 2**32 - 1], jnp.uint32)
    z = np.asarray(normal_from_bits(bits))
    assert np.all(np.isfinite(z)) and 5.4 < z[-1] < 5.5
    np.testing.assert_allclose(
      [z[0], z[2]], [-z[5], -z[4]], rtol=1e-6
    )  # k and 2**24 - 1 - k mirror
    assert z[0] == z[1] and abs(z[3]) < 1e-6  # only the top 24 bits count; the middle is 0

  def test_gradient_is_g_times_the_same_noise(self):
    x = _x()
    noise = jaxdrop.gaussian_dropout(KEY, jnp.ones(SHAPE), 0.4)
    y = jaxdrop.gaussian_dropout(KEY, x, 0.4)
    np.testing.assert_allclose(y, x * noise, rtol=1e-6)
    g = _x(seed=3)
    _, vjp = jax.vjp(lambda x: jaxdrop.gaussian_dropout(KEY, x, 0.4), x)
    np.testing.assert_array_equal(vjp(g)[0], g * noise)


class TestDropPath:
  def test_each_example_dropped_whole_or_scaled(self):
    x = _x((4096, 3, 5))
    y = jaxdrop.drop_path(KEY, x, 0.25)
    dropped = np.asarray((y == 0).all((1, 2)))
    kept = np.asarray(y == x * np.float32(1 / 0.75)).all((1, 2))
    assert np.all(dropped ^ kept)
    assert abs(dropped.sum() - 0.25 * 4096) <= _binomial_bound(4096, 0.25)

  def test_batch_axis_and_batch_mode(self):
    y = jaxdrop.drop_path(KEY, jnp.ones((3, 1000)), 0.5, batch_axis=1)
    assert bool(jnp.all(y.min(0) == y.max(0)))
    outcomes = [
      bool(jnp.all(jaxdrop.drop_path(k, jnp.ones((6, 4)), 0.3, mode="batch") == 0))
      for k in jax.random.split(KEY, 400)
    ]
    for k in jax.random.split(KEY, 5):
      y = jaxdrop.drop_path(k, jnp.ones((6, 4)), 0.3, mode="batch")
      assert bool(jnp.all(y == 0)) or bool(jnp.all(y == np.float32(1 / 0.7)))
    assert abs(sum(outcomes) - 120) <= _binomial_bound(400, 0.3)

  def test_gradient_equals_reference(self):
    x = _x((64, 10))
    mask = observed_mask(KEY, (64, 10), 0.5, broadcast_dims=(1,))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(jaxdrop.drop_path(KEY, x, 0.5))))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(reference_dropout(mask, x, 2.0))))(x)
    np.testing.assert_array_equal(g, ref)

  def test_bad_input(self):
    with pytest.raises(ValueError, match="mode must be one of 'row', 'batch', got 'rows'"):
      jaxdrop.drop_path(KEY, _x(), 0.5, mode="rows")
    with pytest.raises(ValueError, match="batch axis, got a scalar"):
      jaxdrop.drop_path(KEY, 1.0, 0.5)


def _dilate_erode(dropped, b):
  """Union of all b x b windows (inside the map) that are entirely dropped, per map (NHWC)."""
  n, h, w, c = dropped.shape
  full = np.zeros_like(dropped)
  for i in range(h - b + 1):
    for j in range(w - b + 1):
      window = dropped[:, i : i + b, j : j + b, :].all((1, 2))
      full[:, i : i + b, j : j + b, :] |= window[:, None, None, :]
  return full


class TestDropBlock:
  @pytest.mark.parametrize("b", [1, 3, 4])
  def test_dropped_units_form_whole_blocks(self, b):
    y = jaxdrop.drop_block(KEY, jnp.ones((8, 12, 12, 4)), 0.2, b)
    dropped = np.asarray(y == 0)
    assert dropped.any()
    np.testing.assert_array_equal(_dilate_erode(dropped, b), dropped)

  @pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
  @pytest.mark.parametrize("size,b", [(32, 7), (12, 3)])
  def test_dropped_fraction_is_the_rate(self, size, b, rate):
    # `rate` is the expected dropped fraction (the paper's gamma realises 0.37 at 0.5, 0.55 at
    # 0.9 for b = 7 on 32 x 32). Per-map fractions are i.i.d.: their mean is within Z standard
    # errors of the rate.
    maps = 2048
    y = jaxdrop.drop_block(KEY, jnp.ones((maps, size, size, 1)), rate, b)
    per_map = np.asarray((y == 0).mean((1, 2, 3)), np.float64)
    assert abs(per_map.mean() - rate) <= Z * per_map.std() / math.sqrt(maps), (per_map.mean(), rate)

  def test_rate_one_drops_everything_and_traced_rates_match(self):
    x = _x((2, 9, 9, 3))
    np.testing.assert_array_equal(jaxdrop.drop_block(KEY, x, 1.0, 3), jnp.zeros_like(x))
    f = jax.jit(lambda r: jaxdrop.drop_block(KEY, x, r, 3))
    for rate in map(np.float32, (1e-6, 0.05, 0.5, 0.99, 1 - 2**-24, 1.0)):
      np.testing.assert_array_equal(f(rate), jaxdrop.drop_block(KEY, x, rate, 3))

  @pytest.mark.parametrize(
    "sizes,b",
    [
      ((32, 32), 7),
      ((224, 224), 7),
      ((7, 7), 7),
      ((50,), 5),
      ((16, 16, 16), 5),
      ((8, 8), 1),
      ((100, 3), 3),
    ],
  )
  @pytest.mark.parametrize("rate", [1e-9, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 2**-20])
  def test_seed_rate_solves_the_expected_fraction(self, sizes, b, rate):
    # Against bisection in float64 on the plain per-position sum (no table, no Newton).
    coverage = np.ones(sizes)
    for axis, size in enumerate(sizes):
      coverage = coverage * _coverage(size, b).reshape(
        [-1 if a == axis else 1 for a in range(len(sizes))]
      )
    fraction = lambda g: np.mean(1 - (1 - g) ** coverage)
    low, high = 0.0, 1.0
    for _ in range(200):
      mid = (low + high) / 2
      low, high = (mid, high) if fraction(mid) < rate else (low, mid)
    gamma = float(seed_rate(np.float32(rate), *coverage_table(sizes, b)))
    assert gamma == pytest.approx(low, rel=2e-5), (gamma, low)

  def test_coverage_table_counts_the_draws_coverage(self):
    # The table's closed form against counting `_coverage` position by position, for every
    # size up to 40 and block up to the size (sizes traced, as under jax.export).
    for b in range(1, 13):
      sizes = np.arange(b, 41)
      w = jax.jit(jax.vmap(lambda s: coverage_table([s], b)[1]))(sizes)
      counted = [np.bincount(_coverage(int(s), b), minlength=b + 1)[1:] / s for s in sizes]
      np.testing.assert_allclose(np.asarray(w), np.asarray(counted), rtol=1e-6, err_msg=f"b={b}")

  def test_output_is_unbiased_at_every_position(self):
    maps, size, b = 8192, 9, 3
    y = np.asarray(jaxdrop.drop_block(KEY, jnp.ones((maps, size, size, 1)), 0.3, b), np.float64)
    mean, std = y.mean(0), y.std(0)
    assert np.all(np.abs(mean - 1) <= Z * std / math.sqrt(maps) + 1e-9), mean

  def test_values_and_gradient_with_the_analytic_scale(self):
    shape, rate, b = (2, 10, 10, 3), 0.2, 3
    x = _x(shape)
    ones = jaxdrop.drop_block(KEY, jnp.ones(shape), rate, b)
    mask = ones != 0
    n = np.outer(_coverage(10, b), _coverage(10, b))[None, :, :, None]
    # The realised seed rate is gamma's 32-bit threshold t / 2**32.
    gamma = (
      int(np.round(np.float64(seed_rate(np.float32(rate), *coverage_table((10, 10), b))) * 2**32))
      / 2**32
    )
    scale = 1 / (1 - gamma) ** n
    np.testing.assert_allclose(
      np.asarray(ones)[np.asarray(mask)], np.broadcast_to(scale, shape)[np.asarray(mask)], rtol=1e-5
    )
    g = jax.grad(lambda x: jnp.sum(jnp.sin(jaxdrop.drop_block(KEY, x, rate, b))))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(jnp.where(mask, x * ones, 0))))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    np.testing.assert_array_equal(g == 0, ~mask)

  def test_nchw_and_one_dimensional(self):
    y = jaxdrop.drop_block(KEY, jnp.ones((4, 2, 12, 12)), 0.3, 3, spatial_axes=(2, 3))
    np.testing.assert_array_equal(
      _dilate_erode(np.moveaxis(np.asarray(y == 0), 1, -1), 3),
      np.moveaxis(np.asarray(y == 0), 1, -1),
    )
    y = jaxdrop.drop_block(KEY, jnp.ones((64, 50)), 0.3, 5, spatial_axes=(1,))
    runs = np.diff(
      np.concatenate([np.zeros((64, 1)), np.asarray(y == 0), np.zeros((64, 1))], 1), axis=1
    )
    starts, ends = np.nonzero(runs == 1), np.nonzero(runs == -1)
    assert np.all(ends[1] - starts[1] >= 5)  # every dropped run is at least one block long

  @pytest.mark.parametrize(
    "block,axes,error,match",
    [
      (9, (1, 2), ValueError, "block_size must be between 1 and the smallest spatial size 8"),
      (0, (1, 2), ValueError, "block_size must be between 1"),
      (2.5, (1, 2), TypeError, "block_size must be a positive integer"),
      (3, (1, 5), ValueError, "spatial_axes has axis 5, out of range"),
      (3, (), ValueError, "spatial_axes must name at least one axis"),
    ],
  )
  def test_bad_input(self, block, axes, error, match):
    with pytest.raises(error, match=match):
      jaxdrop.drop_block(KEY, _x(), 0.2, block, spatial_axes=axes)


class TestDropConnect:
  def test_independent_masks_per_leaf_and_structure(self):
    params = {"dense": {"w": jnp.ones((64, 64)), "b": jnp.ones(64)}, "out": [jnp.ones((64, 64))]}
    out = jaxdrop.drop_connect(KEY, params, 0.5)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    w1, w2 = out["dense"]["w"], out["out"][0]
    assert 0.4 < float(((w1 == 0) == (w2 == 0)).mean()) < 0.6
    for leaf in jax.tree.leaves(out):
      assert bool(jnp.all((leaf == 0) | (leaf == 2)))

  def test_gradient_through_the_weights(self):
    w = _x((8, 16))
    x = _x((4, 8), seed=5)
    mask = jaxdrop.drop_connect(KEY, jnp.ones((8, 16)), 0.5) != 0
    loss = lambda w: jnp.sum(jnp.tanh(x @ jaxdrop.drop_connect(KEY, w, 0.5)))
    ref = lambda w: jnp.sum(jnp.tanh(x @ reference_dropout(mask, w, 2.0)))
    np.testing.assert_allclose(jax.grad(loss)(w), jax.grad(ref)(w), rtol=1e-6)

  def test_non_float_leaf_is_named(self):
    with pytest.raises(TypeError, match=r"dtype int32 at params\['step'\]"):
      jaxdrop.drop_connect(KEY, {"w": jnp.ones(3), "step": jnp.int32(0)}, 0.5)


class TestLockedDropout:
  def test_same_mask_at_every_step_of_a_scan(self):
    mask = jaxdrop.make_mask(KEY, (4, 32), 0.5)

    def step(carry, x):
      y = jaxdrop.apply_mask(mask, x)
      return carry, y

    _, ys = jax.lax.scan(step, None, jnp.ones((6, 4, 32)))
    for t in range(6):
      np.testing.assert_array_equal(ys[t] != 0, mask.keep)
    np.testing.assert_array_equal(mask.keep, observed_mask(KEY, (4, 32), 0.5))

  def test_gradient_through_a_recurrent_loop(self):
    mask = jaxdrop.make_mask(KEY, (1, 16), 0.3)
    w = _x((16, 16)) * 0.3
    xs = _x((5, 2, 16), seed=4)

    def run(apply):
      def loss(w):
        def step(h, x):
          h = jnp.tanh(x + apply(h) @ w)
          return h, None

        return jnp.sum(jax.lax.scan(step, jnp.ones((2, 16)), xs)[0])

      return jax.grad(loss)(w)

    ours = run(lambda h: jaxdrop.apply_mask(mask, h))
    ref = run(lambda h: reference_dropout(mask.keep, h, mask.scale))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)

  def test_broadcast_dims_over_time_is_the_same_locking(self):
    y = jaxdrop.dropout(KEY, jnp.ones((4, 7, 32)), 0.5, broadcast_dims=(1,))
    for t in range(7):
      np.testing.assert_array_equal(y[:, t], y[:, 0])

  def test_bad_input(self):
    mask = jaxdrop.make_mask(KEY, (4, 32), 0.5)
    with pytest.raises(
      ValueError, match=r"mask of shape \(4, 32\).*does not broadcast against x of shape \(4, 16\)"
    ):
      jaxdrop.apply_mask(mask, jnp.ones((4, 16)))
    with pytest.raises(TypeError, match="mask must be a DropoutMask"):
      jaxdrop.apply_mask(jnp.ones((4, 32), bool), jnp.ones((4, 32)))
    with pytest.raises(ValueError, match="shape must hold non-negative sizes"):
      jaxdrop.make_mask(KEY, (4, -1), 0.5)
    with pytest.raises(ValueError, match="rate must be in"):
      jaxdrop.make_mask(KEY, (4,), -0.5)


class TestMCDropout:
  @staticmethod
  def _fn(key, x):
    k1, k2 = jax.random.split(key)
    h = jaxdrop.dropout(k1, x, 0.5)
    return {"sum": jnp.sum(h), "h": jaxdrop.dropout(k2, h, 0.2)}

  def test_samples_equal_a_loop_over_split_keys(self):
    x = _x((10,))
    result = jaxdrop.mc_dropout(self._fn, KEY, 16, x)
    keys = jax.random.split(KEY, 16)
    for t in (0, 7, 15):
      expected = self._fn(keys[t], x)
      np.testing.assert_array_equal(result.samples["h"][t], expected["h"])
    np.testing.assert_allclose(result.mean["sum"], result.samples["sum"].mean(), rtol=1e-6)
    np.testing.assert_allclose(result.variance["h"], result.samples["h"].var(0), rtol=1e-6)

  @pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
  def test_chunked_and_streaming_agree_with_all_at_once(self, chunk_size):
    x = _x((10,))
    full = jaxdrop.mc_dropout(self._fn, KEY, 37, x)
    chunked = jaxdrop.mc_dropout(self._fn, KEY, 37, x, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked.samples["h"], full.samples["h"])
    streamed = jax.jit(
      lambda x: jaxdrop.mc_dropout(
        self._fn, KEY, 37, x, chunk_size=chunk_size, return_samples=False
      )
    )(x)
    assert streamed.samples is None
    for name in ("sum", "h"):
      np.testing.assert_allclose(streamed.mean[name], full.mean[name], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(streamed.variance[name], full.variance[name], rtol=1e-4, atol=1e-6)

  def test_predictive_mean_converges_to_the_deterministic_output(self):
    # Inverted dropout keeps the expectation: the MC mean of a linear model is x @ w.
    w, x = _x((20, 3)), _x((20,), seed=2)
    result = jaxdrop.mc_dropout(lambda k, x: jaxdrop.dropout(k, x, 0.5) @ w, KEY, 4096, x)
    stderr = np.sqrt(np.asarray(result.variance) / 4096)
    assert np.all(np.abs(np.asarray(result.mean) - np.asarray(x @ w)) <= Z * stderr)

  @pytest.mark.parametrize(
    "num_samples,chunk_size,match",
    [
      (0, None, "num_samples must be a positive integer, got 0"),
      (4, 0, "chunk_size must be a positive integer, got 0"),
    ],
  )
  def test_bad_counts(self, num_samples, chunk_size, match):
    with pytest.raises(ValueError, match=match):
      jaxdrop.mc_dropout(self._fn, KEY, num_samples, _x((3,)), chunk_size=chunk_size)

  def test_fn_must_be_callable(self):
    with pytest.raises(TypeError, match="fn must be callable"):
      jaxdrop.mc_dropout(None, KEY, 4)


class TestReviewedEdges:
  """Bad input and edge cases found in review, each with the error or result it must give."""

  def test_apply_mask_rejects_a_batched_scale(self):
    masks = jax.vmap(lambda k, r: jaxdrop.make_mask(k, (1, 2), r))(
      jax.random.split(KEY, 2), jnp.array([0.0, 0.5])
    )
    with pytest.raises(ValueError, match="mask.scale must be a scalar, got shape"):
      jaxdrop.apply_mask(jaxdrop.DropoutMask(masks.keep[0], masks.scale), jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="mask.scale must be a real scalar"):
      jaxdrop.apply_mask(jaxdrop.DropoutMask(masks.keep[0], "a"), jnp.ones((2, 2)))

  def test_make_mask_rejects_float_sizes_and_names_itself(self):
    with pytest.raises(TypeError, match="shape must be a sequence of integers"):
      jaxdrop.make_mask(KEY, (2.5, 3), 0.5)
    with pytest.raises(
      TypeError, match="make_mask needs a PRNG key .* unless rate is a concrete 0"
    ):
      jaxdrop.make_mask(None, (2, 3), 0.5)

  def test_drop_connect_checks_its_options_before_returning_early(self):
    with pytest.raises(ValueError, match="autodiff must be one of"):
      jaxdrop.drop_connect(None, {"w": jnp.ones(3)}, 0.0, autodiff="bad")
    with pytest.raises(TypeError, match=r"floating array leaves, got 'abc' at params\['n'\]"):
      jaxdrop.drop_connect(KEY, {"w": jnp.ones(3), "n": "abc"}, 0.5)

  @pytest.mark.parametrize(
    "call,name",
    [
      (lambda v: jaxdrop.drop_connect(KEY, v, 0.5), "drop_connect"),
      (lambda v: jaxdrop.apply_mask(jaxdrop.make_mask(KEY, (4,), 0.5), v), "apply_mask"),
    ],
  )
  def test_forward_mode_hint_names_the_function(self, call, name):
    with pytest.raises(TypeError, match=f"pass autodiff='jvp' to jaxdrop.{name}"):
      jax.jvp(call, (jnp.ones(4),), (jnp.ones(4),))

  def test_drop_path_batch_mode_ignores_batch_axis(self):
    y = jaxdrop.drop_path(KEY, jnp.ones(3), 0.5, mode="batch", batch_axis=2)
    assert y.shape == (3,)

  def test_keys_and_arrays_swapped_or_malformed(self):
    with pytest.raises(TypeError, match=r"x is a PRNG key, .* jaxdrop.dropout\(key, x, rate\)"):
      jaxdrop.dropout(jnp.ones(3), KEY, 0.5)
    with pytest.raises(TypeError, match="x must be an array of a floating dtype, got NoneType"):
      jaxdrop.dropout(KEY, None, 0.5)
    with pytest.raises(TypeError, match="x must be an array of a floating dtype, got list"):
      jaxdrop.dropout(KEY, [[1.0], [1.0, 2.0]], 0.5)

  def test_mc_dropout_count_types_and_large_chunked_moments(self):
    with pytest.raises(TypeError, match="num_samples must be a positive integer, got 2.0"):
      jaxdrop.mc_dropout(lambda k: jnp.ones(()), KEY, 2.0)
    from jaxdrop._mc import _combine

    n, mean, m2 = jax.jit(lambda n: _combine((n, 0.0, 0.0), (jnp.float32(50_000), 1.0, 0.0)))(
      jnp.float32(100_000)
    )
    np.testing.assert_allclose(m2, 100_000 * 50_000 / 150_000, rtol=1e-6)

  def test_drop_block_nchw_hint(self):
    with pytest.raises(ValueError, match=r"for NCHW input pass spatial_axes=\(2, 3\)"):
      jaxdrop.drop_block(KEY, jnp.ones((2, 3, 32, 32)), 0.1, 5)


def test_drop_block_hints_nchw_only_where_it_would_help_and_passes_empty_arrays():
  # block_size 0 is wrong in any layout: no NCHW hint. A 3-wide block on an NHWC map of 2 x 2
  # would fit only as NCHW (32 x 32): the hint.
  with pytest.raises(ValueError, match="block_size must be between 1") as info:
    jaxdrop.drop_block(KEY, jnp.ones((2, 8, 8, 3)), 0.1, 0)
  assert "NCHW" not in str(info.value)
  with pytest.raises(ValueError, match="NCHW"):
    jaxdrop.drop_block(KEY, jnp.ones((2, 2, 32, 32)), 0.1, 3)
  empty = jnp.ones((0, 8, 8, 3))
  assert jaxdrop.drop_block(KEY, empty, 0.1, 3) is empty
