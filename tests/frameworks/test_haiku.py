"""jaxdrop.haiku: hk.dropout's signature, and the family in Haiku's argument order.

Ported (the cases rewritten, run against ``jaxdrop.haiku.dropout`` where Haiku used
``hk.dropout``) from Haiku's tests, google-deepmind/dm-haiku:
  haiku/_src/basic_test.py  test_dropout, test_dropout_broadcasts, test_dropout_jit
plus: the functional call's mask for the same key, inside and outside hk.transform, the family's
argument order, the is_training switch of a transformed model, rate 1 (Haiku raises).
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
import jaxdrop.haiku as jdhk


def _transformed(f):
  """Runs `f` inside hk.transform with a key, as Haiku's transform_and_run does."""
  return hk.transform(f).apply({}, jax.random.key(428))


# --- haiku/_src/basic_test.py ---------------------------------------------------------------------


def test_dropout_rate_and_mean():
  rate = 0.25
  x = _transformed(lambda: jdhk.dropout(hk.next_rng_key(), rate, jnp.ones([1000, 1000])))
  # 10**6 units: the dropped fraction's standard deviation is 4.3e-4; Haiku's bounds.
  assert abs(float(jnp.mean(x == 0)) - rate) < 0.001
  assert abs(float(jnp.mean(x)) - 1.0) < 0.01


def test_dropout_broadcasts():
  def run(broadcast_dims):
    return _transformed(
      lambda: jdhk.dropout(
        hk.next_rng_key(), 0.5, jnp.ones([3, 3, 3, 3]), broadcast_dims=broadcast_dims
      )
    )

  out = np.asarray(run((1,)))
  np.testing.assert_array_equal(out[:, 0], out[:, 1])
  np.testing.assert_array_equal(out[:, 0], out[:, 2])
  assert not np.array_equal(out[:, :, 0], out[:, :, 1])
  assert not np.array_equal(out[0], out[1])
  out = np.asarray(run((1, 2)))
  np.testing.assert_array_equal(out[:, 0], out[:, 1])
  np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
  assert not np.array_equal(out[0], out[1])
  assert out.shape == (3, 3, 3, 3)


def test_dropout_jit_with_a_traced_rate():
  f = jax.jit(jdhk.dropout)
  key = jax.random.key(0)
  x = jnp.ones([100, 100])
  np.testing.assert_array_equal(f(key, 0.25, x), jaxdrop.dropout(key, x, 0.25))
  f(key, 0.5, x)
  assert f._cache_size() == 1  # the rate is traced


# --- the functional call's mask, the family's order, a transformed model -----------------------

FAMILY = [
  (
    lambda k, r, x: jdhk.dropout(k, r, x, (1,)),
    lambda k, x, r: jaxdrop.dropout(k, x, r, broadcast_dims=(1,)),
  ),
  (lambda k, r, x: jdhk.channel_dropout(k, r, x, -1, 0), jaxdrop.channel_dropout),
  (jdhk.alpha_dropout, jaxdrop.alpha_dropout),
  (lambda k, r, x: jdhk.feature_alpha_dropout(k, r, x, -1, 0), jaxdrop.feature_alpha_dropout),
  (jdhk.gaussian_dropout, jaxdrop.gaussian_dropout),
  (lambda k, r, x: jdhk.drop_path(k, r, x, 0, "row"), jaxdrop.drop_path),
  (
    lambda k, r, x: jdhk.drop_block(k, r, x, 3, (1, 2)),
    lambda k, x, r: jaxdrop.drop_block(k, x, r, 3),
  ),
]


@pytest.mark.parametrize("haiku_style, functional", FAMILY)
def test_member_in_haiku_order_draws_the_functional_mask(haiku_style, functional):
  x = jax.random.normal(jax.random.key(2), (4, 6, 6, 3))
  key = jax.random.key(7)
  np.testing.assert_array_equal(haiku_style(key, 0.3, x), functional(key, x, 0.3))


def test_is_training_switch_of_a_transformed_model():
  def forward(x, is_training):
    h = hk.Linear(64)(x)
    return jdhk.dropout(hk.next_rng_key(), 0.5, h) if is_training else h

  model = hk.transform(forward)
  x = jax.random.normal(jax.random.key(0), (8, 4))
  params = model.init(jax.random.key(1), x, is_training=True)
  evaluated = model.apply(params, None, x, is_training=False)
  trained = model.apply(params, jax.random.key(2), x, is_training=True)
  kept = trained != 0
  assert 0.3 < float(jnp.mean(kept)) < 0.7
  np.testing.assert_allclose(trained, jnp.where(kept, 2 * evaluated, 0), rtol=1e-6)


def test_rate_one_drops_everything_where_haiku_raises():
  x = jnp.ones((4, 4))
  np.testing.assert_array_equal(jdhk.dropout(jax.random.key(0), 1.0, x), 0.0)
  with pytest.raises(ValueError, match="rate must be in"):
    jdhk.dropout(jax.random.key(0), 1.5, x)
  with pytest.raises(ValueError, match="rng must be a PRNG key"):
    jdhk.drop_path(None, 0.5, x)
  assert jdhk.dropout(None, 0.0, x) is x
