"""Statistics of the mask, with fixed keys, stated sample sizes and stated bounds.

Kept fractions are checked with a z-bound of 5 standard deviations (a false
alarm about once in 1.7 million runs per check); chi-squared statistics against
the critical value at significance 1e-6 (Wilson-Hilferty approximation).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop import _mask

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
  assert abs(dropped - expected) <= Z * sigma, (
    f"dropped {dropped}, expected {expected:.0f} ± {Z * sigma:.0f}"
  )


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
    assert chi2 < chi2_critical(255), (
      f"byte lane {lane}: chi2 {chi2:.1f}, counts {counts.min()}..{counts.max()}"
    )


@pytest.mark.parametrize("offset,axis", [(1, -1), (2, -1), (16, -1), (1, 0), (2, 0)])
def test_neighbouring_masks_are_independent(offset, axis):
  # 2x2 contingency table of (kept here, kept at +offset) for rate 0.5: chi2 with 1 dof.
  mask = np.asarray(jaxdrop.dropout(jax.random.key(5), jnp.ones((1024, 2048)), 0.5) != 0)
  a = np.moveaxis(mask, axis, 0)
  here, there = a[:-offset].ravel(), a[offset:].ravel()
  table = np.array(
    [
      [np.sum(~here & ~there), np.sum(~here & there)],
      [np.sum(here & ~there), np.sum(here & there)],
    ],
    dtype=np.float64,
  )
  expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
  chi2 = float(((table - expected) ** 2 / expected).sum())
  assert chi2 < CHI2_1DOF, f"chi2 {chi2:.2f}, table {table.tolist()}"


@pytest.mark.parametrize("columns", [8, 1024])
def test_every_column_drops_at_the_rate(columns):
  # One Threefry hash seeds each row; no column (position in the row's stream) may be biased.
  rate, rows = 0.1, 2**16
  dropped = np.asarray(
    jaxdrop.dropout(jax.random.key(9), jnp.ones((rows, columns)), rate) == 0
  ).sum(0)
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
