"""stochastic_depth: drop_path's batch decision, with a dropped branch never executed.

The statistics of the decision are drop_path's (mode="batch"), tested in
tests/test_family_options.py after torchvision's test/test_ops.py::TestStochasticDepth; here the
decision is checked equal to drop_path's, and the saving is checked by counting, with a
jax.debug.callback inside the branch, how often the branch really runs, forward and backward,
alone and inside lax.scan over layers (LayerDrop, Fan et al. 2020).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop

X = jax.random.normal(jax.random.key(1), (4, 8))
W = jax.random.normal(jax.random.key(2), (8, 8)) / np.sqrt(8)
KEYS = jax.random.split(jax.random.key(3), 24)


def block(h, w):
  return jnp.tanh(h @ w)


def _kept(key, rate):
  """drop_path's decision for the whole batch."""
  return bool(jnp.any(jaxdrop.drop_path(key, jnp.ones((2, 2)), rate, mode="batch") != 0))


def _counting(calls):
  def branch(h, w):
    jax.debug.callback(lambda: calls.append(None))
    return block(h, w)

  return branch


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_value_is_drop_paths_on_the_branch(scale_by_keep):
  f = jax.jit(lambda k: jaxdrop.stochastic_depth(k, 0.5, block, X, W, scale_by_keep=scale_by_keep))
  kept = 0
  for key in KEYS[:20]:
    expected = jaxdrop.drop_path(key, block(X, W), 0.5, mode="batch", scale_by_keep=scale_by_keep)
    np.testing.assert_allclose(f(key), expected, rtol=1e-5, atol=1e-6)
    kept += _kept(key, 0.5)
  assert 0 < kept < 20


def test_a_dropped_branch_runs_neither_forward_nor_backward():
  calls = []
  branch = _counting(calls)
  forward = jax.jit(lambda k: jaxdrop.stochastic_depth(k, 0.5, branch, X, W))
  grad = jax.jit(jax.grad(lambda w, k: jnp.sum(jaxdrop.stochastic_depth(k, 0.5, branch, X, w))))
  kept = sum(_kept(key, 0.5) for key in KEYS)
  for key in KEYS:
    jax.block_until_ready(forward(key))
  jax.effects_barrier()
  assert len(calls) == kept and 0 < kept < len(KEYS), (len(calls), kept)
  calls.clear()
  for key in KEYS:
    jax.block_until_ready(grad(W, key))
  jax.effects_barrier()
  assert len(calls) == kept  # the backward pass adds no run
  # drop_path computes the branch whatever the draw.
  calls.clear()
  for key in KEYS:
    jax.block_until_ready(
      jax.jit(lambda k: jaxdrop.drop_path(k, branch(X, W), 0.5, mode="batch"))(key)
    )
  jax.effects_barrier()
  assert len(calls) == len(KEYS)


def test_gradient_equals_autodiff_of_the_reference():
  ours = jax.jit(jax.grad(lambda w, k: jnp.sum(jaxdrop.stochastic_depth(k, 0.3, block, X, w) ** 2)))
  reference = jax.jit(jax.grad(lambda w, keep: jnp.sum(jnp.where(keep, block(X, w) / 0.7, 0) ** 2)))
  for key in KEYS[:10]:
    np.testing.assert_allclose(ours(W, key), reference(W, _kept(key, 0.3)), rtol=1e-5, atol=1e-6)


def test_layerdrop_under_scan_skips_dropped_layers():
  layers = 8
  ws = jax.random.normal(jax.random.key(4), (layers, 8, 8)) / np.sqrt(8)
  calls = []
  branch = _counting(calls)

  def net(ws, key, rate):
    def layer(h, inputs):
      i, w = inputs
      return h + jaxdrop.stochastic_depth(jax.random.fold_in(key, i), rate, branch, h, w), None

    return jax.lax.scan(layer, X, (jnp.arange(layers), ws))[0]

  def reference(ws, key, rate):
    h = X
    for i in range(layers):
      k = jax.random.fold_in(key, i)
      h = h + jnp.where(_kept(k, rate), block(h, ws[i]) / (1 - rate), 0)
    return h

  key = jax.random.key(5)
  kept = sum(_kept(jax.random.fold_in(key, i), 0.5) for i in range(layers))
  out = jax.jit(net)(ws, key, 0.5)
  jax.effects_barrier()
  assert len(calls) == kept and 0 < kept < layers
  np.testing.assert_allclose(out, reference(ws, key, 0.5), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    jax.jit(jax.grad(lambda ws: jnp.sum(net(ws, key, 0.5))))(ws),
    jax.grad(lambda ws: jnp.sum(reference(ws, key, 0.5)))(ws),
    rtol=1e-5,
    atol=1e-6,
  )


def test_deterministic_rates_and_traced_values():
  np.testing.assert_array_equal(
    jaxdrop.stochastic_depth(None, 0.5, block, X, W, deterministic=True), block(X, W)
  )
  np.testing.assert_array_equal(jaxdrop.stochastic_depth(None, 0.0, block, X, W), block(X, W))
  np.testing.assert_array_equal(jaxdrop.stochastic_depth(KEYS[0], 1.0, block, X, W), 0.0)
  traces = []

  @jax.jit
  def f(key, rate, deterministic):
    traces.append(None)
    return jaxdrop.stochastic_depth(key, rate, block, X, W, deterministic=deterministic)

  np.testing.assert_allclose(f(KEYS[0], 0.9, True), block(X, W), rtol=1e-5, atol=1e-6)
  for key in KEYS[:5]:
    np.testing.assert_allclose(
      f(key, 0.3, False), jaxdrop.stochastic_depth(key, 0.3, block, X, W), rtol=1e-5, atol=1e-6
    )
  assert bool(jnp.all(jnp.isnan(f(KEYS[0], 1.5, False))))  # an invalid traced rate: NaN
  assert len(traces) == 1


def test_pytree_output_and_row_mode():
  pair = lambda h, w: {"a": block(h, w), "b": (h @ w).astype(jnp.bfloat16)}
  for key in KEYS[:6]:
    out = jaxdrop.stochastic_depth(key, 0.5, pair, X, W)
    keep = _kept(key, 0.5)
    np.testing.assert_allclose(out["a"], block(X, W) * 2 if keep else 0, rtol=1e-5, atol=1e-6)
    assert out["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    jaxdrop.stochastic_depth(KEYS[0], 0.5, block, X, W, mode="row"),
    jaxdrop.drop_path(KEYS[0], block(X, W), 0.5),
  )


def test_arguments_need_not_be_arrays():
  heads = lambda h, n, name: getattr(jnp, name)(h.reshape(h.shape[0], n, -1).sum(-1))
  for key in KEYS[:4]:
    y = jax.jit(lambda k: jaxdrop.stochastic_depth(k, 0.5, heads, X, 2, "tanh"))(key)
    expected = heads(X, 2, "tanh") * 2 if _kept(key, 0.5) else jnp.zeros((4, 2))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_bad_input_is_named():
  with pytest.raises(TypeError, match="branch must be a callable"):
    jaxdrop.stochastic_depth(KEYS[0], 0.5, X, W)
  with pytest.raises(TypeError, match="branch must return floating arrays"):
    jaxdrop.stochastic_depth(KEYS[0], 0.5, lambda h: h.astype(jnp.int32), X)
  with pytest.raises(ValueError, match="mode must be one of"):
    jaxdrop.stochastic_depth(KEYS[0], 0.5, block, X, W, mode="example")
  with pytest.raises(TypeError, match="stochastic_depth needs a PRNG key"):
    jaxdrop.stochastic_depth(None, 0.5, block, X, W)
  with pytest.raises(ValueError, match="rate must be in"):
    jaxdrop.stochastic_depth(KEYS[0], -0.1, block, X, W)
  with pytest.raises(TypeError, match="batch_axis must be an integer axis"):
    jaxdrop.stochastic_depth(KEYS[0], 0.5, block, X, W, batch_axis="x")
