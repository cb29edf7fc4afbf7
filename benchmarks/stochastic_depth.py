"""Stochastic depth that skips the work: jaxdrop.stochastic_depth against drop_path.

    python benchmarks/stochastic_depth.py            # markdown on stdout
    python benchmarks/stochastic_depth.py --smoke    # tiny sizes: checks that it still runs

One training step (value_and_grad and an SGD update) of a stack of residual MLP blocks
(`h + branch(h)`, branch `relu(h @ w1) @ w2`, 8 blocks of width 1024, batch 512, float32)
under `lax.scan` over the layers with a key per layer (LayerDrop), three ways: no dropping,
`drop_path(mode="batch")` at rate 0.5 (the branch is computed and multiplied by the decision)
and `stochastic_depth` at rate 0.5 (the branch runs under `lax.cond`), and `stochastic_depth` at
rate 1 (every block dropped: what the step costs without any branch). Each is timed on the
same 16 keys (median of interleaved rounds per key, then the mean over the keys) and reported
as a ratio to the step without dropping, with the fraction of blocks those keys keep.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import machine, time_interleaved  # noqa: E402

RATE = 0.5


def _branch(h, w):
  return jax.nn.relu(h @ w[0]) @ w[1]


def _step(kind: str, layers: int):
  rate = 1.0 if kind.endswith("rate 1") else RATE

  def loss(ws, x, key):
    def block(h, inputs):
      i, w = inputs
      k = jax.random.fold_in(key, i)
      if kind == "no dropping":
        return h + _branch(h, w), None
      if kind == "drop_path":
        return h + jaxdrop.drop_path(k, _branch(h, w), rate, mode="batch"), None
      return h + jaxdrop.stochastic_depth(k, rate, _branch, h, w), None

    return jnp.mean(jax.lax.scan(block, x, (jnp.arange(layers), ws))[0] ** 2)

  def step(ws, x, key):
    value, grads = jax.value_and_grad(loss)(ws, x, key)
    return ws - 1e-3 * grads, value

  return jax.jit(step)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 rounds")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  layers, width, batch, n_keys = (4, 64, 32, 2) if args.smoke else (8, 1024, 512, 16)
  rounds = 2 if args.smoke else args.rounds
  ws = jax.random.normal(jax.random.key(0), (layers, 2, width, width)) / np.sqrt(width)
  x = jax.random.normal(jax.random.key(1), (batch, width))
  keys = jax.random.split(jax.random.key(2), n_keys)
  kinds = ["no dropping", "drop_path", "stochastic_depth", "stochastic_depth, rate 1"]
  steps = {kind: _step(kind, layers) for kind in kinds}
  calls = {
    (kind, i): (lambda s=steps[kind], k=k: s(ws, x, k))
    for kind in kinds
    for i, k in enumerate(keys)
  }
  times = time_interleaved(calls, rounds)
  mean = {kind: float(np.mean([times[(kind, i)] for i in range(n_keys)])) for kind in kinds}
  kept = np.mean(
    [
      bool(
        jnp.any(
          jaxdrop.drop_path(jax.random.fold_in(k, i), jnp.ones((1, 1)), RATE, mode="batch") != 0
        )
      )
      for k in keys
      for i in range(layers)
    ]
  )
  print(
    f"Machine: {machine()}; jax {jax.__version__}; rate {RATE}; {layers} blocks of width "
    f"{width}, batch {batch}, float32; {n_keys} keys keeping {kept:.2f} of the blocks; "
    f"median of {rounds} interleaved rounds per key, mean over the keys.\n"
  )
  print("| training step | time | ratio to no dropping |")
  print("|---|---:|---:|")
  for kind in kinds:
    print(f"| {kind} | {mean[kind] * 1e3:.1f} ms | {mean[kind] / mean['no dropping']:.2f}x |")


if __name__ == "__main__":
  main()
