"""The family's options from timm, torchvision and Keras, and additive Gaussian noise.

Cases ported (rewritten against jaxdrop) from:
  huggingface/pytorch-image-models tests/test_layers_drop.py  (drop_path scale_by_keep=False:
                                                               kept values stay 1, eval is x;
                                                               drop_block couple_channels,
                                                               with_noise, scale_by_keep,
                                                               even and asymmetric blocks)
  pytorch/vision test/test_ops.py, TestStochasticDepth        (binomial counts of dropped
                                                               rows and batches; p = 0 and 1)
  keras-team/keras keras/src/layers/regularization/alpha_dropout_test.py  (partial noise_shape,
                                                               the output's spread, bad rates)
  keras-team/keras keras/src/layers/regularization/gaussian_noise_test.py (the noise's std)
with the family's standard checks for `gaussian_noise`: traced stddev without retrace, traced
deterministic, dtypes, stddev 0, NaN for an invalid traced stddev, gradient, bad input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

# --- drop_path(scale_by_keep=False): timm and torchvision --------------------------------------


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_drop_path_unscaled_keeps_values_and_returns_x_at_eval(mode):
  x = jax.random.normal(jax.random.key(1), (64, 3, 4))
  y = jaxdrop.drop_path(jax.random.key(0), x, 0.3, mode=mode, scale_by_keep=False)
  kept = np.asarray(jnp.any(y != 0, axis=(1, 2)))
  np.testing.assert_array_equal(y[kept], x[kept])  # survivors exactly as they were
  np.testing.assert_array_equal(y[~kept], 0.0)
  assert jaxdrop.drop_path(None, x, 0.3, scale_by_keep=False, deterministic=True) is x
  traced = jax.jit(
    lambda d: jaxdrop.drop_path(jax.random.key(0), x, 0.3, scale_by_keep=False, deterministic=d)
  )
  np.testing.assert_array_equal(traced(True), x)
  scaled = jaxdrop.drop_path(jax.random.key(0), x, 0.3, mode=mode)
  np.testing.assert_allclose(scaled, y / 0.7, rtol=1e-6)  # the same draw, scaled


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_drop_path_counts_are_binomial(p, mode):
  # torchvision: 250 trials on a batch of 5; the number of dropped rows (or batches) is
  # Binomial(n, p), here within 4 standard deviations (two-sided 6e-5). Unscaled survivors
  # are the same draw (test_drop_path_unscaled_keeps_values_and_returns_x_at_eval).
  scale_by_keep = p != 0.5
  keys = jax.random.split(jax.random.key(int(p * 10)), 250)
  f = jax.vmap(
    lambda k: jaxdrop.drop_path(
      k, jnp.ones((5, 3, 4, 4)), p, mode=mode, scale_by_keep=scale_by_keep
    )
  )
  dropped_rows = np.asarray(jnp.all(f(keys) == 0, axis=(2, 3, 4)))  # (trials, batch)
  if mode == "batch":
    assert (dropped_rows == dropped_rows[:, :1]).all()
    counts, n = int(dropped_rows[:, 0].sum()), 250
  else:
    counts, n = int(dropped_rows.sum()), 250 * 5
  assert abs(counts - n * p) < 4 * np.sqrt(n * p * (1 - p)), (counts, n, p)


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_rates_zero_and_one(scale_by_keep):
  x = jnp.ones((5, 3))
  assert jaxdrop.drop_path(jax.random.key(0), x, 0.0, scale_by_keep=scale_by_keep) is x
  np.testing.assert_array_equal(
    jaxdrop.drop_path(jax.random.key(0), x, 1.0, scale_by_keep=scale_by_keep), 0.0
  )


def test_drop_path_unscaled_gradient_is_the_mask():
  x = jax.random.normal(jax.random.key(1), (16, 8))
  key = jax.random.key(2)
  y, vjp = jax.vjp(lambda x: jaxdrop.drop_path(key, x, 0.5, scale_by_keep=False), x)
  g = jax.random.normal(jax.random.key(3), x.shape)
  np.testing.assert_array_equal(vjp(g)[0], jnp.where(y != 0, g, 0))


def test_scale_by_keep_must_be_a_bool():
  with pytest.raises(TypeError, match="scale_by_keep"):
    jaxdrop.drop_path(jax.random.key(0), jnp.ones((2, 2)), 0.5, scale_by_keep="no")


# --- alpha_dropout(broadcast_dims): Keras AlphaDropout(noise_shape) -----------------------------


def test_alpha_dropout_partial_noise_shape():
  x = jnp.ones((20, 5, 10))
  y = jaxdrop.alpha_dropout(jax.random.key(0), x, 0.5, broadcast_dims=(1,))
  for t in range(1, 5):
    np.testing.assert_array_equal(y[:, 0, :], y[:, t, :])
  assert not np.array_equal(y[:, :, 0], y[:, :, 1])
  full = jaxdrop.dropout(jax.random.key(0), x, 0.5, broadcast_dims=(1,))
  np.testing.assert_array_equal(y == y.max(), full != 0)  # dropout's mask, shared alike


def test_alpha_dropout_spread_on_ones():
  # Keras: inputs of ones at rate 0.3, the output's standard deviation within 0.1 of 1.
  # Exactly: a * |1 - alpha'| * sqrt(q (1 - q)) with q = 0.7, which is 1.088.
  y = jaxdrop.alpha_dropout(jax.random.key(1337), jnp.ones((20, 500)), 0.3)
  assert abs(float(jnp.std(y)) - 1.0) < 0.1
  q, alpha = 0.7, -1.7580993408473766
  a = (q * (1 + (1 - q) * alpha**2)) ** -0.5
  exact = a * (1 - alpha) * np.sqrt(q * (1 - q))
  assert abs(float(jnp.std(y)) - exact) < 4 * exact / np.sqrt(2 * 10_000)  # 4 standard errors


@pytest.mark.parametrize("rate", [-0.5, 1.5])
def test_alpha_dropout_bad_rate(rate):
  with pytest.raises(ValueError, match="rate must be in"):
    jaxdrop.alpha_dropout(jax.random.key(0), jnp.ones(3), rate)


def test_alpha_dropout_bad_broadcast_dims():
  with pytest.raises(ValueError, match="broadcast_dims"):
    jaxdrop.alpha_dropout(jax.random.key(0), jnp.ones((2, 3)), 0.5, broadcast_dims=(2,))


# --- gaussian_noise: Keras GaussianNoise, and the family's checks -------------------------------


def test_gaussian_noise_std():
  # Keras: ones((20, 500)) with stddev 0.3, the output's std within 0.02 of 0.3.
  y = jaxdrop.gaussian_noise(jax.random.key(1337), jnp.ones((20, 500)), 0.3)
  assert abs(float(jnp.std(y)) - 0.3) < 0.02
  eps = (y - 1) / 0.3  # 10,000 standard normals
  assert abs(float(eps.mean())) < 4 / np.sqrt(10_000)
  within_one = float(jnp.mean(jnp.abs(eps) < 1))  # 0.6827 for a standard normal
  assert abs(within_one - 0.6827) < 4 * np.sqrt(0.6827 * 0.3173 / 10_000)


def test_gaussian_noise_is_gaussian_dropouts_epsilon():
  x = jnp.full((64, 64), 2.0)
  key = jax.random.key(4)
  eps_noise = jaxdrop.gaussian_noise(key, jnp.zeros_like(x), 1.0)
  sigma = np.sqrt(0.5 / 0.5)  # rate 0.5
  eps_dropout = (jaxdrop.gaussian_dropout(key, x, 0.5) / x - 1) / sigma
  np.testing.assert_allclose(eps_noise, eps_dropout, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
def test_gaussian_noise_dtypes(dtype):
  with jax.enable_x64(dtype == jnp.float64):
    x = jnp.ones((8, 8), dtype)
    y = jaxdrop.gaussian_noise(jax.random.key(0), x, 0.1)
    assert y.dtype == dtype
    expected = (
      x.astype(jnp.float32)
      + 0.1 * jaxdrop.gaussian_noise(jax.random.key(0), jnp.zeros((8, 8), jnp.float32), 1.0)
    ).astype(dtype)
    np.testing.assert_allclose(
      np.asarray(y, np.float64), np.asarray(expected, np.float64), rtol=1e-6
    )


def test_gaussian_noise_traced_stddev_and_deterministic():
  x = jnp.zeros((100, 100))
  traces = []

  @jax.jit
  def f(key, stddev, deterministic):
    traces.append(None)
    return jaxdrop.gaussian_noise(key, x, stddev, deterministic=deterministic)

  small = f(jax.random.key(0), 0.1, False)
  large = f(jax.random.key(0), 2.0, False)
  np.testing.assert_allclose(large, 20 * small, rtol=1e-5)  # the same noise, rescaled
  np.testing.assert_array_equal(f(jax.random.key(0), 2.0, True), x)
  assert len(traces) == 1
  assert bool(jnp.all(jnp.isnan(f(jax.random.key(0), -1.0, False))))  # invalid: loud NaN
  assert bool(jnp.all(jnp.isnan(f(jax.random.key(0), jnp.nan, False))))


def test_gaussian_noise_gradient_is_identity_and_keeps_nothing():
  x = jax.random.normal(jax.random.key(1), (32, 32))
  key = jax.random.key(2)
  y, vjp = jax.vjp(lambda x, s: jaxdrop.gaussian_noise(key, x, s), x, 0.5)
  g = jax.random.normal(jax.random.key(3), x.shape)
  dx, ds = vjp(g)
  np.testing.assert_array_equal(dx, g)
  assert float(ds) == 0.0  # stddev gets no gradient
  _, vjp_x = jax.vjp(lambda x: jaxdrop.gaussian_noise(key, x, 0.5), x)
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(vjp_x)) == 0


def test_gaussian_noise_zero_stddev_and_bad_input():
  x = jnp.ones(3)
  assert jaxdrop.gaussian_noise(None, x, 0.0) is x
  assert jaxdrop.gaussian_noise(None, x, 0.5, deterministic=True) is x
  with pytest.raises(ValueError, match="stddev must be finite and >= 0, got -0.1"):
    jaxdrop.gaussian_noise(jax.random.key(0), x, -0.1)
  with pytest.raises(ValueError, match="stddev must be finite"):
    jaxdrop.gaussian_noise(jax.random.key(0), x, float("inf"))
  with pytest.raises(TypeError, match="stddev must be a real number"):
    jaxdrop.gaussian_noise(jax.random.key(0), x, "0.1")
  with pytest.raises(TypeError, match="needs a PRNG key"):
    jaxdrop.gaussian_noise(None, x, 0.1)
  with pytest.raises(TypeError, match="x must"):
    jaxdrop.gaussian_noise(jax.random.key(0), jnp.ones(3, jnp.int32), 0.1)


# --- drop_block options: timm's drop_block_2d -----------------------------------------------------


def test_drop_block_couple_channels_shares_the_spatial_mask():
  x = jnp.ones((2, 16, 16, 4))  # NHWC
  coupled = jaxdrop.drop_block(jax.random.key(42), x, 0.3, 5, couple_channels=True)
  for c in range(1, 4):
    np.testing.assert_array_equal(coupled[..., c] == 0, coupled[..., 0] == 0)
  assert not np.array_equal(coupled[0] == 0, coupled[1] == 0)  # examples still differ
  independent = jaxdrop.drop_block(jax.random.key(42), x, 0.3, 5)
  assert not np.array_equal(independent[..., 0] == 0, independent[..., 1] == 0)
  nchw = jaxdrop.drop_block(
    jax.random.key(42), jnp.ones((2, 4, 16, 16)), 0.3, 5, spatial_axes=(2, 3), couple_channels=True
  )
  np.testing.assert_array_equal(nchw[:, 1] == 0, nchw[:, 0] == 0)
  single = jaxdrop.drop_block(
    jax.random.key(42), jnp.ones((4, 16, 16)), 0.3, 5, couple_channels=True, batch_axis=None
  )  # Equinox's (C, H, W)
  np.testing.assert_array_equal(single[1] == 0, single[0] == 0)


def test_drop_block_coupled_drops_the_rate():
  y = jaxdrop.drop_block(jax.random.key(7), jnp.ones((64, 28, 28, 8)), 0.3, 5, couple_channels=True)
  dropped = float(jnp.mean(y[..., 0] == 0))
  # 64 maps of 784 units in blocks of 25: well under 0.02 standard deviation; 0.03 is timm's
  # tolerance on its drop ratio.
  assert abs(dropped - 0.3) < 0.03, dropped


def test_drop_block_unscaled_keeps_ones_and_drops_the_rate():
  y = jaxdrop.drop_block(
    jax.random.key(123), jnp.ones((32, 28, 28, 4)), 0.1, 7, scale_by_keep=False
  )
  assert set(np.unique(np.asarray(y))) == {0.0, 1.0}
  assert abs(float(jnp.mean(y == 0)) - 0.1) < 0.03  # timm's tolerance
  scaled = jaxdrop.drop_block(jax.random.key(123), jnp.ones((32, 28, 28, 4)), 0.1, 7)
  np.testing.assert_array_equal(scaled == 0, y == 0)  # the same blocks
  assert float(scaled[scaled > 0].min()) > 1.0


def test_drop_block_with_noise_fills_dropped_units_with_standard_normals():
  x = jnp.full((8, 16, 16, 3), 5.0)
  key = jax.random.key(42)
  y = jaxdrop.drop_block(key, x, 0.3, 5, with_noise=True)
  dropped = np.asarray(jaxdrop.drop_block(key, x, 0.3, 5) == 0)
  np.testing.assert_array_equal(y[~dropped], 5.0)  # survivors unscaled
  noise = np.asarray(y)[dropped]
  assert len(np.unique(noise)) > 0.99 * noise.size
  n = noise.size
  assert abs(noise.mean()) < 4 / np.sqrt(n) and abs(noise.std() - 1) < 4 / np.sqrt(2 * n)
  g = jax.random.normal(jax.random.key(1), x.shape)
  _, vjp = jax.vjp(lambda x: jaxdrop.drop_block(key, x, 0.3, 5, with_noise=True), x)
  np.testing.assert_array_equal(vjp(g)[0], jnp.where(dropped, 0, g))
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(vjp)) < 64  # the noise is not kept
  for recompute in (True, False):  # both registrations agree
    jvp_y, jvp_t = jax.jvp(
      lambda x: jaxdrop.drop_block(
        key, x, 0.3, 5, with_noise=True, recompute=recompute, autodiff="jvp"
      ),
      (x,),
      (g,),
    )
    np.testing.assert_array_equal(jvp_y, y)
    np.testing.assert_array_equal(jvp_t, jnp.where(dropped, 0, g))
  with pytest.raises(ValueError, match="with_noise=True leaves survivors unscaled"):
    jaxdrop.drop_block(key, x, 0.3, 5, with_noise=True, scale_by_keep=True)


@pytest.mark.parametrize(
  "shape, block",
  [
    ((2, 16, 16, 3), 2),
    ((2, 16, 16, 3), 4),
    ((2, 16, 16, 3), 6),
    ((2, 8, 16, 3), 5),
    ((2, 16, 8, 3), 5),
    ((2, 7, 14, 3), 5),
  ],
)
def test_drop_block_even_blocks_and_asymmetric_maps(shape, block):
  x = jax.random.normal(jax.random.key(1), shape)
  y = jaxdrop.drop_block(jax.random.key(0), x, 0.5, block, couple_channels=True)
  assert y.shape == shape
  # Coupled channels draw the mask of a one-channel map, shared by every channel.
  one = jaxdrop.drop_block(jax.random.key(0), jnp.ones(shape[:-1] + (1,)), 0.5, block)
  np.testing.assert_allclose(y, x * one, rtol=1e-6)
  assert 0 < float(jnp.mean(one == 0)) < 1


def test_drop_block_option_errors():
  x = jnp.ones((2, 8, 8, 3))
  with pytest.raises(ValueError, match="batch_axis must be one axis outside spatial_axes"):
    jaxdrop.drop_block(jax.random.key(0), x, 0.3, 3, couple_channels=True, batch_axis=1)
  with pytest.raises(TypeError, match="couple_channels"):
    jaxdrop.drop_block(jax.random.key(0), x, 0.3, 3, couple_channels="yes")
  with pytest.raises(TypeError, match="batch_axis"):  # checked even where unused
    jaxdrop.drop_block(jax.random.key(0), x, 0.3, 3, batch_axis="zzz")
