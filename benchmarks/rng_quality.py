"""The mask stream under the batteries: writes jaxdrop's bits (or the `jax.random` control) as raw
little-endian words for PractRand's RNG_test or a TestU01 stdin driver, or runs PractRand on
every stream and writes a markdown table.

    python benchmarks/rng_quality.py rows > bits.raw                  # endless stream of uint32
    python benchmarks/rng_quality.py masks --generator threefry | RNG_test stdin8 -tlmax 1GB
    python benchmarks/rng_quality.py --practrand 1 --out benchmarks/results   # every stream, 1 GB

RNG_test is built by ``../shared/tools/practrand/build`` (PractRand 0.94); `--rng-test` names
another binary. Streams (each drawn block by block, every block a block of the same global
mask, so the stream is exactly the bits of one large array):

* ``rows``: a (R, 1024) array read row by row (the layout of a batch of activations);
* ``cols``: a (2**20, C) array read column by column (one unit across the batch);
* ``long``: one row of up to 2**32 columns (a 1-D array; longer streams go on with the next key);
* ``masks``: rate-0.5 keep masks of a (R, 1024) array as dropout draws them, 8 units a byte
  (unit j of each group in bit j), row by row: for ``stdin8``;
* ``fold_in``, ``split``, ``seeds``: the bits of element 0 across the keys ``fold_in(key, i)``,
  ``split(key_j, 2**20)[i]`` and ``jax.random.key(i)``.

The control, ``--generator threefry``, writes `jax.random.bits` (partitionable Threefry)
in the same layouts, one fresh key per block of 2**24 words.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrop import _keys, _mask

STREAMS = ("rows", "cols", "long", "masks", "fold_in", "split", "seeds")
BLOCK = 2**24  # words per block
WIDTH = 1024  # columns of the rows and masks streams
TALL = 2**20  # rows of the cols stream


def _bits(words, shape, offsets, global_shape):
  source = _mask.MaskSource(words, tuple(jnp.uint32(o) for o in offsets))
  return _mask.mask_bits(source, _mask.MaskLayout(shape, global_shape=global_shape))


def _pack_bytes(keep):
  """Packs booleans 8 to a byte, unit j of each group of 8 in bit j."""
  groups = keep.reshape(-1, 8).astype(jnp.uint8)
  return jnp.sum(groups << jnp.arange(8, dtype=jnp.uint8), axis=1, dtype=jnp.uint8)


def jaxdrop_block(stream: str, key, i: int):
  """Block `i` of `stream` drawn by jaxdrop from `key`."""
  words = _keys.mask_words(key)
  rows = BLOCK // WIDTH
  if stream == "rows":  # rows [i*rows, (i+1)*rows) of a (2**32 - 1, WIDTH) array
    return _bits(words, (rows, WIDTH), (i * rows, 0), (2**32 - 1, WIDTH))
  if stream == "cols":  # 16 columns of a (TALL, 2**32 - 1) array, column by column
    cols = BLOCK // TALL
    return _bits(words, (TALL, cols), (0, i * cols), (TALL, 2**32 - 1)).T
  if stream == "long":  # one row of 2**32 - 1 columns; block i of key fold_in(key, i // 256)
    per_row = 2**32 // BLOCK
    words = jnp.where(i >= per_row, _keys.mask_words(jax.random.fold_in(key, i // per_row)), words)
    return _bits(words, (1, BLOCK), (0, (i % per_row) * BLOCK), (1, 2**32 - 1))
  if stream == "masks":  # 32 units per word: rows of the rate-0.5 mask that dropout draws
    rows = 32 * rows
    source = _mask.MaskSource(words, (jnp.uint32(i * rows), jnp.uint32(0)))
    layout = _mask.MaskLayout((rows, WIDTH), global_shape=(2**32 - 1, WIDTH))
    return _pack_bytes(_mask.keep_mask(source, layout, jnp.uint32(2**31), True))
  keys = _derived_keys(stream, key, i)
  return jax.vmap(lambda k: _bits(_keys.mask_words(k), (1,), (0,), None)[0])(keys)


def threefry_block(stream: str, key, i: int):
  """The control: `jax.random.bits` in the layout of `stream`, a fresh key per block."""
  k = jax.random.fold_in(key, i)
  if stream == "rows":
    return jax.random.bits(k, (BLOCK // WIDTH, WIDTH))
  if stream == "long":
    return jax.random.bits(k, (BLOCK,))
  if stream == "cols":
    return jax.random.bits(k, (TALL, BLOCK // TALL)).T
  if stream == "masks":
    return _pack_bytes(jax.random.bits(k, (32 * BLOCK,)) >= np.uint32(2**31))
  keys = _derived_keys(stream, key, i)
  return jax.vmap(lambda k: jax.random.bits(k, (1,))[0])(keys)


def _derived_keys(stream, key, i):
  n = BLOCK // 16  # 2**20 keys per block
  index = jnp.arange(n, dtype=jnp.uint32) + jnp.uint32(i * n)
  if stream == "fold_in":
    return jax.vmap(lambda j: jax.random.fold_in(key, j))(index)
  if stream == "split":
    return jax.random.split(jax.random.fold_in(key, i), n)
  if stream == "seeds":
    return jax.vmap(jax.random.key)(index)
  raise ValueError(f"unknown stream {stream!r}; choose from {STREAMS}")


def write(stream: str, generator: str, gigabytes: float | None, seed: int) -> None:
  """Writes the stream's raw bytes to stdout until `gigabytes` (or forever, or a closed pipe)."""
  draw = jax.jit(
    {"jaxdrop": jaxdrop_block, "threefry": threefry_block}[generator], static_argnums=0
  )
  key = jax.random.key(seed)
  out, written, i = sys.stdout.buffer, 0, 0
  limit = None if gigabytes is None else gigabytes * 2**30
  try:
    while limit is None or written < limit:
      data = np.asarray(draw(stream, key, i)).tobytes()
      out.write(data)
      written, i = written + len(data), i + 1
  except BrokenPipeError:
    pass


_FLAG = re.compile(
  r"R=\s*([-+0-9.]+)\s+p\s*=\s*(\S+(?: \S+)?)\s+(FAIL.*|.*suspicious|unusual)\s*$", flags=re.M
)


def practrand_verdict(report: str) -> tuple[str, str]:
  """(size reached, verdict): FAIL if any size failed, else the anomalies at the last size."""
  blocks = re.findall(r"length= ([0-9.]+ [a-z]+bytes?)(.*?)(?=length=|\Z)", report, flags=re.S)
  if not blocks:
    return "nothing", "no result (see the report)"
  for _, body in blocks:
    fails = [f for f in _FLAG.findall(body) if f[2].startswith("FAIL")]
    if fails:
      return blocks[-1][0], f"FAIL (p = {fails[0][1]})"
  size, body = blocks[-1]
  flagged = _FLAG.findall(body)
  if not flagged:
    return size, "pass, no anomaly"
  return size, "pass; " + ", ".join(f"{f[2].strip()} p = {f[1]}" for f in flagged)


def run_practrand(rng_test: str, stream: str, generator: str, gigabytes: float, seed: int) -> str:
  mode = "stdin8" if stream == "masks" else "stdin32"
  size = f"{int(gigabytes * 1024)}MB" if gigabytes < 1 else f"{int(gigabytes)}GB"
  producer = subprocess.Popen(
    [sys.executable, __file__, stream, "--generator", generator, "--seed", str(seed)],
    stdout=subprocess.PIPE,
  )
  result = subprocess.run(
    [rng_test, mode, "-tlmax", size, "-tlmin", "256MB"],
    stdin=producer.stdout,
    capture_output=True,
    text=True,
    check=False,
  )
  producer.stdout.close()
  producer.kill()
  producer.wait()
  return result.stdout


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("stream", nargs="?", choices=STREAMS, help="write this stream to stdout")
  parser.add_argument("--generator", choices=("jaxdrop", "threefry"), default="jaxdrop")
  parser.add_argument(
    "--gigabytes", type=float, default=None, help="stop after this much (default: never)"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--practrand",
    type=float,
    metavar="GB",
    help="run RNG_test to this size on every stream, jaxdrop and control",
  )
  parser.add_argument(
    "--streams", default=",".join(STREAMS), help="comma-separated, for --practrand"
  )
  parser.add_argument("--rng-test", default=None, help="RNG_test binary (default: build it)")
  parser.add_argument(
    "--out", type=pathlib.Path, default=None, help="folder for practrand.md and reports"
  )
  args = parser.parse_args(argv)
  if args.practrand is None:
    if args.stream is None:
      parser.error("name a stream to write, or pass --practrand GB")
    write(args.stream, args.generator, args.gigabytes, args.seed)
    return
  rng_test = (
    args.rng_test
    or subprocess.run(
      ["bash", str(pathlib.Path(__file__).resolve().parents[2] / "shared/tools/practrand/build")],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  )
  lines = [
    f"PractRand 0.94 to {args.practrand:g} GB per stream, seed {args.seed}; jax {jax.__version__}.",
    "",
    "| stream | generator | reached | result |",
    "|---|---|---|---|",
  ]
  for stream in args.streams.split(","):
    for generator in ("jaxdrop", "threefry"):
      report = run_practrand(rng_test, stream, generator, args.practrand, args.seed)
      if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"practrand-{stream}-{generator}.txt").write_text(report)
      size, verdict = practrand_verdict(report)
      lines.append(f"| {stream} | {generator} | {size} | {verdict} |")
      print(lines[-1], flush=True)
  if args.out:
    (args.out / "practrand.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
