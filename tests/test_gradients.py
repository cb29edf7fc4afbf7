"""The hand-derived derivative against plain autodiff of a reference fed the same mask."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import observed_mask, reference_dropout
from jax.test_util import check_grads

import jaxdrop

MODES = list(itertools.product([False, True], ["vjp", "jvp"]))
KEY = jax.random.key(42)
SHAPE = (8, 70)


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), SHAPE)


def _loss(f):
  g = jax.random.normal(jax.random.key(99), SHAPE)
  return lambda x: jnp.sum(g * jnp.tanh(f(x)))


@pytest.mark.parametrize("recompute,autodiff", MODES)
@pytest.mark.parametrize("rate", [0.1, 0.5])
@pytest.mark.parametrize("inverted", [True, False])
def test_gradient_equals_autodiff_of_reference(recompute, autodiff, rate, inverted):
  x = _x()
  mask = observed_mask(KEY, SHAPE, rate)
  scale = 1 / (1 - np.float32(rate)) if inverted else 1.0
  ours = _loss(
    lambda x: jaxdrop.dropout(
      KEY, x, rate, inverted=inverted, recompute=recompute, autodiff=autodiff
    )
  )
  ref = _loss(lambda x: reference_dropout(mask, x, scale))
  np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(ref)(x))
  value, grad = jax.jit(jax.value_and_grad(ours))(x)
  ref_value, ref_grad = jax.jit(jax.value_and_grad(ref))(x)
  np.testing.assert_array_equal(grad, ref_grad)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)


def test_all_modes_bit_identical():
  x = _x()
  results = []
  for recompute, autodiff in MODES:
    f = lambda x: jaxdrop.dropout(KEY, x, 0.3, recompute=recompute, autodiff=autodiff)
    y, vjp = jax.vjp(f, x)
    results.append((y, vjp(jnp.cos(x))[0]))
  for y, dx in results[1:]:
    np.testing.assert_array_equal(y, results[0][0])
    np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("recompute,autodiff", MODES)
def test_backward_is_exactly_g_times_mask_times_scale(recompute, autodiff):
  x = _x()
  g = jnp.full(SHAPE, jnp.nan).at[:, ::2].set(3.0)  # NaN cotangents stay out of dropped units
  _, vjp = jax.vjp(
    lambda x: jaxdrop.dropout(KEY, x, 0.5, recompute=recompute, autodiff=autodiff), x
  )
  (dx,) = vjp(g)
  mask = observed_mask(KEY, SHAPE, 0.5)
  np.testing.assert_array_equal(dx, jnp.where(mask, g * 2.0, 0.0))


@pytest.mark.parametrize("recompute,autodiff", MODES)
def test_rate_one_gradient_is_exactly_zero(recompute, autodiff):
  x = _x().at[0, 0].set(jnp.inf)
  grad = jax.grad(
    lambda x: jnp.sum(jaxdrop.dropout(KEY, x, 1.0, recompute=recompute, autodiff=autodiff) ** 2)
  )(x)
  np.testing.assert_array_equal(grad, jnp.zeros_like(x))


@pytest.mark.parametrize("recompute,autodiff", MODES)
def test_key_and_rate_get_no_gradient(recompute, autodiff):
  x = _x()
  f = lambda rate: jnp.sum(jaxdrop.dropout(KEY, x, rate, recompute=recompute, autodiff=autodiff))
  assert float(jax.grad(f)(0.3)) == 0.0


def test_deterministic_traced_gradient_is_identity():
  x = _x()
  f = jax.jit(jax.grad(lambda x, det: jnp.sum(jaxdrop.dropout(KEY, x, 0.5, deterministic=det) * x)))
  np.testing.assert_array_equal(f(x, jnp.bool_(True)), 2 * x)


@pytest.mark.parametrize("recompute", [False, True])
def test_check_grads_reverse_and_second_order(recompute):
  f = lambda x: jaxdrop.dropout(KEY, x, 0.4, recompute=recompute) * x
  check_grads(f, (_x(),), order=2, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("recompute", [False, True])
def test_check_grads_forward_mode_with_jvp_registration(recompute):
  f = lambda x: jaxdrop.dropout(KEY, x, 0.4, recompute=recompute, autodiff="jvp") * x
  check_grads(f, (_x(),), order=2, modes=["fwd", "rev"], atol=1e-2, rtol=1e-2)


class TestForwardMode:
  def _reference(self, rate=0.5):
    mask = observed_mask(KEY, (12,), rate)
    return lambda v: jnp.sum(jnp.sin(reference_dropout(mask, v, 1 / (1 - rate))) * v)

  def _ours(self, **kwargs):
    return lambda v: jnp.sum(jnp.sin(jaxdrop.dropout(KEY, v, 0.5, **kwargs)) * v)

  @pytest.mark.parametrize("recompute", [False, True])
  def test_jvp_jacfwd_hessian_with_autodiff_jvp(self, recompute):
    v = jnp.linspace(-1.0, 1.0, 12)
    ours, ref = self._ours(autodiff="jvp", recompute=recompute), self._reference()
    np.testing.assert_allclose(
      jax.jvp(ours, (v,), (jnp.ones(12),))[1], jax.jvp(ref, (v,), (jnp.ones(12),))[1], rtol=1e-6
    )
    np.testing.assert_allclose(jax.jacfwd(ours)(v), jax.jacfwd(ref)(v), rtol=1e-6)
    np.testing.assert_allclose(jax.hessian(ours)(v), jax.hessian(ref)(v), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
      jax.jit(jax.hessian(ours))(v), jax.hessian(ref)(v), rtol=1e-6, atol=1e-6
    )

  def test_hessian_works_with_the_default_custom_vjp(self):
    v = jnp.linspace(-1.0, 1.0, 12)
    np.testing.assert_allclose(
      jax.hessian(self._ours())(v), jax.hessian(self._reference())(v), rtol=1e-6, atol=1e-6
    )

  @pytest.mark.parametrize(
    "transform",
    [
      lambda f, v: jax.jvp(f, (v,), (v,)),
      lambda f, v: jax.jacfwd(f)(v),
    ],
  )
  def test_forward_mode_on_custom_vjp_names_the_switch(self, transform):
    v = jnp.linspace(-1.0, 1.0, 12)
    with pytest.raises(TypeError, match="autodiff='jvp'"):
      transform(self._ours(), v)


@pytest.mark.parametrize("autodiff", ["vjp", "jvp"])
@pytest.mark.parametrize("recompute,per_element_bytes", [(False, 1), (True, 0)])
def test_backward_residuals(autodiff, recompute, per_element_bytes):
  # What jax.vjp keeps for the backward pass: the bool mask, or only the key words and scalars.
  x = jnp.ones((256, 512))
  _, vjp = jax.vjp(
    lambda x: jaxdrop.dropout(KEY, x, 0.5, recompute=recompute, autodiff=autodiff), x
  )
  leaves = jax.tree.leaves(vjp)
  big = [leaf for leaf in leaves if leaf.size >= x.size]
  small = sum(leaf.nbytes for leaf in leaves if leaf.size < x.size)
  assert sum(leaf.nbytes for leaf in big) == per_element_bytes * x.size, [
    (l.shape, l.dtype) for l in big
  ]
  assert small <= 64, [(l.shape, l.dtype) for l in leaves]


@pytest.mark.parametrize("recompute,autodiff", MODES)
def test_gradient_under_checkpoint_scan_and_vmap(recompute, autodiff):
  keys = jax.random.split(KEY, 4)
  xs = jax.random.normal(jax.random.key(1), (4, 3, 50))
  drop = lambda k, x: jaxdrop.dropout(k, x, 0.3, recompute=recompute, autodiff=autodiff)

  def scanned(xs):
    def body(carry, kx):
      k, x = kx
      return carry + jnp.sum(jnp.tanh(jax.checkpoint(drop)(k, x))), None

    return jax.lax.scan(body, 0.0, (keys, xs))[0]

  looped = lambda xs: sum(jnp.sum(jnp.tanh(drop(k, x))) for k, x in zip(keys, xs))
  batched = lambda xs: jnp.sum(jnp.tanh(jax.vmap(drop)(keys, xs)))
  expected = jax.grad(looped)(xs)
  for grad in (jax.jit(jax.grad(scanned))(xs), jax.jit(jax.grad(batched))(xs)):
    np.testing.assert_array_equal(grad == 0, expected == 0)  # the same masks, exactly
    np.testing.assert_allclose(
      grad, expected, rtol=1e-5, atol=1e-7
    )  # tanh' fused differently under jit


def test_linearize_and_linear_transpose_as_the_docs_say():
  # docs/concepts/backward.md, "Forward mode": with the default custom_vjp, linearize fails only
  # when its linear function is called and linear_transpose raises JAX's NotImplementedError;
  # autodiff="jvp" makes both work, with the same mask.
  key, x = jax.random.key(0), jnp.arange(1.0, 9.0)
  y, lin = jax.linearize(lambda v: jaxdrop.dropout(key, v, 0.5), x)
  with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
    lin(x)
  with pytest.raises(NotImplementedError):
    jax.linear_transpose(lambda v: jaxdrop.dropout(key, v, 0.5), x)(x)
  f = lambda v: jaxdrop.dropout(key, v, 0.5, autodiff="jvp")
  _, lin = jax.linearize(f, x)
  np.testing.assert_array_equal(lin(x), y)
  np.testing.assert_array_equal(jax.linear_transpose(f, x)(x)[0], y)
