"""Dropout against overfitting on MNIST-1D: ``python -m jaxdrop.demo``.

Trains the same ReLU MLP (40-512-512-10, adamw with weight decay, minibatches) twice, without
dropout and with jaxdrop dropout after each hidden layer, from the same initial weights and
the same minibatches. Both runs train side by side in one jitted ``lax.scan`` (``jax.vmap``
over the two rates: the rate is a traced value, so this costs no recompilation). MNIST-1D
(Greydanus & Kobak) is generated locally by the ``mnist1d`` package (4000 train / 1000 test
sequences of length 40); its published table has logistic regression at 32%, an MLP at 68%,
a CNN at 94% and a GRU at 91% test accuracy.

Needs the demo extra: ``python -m pip install -e ".[demo]"``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import jaxdrop

if TYPE_CHECKING:  # imported where used: `import jaxdrop.demo` needs only jax
  import optax

# The MLP's parameters: one {"w", "b"} dict per layer.
Params = list[dict[str, jax.Array]]
# The training loop's carry: parameters, optimizer state, dropout rate.
_Carry = tuple[Params, Any, jax.Array]


def load_mnist1d(seed: int = 42) -> dict[str, np.ndarray]:
  """MNIST-1D generated locally (never downloaded): x, y, x_test, y_test."""
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.seed = seed
  data = make_dataset(args)
  return {
    k: np.asarray(data[k], np.float32 if k.startswith("x") else np.int32)
    for k in ("x", "y", "x_test", "y_test")
  }


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> Params:
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros((1, n))}
    for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp(
  params: Params,
  x: jax.Array,
  key: jax.Array | None,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
) -> jax.Array:
  keys = [None] * len(params) if key is None else jax.random.split(key, len(params))
  for layer, k in zip(params[:-1], keys):
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
    x = jaxdrop.dropout(k, x, rate, deterministic=deterministic)
  return x @ params[-1]["w"] + params[-1]["b"]


def accuracy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(mlp(params, x, None, 0.0, True), -1) == y)


def make_trainer(
  data: dict[str, np.ndarray], optimizer: optax.GradientTransformation, batch: int
) -> Callable[..., Any]:
  import optax

  x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
  x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])

  def loss(params: Params, xb: jax.Array, yb: jax.Array, key: jax.Array, rate: jax.Array) -> Any:
    logits = mlp(params, xb, key, rate, False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry: _Carry, key: jax.Array) -> tuple[_Carry, None]:
    params, opt_state, rate = carry
    batch_key, drop_key = jax.random.split(key)
    idx = jax.random.randint(batch_key, (batch,), 0, x.shape[0])
    grads = jax.grad(loss)(params, x[idx], y[idx], drop_key, rate)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, rate), None

  def chunk(
    params: Params, opt_state: Any, rate: jax.Array, keys: jax.Array
  ) -> tuple[Params, Any, jax.Array, jax.Array]:
    (params, opt_state, _), _ = jax.lax.scan(step, (params, opt_state, rate), keys)
    return params, opt_state, accuracy(params, x, y), accuracy(params, x_test, y_test)

  # Both runs at once: the same keys (same minibatches, same dropout keys), different rates.
  return jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, None)))


def plot_curves(
  steps: Sequence[int], train: np.ndarray, test: np.ndarray, rate: float, path: str
) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for run, (label, color) in enumerate(
    [("no dropout", "tab:red"), (f"dropout {rate}", "tab:blue")]
  ):
    ax.plot(steps, train[:, run], color=color, linestyle="--", label=f"{label}: train")
    ax.plot(steps, test[:, run], color=color, label=f"{label}: test")
  ax.axhline(0.68, color="gray", linewidth=0.8, linestyle=":", label="paper's MLP (test)")
  ax.set(
    xlabel="training step",
    ylabel="accuracy",
    ylim=(0, 1.02),
    title="MNIST-1D, 40-512-512-10 MLP: train vs test accuracy",
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
  class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass

  parser = argparse.ArgumentParser(
    prog="python -m jaxdrop.demo", description=__doc__, formatter_class=Formatter
  )
  parser.add_argument("--steps", type=int, default=4000, help="training steps")
  parser.add_argument("--rate", type=float, default=0.5, help="dropout rate, the DROP probability")
  parser.add_argument("--hidden", type=int, default=512, help="width of both hidden layers")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and masks")
  parser.add_argument("--batch", type=int, default=256, help="minibatch size")
  parser.add_argument("--lr", type=float, default=1e-3, help="adamw learning rate")
  parser.add_argument(
    "--weight-decay", type=float, default=1e-4, help="adamw weight decay (both runs)"
  )
  parser.add_argument("--chunks", type=int, default=20, help="progress lines (and curve points)")
  parser.add_argument("--out", default="jaxdrop_demo.png", help="where to save the learning curves")
  args = parser.parse_args(argv)
  for name in ("steps", "hidden", "batch", "chunks"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
  if not 0.0 <= args.rate < 1.0:
    parser.error(f"--rate must be in [0, 1), got {args.rate}")

  import optax

  start = time.perf_counter()
  data = load_mnist1d()
  optimizer = optax.adamw(args.lr, weight_decay=args.weight_decay)
  init_key, train_key = jax.random.split(jax.random.key(args.seed))
  params = init_mlp(init_key, [data["x"].shape[1], args.hidden, args.hidden, 10])
  opt_state = optimizer.init(params)
  stack = lambda tree: jax.tree.map(lambda a: jnp.stack([a, a]), tree)
  params, opt_state = stack(params), stack(opt_state)
  rates = jnp.array([0.0, args.rate])
  run_chunk = make_trainer(data, optimizer, args.batch)

  chunks = min(args.chunks, args.steps)
  bounds = np.linspace(0, args.steps, chunks + 1).astype(int)
  keys = jax.random.split(train_key, args.steps)
  print(
    f"MNIST-1D: {len(data['y'])} train / {len(data['y_test'])} test sequences; MLP "
    f"{data['x'].shape[1]}-{args.hidden}-{args.hidden}-10, adamw lr {args.lr} weight decay "
    f"{args.weight_decay}, batch {args.batch}, {args.steps} steps; "
    f"runs: no dropout | dropout {args.rate}"
  )
  steps, train_rows, test_rows = [], [], []
  for i in range(chunks):
    params, opt_state, train_acc, test_acc = run_chunk(
      params, opt_state, rates, keys[bounds[i] : bounds[i + 1]]
    )
    train_acc, test_acc = np.asarray(train_acc), np.asarray(test_acc)
    steps.append(bounds[i + 1])
    train_rows.append(train_acc)
    test_rows.append(test_acc)
    bar = "#" * round(20 * (i + 1) / chunks)
    print(
      f"[{bar:<20}] step {bounds[i + 1]:>5}  train {train_acc[0]:.3f} | {train_acc[1]:.3f}   "
      f"test {test_acc[0]:.3f} | {test_acc[1]:.3f}",
      flush=True,
    )
  train, test = np.array(train_rows), np.array(test_rows)
  plot_curves(steps, train, test, args.rate, args.out)

  print("\n| run | train accuracy | test accuracy | train - test |\n|---|---:|---:|---:|")
  for run, label in enumerate(["no dropout", f"dropout {args.rate}"]):
    print(
      f"| {label} | {train[-1, run]:.3f} | {test[-1, run]:.3f} "
      f"| {train[-1, run] - test[-1, run]:+.3f} |"
    )
  print(f"\nlearning curves saved to {args.out}; {time.perf_counter() - start:.0f} s in all")
  print(f"test accuracy  no-dropout={test[-1, 0]:.3f}  dropout={test[-1, 1]:.3f}")
  return {"no_dropout": float(test[-1, 0]), "dropout": float(test[-1, 1])}


if __name__ == "__main__":
  main()
