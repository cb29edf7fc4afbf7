"""Multi-device tests need 8 devices, which on a CPU means setting XLA_FLAGS before JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/multidevice

They run in their own process (a separate step of .ci/run) so the rest of the suite keeps one
device; in a process with fewer devices they are skipped, saying why.
"""

import jax
import pytest


def pytest_collection_modifyitems(config, items):
  if jax.device_count() >= 8:
    return
  skip = pytest.mark.skip(
    reason="needs 8 devices, in its own step: "
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/multidevice"
  )
  for item in items:
    if "multidevice" in str(item.fspath):
      item.add_marker(skip)
