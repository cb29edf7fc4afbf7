"""Debug modes and flags: NaN/inf checks under `jax.disable_jit`, traced `deterministic` against
an invalid traced rate, signed zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MEMBERS, SHARDED_MEMBERS

import jaxdrop

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))


@pytest.mark.parametrize(
  "check", [jax.debug_nans, jax.debug_infs], ids=["debug_nans", "debug_infs"]
)
@pytest.mark.parametrize("name", MEMBERS)
def test_no_nan_or_inf_is_built_on_valid_input_op_by_op(name, check):
  # The usual way to hunt a NaN: every op run eagerly with the check on. A valid call must not
  # build a NaN or an inf anywhere, not even in a branch of a `where` that is thrown away.
  with jax.disable_jit(), check(True):
    for rate in (0.0, 0.3, 1.0):
      for deterministic in (False, True, jnp.bool_(False), jnp.bool_(True)):
        y = MEMBERS[name](KEY, X, rate, deterministic=deterministic)
        assert bool(jnp.all(jnp.isfinite(y)))


EVERY_RATE = {
  # the family, zoneout, stochastic depth, gaussian_noise's stddev, concrete dropout (variational
  # dropout's log_alpha has its own test below)
  **{name: f for name, f in SHARDED_MEMBERS.items() if name != "variational_dropout"},
  "make_mask": lambda k, x, r: jaxdrop.apply_mask(jaxdrop.make_mask(k, x.shape, r), x),
  "dot_product_attention": lambda k, x, r: jaxdrop.dot_product_attention(
    x, x, x, dropout_key=k, dropout_rate=r, implementation="chunked"
  ),
}


@pytest.mark.parametrize("name", EVERY_RATE)
def test_debug_nans_still_fires_on_an_invalid_traced_rate(name):
  # What every rate's docstring promises: the NaN output makes JAX rerun the call op by op,
  # where the rate is concrete and the argument check names it.
  f = EVERY_RATE[name]
  assert bool(jnp.all(jnp.isnan(jax.jit(lambda r: f(KEY, X, r))(-0.5))))
  with jax.debug_nans(True), pytest.raises(ValueError, match=r"(rate|stddev) must be .*got -0.5"):
    jax.jit(lambda r: f(KEY, X, r))(-0.5)


def test_debug_nans_fires_on_an_infinite_traced_log_alpha():
  # (A NaN argument itself trips debug_nans where it is made, before the call.)
  f = jax.jit(lambda la: jaxdrop.variational_dropout(KEY, X, la))
  assert bool(jnp.all(jnp.isnan(f(jnp.inf))))
  with jax.debug_nans(True), pytest.raises(ValueError, match="log_alpha must be < inf and not NaN"):
    f(jnp.inf)


@pytest.mark.parametrize("name", [n for n in MEMBERS])
def test_traced_deterministic_wins_over_an_invalid_traced_rate(name):
  # As with a Python deterministic=True, which returns x without looking at the rate.
  f = jax.jit(lambda r, d: MEMBERS[name](KEY, X, r, deterministic=d))
  np.testing.assert_array_equal(f(1.5, jnp.bool_(True)), X)
  np.testing.assert_array_equal(f(jnp.nan, jnp.bool_(True)), X)
  assert bool(jnp.all(jnp.isnan(f(1.5, jnp.bool_(False)))))


def test_classic_deterministic_with_an_invalid_traced_rate_is_nan():
  # Classic dropout's test-time output is x * keep, which an invalid rate does not define.
  f = jax.jit(lambda r: jaxdrop.dropout(KEY, X, r, inverted=False, deterministic=True))
  assert bool(jnp.all(jnp.isnan(f(1.5))))
  np.testing.assert_allclose(f(0.25), X * 0.75)


@pytest.mark.parametrize("f", [jaxdrop.alpha_dropout, jaxdrop.feature_alpha_dropout])
def test_alpha_dropout_at_rate_one_is_positive_zero(f):
  y = f(KEY, jnp.ones((2, 8)), 1.0)
  assert not bool(jnp.any(jnp.signbit(y))) and not bool(jnp.any(y))
