"""The framework drop-ins against the frameworks' own dropout, side by side in one process.

    python benchmarks/dropins.py               # markdown on stdout
    python benchmarks/dropins.py --smoke       # tiny sizes, two rounds: checks that it still runs

For Flax NNX, Flax Linen, Equinox and Haiku, the framework's dropout and jaxdrop's drop-in
(`jaxdrop.nnx.Dropout`, `jaxdrop.linen.Dropout`, `jaxdrop.equinox.Dropout`,
`jaxdrop.haiku.dropout`), each called the way a model calls it, in one training step
(value_and_grad and an SGD update) of an MLP: 4 layers of width 1024, batch 512, float32,
dropout 0.1 after each. Reported: the median step time and the XLA temporary memory of the
compiled step, each as a ratio to the same step without dropout measured in the same rounds;
and the bytes `jax.vjp` keeps for the backward pass per element of one layer's input
(outside jit, 1M float32 elements).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
from flax import nnx

import jaxdrop.equinox
import jaxdrop.haiku
import jaxdrop.linen
import jaxdrop.nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import allocator, machine, reexec_with_jemalloc, time_interleaved  # noqa: E402

RATE = 0.1

# name -> (framework, drop(key, h)) as a model calls each layer.
DROPS = {
  "no dropout": ("", lambda k, h: h),
  "nnx.Dropout": ("Flax NNX", lambda k, h: nnx.Dropout(RATE, deterministic=False)(h, rngs=k)),
  "jaxdrop.nnx.Dropout": (
    "Flax NNX",
    lambda k, h: jaxdrop.nnx.Dropout(RATE, deterministic=False)(h, rngs=k),
  ),
  "nn.Dropout": (
    "Flax Linen",
    lambda k, h: nn.Dropout(RATE, deterministic=False).apply({}, h, rng=k),
  ),
  "jaxdrop.linen.Dropout": (
    "Flax Linen",
    lambda k, h: jaxdrop.linen.Dropout(RATE, deterministic=False).apply({}, h, rng=k),
  ),
  "eqx.nn.Dropout": ("Equinox", lambda k, h: eqx.nn.Dropout(RATE)(h, key=k)),
  "jaxdrop.equinox.Dropout": ("Equinox", lambda k, h: jaxdrop.equinox.Dropout(RATE)(h, key=k)),
  "hk.dropout": ("Haiku", lambda k, h: hk.dropout(k, RATE, h)),
  "jaxdrop.haiku.dropout": ("Haiku", lambda k, h: jaxdrop.haiku.dropout(k, RATE, h)),
}


def _step(drop, layers):
  def loss(params, x, key):
    for w, k in zip(params, jax.random.split(key, layers)):
      x = drop(k, jax.nn.relu(x @ w))
    return jnp.mean(x**2)

  def step(params, x, key):
    value, grads = jax.value_and_grad(loss)(params, x, key)
    return [w - 1e-3 * g for w, g in zip(params, grads)], value

  return step


def training_step(layers: int, width: int, batch: int, rounds: int):
  """{name: (seconds, temp bytes)} of one training step per dropout."""
  params = [
    jax.random.normal(jax.random.key(i), (width, width)) / width**0.5 for i in range(layers)
  ]
  x = jax.random.normal(jax.random.key(layers), (batch, width))
  key = jax.random.key(0)
  compiled = {
    name: jax.jit(_step(drop, layers)).lower(params, x, key).compile()
    for name, (_, drop) in DROPS.items()
  }
  times = time_interleaved(
    {name: (lambda c=c: c(params, x, key)) for name, c in compiled.items()}, rounds
  )
  return {
    name: (times[name], c.memory_analysis().temp_size_in_bytes) for name, c in compiled.items()
  }


def residual_bytes(size: int) -> dict[str, float]:
  """Bytes per element that jax.vjp keeps for the backward pass, outside jit."""
  x = jnp.ones((size // 1024, 1024), jnp.float32)
  key = jax.random.key(0)
  out = {}
  for name, (_, drop) in DROPS.items():
    _, vjp = jax.vjp(lambda x, drop=drop: drop(key, x), x)
    out[name] = sum(leaf.nbytes for leaf in jax.tree.leaves(vjp)) / x.size
  return out


def report(steps, residuals, layers, width, batch, rounds) -> str:
  ref_time, ref_temp = steps["no dropout"]
  lines = [
    f"Machine: {machine()}; jax {jax.__version__}; allocator: {allocator()}; "
    f"rate {RATE}; median of {rounds} interleaved rounds.",
    "",
    f"Training step of an MLP ({layers} layers, width {width}, batch {batch}, float32, "
    "dropout after each layer); time and XLA temp memory as ratios to the same step "
    f"without dropout ({ref_time * 1e3:.1f} ms, {ref_temp / 2**20:.1f} MiB here); bytes "
    "kept by jax.vjp per element of one layer's input, outside jit.",
    "",
    "| framework | dropout | step time | step temp memory | backward bytes / element |",
    "|---|---|---:|---:|---:|",
  ]
  for name, (framework, _) in DROPS.items():
    if name == "no dropout":
      continue
    seconds, temp = steps[name]
    lines.append(
      f"| {framework} | `{name}` | {seconds / ref_time:.2f}x | "
      f"{temp / ref_temp:.2f}x | {residuals[name]:.2f} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 rounds")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument(
    "--system-malloc",
    action="store_true",
    help="do not restart under jemalloc even where it is installed",
  )
  args = parser.parse_args(argv)
  if not args.system_malloc:
    reexec_with_jemalloc(sys.argv[1:] if argv is None else argv, script=__file__)
  layers, width, batch = (2, 128, 64) if args.smoke else (4, 1024, 512)
  rounds = 2 if args.smoke else args.rounds
  steps = training_step(layers, width, batch, rounds)
  residuals = residual_bytes(2**14 if args.smoke else 2**20)
  print(report(steps, residuals, layers, width, batch, rounds))


if __name__ == "__main__":
  main()
