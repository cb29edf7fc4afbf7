import jaxdrop


def test_public_surface():
  assert jaxdrop.__all__ == ["dropout", "__version__"]
  for name in jaxdrop.__all__:
    assert hasattr(jaxdrop, name), name
  assert callable(jaxdrop.dropout)


def test_version_is_a_release_string():
  major, minor, patch = jaxdrop.__version__.split(".")
  assert all(part.isdigit() for part in (major, minor, patch))
