import subprocess
import sys

import pytest

import jaxdrop


def test_public_surface():
  functions = [
    "dropout",
    "channel_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "zoneout",
    "stochastic_depth",
    "drop_path",
    "drop_block",
    "drop_connect",
    "dot_product_attention",
    "make_mask",
    "apply_mask",
    "mc_dropout",
    "random_bits",
  ]
  assert sorted(jaxdrop.__all__) == sorted(functions + ["DropoutMask", "MCResult", "__version__"])
  for name in functions:
    assert callable(getattr(jaxdrop, name)), name
    assert getattr(jaxdrop, name).__doc__.count(">>>") >= 1, f"{name} has no doctest example"


def test_version_is_a_release_string():
  major, minor, patch = jaxdrop.__version__.split(".")
  assert all(part.isdigit() for part in (major, minor, patch))


ADAPTERS = {
  "nnx": [
    "Dropout",
    "ChannelDropout",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "DropPath",
    "DropBlock",
    "attention_fn",
  ],
  "linen": [
    "Dropout",
    "ChannelDropout",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "DropPath",
    "DropBlock",
    "attention_fn",
  ],
  "equinox": [
    "Dropout",
    "ChannelDropout",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "DropPath",
    "DropBlock",
  ],
  "haiku": [
    "dropout",
    "channel_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "drop_path",
    "drop_block",
  ],
}


def test_framework_adapters_surface():
  for adapter, names in ADAPTERS.items():
    module = getattr(jaxdrop, adapter)  # imported on first use
    assert sorted(module.__all__) == sorted(names), adapter
    for name in names:
      assert getattr(module, name).__doc__, f"jaxdrop.{adapter}.{name} has no docstring"


def test_import_jaxdrop_imports_no_framework():
  code = (
    "import sys, jaxdrop; "
    "print(sorted(m for m in ('flax', 'equinox', 'haiku') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
  "adapter, blocked, extra",
  [("nnx", "flax", "flax"), ("linen", "flax", "flax"), ("equinox", "equinox", "equinox")],
)
def test_missing_framework_names_the_extra(adapter, blocked, extra):
  code = (
    f"import sys; sys.modules[{blocked!r}] = None\n"
    f"try:\n  import jaxdrop.{adapter}\nexcept ImportError as err:\n  print(err)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert f'pip install "jaxdrop[{extra}]"' in out.stdout, out.stdout + out.stderr
