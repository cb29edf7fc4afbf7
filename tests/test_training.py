"""jaxdrop inside a jitted optax training loop (adamw with weight decay, as the seed recommends)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxdrop

pytestmark = pytest.mark.optax  # every test here runs optax.adamw


def _init(key, sizes):
  params = []
  for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros((1, n))})
  return params


def _mlp(params, x, key, rate, deterministic, recompute):
  keys = [None] * len(params) if key is None else jax.random.split(key, len(params))
  for layer, k in zip(params[:-1], keys):
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
    x = jaxdrop.dropout(k, x, rate, deterministic=deterministic, recompute=recompute)
  return x @ params[-1]["w"] + params[-1]["b"]


@pytest.mark.parametrize("recompute", [False, True])
def test_adamw_loop_loss_falls_and_rate_is_traced(recompute):
  data_key, init_key, train_key = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(data_key, (256, 16))
  labels = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)
  params = _init(init_key, [16, 64, 64, 2])
  optimizer = optax.adamw(3e-3, weight_decay=1e-4)
  state = optimizer.init(params)
  traces = []

  def loss_fn(params, key, rate, deterministic=False):
    logits = _mlp(params, x, key, rate, deterministic, recompute)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, state, key, rate):
    traces.append(1)
    loss, grads = jax.value_and_grad(loss_fn)(params, key, rate)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  eval_loss = jax.jit(lambda p: loss_fn(p, None, 0.3, deterministic=True))
  start = float(eval_loss(params))
  for i, key in enumerate(jax.random.split(train_key, 150)):
    params, state, loss = step(params, state, key, 0.3 if i < 100 else 0.1)
  end = float(eval_loss(params))
  assert len(traces) == 1, "a new key or rate retraced the step"
  assert end < 0.5 * start, (start, end)
  accuracy = float((_mlp(params, x, None, 0.0, True, recompute).argmax(-1) == labels).mean())
  assert accuracy > 0.9, accuracy
