"""Attention with dropout on an accelerator: the Pallas kernels against cuDNN, chunked, xla and
Flax-style materialised dropout. One script, meant to finish within 6 minutes on one GPU.

    python benchmarks/attention_device.py            # on a GPU (or TPU) machine
    python benchmarks/attention_device.py --smoke    # tiny, on any backend (CI's check)

For each head size H (64, 128) and length T = S (1k to 16k): `jax.value_and_grad` of causal
self-attention, bfloat16, B = 4, N = 16, timed as the median of interleaved rounds in one
process, with its XLA temporary memory:

- `jax.nn.dot_product_attention(implementation="cudnn")` without dropout (GPU only): the bound;
- jaxdrop `implementation="pallas"` at rate 0 and at rate 0.1;
- jaxdrop `"chunked"` and `"xla"` at rate 0.1;
- Flax-style materialised dropout (`flax.linen.dot_product_attention` with its dropout).

A version whose temporaries exceed 80% of the device's memory is reported, not run; a length
left when the time budget (`--budget`, seconds) is spent is reported as not run. Before
timing, `"pallas"` is checked against `"xla"` on the device (same key: outputs and gradients)
for one shape. The targets printed at the end: `"pallas"` with dropout at >= 0.8x the
throughput of `"pallas"` without (time ratio <= 1.25), and at <= 1.3x the time of cuDNN
without dropout; memory linear in T.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import machine, time_interleaved  # noqa: E402

RATE = 0.1
KEY = jax.random.key(0)


def _memory_limit() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(0.8 * stats["bytes_limit"])
  import os

  return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _variants(on_gpu: bool) -> dict:
  """name -> attention(q, k, v) (causal, dropout where the name says)."""

  def ours(impl, rate):
    return lambda q, k, v: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=KEY, dropout_rate=rate, is_causal=True, implementation=impl
    )

  def flax_style(q, k, v):
    from flax import linen as nn

    t = q.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    return nn.dot_product_attention(
      q, k, v, mask=causal, dropout_rng=KEY, dropout_rate=RATE, deterministic=False
    )

  variants = {}
  if on_gpu:
    variants["cudnn, no dropout"] = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="cudnn"
    )
  variants |= {
    "pallas, rate 0": ours("pallas", 0.0),
    "pallas, rate 0.1": ours("pallas", RATE),
    "chunked, rate 0.1": ours("chunked", RATE),
    "xla, rate 0.1": ours("xla", RATE),
    "Flax-style, rate 0.1": flax_style,
  }
  return variants


def _step(attend):
  def loss(q, k, v, cot):
    return jnp.vdot(attend(q, k, v).astype(jnp.float32), cot)

  return jax.value_and_grad(loss, (0, 1, 2))


def _inputs(b, t, n, h, dtype, abstract=False):
  shape = (b, t, n, h)
  if abstract:
    return [jax.ShapeDtypeStruct(shape, dtype)] * 3 + [jax.ShapeDtypeStruct(shape, jnp.float32)]
  keys = jax.random.split(jax.random.key(1), 4)
  qkv = [jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys[:3]]
  return qkv + [jax.random.normal(keys[3], shape, jnp.float32)]


def check_on_device(b, t, n, h, dtype) -> str:
  """`"pallas"` against `"xla"` with the same key on this device: outputs and gradients."""
  q, k, v, cot = _inputs(b, t, n, h, dtype)
  results = {}
  for impl in ("pallas", "xla"):
    attend = lambda q, k, v, impl=impl: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=KEY, dropout_rate=RATE, is_causal=True, implementation=impl
    )
    out = jax.jit(attend)(q, k, v)
    grads = jax.jit(_step(attend))(q, k, v, cot)[1]
    results[impl] = [np.asarray(a, np.float32) for a in (out, *grads)]
  lines = []
  ok = True
  for name, ours, ref in zip(("out", "dq", "dk", "dv"), results["pallas"], results["xla"]):
    scale = float(np.max(np.abs(ref))) or 1.0
    err = float(np.max(np.abs(ours - ref))) / scale
    zeros_agree = name != "out" or bool(np.all((ours == 0) == (ref == 0)))
    ok &= err < 5e-2 and zeros_agree
    lines.append(f"{name}: max |pallas - xla| / max |xla| = {err:.1e}")
  verdict = "PASS" if ok else "FAIL"
  return (
    f"check on {jax.devices()[0].device_kind}, T = {t}, H = {h}: {verdict} ("
    + "; ".join(lines)
    + ")"
  )


def _mib(n: int) -> str:
  return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def measure(b, n, heads, lengths, dtype, rounds, budget, on_gpu):
  """{(h, t): {name: (seconds or None, temp bytes or None, note)}}."""
  start, table = time.perf_counter(), {}
  variants = _variants(on_gpu)
  for h in heads:
    for t in lengths:
      row = {}
      if time.perf_counter() - start > budget:
        table[(h, t)] = {name: (None, None, "not run (time budget)") for name in variants}
        continue
      compiled = {}
      for name, attend in variants.items():
        try:
          lowered = jax.jit(_step(attend)).lower(*_inputs(b, t, n, h, dtype, abstract=True))
          compiled[name] = lowered.compile()
        except Exception as err:  # a backend that refuses a variant: reported, not fatal
          row[name] = (None, None, f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80]}")
          continue
        temp = compiled[name].memory_analysis().temp_size_in_bytes
        if temp > _memory_limit():
          row[name] = (None, temp, "out of memory")
          del compiled[name]
      args = _inputs(b, t, n, h, dtype)
      times = time_interleaved(
        {name: (lambda c=c: c(*args)) for name, c in compiled.items()}, rounds
      )
      for name, c in compiled.items():
        row[name] = (times[name], c.memory_analysis().temp_size_in_bytes, "")
      table[(h, t)] = {name: row[name] for name in variants}
      print(f"  timed H = {h}, T = {t} ({time.perf_counter() - start:.0f} s)", flush=True)
  return table


def report(table, b, n, dtype) -> str:
  names = list(next(iter(table.values())))
  lines = [
    f"value_and_grad of causal self-attention, {jnp.dtype(dtype).name}, B = {b}, N = {n}; "
    f"{machine()}, {jax.devices()[0].device_kind}; time and XLA temporary memory "
    "(ratios: time to pallas at rate 0)",
    "",
    "| H | T | " + " | ".join(names) + " |",
    "|---|---|" + "---|" * len(names),
  ]
  targets = []
  for (h, t), row in table.items():
    base = row.get("pallas, rate 0", (None,))[0]
    cells = []
    for name in names:
      seconds, temp, note = row[name]
      if seconds is None:
        cells.append(note + (f" ({_mib(temp)})" if temp else ""))
        continue
      ratio = f" ({seconds / base:.2f}x)" if base else ""
      cells.append(f"{seconds * 1e3:,.2f} ms{ratio}, {_mib(temp)}")
    lines.append(f"| {h} | {t} | " + " | ".join(cells) + " |")
    ours, cudnn = row.get("pallas, rate 0.1", (None,))[0], row.get("cudnn, no dropout", (None,))[0]
    if ours and base:
      verdict = "met" if ours / base <= 1.25 else "missed"
      targets.append(
        f"H = {h}, T = {t}: pallas dropout / no dropout {ours / base:.2f}x ({verdict})"
      )
    if ours and cudnn:
      verdict = "met" if ours / cudnn <= 1.3 else "missed"
      targets.append(
        f"H = {h}, T = {t}: pallas dropout / cuDNN without {ours / cudnn:.2f}x ({verdict})"
      )
  return "\n".join(lines + ["", "Targets (<= 1.25x its own rate 0, <= 1.3x cuDNN):"] + targets)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, any backend")
  parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
  parser.add_argument("--heads-dims", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--budget", type=float, default=300.0, help="seconds before skipping")
  args = parser.parse_args(argv)
  on_gpu = jax.default_backend() == "gpu"
  b, n, dtype = 4, 16, jnp.bfloat16
  if args.smoke:
    b, n, args.lengths, args.heads_dims, args.rounds = 1, 2, [128], [64], 1
  elif jax.default_backend() == "cpu":
    print("no accelerator: the Pallas kernels would run in interpret mode; use --smoke", flush=True)
    return 1
  print(check_on_device(b, args.lengths[0], n, args.heads_dims[0], dtype), flush=True)
  table = measure(b, n, args.heads_dims, args.lengths, dtype, args.rounds, args.budget, on_gpu)
  print(report(table, b, n, dtype))
  return 0


if __name__ == "__main__":
  sys.exit(main())
