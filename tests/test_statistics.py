"""Statistics of the mask, with fixed keys, stated sample sizes and stated bounds.

Kept fractions are checked with a z-bound of 5 standard deviations (a false
alarm about once in 1.7 million runs per check); chi-squared statistics against
the critical value at significance 1e-6 (Wilson-Hilferty approximation).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop import _keys, _mask

N = 2**21  # 2,097,152 units
Z = 5.0


CHI2_1DOF = 23.93  # exact critical value for 1 dof at p = 1e-6 (4.892 squared)


def chi2_critical(dof, z=4.753):  # z for one-sided p = 1e-6
  return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def _dropped_count(key, rate, shape=(512, N // 512)):
  y = jaxdrop.dropout(key, jnp.ones(shape, jnp.float32), rate)
  return int((y == 0).sum()), y


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("seed", [0, 1])
def test_dropped_fraction_matches_rate(rate, seed):
  dropped, _ = _dropped_count(jax.random.key(seed), rate)
  expected = N * rate
  sigma = math.sqrt(N * rate * (1 - rate))
  assert abs(dropped - expected) <= Z * sigma, f"dropped {dropped}, expected {expected:.0f} ± {Z * sigma:.0f}"


@pytest.mark.parametrize("rate", [1e-6, 1e-9, 1e-12])
def test_tiny_rates_never_round_to_never_drop(rate):
  # Thresholds are 32-bit: the realised rate is round(rate * 2**32) / 2**32, at least 2**-32.
  t, any_kept, keep, *_ = _mask.drop_threshold(jnp.float32(rate))
  assert int(t) == max(1, round(float(np.float32(rate)) * 2**32))
  assert bool(any_kept) and float(keep) == np.float32(1 - int(t) / 2**32)


def test_rates_near_one_never_round_to_always_drop():
  t, any_kept, keep, *_ = _mask.drop_threshold(jnp.float32(1 - 2**-24))
  assert bool(any_kept) and int(t) < 2**32 - 1 and float(keep) > 0


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_inverted_output_is_unbiased(rate):
  _, y = _dropped_count(jax.random.key(3), rate)
  mean = float(jnp.mean(y))
  sigma = math.sqrt(rate / (1 - rate) / N)  # std of the mean of x*m/keep for x = 1
  assert abs(mean - 1.0) <= Z * sigma, f"mean {mean}, expected 1 ± {Z * sigma:.2e}"


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("shape", [(N // 4096, 4096), (N // 37, 37), (N,)])
def test_bit_bytes_are_uniform(seed, shape):
  bits = jaxdrop.random_bits(jax.random.key(seed), shape).reshape(-1)
  for lane in range(4):
    byte = (bits >> (8 * lane)) & 0xFF
    counts = np.bincount(np.asarray(byte), minlength=256)
    expected = bits.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < chi2_critical(255), f"byte lane {lane}: chi2 {chi2:.1f}, counts {counts.min()}..{counts.max()}"


@pytest.mark.parametrize("offset,axis", [(1, -1), (2, -1), (16, -1), (1, 0), (2, 0)])
def test_neighbouring_masks_are_independent(offset, axis):
  # 2x2 contingency table of (kept here, kept at +offset) for rate 0.5: chi2 with 1 dof.
  mask = np.asarray(jaxdrop.dropout(jax.random.key(5), jnp.ones((1024, 2048)), 0.5) != 0)
  a = np.moveaxis(mask, axis, 0)
  here, there = a[:-offset].ravel(), a[offset:].ravel()
  table = np.array([[np.sum(~here & ~there), np.sum(~here & there)],
                    [np.sum(here & ~there), np.sum(here & there)]], dtype=np.float64)
  expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
  chi2 = float(((table - expected) ** 2 / expected).sum())
  assert chi2 < CHI2_1DOF, f"chi2 {chi2:.2f}, table {table.tolist()}"


@pytest.mark.parametrize("columns", [8, 1024])
def test_every_column_drops_at_the_rate(columns):
  # One Threefry hash seeds each row; no column (position in the row's stream) may be biased.
  rate, rows = 0.1, 2**16
  dropped = np.asarray(jaxdrop.dropout(jax.random.key(9), jnp.ones((rows, columns)), rate) == 0).sum(0)
  # Each column's count is binomial(rows, rate); their standardised squares sum to chi2(columns).
  chi2 = float((((dropped - rows * rate) ** 2) / (rows * rate * (1 - rate))).sum())
  assert chi2 < chi2_critical(columns), f"chi2 {chi2:.1f}, counts {dropped.min()}..{dropped.max()}"


def test_long_rows_keep_their_statistics():
  # A 1-D array is one row: a single seed and 2M consecutive counters through the finaliser.
  rate = 0.3
  y = jaxdrop.dropout(jax.random.key(4), jnp.ones(N), rate)
  dropped = np.asarray(y == 0).reshape(64, -1).sum(1)  # 64 consecutive blocks of 32768
  block = N // 64
  sigma = math.sqrt(block * rate * (1 - rate))
  assert np.all(np.abs(dropped - block * rate) <= Z * sigma), (dropped.min(), dropped.max())


# --- The generator's fine structure (mask stream 2) -----------------------------------------
# The row-seeded stream 1 kept neighbouring units correlated at about +4e-4 (lags 1, 3, 12),
# gave per-row kept counts 1% more variance than binomial, and made rows whose Threefry seeds
# lay within a row length of each other share shifted inputs. The checks below see each of
# those at more than 5 sigma; the bound is |z| < 5 (two-sided p = 5.7e-7 per statistic).

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
  offsets = (index * jnp.uint32(rows), jnp.uint32(0)) if rows > 1 else (jnp.uint32(0), index * jnp.uint32(CHUNK))
  bits = _mask.mask_bits(_mask.MaskSource(words, offsets), _mask.MaskLayout(shape, global_shape=global_shape))
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
  equal = np.asarray(jnp.sum(32 - jax.lax.population_count(base ^ flipped), axis=-1, dtype=jnp.int32))
  zs = _equal_bits_z(equal, 32 * 2**14)
  # 512 statistics: max |z| < 6 has a false-alarm rate below 1e-6.
  assert np.abs(zs).max() < 6, f"worst z {zs.flat[np.abs(zs).argmax()]:.1f} (flipped bit {np.abs(zs).argmax() % 32})"
