"""The documentation's multi-device examples (docs/guides/sharding.md), run as written.

The sharded example calls `jax.set_mesh`, which would leak into the other tests of this process,
so it runs in an interpreter of its own (with this step's 8 devices), once, together with the
shard_map fragment of the same page, whose blocks must give the unsharded mask.
"""

import os
import re
import subprocess
import sys

from examples import EXAMPLES, MULTI_DEVICE, is_fragment


def test_sharded_example_trains_and_shard_map_fragment_matches_the_unsharded_mask():
  sharded = [code for _, _, code in EXAMPLES if MULTI_DEVICE in code]
  fragments = [code for _, _, code in EXAMPLES if is_fragment(code)]
  assert len(sharded) == 1 and len(fragments) == 1
  script = (
    "\n".join(sharded + fragments)
    + """
xs = jax.device_put(jnp.ones((8, 8)), NamedSharding(mesh, P("data", "model")))
expected = jaxdrop.dropout(key, jnp.ones((8, 8)), 0.3)
assert (jax.jit(f)(key, xs) == expected).all(), "shard_map blocks differ from the unsharded mask"
print("shard_map ok")
"""
  )
  done = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    env=dict(os.environ),
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", done.stdout).groups())
  assert last < 0.5 * first, done.stdout
  assert "shard_map ok" in done.stdout
