"""The documentation covers the public API: every public name has an entry in the API reference
and a runnable example in its docstring (run by the doctests), and the start page lists every
function. The Sphinx build itself (its own CI step, strict) checks links and references."""

import functools
import importlib
import inspect
import pathlib
import re

import pytest

import jaxdrop

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
SUBMODULES = ("nnx", "linen", "equinox", "haiku", "pallas")


def public_names():
  names = [f"jaxdrop.{n}" for n in jaxdrop.__all__ if not n.startswith("__")]
  for module in SUBMODULES:
    names += [f"jaxdrop.{module}.{n}" for n in importlib.import_module(f"jaxdrop.{module}").__all__]
  return names


@functools.cache
def documented():
  """Names with an autodoc entry on a page of docs/api, as `jaxdrop.x` or `jaxdrop.nnx.X`."""
  found = set()
  for page in (DOCS / "api").glob("*.md"):
    text = page.read_text()
    current = "jaxdrop"
    for line in text.splitlines():
      if m := re.match(r"\.\. currentmodule:: ([\w.]+)", line):
        current = m.group(1)
      elif m := re.match(r"\.\. auto(?:function|class):: ([\w.]+)", line):
        name = m.group(1)
        found.add(name if name.startswith("jaxdrop.") else f"{current}.{name}")
  return found


def resolve(name):
  module, _, attr = name.rpartition(".")
  return getattr(importlib.import_module(module), attr)


def test_public_names_are_found():
  assert len(public_names()) >= 40  # the functions, two result types, and four adapter modules


@pytest.mark.parametrize("name", public_names())
def test_public_name_has_an_api_entry_and_an_example(name):
  assert name in documented(), f"{name} has no autofunction/autoclass entry in docs/api/*.md"
  doc = inspect.getdoc(resolve(name)) or ""
  assert re.search(r"^\s*>>> ", doc, flags=re.M), f"{name}'s docstring has no >>> example"


def test_api_entries_name_only_public_names():
  assert documented() <= set(public_names()), documented() - set(public_names())


def test_start_page_table_links_every_function():
  table = (DOCS / "api" / "table.md").read_text()
  linked = set(re.findall(r"\{func\}`~(jaxdrop\.\w+)`", table))
  functions = {n for n in public_names() if n.count(".") == 1 and inspect.isfunction(resolve(n))}
  assert functions <= linked, functions - linked


def test_readme_stays_short():
  readme = (DOCS.parent / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
