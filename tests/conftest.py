"""Strict JAX settings for the whole suite: rank promotion raises, so a silent broadcast is a bug.

With JAXDROP_STRICT_PROMOTION=1 the suite also runs under jax_numpy_dtype_promotion="strict"
(a step of .ci/run), so no implicit dtype promotion hides in the library either.
"""

import collections
import os

import jax
import pytest

STRICT = os.environ.get("JAXDROP_STRICT_PROMOTION") == "1"
jax.config.update("jax_numpy_rank_promotion", "raise")
if STRICT:
  jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_collection_modifyitems(config, items):
  # optax's own update is not strict-promotion clean (optax/tree_utils/_tree_math.py,
  # tree_bias_correction: a float raised to an int32 step count), so tests that run an optax
  # optimizer are skipped under strict promotion; jaxdrop's calls in them run in the rest.
  if not STRICT:
    return
  skip = pytest.mark.skip(reason="optax's update is not strict-promotion clean (float ** int32)")
  for item in items:
    if item.get_closest_marker("optax"):
      item.add_marker(skip)


@pytest.fixture
def key():
  return jax.random.key(0)


def pytest_terminal_summary(terminalreporter):
  # Why tests were skipped, one line per reason: the plain run skips the multi-device,
  # two-process and battery tests, which CI runs in steps of their own.
  reasons = collections.Counter()
  for report in terminalreporter.stats.get("skipped", []):
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reasons[reason.removeprefix("Skipped: ")] += 1
  for reason, count in reasons.most_common():
    terminalreporter.write_line(f"skipped {count}: {reason}")
