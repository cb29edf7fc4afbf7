"""zoneout: exact selection on dropout's mask, its gradient, the expectation, scan over time.

No peer library ships zoneout (Keras, Flax, Equinox, Haiku, PyTorch and timm have none), so
these checks follow the paper (Krueger et al. 2017, section 3: each unit keeps its previous
value with probability rate while training, the expectation at test time) and the family's
standard checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

KEY = jax.random.key(0)
H_PREV = jax.random.normal(jax.random.key(1), (64, 32))
H_NEW = jax.random.normal(jax.random.key(2), (64, 32))


def _updated(key, rate, shape=H_NEW.shape):
  """Where dropout with the same key and rate keeps a unit: there zoneout updates it."""
  return jaxdrop.dropout(key, jnp.ones(shape), rate) != 0


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_each_unit_is_exactly_its_old_or_new_value_on_dropouts_mask(rate):
  h = jaxdrop.zoneout(KEY, H_PREV, H_NEW, rate)
  np.testing.assert_array_equal(h, jnp.where(_updated(KEY, rate), H_NEW, H_PREV))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_fraction_keeping_its_value_is_the_rate(rate):
  x_prev, x_new = jnp.zeros((1000, 1000)), jnp.ones((1000, 1000))
  kept_previous = float(jnp.mean(jaxdrop.zoneout(KEY, x_prev, x_new, rate) == 0))
  bound = 5 * np.sqrt(rate * (1 - rate) / 1e6)  # 5 standard errors
  assert abs(kept_previous - rate) < bound, (kept_previous, rate)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("autodiff", ["vjp", "jvp"])
def test_gradients_equal_autodiff_of_the_plain_selection(recompute, autodiff):
  updated = _updated(KEY, 0.3)
  reference = lambda p, n: jnp.where(updated, n, p)
  g = jax.random.normal(jax.random.key(3), H_NEW.shape)
  f = lambda p, n: jaxdrop.zoneout(KEY, p, n, 0.3, recompute=recompute, autodiff=autodiff)
  ours = jax.vjp(f, H_PREV, H_NEW)[1](g)
  expected = jax.vjp(reference, H_PREV, H_NEW)[1](g)
  for a, b in zip(ours, expected):
    np.testing.assert_array_equal(a, b)
  if autodiff == "jvp":
    t_prev, t_new = jax.random.normal(jax.random.key(4), (2,) + H_NEW.shape)
    np.testing.assert_array_equal(
      jax.jvp(f, (H_PREV, H_NEW), (t_prev, t_new))[1],
      jax.jvp(reference, (H_PREV, H_NEW), (t_prev, t_new))[1],
    )


def test_backward_keeps_only_the_key():
  _, vjp = jax.vjp(lambda p, n: jaxdrop.zoneout(KEY, p, n, 0.3), H_PREV, H_NEW)
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(vjp)) < 64  # key words and scalars


def test_deterministic_is_the_expectation_concrete_or_traced():
  expected = 0.25 * H_PREV + 0.75 * H_NEW
  concrete = jaxdrop.zoneout(None, H_PREV, H_NEW, 0.25, deterministic=True)
  np.testing.assert_allclose(concrete, expected, rtol=1e-6, atol=1e-7)
  traced = jax.jit(lambda d: jaxdrop.zoneout(KEY, H_PREV, H_NEW, 0.25, deterministic=d))
  np.testing.assert_array_equal(traced(True), concrete)  # bit-identical
  np.testing.assert_array_equal(traced(False), jaxdrop.zoneout(KEY, H_PREV, H_NEW, 0.25))
  grads = jax.grad(
    lambda p, n: jnp.sum(jaxdrop.zoneout(None, p, n, 0.25, deterministic=True)), argnums=(0, 1)
  )(H_PREV, H_NEW)
  np.testing.assert_allclose(grads[0], 0.25)
  np.testing.assert_allclose(grads[1], 0.75)


def test_expectation_is_rounded_once_and_ignores_an_input_of_weight_zero():
  v = jnp.array([1.4453125], jnp.bfloat16)  # 0.3 v + 0.7 v rounded twice
  np.testing.assert_array_equal(jaxdrop.zoneout(None, v, v, 0.3, deterministic=True), v)
  h_prev = H_PREV.astype(jnp.bfloat16)
  h_new = H_NEW.astype(jnp.bfloat16)
  # The realised weights (the rate's 32-bit threshold), read off float32 calls.
  w_prev = jaxdrop.zoneout(None, jnp.ones(()), jnp.zeros(()), 0.3, deterministic=True)
  w_new = jaxdrop.zoneout(None, jnp.zeros(()), jnp.ones(()), 0.3, deterministic=True)
  once = (w_prev * h_prev.astype(jnp.float32) + w_new * h_new.astype(jnp.float32)).astype(
    jnp.bfloat16
  )
  traced = jax.jit(lambda d: jaxdrop.zoneout(KEY, h_prev, h_new, 0.3, deterministic=d))
  concrete = jaxdrop.zoneout(None, h_prev, h_new, 0.3, deterministic=True)
  np.testing.assert_array_equal(traced(True), concrete)  # the same operations
  # Against the float32 sum rounded once: XLA may fuse the sum into a multiply-add, so a
  # value at a rounding tie may land one bfloat16 step away (3 in 2048 here); rounding each
  # term first would miss by up to two steps on a third of the values.
  np.testing.assert_allclose(
    np.asarray(concrete, np.float32), np.asarray(once, np.float32), rtol=2**-7, atol=1e-7
  )
  assert float(jnp.mean(concrete == once)) > 0.99
  inf = jnp.array([jnp.inf, 3.0])
  finite = jnp.array([1.0, 2.0])
  np.testing.assert_array_equal(
    jaxdrop.zoneout(None, finite, inf, 1.0, deterministic=True), finite
  )  # rate 1: h_new has weight 0
  at_rate = jax.jit(lambda r: jaxdrop.zoneout(KEY, inf, finite, r, deterministic=True))
  np.testing.assert_array_equal(at_rate(0.0), finite)  # rate 0: h_prev has weight 0
  np.testing.assert_array_equal(at_rate(1.0), inf)


def test_rates_zero_and_one_and_traced_rates():
  assert jaxdrop.zoneout(None, H_PREV, H_NEW, 0.0) is H_NEW
  np.testing.assert_array_equal(jaxdrop.zoneout(KEY, H_PREV, H_NEW, 1.0), H_PREV)
  traces = []

  @jax.jit
  def f(rate):
    traces.append(None)
    return jaxdrop.zoneout(KEY, H_PREV, H_NEW, rate)

  np.testing.assert_array_equal(f(0.3), jaxdrop.zoneout(KEY, H_PREV, H_NEW, 0.3))
  np.testing.assert_array_equal(f(1.0), H_PREV)
  np.testing.assert_array_equal(f(0.0), H_NEW)
  assert bool(jnp.all(jnp.isnan(f(1.5)))) and bool(jnp.all(jnp.isnan(f(jnp.nan))))
  assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes(dtype):
  h = jaxdrop.zoneout(KEY, H_PREV.astype(dtype), H_NEW.astype(dtype), 0.5)
  assert h.dtype == dtype
  np.testing.assert_array_equal(h, jnp.where(_updated(KEY, 0.5), H_NEW, H_PREV).astype(dtype))


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="h_prev and h_new must have one shape and dtype"):
    jaxdrop.zoneout(KEY, H_PREV, H_NEW[:, :3], 0.5)
  with pytest.raises(ValueError, match="h_prev and h_new must have one shape and dtype"):
    jaxdrop.zoneout(KEY, H_PREV.astype(jnp.bfloat16), H_NEW, 0.5)
  with pytest.raises(ValueError, match="rate must be in"):
    jaxdrop.zoneout(KEY, H_PREV, H_NEW, 1.5)
  with pytest.raises(TypeError, match="zoneout needs a PRNG key"):
    jaxdrop.zoneout(None, H_PREV, H_NEW, 0.5)
  with pytest.raises(TypeError, match="h_new must"):
    jaxdrop.zoneout(KEY, H_PREV, jnp.ones(H_NEW.shape, jnp.int32), 0.5)


def test_rnn_under_scan_masks_each_step_and_trains_through_time():
  steps, batch, width = 12, 8, 16
  w = jax.random.normal(jax.random.key(5), (width, width)) / np.sqrt(width)
  xs = jax.random.normal(jax.random.key(6), (steps, batch, width))

  def run(w, key, rate, deterministic=False):
    def cell(h, inputs):
      t, x = inputs
      h_new = jnp.tanh(x + h @ w)
      h = jaxdrop.zoneout(jax.random.fold_in(key, t), h, h_new, rate, deterministic=deterministic)
      return h, h

    return jax.lax.scan(cell, jnp.zeros((batch, width)), (jnp.arange(steps), xs))[1]

  hs = jax.jit(run)(w, KEY, 0.5)
  # Each step: every unit is its previous value or the cell's update, with a fresh mask.
  previous = jnp.concatenate([jnp.zeros((1, batch, width)), hs[:-1]])
  updates = jnp.tanh(xs + previous @ w)
  masks = []
  for t in range(steps):
    updated = _updated(jax.random.fold_in(KEY, t), 0.5, (batch, width))
    np.testing.assert_array_equal(hs[t], jnp.where(updated, updates[t], previous[t]))
    masks.append(np.asarray(updated))
  assert not np.array_equal(masks[0], masks[1])
  grad = jax.jit(jax.grad(lambda w: jnp.sum(run(w, KEY, 0.5)[-1])))(w)
  reference = jax.grad(lambda w: jnp.sum(_reference_run(w, xs, KEY, 0.5)[-1]))(w)
  np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-6)


def _reference_run(w, xs, key, rate):
  h, out = jnp.zeros(xs.shape[1:]), []
  for t in range(xs.shape[0]):
    updated = _updated(jax.random.fold_in(key, t), rate, h.shape)
    h = jnp.where(updated, jnp.tanh(xs[t] + h @ w), h)
    out.append(h)
  return jnp.stack(out)
