"""Dropout speed and memory, jaxdrop against its peers, measured side by side in one process.

    python benchmarks/run.py                 # full run: 64K..16M elements, float32 and bfloat16
    python benchmarks/run.py --smoke         # tiny sizes, two rounds: checks that it still runs

Where jemalloc is installed (Debian: apt-get install libjemalloc2) the script restarts itself
under it with freed pages kept, so that large outputs do not page-fault on every call (see
`reexec_with_jemalloc`); `--system-malloc` keeps the system allocator.

Every timing is the median of interleaved rounds (each round times every implementation once,
so drift on a shared machine hits all of them alike), reported as a ratio to the floor
``jax.jit(lambda x: 2 * x)`` on the same array (forward) or to
``jax.value_and_grad(lambda x: jnp.vdot(g, 2 * x))`` (forward + backward). It writes
``results.md`` (the tables), ``results.json`` (raw medians) and ``results.png`` (time against
size, log-log) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop

RATE = 0.1


def _peers() -> tuple[dict[str, Callable], list[str]]:
  """Peer dropouts as ``f(key, x) -> y`` at RATE; the names of those that failed to import."""
  impls: dict[str, Callable] = {}
  missing = []
  try:
    import flax.linen as nn

    linen = nn.Dropout(RATE, deterministic=False)
    impls["flax linen"] = lambda k, x: linen.apply({}, x, rngs={"dropout": k})
  except ImportError:
    missing.append("flax linen")
  try:
    from flax import nnx

    impls["flax nnx"] = lambda k, x: nnx.Dropout(RATE, rngs=nnx.Rngs(dropout=k))(x)
  except ImportError:
    missing.append("flax nnx")
  try:
    import equinox as eqx

    eqx_dropout = eqx.nn.Dropout(RATE)
    impls["equinox"] = lambda k, x: eqx_dropout(x, key=k)
  except ImportError:
    missing.append("equinox")
  try:
    import haiku as hk

    impls["haiku"] = lambda k, x: hk.dropout(k, RATE, x)
  except ImportError:
    missing.append("haiku")
  return impls, missing


def implementations() -> tuple[dict[str, Callable], list[str]]:
  impls = {
    "floor 2*x": lambda k, x: 2 * x,
    "jaxdrop recompute=True": lambda k, x: jaxdrop.dropout(k, x, RATE, recompute=True),
    "jaxdrop recompute=False": lambda k, x: jaxdrop.dropout(k, x, RATE, recompute=False),
    "jaxdrop autodiff=jvp": lambda k, x: jaxdrop.dropout(
      k, x, RATE, recompute=True, autodiff="jvp"
    ),
    "bernoulli+where": lambda k, x: jnp.where(
      jax.random.bernoulli(k, 1 - RATE, x.shape), x / (1 - RATE), 0
    ).astype(x.dtype),
  }
  peers, missing = _peers()
  impls.update(peers)
  return impls, missing


def time_interleaved(calls: dict[str, Callable], rounds: int) -> dict[str, float]:
  for call in calls.values():
    jax.block_until_ready(call())
  samples: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      samples[name].append(time.perf_counter() - start)
  return {name: float(np.median(s)) for name, s in samples.items()}


def speed(impls, sizes, dtypes, rounds):
  """Median seconds per call: {(dtype, size, mode, impl): seconds}."""
  key = jax.random.key(0)
  out = {}
  for dtype in dtypes:
    for size in sizes:
      x = jax.random.normal(jax.random.key(1), (size // 1024, 1024), jnp.float32).astype(dtype)
      g = jax.random.normal(jax.random.key(2), x.shape, jnp.float32).astype(dtype)
      calls = {}
      for name, f in impls.items():
        fwd = jax.jit(f)
        vg = jax.jit(
          jax.value_and_grad(lambda x, g, k, f=f: jnp.vdot(g, f(k, x)).astype(jnp.float32))
        )
        calls[("fwd", name)] = lambda fwd=fwd: fwd(key, x)
        calls[("vg", name)] = lambda vg=vg: vg(x, g, key)
      for (mode, name), seconds in time_interleaved(calls, rounds).items():
        out[(jnp.dtype(dtype).name, size, mode, name)] = seconds
      print(f"  timed {jnp.dtype(dtype).name} {size:>9,} elements", flush=True)
  return out


def residual_bytes(impls, size=2**20) -> dict[str, float]:
  """Bytes per element of x that jax.vjp keeps for the backward pass (outside jit)."""
  key = jax.random.key(0)
  x = jnp.ones((size // 1024, 1024), jnp.float32)
  out = {}
  for name, f in impls.items():
    _, vjp = jax.vjp(lambda x, f=f: f(key, x), x)
    out[name] = sum(leaf.nbytes for leaf in jax.tree.leaves(vjp)) / x.size
  return out


def mlp_memory(layers=8, width=1024, batch=512) -> tuple[dict, tuple[int, int, int]]:
  """XLA temp bytes of a jitted training step, in units of one activation [batch, width] f32."""
  params = [jnp.zeros((width, width)) for _ in range(layers)]
  stacked = jnp.zeros((layers, width, width))
  x = jnp.ones((batch, width))
  key = jax.random.key(0)
  drops = {
    "no dropout": lambda k, h: h,
    "jaxdrop recompute=True": lambda k, h: jaxdrop.dropout(k, h, RATE, recompute=True),
    "jaxdrop recompute=False": lambda k, h: jaxdrop.dropout(k, h, RATE, recompute=False),
    "bernoulli+where": lambda k, h: jnp.where(
      jax.random.bernoulli(k, 1 - RATE, h.shape), h / (1 - RATE), 0
    ),
  }

  def unrolled(drop, remat):
    layer = lambda w, h, k: drop(k, jax.nn.relu(h @ w))
    layer = jax.checkpoint(layer) if remat else layer

    def loss(params, x, key):
      for w, k in zip(params, jax.random.split(key, layers)):
        x = layer(w, x, k)
      return jnp.mean(x**2)

    return loss, params

  def scanned(drop, remat):
    del remat

    def loss(stacked, x, key):
      def body(h, wk):
        return drop(wk[1], jax.nn.relu(h @ wk[0])), None

      return jnp.mean(jax.lax.scan(body, x, (stacked, jax.random.split(key, layers)))[0] ** 2)

    return loss, stacked

  out = {}
  for structure, build, remat in [
    ("unrolled", unrolled, False),
    ("jax.checkpoint per layer", unrolled, True),
    ("lax.scan over layers", scanned, False),
  ]:
    for name, drop in drops.items():
      loss, p = build(drop, remat)

      def step(p, x, key, loss=loss):
        value, grads = jax.value_and_grad(loss)(p, x, key)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, p, grads), value

      compiled = jax.jit(step).lower(p, x, key).compile()
      out[(structure, name)] = compiled.memory_analysis().temp_size_in_bytes / (batch * width * 4)
  return out, (layers, width, batch)


def _fmt_size(n):
  return f"{n // 2**20}M" if n >= 2**20 else f"{n // 2**10}K"


def machine() -> str:
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.device_kind} ({device.platform})"
  model = platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"CPU {model}, {os.cpu_count()} cores"


def report(times, residuals, mlp, sizes, dtypes, impls, missing, rounds) -> str:
  memory, (layers, width, batch) = mlp
  lines = [
    f"Machine: {machine()}; jax {jax.__version__}; allocator: {allocator()}; rate {RATE}; "
    f"median of {rounds} interleaved rounds; every figure a ratio to the floor measured in the "
    "same process and round."
  ]
  if missing:
    lines.append(f"Not measured (not installed): {', '.join(missing)}.")
  for mode, title, floor in [
    ("fwd", "Forward `f(key, x)`", "floor 2*x"),
    ("vg", "`value_and_grad(lambda x: vdot(g, f(key, x)))`", "floor 2*x"),
  ]:
    for dtype in dtypes:
      dname = jnp.dtype(dtype).name
      lines += [
        "",
        f"### {title}, {dname}: time / floor",
        "",
        "| implementation | " + " | ".join(_fmt_size(s) for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
      ]
      for name in impls:
        cells = [times[(dname, s, mode, name)] / times[(dname, s, mode, floor)] for s in sizes]
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
  largest = max(sizes)
  for dtype in dtypes:
    dname = jnp.dtype(dtype).name
    floor = times[(dname, largest, "fwd", "floor 2*x")]
    fraction = floor / times[(dname, largest, "fwd", "jaxdrop recompute=True")]
    lines.append(
      f"\njaxdrop forward at {_fmt_size(largest)} {dname} reaches {100 * fraction:.0f}% of the "
      "floor's throughput (both read x once and write y once)."
    )
  lines += [
    "",
    "### Bytes kept for the backward pass, per element of x (float32, `jax.vjp` outside jit)",
    "",
    "| implementation | bytes / element |",
    "|---|---:|",
  ]
  lines += [f"| {name} | {b:.3f} |" for name, b in residuals.items() if name != "floor 2*x"]
  structures = sorted({s for s, _ in memory}, key=list(dict.fromkeys(s for s, _ in memory)).index)
  names = list(dict.fromkeys(n for _, n in memory))
  lines += [
    "",
    f"### Training step of a {layers}-layer MLP (width {width}, batch {batch}), dropout after "
    f"every layer: XLA temp memory in activations of [{batch}, {width}] f32 "
    "(change against no dropout)",
    "",
    "| structure | " + " | ".join(names) + " |",
    "|---|" + "---:|" * len(names),
  ]
  for s in structures:
    base = memory[(s, "no dropout")]
    cells = [f"{memory[(s, n)]:.2f} ({100 * (memory[(s, n)] / base - 1):+.0f}%)" for n in names]
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(times, sizes, dtypes, impls, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4.5 * len(dtypes)), squeeze=False)
  for row, dtype in enumerate(dtypes):
    dname = jnp.dtype(dtype).name
    for col, (mode, title) in enumerate([("fwd", "forward"), ("vg", "value_and_grad")]):
      ax = axes[row][col]
      for name in impls:
        ax.loglog(
          sizes,
          [times[(dname, s, mode, name)] * 1e3 for s in sizes],
          marker="o",
          label=name,
          linestyle="--" if name.startswith("floor") else "-",
        )
      ax.set(title=f"{title}, {dname}", xlabel="elements", ylabel="median ms per call")
      ax.grid(True, which="both", alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


DOCS_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_MARKERS = re.compile(r"(<!-- benchmark:start -->\n).*?(<!-- benchmark:end -->)", re.S)


def update_docs(text: str, page: pathlib.Path = DOCS_PAGE) -> None:
  """Writes the report between the benchmark markers of the documentation's benchmarks page."""
  source = page.read_text()
  if not _MARKERS.search(source):
    raise SystemExit(f"{page} has no <!-- benchmark:start --> ... <!-- benchmark:end --> section")
  page.write_text(_MARKERS.sub(lambda m: m.group(1) + text + m.group(2), source))


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
RESULTS = pathlib.Path(__file__).parent / "results"
_KEEP_PAGES = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def allocator() -> str:
  preload = os.environ.get("LD_PRELOAD", "")
  if "jemalloc" in preload and _KEEP_PAGES in os.environ.get("MALLOC_CONF", ""):
    return "jemalloc, freed pages kept (no page faults in steady state)"
  return (
    "system malloc (on glibc, arrays over 32 MB are mapped afresh and page-fault on every call)"
  )


def reexec_with_jemalloc(argv, script: str = __file__) -> None:
  """Restarts this process (`script` with `argv`) under jemalloc that keeps freed pages, if
  it is installed.

  glibc maps every allocation over 32 MB afresh, so at 16M float32 elements each call of
  every implementation pays ~16K page faults, which hides the kernels' own cost. With
  jemalloc keeping freed pages the output buffer is reused, as in a steady training loop.
  """
  if "jemalloc" in os.environ.get("LD_PRELOAD", "") or not os.path.exists(JEMALLOC):
    return
  env = dict(os.environ, LD_PRELOAD=JEMALLOC, MALLOC_CONF=_KEEP_PAGES)
  os.execve(sys.executable, [sys.executable, os.path.abspath(script), *argv], env)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 rounds, no plot")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument(
    "--out",
    default=None,
    help="folder for the results (default: benchmarks/results, or a temporary "
    "folder with --smoke, so a smoke run never overwrites the committed ones)",
  )
  parser.add_argument(
    "--update-docs",
    action="store_true",
    help="replace the benchmark section of docs/benchmarks.md with these results",
  )
  parser.add_argument(
    "--system-malloc",
    action="store_true",
    help="do not restart under jemalloc even where it is installed",
  )
  args = parser.parse_args(argv)
  if not args.system_malloc:
    reexec_with_jemalloc(argv)

  sizes = [2**12, 2**14] if args.smoke else [2**16, 2**18, 2**20, 2**22, 2**24]
  dtypes = [jnp.float32] if args.smoke else [jnp.float32, jnp.bfloat16]
  rounds = 2 if args.smoke else args.rounds
  impls, missing = implementations()
  print(f"jaxdrop benchmark: {len(impls)} implementations, sizes {sizes}", flush=True)
  times = speed(impls, sizes, dtypes, rounds)
  residuals = residual_bytes(impls, size=2**14 if args.smoke else 2**20)
  mlp = mlp_memory(layers=2, width=128, batch=64) if args.smoke else mlp_memory()
  text = report(times, residuals, mlp, sizes, dtypes, impls, missing, rounds)
  print(text)
  if args.out is None:
    args.out = tempfile.mkdtemp(prefix="jaxdrop-bench-smoke-") if args.smoke else RESULTS
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.md").write_text(text)
  (out / "results.json").write_text(
    json.dumps({"|".join(map(str, k)): v for k, v in times.items()}, indent=1)
  )
  if not args.smoke:
    plot(times, sizes, dtypes, impls, out / "results.png")
  if args.update_docs:
    update_docs(text)
  print(f"wrote {out / 'results.md'}" + ("" if args.smoke else f" and {out / 'results.png'}"))
  return 0 if all(math.isfinite(v) for v in times.values()) else 1


if __name__ == "__main__":
  raise SystemExit(main())
