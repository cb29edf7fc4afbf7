"""The generator's fine structure (mask stream 2), in the batteries' own CI step:

    JAXDROP_BATTERIES=1 python -m pytest -q tests/batteries

The row-seeded stream 1 kept neighbouring units correlated at about +4e-4 (lags 1, 3, 12),
gave per-row kept counts 1% more variance than binomial, and made rows whose Threefry seeds
lay within a row length of each other share shifted inputs. The checks below see each of
those at more than 5 sigma; the bound is |z| < 5 (two-sided p = 5.7e-7 per statistic). They
read 2**28 units and more, about 40 s of CPU, so they run beside PractRand rather than in the
unit tests (moved from tests/test_statistics.py).
"""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop import _keys, _mask

pytestmark = pytest.mark.skipif(
  os.environ.get("JAXDROP_BATTERIES") != "1",
  reason="the stream's fine structure runs in its own step: "
  "JAXDROP_BATTERIES=1 python -m pytest tests/batteries",
)

Z = 5.0

LAGS = (1, 2, 3, 4, 8, 12, 16, 32)
UNITS = 2**28  # 268M units: a correlation of 4e-4 is z = 4e-4 * sqrt(UNITS) = 6.6
CHUNK = 2**24


@functools.partial(jax.jit, static_argnames=("width",))
def _chunk_statistics(words, index, *, width):
  """Block `index` (CHUNK units) of a (UNITS // width, width) mask at rate 0.5 (the top bit):
  agreeing pairs at each lag along the rows, and the sum over rows of 1024 units (or fewer)
  of (kept - expected)^2."""
  rows = max(CHUNK // width, 1)
  shape, global_shape = (rows, min(width, CHUNK)), (UNITS // width, width)
  offsets = (
    (index * jnp.uint32(rows), jnp.uint32(0))
    if rows > 1
    else (jnp.uint32(0), index * jnp.uint32(CHUNK))
  )
  bits = _mask.mask_bits(
    _mask.MaskSource(words, offsets), _mask.MaskLayout(shape, global_shape=global_shape)
  )
  kept = (bits >> 31).astype(jnp.int32)
  agree = jnp.stack([jnp.sum(kept[:, lag:] == kept[:, :-lag], dtype=jnp.int32) for lag in LAGS])
  counts = jnp.sum(kept.reshape(-1, min(width, 1024)), axis=1, dtype=jnp.int32)
  return agree, jnp.sum((counts - min(width, 1024) // 2).astype(jnp.float32) ** 2)


def _stream_statistics(seed, width):
  """Lag z-scores and the z-score of the per-row kept-count variance over UNITS units of a
  (UNITS // width, width) mask (width UNITS: one long row, counted in blocks of 1024)."""
  words = _keys.mask_words(jax.random.key(seed))
  agree, squares = np.zeros(len(LAGS)), 0.0
  for index in range(UNITS // CHUNK):
    a, s = _chunk_statistics(words, jnp.uint32(index), width=width)
    agree, squares = agree + np.asarray(a, np.float64), squares + float(s)
  row = min(width, CHUNK)
  pairs = np.array([UNITS // row * (row - lag) for lag in LAGS], np.float64)
  z_lags = (agree - pairs / 2) / np.sqrt(pairs / 4)
  # Each count of w = min(width, 1024) units is Binomial(w, 1/2); (count - w/2)^2 / (w/4)
  # summed over the UNITS / w counts is chi2 with that many degrees of freedom.
  w = min(width, 1024)
  chi2, dof = squares / (w / 4), UNITS // w
  return z_lags, (chi2 - dof) / math.sqrt(2 * dof)


@pytest.mark.parametrize("seed,width", [(11, 1024), (12, 1024), (13, UNITS)])
def test_neighbours_agree_by_chance_and_row_counts_are_binomial(seed, width):
  z_lags, z_variance = _stream_statistics(seed, width)
  assert np.all(np.abs(z_lags) < Z), f"lags {LAGS}: z {np.round(z_lags, 2).tolist()}"
  assert abs(z_variance) < Z, f"per-row kept-count variance: z {z_variance:.2f}"


def _equal_bits_z(equal, n):
  """z of `equal` agreeing bits out of `n` bit pairs that each agree with probability 1/2."""
  return (equal - n / 2) / np.sqrt(n / 4)


@pytest.mark.parametrize("rows,width", [(2**16, 1024), (2**18, 256)])
def test_rows_with_nearby_first_words_are_independent(rows, width):
  # Stream 1 fed row r the counters s0_r + column: two rows whose s0 differ by d < width ran
  # the same inputs shifted by d. Compare every such pair (about rows^2 width / 2^32 of them)
  # on their overlap aligned by d, bit by bit.
  key = jax.random.key(21)
  s0, _ = _mask.row_keys(_keys.mask_words(key), jnp.arange(rows, dtype=jnp.uint32))
  s0 = np.asarray(s0, np.int64)
  order = np.argsort(s0)
  gaps = np.diff(s0[order])
  close = np.flatnonzero(gaps < width)
  assert len(close) > rows**2 * width / 2**32 / 4, len(close)  # the pairs exist to be tested
  bits = np.asarray(jaxdrop.random_bits(key, (rows, width)))
  low, high, d = order[close], order[close + 1], gaps[close]
  column = np.arange(width)
  a = bits[low]  # (pairs, width); column c of `low` meets column c - d of `high`
  b = bits[high[:, None], (column[None, :] - d[:, None]) % width]
  overlap = column[None, :] >= d[:, None]
  equal = np.where(overlap, 32 - np.bitwise_count(a ^ b), 0).sum(1)
  n = 32 * overlap.sum(1)
  zs = _equal_bits_z(equal, n)
  pooled = _equal_bits_z(equal.sum(), n.sum())
  # Bonferroni over the pairs: max |z| < 6 has a false-alarm rate below 2e-9 * len(close).
  assert np.abs(zs).max() < 6, f"{len(zs)} pairs, worst z {zs[np.abs(zs).argmax()]:.1f}"
  assert abs(pooled) < Z, f"pooled over {len(zs)} pairs: z {pooled:.2f}"


def test_rows_with_equal_first_words_are_independent():
  # Rows whose first Threefry words coincide (about rows^2 / 2^33 pairs in a mask) must still
  # be independent through the second word, even when the second words differ in one bit.
  first = jax.random.bits(jax.random.key(31), (16, 1, 1))
  second = jax.random.bits(jax.random.key(32), (16, 1, 1))
  flips = (np.uint32(1) << np.arange(32, dtype=np.uint32))[None, :, None]
  column = jnp.arange(2**14, dtype=jnp.uint32)[None, None, :]
  base = _mask.element_bits(first, second, column)
  flipped = _mask.element_bits(first, second ^ flips, column)
  equal = np.asarray(
    jnp.sum(32 - jax.lax.population_count(base ^ flipped), axis=-1, dtype=jnp.int32)
  )
  zs = _equal_bits_z(equal, 32 * 2**14)
  # 512 statistics: max |z| < 6 has a false-alarm rate below 1e-6.
  assert np.abs(zs).max() < 6, (
    f"worst z {zs.flat[np.abs(zs).argmax()]:.1f} (flipped bit {np.abs(zs).argmax() % 32})"
  )
