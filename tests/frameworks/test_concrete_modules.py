"""ConcreteDropout in jaxdrop.nnx, jaxdrop.linen and jaxdrop.equinox: a trainable rate behind
each framework's train/eval switch.

No peer ships a Concrete dropout layer to port tests from (Flax, Equinox, Haiku, Keras and
PyTorch have none; Gal et al.'s reference code, yaringal/ConcreteDropout, is notebooks without
tests). The checks: the module draws the functional call's values for the same key and rate,
the framework's switch turns it off (inputs returned unchanged) and on, the rate's logit gets
the functional gradient and an optax step moves it, the regulariser equals the functional one
with the framework's kernel layout, and a bad initial rate is named.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdrop
import jaxdrop.equinox as jdeqx
import jaxdrop.linen as jdlinen
import jaxdrop.nnx as jdnnx

X = jax.random.normal(jax.random.key(2), (16, 8))
G = jax.random.normal(jax.random.key(3), (16, 8))
KEY = jax.random.key(5)
LOGIT = float(np.log(0.2 / 0.8))


def functional_loss(logit):
  return jnp.sum(G * jaxdrop.concrete_dropout(KEY, X, jax.nn.sigmoid(logit), temperature=0.5))


# One rate per unit (rate_shape=(8,)): distinct logits, so that a rate laid along the wrong
# kernel axis, or one unit's gradient given to another, fails the checks.
LOGITS = jnp.linspace(-3.0, 0.5, 8)
REG = dict(weight_regularizer=1e-3, dropout_regularizer=0.1)


def per_unit_checks(rate_grad, regularizer, kernel_rows):
  """The per-unit logits' gradient equals the functional one, unit by unit, and the
  regulariser equals the functional per-unit form with the rates along `kernel_rows`."""
  np.testing.assert_allclose(rate_grad, jax.grad(functional_loss)(LOGITS), rtol=1e-4, atol=1e-6)
  rates = jax.nn.sigmoid(LOGITS)
  w2 = np.sum(np.asarray(kernel_rows, np.float64) ** 2, 1)
  p = np.asarray(rates, np.float64)
  expected = np.sum(1e-3 * w2 / (1 - p) + 0.1 * (p * np.log(p) + (1 - p) * np.log(1 - p)))
  np.testing.assert_allclose(regularizer, expected, rtol=1e-5)


class TestNNX:
  def test_values_gradient_switch_and_training(self):
    layer = jdnnx.ConcreteDropout(init_rate=0.2, temperature=0.5, rngs=nnx.Rngs(dropout=1))
    key = nnx.clone(layer).rngs()
    np.testing.assert_allclose(layer.rate, 0.2, rtol=1e-6)
    expected = jaxdrop.concrete_dropout(key, X, layer.rate, temperature=0.5)
    np.testing.assert_array_equal(layer(X, rngs=key), expected)
    grads = nnx.grad(lambda m: jnp.sum(G * m(X, rngs=KEY)))(layer)
    np.testing.assert_allclose(
      grads["rate_logit"][...], jax.grad(functional_loss)(LOGIT), rtol=1e-5
    )
    optimizer = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.Param)
    optimizer.update(layer, grads)
    assert float(layer.rate_logit[...]) != LOGIT
    layer.eval()
    assert layer(X) is X
    layer.train()
    assert not np.array_equal(layer(X), X)

  def test_regularizer_and_errors(self):
    layer = jdnnx.ConcreteDropout(weight_regularizer=1e-3, dropout_regularizer=0.1)
    linear = nnx.Linear(8, 4, rngs=nnx.Rngs(params=0))  # kernel (in, out)
    expected = jaxdrop.concrete_dropout_regularizer(
      layer.rate, linear.kernel[...], input_dim=8, weight_regularizer=1e-3, dropout_regularizer=0.1
    )
    np.testing.assert_allclose(layer.regularizer(linear.kernel), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"init_rate must be a concrete number in \(0, 1\)"):
      jdnnx.ConcreteDropout(init_rate=0.0)
    with pytest.raises(ValueError, match="no `rngs` argument was provided to ConcreteDropout"):
      jdnnx.ConcreteDropout()(X)

  def test_one_rate_per_unit(self):
    layer = jdnnx.ConcreteDropout(rate_shape=(8,), temperature=0.5, **REG)
    assert layer.rate_logit[...].shape == (8,)
    layer.rate_logit[...] = LOGITS
    grads = nnx.grad(lambda m: jnp.sum(G * m(X, rngs=KEY)))(layer)
    linear = nnx.Linear(8, 4, rngs=nnx.Rngs(params=0))  # kernel (in, out): a row per unit
    per_unit_checks(grads["rate_logit"][...], layer.regularizer(linear.kernel), linear.kernel[...])
    conv = nnx.Conv(8, 2, (3, 3), rngs=nnx.Rngs(params=0))  # kernel (h, w, in, out)
    rows = np.moveaxis(np.asarray(conv.kernel[...]), 2, 0).reshape(8, -1)
    np.testing.assert_allclose(
      layer.regularizer(conv.kernel),
      jaxdrop.concrete_dropout_regularizer(
        jax.nn.sigmoid(LOGITS)[:, None], rows, input_dim=8, **REG
      ),
      rtol=1e-5,
    )
    # only ConcreteDropout learns an array of rates: Dropout still wants a scalar
    with pytest.raises(ValueError, match="rate must be a scalar"):
      jdnnx.Dropout(jnp.array([0.1, 0.2]))


class TestLinen:
  def test_values_gradient_switch_and_training(self):
    layer = jdlinen.ConcreteDropout(init_rate=0.2, temperature=0.5)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    np.testing.assert_allclose(variables["params"]["rate_logit"], LOGIT, rtol=1e-6)
    y = layer.apply(variables, X, deterministic=False, rng=KEY)
    expected = jaxdrop.concrete_dropout(KEY, X, jax.nn.sigmoid(LOGIT), temperature=0.5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    loss = lambda v: jnp.sum(G * layer.apply(v, X, deterministic=False, rng=KEY))
    grads = jax.grad(loss)(variables)
    np.testing.assert_allclose(
      grads["params"]["rate_logit"], jax.grad(functional_loss)(LOGIT), rtol=1e-4
    )
    updates, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(variables))
    assert float(optax.apply_updates(variables, updates)["params"]["rate_logit"]) != LOGIT
    assert layer.apply(variables, X, deterministic=True) is X
    # keys from make_rng, as Linen's Dropout: apply's rngs drive it
    y = layer.apply(variables, X, deterministic=False, rngs={"dropout": KEY})
    assert y.shape == X.shape and not np.array_equal(y, X)

  def test_regularizer_inside_a_parent_and_errors(self):
    class Model(nn.Module):
      def setup(self):
        self.drop = jdlinen.ConcreteDropout(weight_regularizer=1e-3, dropout_regularizer=0.1)
        self.dense = nn.Dense(4)

      def __call__(self, x, deterministic):
        return self.dense(self.drop(x, deterministic=deterministic))

      def regularizer(self):
        return self.drop.regularizer(self.dense.variables["params"]["kernel"])

    model = Model()
    variables = model.init(jax.random.key(0), X, deterministic=True)
    kernel = variables["params"]["dense"]["kernel"]  # (in, out)
    expected = jaxdrop.concrete_dropout_regularizer(
      0.1, kernel, input_dim=8, weight_regularizer=1e-3, dropout_regularizer=0.1
    )
    got = model.apply(variables, method=Model.regularizer)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the layer's parameters"):
      jdlinen.ConcreteDropout().apply({}, kernel, method=jdlinen.ConcreteDropout.regularizer)
    with pytest.raises(ValueError, match="init_rate must be"):
      jdlinen.ConcreteDropout(init_rate=1.0).init(jax.random.key(0), X, deterministic=True)

  def test_one_rate_per_unit(self):
    layer = jdlinen.ConcreteDropout(rate_shape=(8,), temperature=0.5, **REG)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    assert variables["params"]["rate_logit"].shape == (8,)
    variables = {"params": {"rate_logit": LOGITS}}
    loss = lambda v: jnp.sum(G * layer.apply(v, X, deterministic=False, rng=KEY))
    grad = jax.grad(loss)(variables)["params"]["rate_logit"]
    kernel = jax.random.normal(jax.random.key(4), (8, 4))  # (in, out): a row per unit
    reg = layer.apply(variables, kernel, method=layer.regularizer)
    per_unit_checks(grad, reg, kernel)
    conv_kernel = jax.random.normal(jax.random.key(6), (3, 3, 8, 2))  # nn.Conv: (h, w, in, out)
    rows = np.moveaxis(np.asarray(conv_kernel), 2, 0).reshape(8, -1)
    np.testing.assert_allclose(
      layer.apply(variables, conv_kernel, method=layer.regularizer),
      jaxdrop.concrete_dropout_regularizer(
        jax.nn.sigmoid(LOGITS)[:, None], rows, input_dim=8, **REG
      ),
      rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"rate must be a scalar or an array that broadcasts"):
      layer.apply(variables, X[:, :5], deterministic=False, rng=KEY)


class TestEquinox:
  def test_values_gradient_switch_and_training(self):
    layer = jdeqx.ConcreteDropout(0.2, temperature=0.5)
    np.testing.assert_allclose(layer.rate, 0.2, rtol=1e-6)
    expected = jaxdrop.concrete_dropout(KEY, X, layer.rate, temperature=0.5)
    np.testing.assert_array_equal(layer(X, key=KEY), expected)
    grads = eqx.filter_grad(lambda m: jnp.sum(G * m(X, key=KEY)))(layer)
    np.testing.assert_allclose(grads.rate_logit, jax.grad(functional_loss)(LOGIT), rtol=1e-5)
    optimizer = optax.sgd(0.1)
    updates, _ = optimizer.update(grads, optimizer.init(eqx.filter(layer, eqx.is_array)))
    assert float(eqx.apply_updates(layer, updates).rate_logit) != LOGIT
    off = eqx.nn.inference_mode(layer)
    assert off(X) is X
    assert not np.array_equal(eqx.nn.inference_mode(off, False)(X, key=KEY), X)
    with pytest.raises(RuntimeError, match="ConcreteDropout requires a key"):
      layer(X)

  def test_regularizer(self):
    layer = jdeqx.ConcreteDropout(weight_regularizer=1e-3, dropout_regularizer=0.1)
    linear = eqx.nn.Linear(8, 4, key=jax.random.key(0))  # weight (out, in)
    expected = jaxdrop.concrete_dropout_regularizer(
      layer.rate, linear.weight, input_dim=8, weight_regularizer=1e-3, dropout_regularizer=0.1
    )
    np.testing.assert_allclose(layer.regularizer(linear.weight), expected, rtol=1e-6)

  def test_one_rate_per_unit(self):
    layer = jdeqx.ConcreteDropout(rate_shape=(8,), temperature=0.5, **REG)
    assert layer.rate_logit.shape == (8,)
    layer = eqx.tree_at(lambda m: m.rate_logit, layer, LOGITS)
    grads = eqx.filter_grad(lambda m: jnp.sum(G * m(X, key=KEY)))(layer)
    linear = eqx.nn.Linear(8, 4, key=jax.random.key(0))  # weight (out, in): a column per unit
    per_unit_checks(grads.rate_logit, layer.regularizer(linear.weight), linear.weight.T)
    # per channel of a (C, H, W) example, and an eqx.nn.Conv2d weight (out, in, kh, kw)
    conv_layer = jdeqx.ConcreteDropout(rate_shape=(8, 1, 1), **REG)
    conv_layer = eqx.tree_at(lambda m: m.rate_logit, conv_layer, LOGITS.reshape(8, 1, 1))
    y = conv_layer(jnp.ones((8, 3, 3)), key=KEY)
    assert y.shape == (8, 3, 3)
    conv = eqx.nn.Conv2d(8, 2, 3, key=jax.random.key(1))
    rows = np.moveaxis(np.asarray(conv.weight), 1, 0).reshape(8, -1)
    expected = jaxdrop.concrete_dropout_regularizer(
      jax.nn.sigmoid(LOGITS)[:, None], rows, input_dim=8, **REG
    )
    np.testing.assert_allclose(conv_layer.regularizer(conv.weight), expected, rtol=1e-5)
    # rates of shape (8,) are laid along the weight's input axis too, not its last
    np.testing.assert_allclose(layer.regularizer(conv.weight), expected, rtol=1e-5)


def test_the_dropout_term_alone_pushes_the_rate_to_one_half():
  # Gradient descent on the regulariser's entropy term (no weights, no data) raises a low
  # rate towards 1/2: the force that balances the data term in Gal et al.'s objective.
  layer = jdeqx.ConcreteDropout(0.05, dropout_regularizer=1.0)
  reg = lambda m: m.regularizer(jnp.zeros((4, 8)))
  for _ in range(200):
    layer = eqx.apply_updates(layer, jax.tree.map(lambda g: -0.05 * g, eqx.filter_grad(reg)(layer)))
  assert abs(float(layer.rate) - 0.5) < 0.01
