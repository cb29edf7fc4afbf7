"""Sphinx configuration for jaxdrop's documentation (https://www.sphinx-doc.org).

Build strictly, as CI does (warnings are errors, every cross-reference must resolve):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

import inspect
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sphinx.util.inspect  # noqa: E402

import jaxdrop  # noqa: E402

project = "jaxdrop"
author = "the jaxdrop authors"
copyright = "2026, the jaxdrop authors"
release = version = jaxdrop.__version__

extensions = [
  "myst_nb",  # Markdown pages (MyST) and notebooks
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",  # Google-style Args/Returns/Examples sections
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "api/table.md"]
nitpicky = True
# No network at build time (CI reaches package registries only), so no intersphinx: names from
# JAX, NumPy, the frameworks and the standard library print as text. Every jaxdrop name must
# resolve (nitpicky), and a broken one fails the build.
nitpick_ignore_regex = [
  ("py:.*", r"(jax|jaxlib|numpy|np|jnp|flax|nnx|nn|equinox|eqx|haiku|hk|optax)(\..*)?"),
  ("py:.*", r"(typing|collections\.abc|types|enum|dataclasses)\..*"),
  ("py:.*", r"(Array|ArrayLike|PartitionSpec|Sequence|Callable|Literal|Any|Mapping|PyTree)"),
  ("py:.*", r"(NoneType|None|int|float|bool|str|tuple|dict|object|type)"),
  ("py:.*", r"(DTypeLike|PromoteDtypeFn)"),  # jax.typing's and Flax's, as the signatures name them
]

# API pages: signatures as written, type hints in the signature (they repeat in "Args" otherwise).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Annotations are strings (`from __future__ import annotations`): show them as written.
autodoc_type_aliases = {name: name for name in ("ArrayLike", "jax.Array", "Array", "PyTree")}
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("References", "notes_style")]

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The notebooks live in notebooks/ at the top of the repository, and Sphinx reads sources only
# from docs/: each build copies them into docs/notebooks/ (ignored by git). A notebook that
# carries outputs (CI's notebook step runs them with nbmake --overwrite) is rendered as it is; one
# without is executed here. An error in a cell fails the build.
_NOTEBOOKS = pathlib.Path(__file__).resolve().parent / "notebooks"
shutil.rmtree(_NOTEBOOKS, ignore_errors=True)
_NOTEBOOKS.mkdir()
for _source in sorted((ROOT / "notebooks").glob("*.ipynb")):
  _notebook = json.loads(_source.read_text())
  if any(cell.get("outputs") for cell in _notebook["cells"] if cell["cell_type"] == "code"):
    _notebook.setdefault("metadata", {})["mystnb"] = {"execution_mode": "off"}
  (_NOTEBOOKS / _source.name).write_text(json.dumps(_notebook, indent=1))

nb_execution_mode = "force"
nb_execution_timeout = 1200
nb_execution_raise_on_error = True
nb_execution_show_tb = True

html_theme = "sphinx_book_theme"
html_title = f"jaxdrop {release}"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": False,
  "use_fullscreen_button": False,
}

# Sphinx prints an alias inside a union as ``TypeAliasForwardRef('ArrayLike')`` (its repr):
# print the name, as the source writes it. Should a Sphinx release drop this class or change
# how unions print, the strict build fails on the unknown name "TypeAliasForwardRef".
sphinx.util.inspect.TypeAliasForwardRef.__repr__ = lambda self: self.name


def _nnx_constructor_signature(app, what, name, obj, options, signature, return_annotation):
  """Flax NNX's metaclass defines ``__call__(*args, **kwargs)``, which autodoc shows as an NNX
  module's signature: show the constructor's own instead."""
  if what == "class" and signature == "(*args: Any, **kwargs: Any)":
    init = inspect.signature(obj.__init__)
    parameters = list(init.parameters.values())[1:]  # without self
    signature = init.replace(parameters=parameters)
    return sphinx.util.inspect.stringify_signature(signature, show_return_annotation=False), None
  return None


def setup(app):
  app.connect("autodoc-process-signature", _nnx_constructor_signature)
