"""The package as users install it: the sdist and the wheel built with `python -m build`, the
wheel installed (with the test extra, for the docstring examples' frameworks) into a fresh
virtual environment, and its docstring examples and a smoke test run against the installed
copy from outside the source tree. In its own CI step:

    python -m pip install build && JAXDROP_PACKAGE=1 python -m pytest -q tests/packaging
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
  os.environ.get("JAXDROP_PACKAGE") != "1",
  reason="building and installing the wheel runs in its own step: "
  "JAXDROP_PACKAGE=1 python -m pytest tests/packaging",
)


def run(*command: object, cwd: pathlib.Path | None = None) -> str:
  """Runs `command` without the source tree on the path; fails with its output if it fails."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  done = subprocess.run(
    [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, f"{command} failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
  return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
  out = tmp_path_factory.mktemp("dist")
  run(sys.executable, "-m", "build", "--outdir", out, ROOT)
  (wheel,) = out.glob("*.whl")
  (sdist,) = out.glob("*.tar.gz")
  return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def python(dist: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """The interpreter of a fresh virtual environment with the wheel installed."""
  venv = tmp_path_factory.mktemp("venv")
  run(sys.executable, "-m", "venv", venv)
  python = venv / "bin" / "python"
  run(python, "-m", "pip", "install", "--quiet", f"{dist['wheel']}[test]")
  return python


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """A working directory away from the source tree."""
  return tmp_path_factory.mktemp("elsewhere")


def wheel_version(wheel: pathlib.Path) -> str:
  return re.fullmatch(r"jaxdrop-([^-]+)-py3-none-any\.whl", wheel.name).group(1)


def test_wheel_holds_the_package_with_its_types_and_nothing_else(dist):
  names = zipfile.ZipFile(dist["wheel"]).namelist()
  assert "jaxdrop/py.typed" in names
  assert "jaxdrop/__init__.py" in names and "jaxdrop/nnx.py" in names
  strays = [n for n in names if not n.startswith(("jaxdrop/", "jaxdrop-"))]
  assert not strays, f"files outside the package in the wheel: {strays}"
  assert not [n for n in names if re.search(r"(^|/)(tests?|notebooks|docs|benchmarks)/", n)]
  assert not [n for n in names if n.endswith((".ipynb", ".pyc"))]


def test_sdist_holds_the_sources_and_the_tests(dist):
  names = tarfile.open(dist["sdist"]).getnames()
  prefix = f"jaxdrop-{wheel_version(dist['wheel'])}/"
  for name in ("pyproject.toml", "README.md", "LICENSE", "jaxdrop/py.typed", "tests/conftest.py"):
    assert prefix + name in names, name
  assert not [n for n in names if "/.ci-venv/" in n or "__pycache__" in n]


def test_installed_copy_is_imported_and_has_the_wheels_version(dist, python, outside):
  out = run(
    python, "-c", "import jaxdrop; print(jaxdrop.__version__); print(jaxdrop.__file__)", cwd=outside
  )
  version, location = out.split()
  assert version == wheel_version(dist["wheel"])
  assert pathlib.Path(location).is_relative_to(python.parents[1]), location  # not the tree


def test_docstring_examples_pass_against_the_installed_package(python, outside):
  out = run(
    python,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "--doctest-modules",
    "-o",
    "doctest_optionflags=NORMALIZE_WHITESPACE",
    "--pyargs",
    "jaxdrop",
    cwd=outside,
  )
  passed = int(re.search(r"(\d+) passed", out).group(1))
  assert passed >= 40 and "failed" not in out, out  # every public name has an example


SMOKE = """
import jax, jax.numpy as jnp, optax, jaxdrop, jaxdrop.nnx
from flax import nnx

def loss(w, x, key):
    return jnp.mean(jaxdrop.dropout(key, jnp.tanh(x @ w), 0.5) ** 2)

optimizer = optax.sgd(0.1)
w = jax.random.normal(jax.random.key(0), (8, 16))
state = optimizer.init(w)
x = jax.random.normal(jax.random.key(1), (32, 8))
step = jax.jit(lambda w, s, key: optimizer.update(jax.grad(loss)(w, x, key), s, w))
for key in jax.random.split(jax.random.key(2), 3):
    updates, state = step(w, state, key)
    w = optax.apply_updates(w, updates)
assert bool(jnp.all(jnp.isfinite(w)))
y = jaxdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))(jnp.ones((4, 4)))
assert set(jnp.unique(y).tolist()) <= {0.0, 2.0}
print("smoke ok", jaxdrop.__version__)
"""


def test_smoke_training_loop_against_the_installed_package(python, outside):
  assert "smoke ok" in run(python, "-c", SMOKE, cwd=outside)
