"""What mask stream 2 costs against stream 1, side by side in one process.

    python benchmarks/stream_cost.py            # 16M elements as (16384, 1024), f32 and bf16
    python benchmarks/stream_cost.py --rounds 5 --rows 64

Both streams run through jaxdrop's own op (`noise_op` with the Bernoulli draw, rate 0.1):
stream 2 is the library's; stream 1, the row-seeded generator it replaced
(``finalise(seed + column, salt)``), is transcribed here. Every figure is a ratio to the
floor ``jax.jit(lambda x: 2 * x)`` measured in the same interleaved rounds (median), under
jemalloc with freed pages kept when it is installed (as `run.py`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop
from jaxdrop import _core, _dropout, _keys, _mask

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import allocator, machine, reexec_with_jemalloc, time_interleaved  # noqa: E402

RATE = 0.1


def _stream1_bits(source, layout):
  """Stream 1: per row (seed, salt) = Threefry(row); per element a reduced lowbias32 of
  ``seed + column`` with the salt xored in mid-way (2-D layouts without offsets only)."""
  rows, width = layout.shape
  row = jax.lax.broadcasted_iota(jnp.uint32, (rows, 1), 0)
  seed, salt = _mask.row_keys(source.words, row)
  v = seed + jax.lax.broadcasted_iota(jnp.uint32, (1, width), 1)
  v = (v ^ (v >> 16)) * np.uint32(0x7FEB352D)
  v = v ^ salt
  v = (v ^ (v >> 15)) * np.uint32(0x846CA68B)
  return v ^ (v >> 16)


def _stream1_draw(source, layout, t, any_kept, scale):
  bits = jax.lax.bitcast_convert_type(_stream1_bits(source, layout), jnp.int32)
  return (bits >= jax.lax.bitcast_convert_type(t ^ np.uint32(2**31), jnp.int32)) & any_kept, scale


@jax.jit
def stream1_dropout(key, x):
  threshold = _mask.drop_threshold(jnp.float32(RATE))  # traced here: same ops as concrete
  params, _ = _dropout.bernoulli_scalars(threshold, jnp.bool_(False), "inverted")
  return _core.noise_op(
    _mask.MaskSource(_keys.mask_words(key)),
    x,
    params,
    draw=_stream1_draw,
    mask_shape=x.shape,
    recompute=True,
    autodiff="vjp",
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", type=int, default=16384)
  parser.add_argument("--rounds", type=int, default=41)
  parser.add_argument("--repeats", type=int, default=3, help="independent sets of rounds")
  parser.add_argument("--system-malloc", action="store_true")
  args = parser.parse_args(argv)
  if not args.system_malloc:
    reexec_with_jemalloc(sys.argv[1:] if argv is None else argv, script=__file__)
  print(
    f"{machine()}; allocator: {allocator()}; rate {RATE}; {args.rows} x 1024; "
    f"median of {args.rounds} interleaved rounds; time / floor"
  )
  key = jax.random.key(0)
  calls = {
    "floor 2*x": jax.jit(lambda k, x: 2 * x),
    "stream 2 (jaxdrop)": jax.jit(lambda k, x: jaxdrop.dropout(k, x, RATE)),
    "stream 1": stream1_dropout,
  }
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jax.random.normal(jax.random.key(1), (args.rows, 1024), jnp.float32).astype(dtype)
    for repeat in range(args.repeats):
      times = time_interleaved({n: (lambda f=f: f(key, x)) for n, f in calls.items()}, args.rounds)
      floor = times["floor 2*x"]
      cells = "  ".join(f"{n} {t / floor:.2f}x" for n, t in times.items() if n != "floor 2*x")
      change = times["stream 2 (jaxdrop)"] / times["stream 1"] - 1
      print(
        f"{jnp.dtype(dtype).name:9} run {repeat + 1}: {cells}  stream 2 vs 1: {100 * change:+.0f}%",
        flush=True,
      )


if __name__ == "__main__":
  main()
