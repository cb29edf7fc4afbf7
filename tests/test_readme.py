"""Every Python block of the README runs as written."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
  assert len(BLOCKS) >= 2


MULTI_DEVICE = "xla_force_host_platform_device_count"
SNIPPETS = [i for i, b in enumerate(BLOCKS) if "def block_fn" in b]  # fragments, run below


@pytest.mark.parametrize(
  "index",
  [
    pytest.param(i, marks=pytest.mark.optax) if "optax" in BLOCKS[i] else i
    for i in range(len(BLOCKS))
    if i not in SNIPPETS
  ],
)
def test_readme_block_runs(index, capsys):
  if MULTI_DEVICE in BLOCKS[index]:
    # It must set XLA_FLAGS before JAX starts: run it in a fresh interpreter.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
      [sys.executable, "-c", BLOCKS[index]], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout
  else:
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
    output = capsys.readouterr().out
  assert output.strip(), "each README example prints its result"


def test_sharded_example_trains_and_shard_map_snippet_runs():
  sharded = next(b for b in BLOCKS if MULTI_DEVICE in b)
  script = (
    sharded
    + "\n"
    + "\n".join(BLOCKS[i] for i in SNIPPETS)
    + """
xs = jax.device_put(jnp.ones((8, 8)), NamedSharding(mesh, P("data", "model")))
expected = jaxdrop.dropout(key, jnp.ones((8, 8)), 0.3)
assert (jax.jit(f)(key, xs) == expected).all(), "shard_map blocks differ from the unsharded mask"
print("shard_map ok")
"""
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", done.stdout).groups())
  assert last < 0.5 * first, done.stdout
  assert "shard_map ok" in done.stdout


@pytest.mark.optax
def test_quickstart_trains():
  namespace = {}
  exec(compile(BLOCKS[0], "README.md quickstart", "exec"), namespace)
  y, logits = namespace["y"], namespace["logits"]
  assert float((logits.argmax(-1) == y).mean()) > 0.9


@pytest.mark.parametrize("index", SNIPPETS)
def test_readme_snippets_bring_their_own_imports(index):
  # A fragment copied on its own must not fail with a NameError (it runs in full above).
  exec(compile(BLOCKS[index], f"README block {index}", "exec"), {})
