"""Concrete and variational dropout: learned rates and noise variances.

The relaxed mask and the Gaussian noise are checked against their distributions with fixed
keys (chi-squared at significance 1e-6, z-bounds of 5 standard deviations); gradients exactly
against autodiff of a plain reference computed from the same random bits (`random_bits`), and
against central finite differences with the same key.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

KEY = jax.random.key(7)
Z = 5.0


def chi2_critical(dof, z=4.753):  # one-sided p = 1e-6, Wilson-Hilferty
  return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def logistic_noise(key, shape):
  """logit(u), u = (2k + 1) / 2**25 for the top 24 bits k of `random_bits` (the documented
  draw), in float64 on the host."""
  k = np.asarray(jaxdrop.random_bits(key, shape)).astype(np.float64) // 2**8
  u = (2 * k + 1) / 2**25
  return np.log(u) - np.log1p(-u)


def standard_normal(key, shape):
  """gaussian_dropout's noise for `key`, read off its output on ones (sigma = 1 at rate 1/2)."""
  return jaxdrop.gaussian_dropout(key, jnp.ones(shape), 0.5) - 1


def concrete_reference(noise, x, rate, temperature=0.1):
  """Concrete dropout's formula, written out, for plain autodiff; ``1 - drop`` as the sigmoid
  of the negated argument (``1 - sigmoid(a)`` would cancel where a unit is almost dropped)."""
  logit_rate = jnp.log(rate) - jnp.log1p(-rate)
  keep = jax.nn.sigmoid(-(logit_rate - noise) / temperature)
  return x * keep / (1 - rate)


class TestConcreteDropout:
  def test_noise_is_the_documented_function_of_random_bits(self):
    x = jax.random.normal(jax.random.key(1), (64, 96))
    y = jaxdrop.concrete_dropout(KEY, x, 0.3, temperature=0.5)
    noise = jnp.asarray(logistic_noise(KEY, x.shape), jnp.float32)
    np.testing.assert_allclose(y, concrete_reference(noise, x, 0.3, 0.5), rtol=5e-6, atol=1e-7)

  # Temperatures at which float32 resolves the bins' edges (at 0.1 most of the mass is within
  # 1e-6 of 0 or 1; test_fraction_mostly_dropped_is_the_rate covers the cold end).
  @pytest.mark.parametrize("rate,temperature", [(0.3, 0.5), (0.5, 2 / 3), (0.8, 1.0)])
  def test_relaxed_mask_has_the_concrete_distribution(self, rate, temperature):
    # z = 1 - y (1 - rate) / x is the relaxed "dropped" value; P(z <= s) =
    # 1 - sigmoid(logit(rate) - t logit(s)). 2**20 units in 32 bins of equal probability.
    n, bins = 2**20, 32
    y = jaxdrop.concrete_dropout(KEY, jnp.ones((1024, n // 1024)), rate, temperature=temperature)
    z = 1 - np.asarray(y, np.float64).ravel() * (1 - rate)
    q = np.arange(1, bins) / bins
    # inverse CDF: s = sigmoid((logit(rate) - logit(1 - q)) / t)
    logit = lambda p: np.log(p) - np.log1p(-p)
    edges = 1 / (1 + np.exp(-(logit(rate) - logit(1 - q)) / temperature))
    counts = np.bincount(np.searchsorted(edges, z), minlength=bins)
    chi2 = float(np.sum((counts - n / bins) ** 2 / (n / bins)))
    assert chi2 < chi2_critical(bins - 1), (chi2, counts)

  @pytest.mark.parametrize("rate", [0.1, 0.5])
  def test_fraction_mostly_dropped_is_the_rate(self, rate):
    # z > 1/2 exactly where u < rate: a Bernoulli(rate) count.
    n = 2**20
    y = jaxdrop.concrete_dropout(KEY, jnp.ones((512, n // 512)), rate)
    dropped = int(np.sum(np.asarray(y) * (1 - rate) < 0.5))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(dropped - n * rate) <= Z * sigma, (dropped, n * rate, sigma)

  def test_cold_limit_is_dropouts_mask(self):
    # As the temperature falls the drop pattern becomes dropout's for the same key and rate.
    x = jax.random.normal(jax.random.key(1), (256, 256))
    y = jaxdrop.concrete_dropout(KEY, x, 0.3, temperature=1e-3)
    dropped = np.abs(np.asarray(y / x)) * 0.7 < 0.5
    np.testing.assert_array_equal(dropped, jaxdrop.dropout(KEY, x, 0.3) == 0)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
  def test_gradients_equal_autodiff_of_the_reference(self, dtype):
    x = jax.random.normal(jax.random.key(1), (16, 40)).astype(dtype)
    g = jax.random.normal(jax.random.key(2), (16, 40))
    rate = jnp.float32(0.25)
    noise = jnp.asarray(logistic_noise(KEY, x.shape), jnp.float32)

    def ours(x, rate):
      return jnp.sum(g * jaxdrop.concrete_dropout(KEY, x, rate).astype(jnp.float32))

    def reference(x, rate):
      return jnp.sum(g * concrete_reference(noise, x.astype(jnp.float32), rate))

    dx, drate = jax.jit(jax.grad(ours, (0, 1)))(x, rate)
    ex, erate = jax.grad(reference, (0, 1))(x, rate)
    assert dx.dtype == dtype and drate.dtype == jnp.float32
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(dx.astype(jnp.float32), ex.astype(jnp.float32), rtol=tol, atol=tol)
    # the cotangent reaches the op in x's dtype (rounded for half precision), the reference's not
    np.testing.assert_allclose(drate, erate, rtol=1e-4 if dtype == jnp.float32 else 3e-3)

  @pytest.mark.parametrize(
    "shape,rate_shape,broadcast_dims",
    [
      ((8, 6, 6, 5), (), ()),
      ((8, 6, 6, 5), (5,), ()),  # one rate per channel
      ((8, 6, 6, 5), (5,), (1, 2)),  # spatial concrete dropout: one noise per channel map
      ((8, 12), (8, 1), ()),  # one rate per example row
    ],
  )
  def test_rate_gradient_against_finite_differences(self, shape, rate_shape, broadcast_dims):
    x = jax.random.normal(jax.random.key(1), shape)
    g = jax.random.normal(jax.random.key(2), shape)
    rate = jnp.full(rate_shape, 0.3) + 0.05 * jnp.arange(
      math.prod(rate_shape), dtype=jnp.float32
    ).reshape(rate_shape)
    loss = lambda r: jnp.sum(
      g * jaxdrop.concrete_dropout(KEY, x, r, temperature=0.5, broadcast_dims=broadcast_dims)
    )
    grad = jax.grad(loss)(rate)
    h = 1e-3
    for i in np.ndindex(rate_shape):
      e = jnp.zeros(rate_shape).at[i].set(h)
      fd = (loss(rate + e) - loss(rate - e)) / (2 * h)
      np.testing.assert_allclose(grad[i], fd, rtol=5e-3, atol=5e-3 * math.sqrt(x.size) * h)

  def test_spatial_form_shares_the_noise_over_the_map(self):
    x = jnp.ones((4, 6, 6, 3))
    y = jaxdrop.concrete_dropout(KEY, x, 0.4, temperature=1.0, broadcast_dims=(1, 2))
    np.testing.assert_array_equal(y, jnp.broadcast_to(y[:, :1, :1, :], y.shape))
    assert len(np.unique(np.asarray(y))) == 12

  def test_backward_keeps_only_the_key_the_rate_and_x(self):
    # The backward pass draws the noise again: of per-element arrays it keeps x alone (which
    # the rate's gradient needs), not the noise, the relaxed mask or the sigmoid's derivative.
    x = jnp.ones((256, 512))
    _, vjp = jax.vjp(lambda x, r: jaxdrop.concrete_dropout(KEY, x, r), x, jnp.float32(0.2))
    leaves = jax.tree.leaves(vjp)
    big = [leaf for leaf in leaves if leaf.size >= x.size]
    assert sum(leaf.nbytes for leaf in big) == x.nbytes, [(l.shape, l.dtype) for l in big]
    assert sum(leaf.nbytes for leaf in leaves if leaf.size < x.size) <= 64
    # Plain autodiff of the formula keeps more.
    noise = jnp.zeros(x.shape)
    _, plain = jax.vjp(lambda x, r: concrete_reference(noise, x, r), x, jnp.float32(0.2))
    assert sum(l.nbytes for l in jax.tree.leaves(plain) if l.size >= x.size) >= 2 * x.nbytes

  def test_deterministic_and_rate_zero_return_x(self):
    x = jnp.arange(6.0)
    assert jaxdrop.concrete_dropout(KEY, x, 0.3, deterministic=True) is x
    assert jaxdrop.concrete_dropout(None, x, 0.0) is x
    f = jax.jit(lambda d: jaxdrop.concrete_dropout(KEY, x, 0.3, deterministic=d))
    np.testing.assert_array_equal(f(jnp.bool_(True)), x)
    assert not np.array_equal(f(jnp.bool_(False)), x)
    # deterministic under grad: identity in x, no gradient to the rate
    dx, dr = jax.grad(
      lambda x, r: jnp.sum(jaxdrop.concrete_dropout(KEY, x, r, deterministic=jnp.bool_(True))),
      (0, 1),
    )(x, 0.3)
    np.testing.assert_array_equal(dx, jnp.ones(6))
    assert float(dr) == 0.0

  def test_traced_rate_does_not_retrace_and_bad_traced_values_give_nan(self):
    traces = []

    @jax.jit
    def f(r, t):
      traces.append(1)
      return jaxdrop.concrete_dropout(KEY, jnp.ones(64), r, temperature=t)

    a, b = f(0.2, 0.1), f(0.4, 0.2)
    assert len(traces) == 1 and not np.array_equal(a, b)
    for r, t in [(1.0, 0.1), (-0.1, 0.1), (jnp.nan, 0.1), (0.2, 0.0), (0.2, -1.0)]:
      assert bool(jnp.all(jnp.isnan(f(r, t)))), (r, t)

  @pytest.mark.parametrize(
    "kwargs,error,match",
    [
      (dict(rate=1.0), ValueError, r"rate must be in \[0, 1\) for concrete_dropout"),
      (dict(rate=-0.1), ValueError, "rate must be in"),
      (dict(rate=jnp.array([0.1, 1.0, 0.2])), ValueError, "rate must be in"),
      (dict(rate=jnp.ones(4) * 0.1), ValueError, r"broadcasts to x's shape \(2, 3\)"),
      (dict(rate="0.1"), TypeError, "rate must be"),
      (dict(rate=True), TypeError, "rate must be"),
      (dict(temperature=0.0), ValueError, "temperature must be > 0"),
      (dict(temperature=-1.0), ValueError, "temperature must be finite and >= 0"),
      (dict(broadcast_dims=(5,)), ValueError, "broadcast_dims has axis 5"),
      (dict(key=None), TypeError, "concrete_dropout needs a PRNG key"),
      (dict(x=jnp.ones((2, 3), jnp.int32)), TypeError, "x must have a floating dtype"),
    ],
  )
  def test_errors_name_the_argument(self, kwargs, error, match):
    args = dict(key=KEY, x=jnp.ones((2, 3)), rate=0.1)
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in ("temperature", "broadcast_dims")}
    args.update(kwargs)
    with pytest.raises(error, match=match):
      jaxdrop.concrete_dropout(args["key"], args["x"], args["rate"], **options)


class TestConcreteRegularizer:
  def test_value_is_the_papers_formula(self):
    w = jax.random.normal(jax.random.key(1), (13, 50))
    n, l, p = 455, 1e-2, 0.2
    got = jaxdrop.concrete_dropout_regularizer(
      p, w, input_dim=13, weight_regularizer=l**2 / n, dropout_regularizer=2 / n
    )
    w64 = np.asarray(w, np.float64)
    expected = l**2 / n * np.sum(w64**2) / (1 - p) + 2 / n * 13 * (
      p * np.log(p) + (1 - p) * np.log(1 - p)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)

  def test_gradient_in_rate_and_weights(self):
    w = jax.random.normal(jax.random.key(1), (6, 4))
    f = lambda p, w: jaxdrop.concrete_dropout_regularizer(
      p, w, input_dim=6, weight_regularizer=0.3, dropout_regularizer=0.7
    )
    dp, dw = jax.grad(f, (0, 1))(0.3, w)
    # d/dp: 0.3 |W|^2 / (1-p)^2 + 0.7 * 6 * log(p / (1-p))
    np.testing.assert_allclose(dp, 0.3 * jnp.sum(w**2) / 0.49 + 4.2 * np.log(0.3 / 0.7), rtol=1e-5)
    np.testing.assert_allclose(dw, 0.3 * 2 * w / 0.7, rtol=1e-6)
    # the dropout term alone is maximal in entropy at p = 1/2
    assert abs(float(jax.grad(f)(0.5, 0 * w))) < 1e-6

  @pytest.mark.parametrize("layout", ["in_out", "out_in", "conv"])
  def test_one_rate_per_input_unit_sums_the_units_terms(self, layout):
    # Flax (in, out) kernels take rates (K, 1); Equinox (out, in) weights rates (K,); a Flax
    # (h, w, in, out) convolution kernel one rate per input channel, (K, 1).
    k = 5
    shape, rate_shape, rows = {
      "in_out": ((k, 3), (k, 1), lambda w: w),
      "out_in": ((3, k), (k,), lambda w: w.T),
      "conv": ((2, 2, k, 3), (k, 1), lambda w: np.moveaxis(w, 2, 0).reshape(k, -1)),
    }[layout]
    w = jax.random.normal(jax.random.key(2), shape)
    p = jax.random.uniform(jax.random.key(3), rate_shape, minval=0.05, maxval=0.6)
    got = jaxdrop.concrete_dropout_regularizer(
      p, w, input_dim=k, weight_regularizer=0.3, dropout_regularizer=0.7
    )
    p64 = np.asarray(p, np.float64).reshape(k)
    per_row = np.sum(rows(np.asarray(w, np.float64)).reshape(k, -1) ** 2, 1)
    expected = np.sum(
      0.3 * per_row / (1 - p64) + 0.7 * (p64 * np.log(p64) + (1 - p64) * np.log(1 - p64))
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # each unit's rate gets its own derivative: 0.3 |W_k|^2 / (1-p_k)^2 + 0.7 log(p_k/(1-p_k))
    grad = jax.jit(
      jax.grad(
        lambda p: jaxdrop.concrete_dropout_regularizer(
          p, w, input_dim=k, weight_regularizer=0.3, dropout_regularizer=0.7
        )
      )
    )(p)
    expected_grad = 0.3 * per_row / (1 - p64) ** 2 + 0.7 * np.log(p64 / (1 - p64))
    np.testing.assert_allclose(np.reshape(grad, k), expected_grad, rtol=1e-4)

  @pytest.mark.parametrize(
    "kwargs,error,match",
    [
      (dict(rate=1.5), ValueError, r"rate must be in \[0, 1\]"),
      (
        dict(rate=jnp.ones(3) * 0.1),
        ValueError,
        "rate must be a scalar or an array that "
        r"broadcasts to kernel's shape \(3, 2\), got shape \(3,\)",
      ),
      (dict(rate=jnp.ones((1, 2)) * 0.1), ValueError, r"one rate per input unit \(input_dim = 3"),
      (dict(rate=jnp.array([[0.1], [1.5], [0.1]])), ValueError, r"rate must be in \[0, 1\]"),
      (dict(rate=True), TypeError, "rate must be a drop probability"),
      (dict(input_dim=0), ValueError, "input_dim must be a positive int"),
      (dict(input_dim=2.5), TypeError, "input_dim must be a positive int"),
      (dict(weight_regularizer=-1.0), ValueError, "weight_regularizer must be finite and >= 0"),
      (dict(dropout_regularizer=jnp.nan), ValueError, "dropout_regularizer must be finite"),
    ],
  )
  def test_errors_name_the_argument(self, kwargs, error, match):
    args = dict(rate=0.1, input_dim=3, weight_regularizer=1e-4, dropout_regularizer=1e-3)
    args.update(kwargs)
    rate = args.pop("rate")
    with pytest.raises(error, match=match):
      jaxdrop.concrete_dropout_regularizer(rate, jnp.ones((3, 2)), **args)


class TestVariationalDropout:
  @pytest.mark.parametrize("rate", [0.1, 0.5])
  def test_alpha_of_a_rate_is_gaussian_dropout(self, rate):
    x = jax.random.normal(jax.random.key(1), (64, 80))
    y = jaxdrop.variational_dropout(KEY, x, math.log(rate / (1 - rate)))
    np.testing.assert_allclose(y, jaxdrop.gaussian_dropout(KEY, x, rate), rtol=1e-6, atol=1e-7)

  def test_noise_statistics_per_channel(self):
    # Per-channel log_alpha: sample mean 1 and variance alpha of each channel's noise
    # (2**16 samples each; bounds of 5 standard errors: var(s^2) = 2 alpha^2 for a normal).
    alpha = np.array([0.01, 0.25, 1.0, 4.0])
    n = 2**16
    y = np.asarray(jaxdrop.variational_dropout(KEY, jnp.ones((n, 4)), jnp.log(alpha)), np.float64)
    mean, var = y.mean(0), y.var(0)
    assert np.all(np.abs(mean - 1) <= Z * np.sqrt(alpha / n)), mean
    assert np.all(np.abs(var - alpha) <= Z * alpha * np.sqrt(2 / n)), var

  def test_gradients_equal_autodiff_of_the_reference(self):
    x = jax.random.normal(jax.random.key(1), (32, 6))
    g = jax.random.normal(jax.random.key(2), (32, 6))
    log_alpha = jnp.linspace(-3.0, 1.0, 6)
    eps = standard_normal(KEY, x.shape)
    ours = lambda x, la: jnp.sum(g * jaxdrop.variational_dropout(KEY, x, la))
    ref = lambda x, la: jnp.sum(g * x * (1 + jnp.exp(0.5 * la)[None] * eps))
    for got, expected in zip(
      jax.grad(ours, (0, 1))(x, log_alpha), jax.grad(ref, (0, 1))(x, log_alpha)
    ):
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  @pytest.mark.parametrize("la_shape", [(), (5,), (4, 5)])  # per layer, channel, weight
  def test_log_alpha_gradient_against_finite_differences(self, la_shape):
    x = jax.random.normal(jax.random.key(1), (4, 5))
    g = jax.random.normal(jax.random.key(2), (4, 5))
    log_alpha = jnp.full(la_shape, -1.0)
    loss = lambda la: jnp.sum(g * jaxdrop.variational_dropout(KEY, x, la))
    grad = jax.grad(loss)(log_alpha)
    h = 1e-2
    for i in np.ndindex(la_shape):
      e = jnp.zeros(la_shape).at[i].set(h)
      fd = (loss(log_alpha + e) - loss(log_alpha - e)) / (2 * h)
      np.testing.assert_allclose(grad[i], fd, rtol=2e-3, atol=1e-4)

  def test_backward_keeps_only_the_key_log_alpha_and_x(self):
    x = jnp.ones((256, 512))
    _, vjp = jax.vjp(lambda x, la: jaxdrop.variational_dropout(KEY, x, la), x, jnp.zeros(512))
    leaves = jax.tree.leaves(vjp)
    assert sum(l.nbytes for l in leaves if l.size >= x.size) == x.nbytes
    assert sum(l.nbytes for l in leaves if l.size < x.size) <= 512 * 4 + 64

  def test_deterministic_and_errors(self):
    x = jnp.arange(6.0)
    assert jaxdrop.variational_dropout(None, x, 0.0, deterministic=True) is x
    f = jax.jit(lambda d: jaxdrop.variational_dropout(KEY, x, 0.0, deterministic=d))
    np.testing.assert_array_equal(f(jnp.bool_(True)), x)
    np.testing.assert_array_equal(jaxdrop.variational_dropout(KEY, x, -jnp.inf), x)
    assert bool(jnp.all(jnp.isnan(jax.jit(jaxdrop.variational_dropout)(KEY, x, jnp.nan))))
    with pytest.raises(ValueError, match="log_alpha must be < inf and not NaN"):
      jaxdrop.variational_dropout(KEY, x, jnp.array([0.0] * 5 + [jnp.nan]))
    with pytest.raises(ValueError, match=r"log_alpha must be a scalar or an array that broad"):
      jaxdrop.variational_dropout(KEY, x, jnp.zeros(3))
    with pytest.raises(TypeError, match="variational_dropout needs a PRNG key"):
      jaxdrop.variational_dropout(None, x, 0.0)


class TestVariationalKL:
  def test_values_limits_and_monotonicity(self):
    la = jnp.linspace(-10.0, 10.0, 201)
    kl = jaxdrop.variational_dropout_kl(la)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    la64 = np.asarray(la, np.float64)
    expected = k1 - k1 / (1 + np.exp(-(k2 + k3 * la64))) + 0.5 * np.log1p(np.exp(-la64))
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(np.asarray(kl)) < 0)  # more noise, less KL
    assert float(jaxdrop.variational_dropout_kl(30.0)) < 1e-6
    # far below: -log(alpha) / 2 plus a constant; finite with a finite gradient
    big = jaxdrop.variational_dropout_kl(-80.0)
    assert (
      np.isfinite(float(big))
      and abs(float(big) - 40.0 - k1 + k1 / (1 + np.exp(-(k2 - k3 * 80)))) < 1e-3
    )
    assert np.isfinite(float(jax.grad(jaxdrop.variational_dropout_kl)(-80.0)))

  def test_shape_and_error(self):
    assert jaxdrop.variational_dropout_kl(jnp.zeros((3, 4))).shape == (3, 4)
    with pytest.raises(TypeError, match="log_alpha must be a real array"):
      jaxdrop.variational_dropout_kl("x")


class TestVariationalDense:
  def test_output_statistics_are_the_local_reparameterisation(self):
    # Every row the same input: the outputs' sample mean and variance are x W and
    # x^2 (alpha W^2), within 5 standard errors over 2**15 rows.
    n = 2**15
    x1 = jnp.array([1.0, -2.0, 0.5])
    w = jnp.array([[1.0, 0.5], [0.3, -1.0], [2.0, 0.0]])
    log_alpha = jnp.log(jnp.array([[0.1, 1.0], [0.5, 0.2], [2.0, 1.0]]))
    y = np.asarray(jaxdrop.variational_dense(KEY, jnp.tile(x1, (n, 1)), w, log_alpha), np.float64)
    mean, var = np.asarray(x1 @ w), np.asarray(x1**2 @ (jnp.exp(log_alpha) * w**2))
    assert np.all(np.abs(y.mean(0) - mean) <= Z * np.sqrt(var / n)), (y.mean(0), mean)
    assert np.all(np.abs(y.var(0) - var) <= Z * var * np.sqrt(2 / n)), (y.var(0), var)

  def test_gradients_equal_autodiff_of_the_reference(self):
    x = jax.random.normal(jax.random.key(1), (8, 5))
    w = jax.random.normal(jax.random.key(2), (5, 3))
    la = jax.random.normal(jax.random.key(3), (5, 3))
    eps = standard_normal(KEY, (8, 3))
    ours = lambda x, w, la: jnp.sum(jnp.sin(jaxdrop.variational_dense(KEY, x, w, la)))
    ref = lambda x, w, la: jnp.sum(
      jnp.sin(x @ w + jnp.sqrt(x**2 @ (jnp.exp(la) * w**2) + 1e-8) * eps)
    )
    for got, expected in zip(
      jax.grad(ours, (0, 1, 2))(x, w, la), jax.grad(ref, (0, 1, 2))(x, w, la)
    ):
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

  def test_deterministic_prunes_above_the_threshold(self):
    x = jax.random.normal(jax.random.key(1), (4, 3))
    w = jax.random.normal(jax.random.key(2), (3, 2))
    la = jnp.array([[0.0, 3.5], [2.9, -1.0], [3.0, 8.0]])
    kept = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(
      jaxdrop.variational_dense(None, x, w, la, deterministic=True), x @ (w * kept), rtol=1e-6
    )
    np.testing.assert_allclose(
      jaxdrop.variational_dense(None, x, w, la, threshold=None, deterministic=True),
      x @ w,
      rtol=1e-6,
    )
    f = jax.jit(lambda d: jaxdrop.variational_dense(KEY, x, w, la, deterministic=d))
    np.testing.assert_allclose(f(jnp.bool_(True)), x @ (w * kept), rtol=1e-6)
    np.testing.assert_array_equal(f(jnp.bool_(False)), jaxdrop.variational_dense(KEY, x, w, la))

  @pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
      (((4, 3), (2, 2), ()), {}, ValueError, r"x of shape \(..., in_features\)"),
      (((4, 3), (3, 2), (2, 3)), {}, ValueError, "log_alpha must be a scalar or an array"),
      (
        ((4, 3), (3, 2), ()),
        dict(threshold=jnp.float32(3.0) + jnp.zeros(2)),
        TypeError,
        "threshold must be a concrete real number",
      ),
      (((4, 3), (3, 2), ()), dict(threshold=float("nan")), ValueError, "threshold must not be NaN"),
    ],
  )
  def test_errors_name_the_argument(self, args, kwargs, error, match):
    x, w, la = (jnp.ones(s) for s in args)
    with pytest.raises(error, match=match):
      jaxdrop.variational_dense(KEY, x, w, la, **kwargs)
