"""Attention dropout: time and XLA temporary memory, jaxdrop against Flax and jax.nn.

    python benchmarks/attention.py                 # both tables, markdown on stdout
    python benchmarks/attention.py --part op --lengths 512 1024 --rounds 3
    python benchmarks/attention.py --part gpt

`--part op`: `jax.value_and_grad` of causal self-attention alone, dropout 0.1 on the
weights (B = 1, N = 8, H = 64, float32): jaxdrop chunked, jaxdrop xla (materialised),
Flax Linen's `dot_product_attention` with dropout, and `jax.nn.dot_product_attention`
without dropout (the bound). Memory is `compiled.memory_analysis().temp_size_in_bytes`;
a version whose temporaries exceed 80% of this machine's memory is reported as out of
memory and not run.

`--part gpt`: one training step (value_and_grad and an SGD update) of a GPT-2-style pre-LN
transformer (2 layers, width 256, 4 heads, vocabulary 512, B = 1) with dropout 0.1 on the
embedding, the attention weights, the attention output and the MLP output, five ways: no
dropout and jaxdrop, each with materialised ("xla") and chunked attention, and Flax
(`nn.Dropout` and Flax's attention dropout).

Times are medians of interleaved rounds in one process; every figure is also given as a
ratio to the row's no-dropout reference measured in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp

import jaxdrop

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import machine, time_interleaved  # noqa: E402

RATE = 0.1


def _memory_limit() -> int:
  return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _mib(n: int) -> str:
  return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def _measure(steps: dict, args_of, rounds: int, reference: str):
  """Compile every step, time those that fit in memory; rows of (name, seconds, temp bytes)."""
  compiled, temps = {}, {}
  for name, step in steps.items():
    lowered = jax.jit(step).lower(*args_of(name, abstract=True))
    compiled[name] = lowered.compile()
    temps[name] = compiled[name].memory_analysis().temp_size_in_bytes
  runnable = {name: c for name, c in compiled.items() if temps[name] <= _memory_limit()}
  concrete = {name: args_of(name, abstract=False) for name in runnable}
  times = time_interleaved(
    {n: (lambda c=c, a=concrete[n]: c(*a)) for n, c in runnable.items()}, rounds
  )
  rows = []
  for name in steps:
    seconds = times.get(name)
    rows.append((name, seconds, temps[name]))
  ref_time, ref_temp = times.get(reference), temps[reference]
  return rows, ref_time, ref_temp


def _cell(seconds, temp, ref_time, ref_temp):
  if seconds is None:
    return f"out of memory ({_mib(temp)})"
  ratio = f" ({seconds / ref_time:.2f}x)" if ref_time else ""
  return f"{seconds * 1e3:,.0f} ms{ratio}, {_mib(temp)} ({temp / ref_temp:.2f}x)"


def attention_op(lengths, rounds):
  from flax import linen as nn

  key = jax.random.key(0)

  def flax_attention(q, k, v):
    mask = nn.make_causal_mask(jnp.ones(q.shape[:2]))
    return nn.dot_product_attention(
      q, k, v, mask=mask, dropout_rng=key, dropout_rate=RATE, deterministic=False
    )

  ours = lambda impl: (
    lambda q, k, v: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=key, dropout_rate=RATE, is_causal=True, implementation=impl
    )
  )
  fns = {
    "jaxdrop chunked": ours("chunked"),
    "jaxdrop xla": ours("xla"),
    "Flax Linen, dropout": flax_attention,
    "jax.nn, no dropout": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
  }
  steps = {
    name: jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v)), (0, 1, 2))
    for name, f in fns.items()
  }
  lines = ["| T | " + " | ".join(fns) + " |", "|---:|" + "---:|" * len(fns)]
  for length in lengths:
    shape = (1, length, 8, 64)

    def args_of(name, abstract):
      if abstract:
        return (jax.ShapeDtypeStruct(shape, jnp.float32),) * 3
      return tuple(jax.random.normal(jax.random.key(i), shape) for i in range(3))

    rows, ref_time, ref_temp = _measure(steps, args_of, rounds, "jax.nn, no dropout")
    lines.append(
      f"| {length} | " + " | ".join(_cell(s, t, ref_time, ref_temp) for _, s, t in rows) + " |"
    )
    print(lines[-1], file=sys.stderr, flush=True)
  return "\n".join(lines)


def _gpt_loss(attend, drop, layers=2, heads=4):
  """A GPT-2-style pre-LN language model's loss; `attend(q, k, v, key)` and `drop(key, x)`."""

  def loss(params, tokens, key):
    b, t = tokens.shape
    keys = jax.random.split(key, 1 + 3 * layers)
    x = drop(keys[0], params["embed"][tokens] + params["position"][:t])
    d = x.shape[-1]
    for i, layer in enumerate(params["layers"]):
      k_attn, k_out, k_mlp = keys[1 + 3 * i : 4 + 3 * i]
      h = jax.nn.standardize(x, axis=-1)
      q, k, v = (a.reshape(b, t, heads, d // heads) for a in jnp.split(h @ layer["qkv"], 3, -1))
      x = x + drop(k_out, attend(q, k, v, k_attn).reshape(b, t, d) @ layer["out"])
      h = jax.nn.gelu(jax.nn.standardize(x, axis=-1) @ layer["up"])
      x = x + drop(k_mlp, h @ layer["down"])
    logits = jax.nn.standardize(x, axis=-1) @ params["embed"].T
    return -jnp.mean(
      jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)
    )

  return loss


def _gpt_params(width=256, layers=2, vocab=512, max_len=8192):
  keys = iter(jax.random.split(jax.random.key(1), 4 + 4 * layers))
  init = lambda shape: 0.02 * jax.random.normal(next(keys), shape)
  return {
    "embed": init((vocab, width)),
    "position": init((max_len, width)),
    "layers": [
      {
        "qkv": init((width, 3 * width)),
        "out": init((width, width)),
        "up": init((width, 4 * width)),
        "down": init((4 * width, width)),
      }
      for _ in range(layers)
    ],
  }


def gpt_step(lengths, rounds):
  from flax import linen as nn

  def ours(impl, rate):
    attend = lambda q, k, v, key: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=key, dropout_rate=rate, is_causal=True, implementation=impl
    )
    return _gpt_loss(attend, lambda key, x: jaxdrop.dropout(key, x, rate))

  def flax_attend(q, k, v, key):
    mask = nn.make_causal_mask(jnp.ones(q.shape[:2]))
    return nn.dot_product_attention(
      q, k, v, mask=mask, dropout_rng=key, dropout_rate=RATE, deterministic=False
    )

  flax_drop = lambda key, x: nn.Dropout(RATE).apply(
    {}, x, deterministic=False, rngs={"dropout": key}
  )
  no_drop_xla = _gpt_loss(
    lambda q, k, v, key: jax.nn.dot_product_attention(q, k, v, is_causal=True), lambda key, x: x
  )
  losses = {
    "no dropout, xla attention": no_drop_xla,
    "jaxdrop, xla attention": ours("xla", RATE),
    "Flax dropout": _gpt_loss(flax_attend, flax_drop),
    "no dropout, chunked attention": ours("chunked", 0.0),
    "jaxdrop, chunked attention": ours("chunked", RATE),
  }

  def train_step(loss):
    def step(params, tokens, key):
      value, grads = jax.value_and_grad(loss)(params, tokens, key)
      return value, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    return step

  steps = {name: train_step(loss) for name, loss in losses.items()}
  params = _gpt_params()
  lines = ["| T | " + " | ".join(losses) + " |", "|---:|" + "---:|" * len(losses)]
  for length in lengths:
    tokens = jax.random.randint(jax.random.key(2), (1, length), 0, 512)

    def args_of(name, abstract):
      args = (params, tokens, jax.random.key(3))
      return (
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args) if abstract else args
      )

    rows, ref_time, ref_temp = _measure(steps, args_of, rounds, "no dropout, xla attention")
    same = {
      "jaxdrop, xla attention": "no dropout, xla attention",
      "jaxdrop, chunked attention": "no dropout, chunked attention",
    }
    by_name = {name: (s, t) for name, s, t in rows}
    cells = []
    for name, seconds, temp in rows:
      cell = _cell(seconds, temp, ref_time, ref_temp)
      if name in same and seconds is not None and by_name[same[name]][0]:
        base_s, base_t = by_name[same[name]]
        cell += f"; vs same attention {seconds / base_s:.2f}x time, {temp / base_t:.2f}x memory"
      cells.append(cell)
    lines.append(f"| {length} | " + " | ".join(cells) + " |")
    print(lines[-1], file=sys.stderr, flush=True)
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=["op", "gpt", "both"], default="both")
  parser.add_argument("--lengths", type=int, nargs="+")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  print(f"Machine: {machine()}; jax {jax.__version__}, backend {jax.default_backend()}\n")
  if args.part in ("op", "both"):
    print(
      "Attention alone, value_and_grad, causal, dropout 0.1, B=1, N=8, H=64, float32: "
      "median time (ratio to jax.nn without dropout), XLA temp memory (ratio)\n"
    )
    print(attention_op(args.lengths or [512, 1024, 2048, 4096, 8192, 16384], args.rounds) + "\n")
  if args.part in ("gpt", "both"):
    print(
      "GPT-2-style training step (2 layers, width 256, 4 heads, B=1), dropout 0.1 at the "
      "embedding, attention weights, attention output and MLP output: median time "
      "(ratio to no dropout with xla attention), XLA temp memory (ratio)\n"
    )
    print(gpt_step(args.lengths or [256, 512, 1024, 2048, 4096], args.rounds) + "\n")


if __name__ == "__main__":
  main()
