import inspect
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
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "variational_dropout",
    "variational_dropout_kl",
    "variational_dense",
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
    "ConcreteDropout",
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
    "ConcreteDropout",
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
    "ConcreteDropout",
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


def test_pallas_surface():
  # Loaded on first use like the adapters; importing it imports no Pallas.
  assert sorted(jaxdrop.pallas.__all__) == ["dropout_block", "keep_block", "mask_words"]
  code = "import sys, jaxdrop.pallas; print('jax.experimental.pallas' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


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


def _annotated_targets():
  """(name, function) for every public callable of jaxdrop and its adapters; for a class, its
  ``__init__`` and ``__call__`` where jaxdrop defines them (not those inherited from Flax or
  Equinox, nor NamedTuple's)."""
  modules = [jaxdrop, jaxdrop.pallas] + [getattr(jaxdrop, adapter) for adapter in ADAPTERS]
  for module in modules:
    for name in module.__all__:
      if name == "__version__":
        continue
      obj = getattr(module, name)
      qualname = f"{module.__name__}.{name}"
      if not inspect.isclass(obj):
        yield qualname, obj
        continue
      for method in ("__init__", "__call__"):
        function = inspect.unwrap(getattr(obj, method))
        if getattr(function, "__module__", "").partition(".")[0] == "jaxdrop":
          yield f"{qualname}.{method}", function


def test_public_callables_are_fully_annotated():
  # Reads signatures only (annotations stay strings): nothing is traced or compiled.
  missing, checked = [], set()
  for name, function in _annotated_targets():
    checked.add(name)
    signature = inspect.signature(function)
    for parameter in signature.parameters.values():
      if parameter.name != "self" and parameter.annotation is inspect.Parameter.empty:
        missing.append(f"{name}: parameter {parameter.name!r}")
    no_return = signature.return_annotation is inspect.Signature.empty
    if no_return and not name.endswith(".__init__"):  # __init__ may leave out its `-> None`
      missing.append(f"{name}: return")
  assert not missing, "missing annotations:\n" + "\n".join(missing)
  # The class filter keeps jaxdrop's own methods of every framework.
  for own in (
    "jaxdrop.dropout",
    "jaxdrop.nnx.Dropout.__call__",
    "jaxdrop.nnx.DropBlock.__init__",
    "jaxdrop.linen.ChannelDropout.__call__",
    "jaxdrop.equinox.DropPath.__call__",
    "jaxdrop.haiku.drop_block",
  ):
    assert own in checked, own
  assert "jaxdrop.equinox.Dropout.__init__" not in checked  # Equinox's own
