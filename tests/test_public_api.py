import jaxdrop


def test_public_surface():
  functions = ["dropout", "channel_dropout", "alpha_dropout", "feature_alpha_dropout",
               "gaussian_dropout", "drop_path", "drop_block", "drop_connect", "dot_product_attention", "make_mask",
               "apply_mask", "mc_dropout", "random_bits"]
  assert sorted(jaxdrop.__all__) == sorted(functions + ["DropoutMask", "MCResult", "__version__"])
  for name in functions:
    assert callable(getattr(jaxdrop, name)), name
    assert getattr(jaxdrop, name).__doc__.count(">>>") >= 1, f"{name} has no doctest example"


def test_version_is_a_release_string():
  major, minor, patch = jaxdrop.__version__.split(".")
  assert all(part.isdigit() for part in (major, minor, patch))
