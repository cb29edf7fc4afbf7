"""XLA's temporary memory for attention with dropout, jaxdrop against Flax and jax.nn.

    python benchmarks/attention_memory.py                    # T = 512 ... 16384
    python benchmarks/attention_memory.py --lengths 512 1024

For `jax.value_and_grad` of causal self-attention with dropout 0.1 (B = 1, N = 8, H = 64,
float32), each implementation is compiled (not run) and its
`compiled.memory_analysis().temp_size_in_bytes` printed as a markdown table: jaxdrop chunked,
jaxdrop xla (the materialised reference), Flax Linen's `dot_product_attention` with dropout,
and `jax.nn.dot_product_attention` without dropout (what attention costs with no mask at all).
Compiling needs no memory for the arrays, so the table reaches lengths the materialised
versions could not run at. Timings are a separate benchmark.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jaxdrop

RATE, BATCH, HEADS, HEAD_DIM = 0.1, 1, 8, 64


def implementations(key):
  from flax import linen as nn

  def flax(q, k, v):
    mask = nn.make_causal_mask(jnp.ones((q.shape[0], q.shape[1])))
    return nn.dot_product_attention(q, k, v, mask=mask, dropout_rng=key, dropout_rate=RATE,
                                    deterministic=False)

  ours = lambda impl: lambda q, k, v: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=key, dropout_rate=RATE, is_causal=True, implementation=impl)
  return {"jaxdrop chunked": ours("chunked"), "jaxdrop xla": ours("xla"),
          "Flax Linen, dropout": flax,
          "jax.nn, no dropout": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)}


def temp_bytes(fn, length: int) -> int:
  spec = jax.ShapeDtypeStruct((BATCH, length, HEADS, HEAD_DIM), jnp.float32)
  step = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v)), (0, 1, 2)))
  return step.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
  args = parser.parse_args()
  fns = implementations(jax.random.key(0))
  print("| T | " + " | ".join(fns) + " | chunked growth per doubling |")
  print("|---:|" + "---:|" * (len(fns) + 1))
  previous = None
  for length in args.lengths:
    sizes = {name: temp_bytes(fn, length) for name, fn in fns.items()}
    chunked = sizes["jaxdrop chunked"]
    growth = "" if previous is None else f"{chunked / previous:.2f}x"
    previous = chunked
    cells = " | ".join(f"{size / 2**20:,.1f} MiB" for size in sizes.values())
    print(f"| {length} | {cells} | {growth} |", flush=True)


if __name__ == "__main__":
  main()
