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

import sphinx.addnodes  # noqa: E402
import sphinx.util.inspect  # noqa: E402
from sphinx.domains.python import PyXRefRole  # noqa: E402

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
  "sphinx-mathjax-offline",  # MathJax 3 shipped with the site: math renders without a CDN
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
autodoc_type_aliases = {
  name: name for name in ("ArrayLike", "jax.Array", "Array", "PyTree", "jax.sharding.PartitionSpec")
}
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
nb_merge_streams = True  # a cell's printed lines in one box, however often it flushed

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


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
  """Flax NNX's metaclass defines ``__call__(*args, **kwargs)``, which autodoc shows as an NNX
  module's signature, and a Linen module's dataclass signature ends with Flax's own ``parent``
  and ``name``: show the arguments a user passes."""
  if what != "class":
    return None
  if signature == "(*args: Any, **kwargs: Any)":
    parameters = list(inspect.signature(obj.__init__).parameters.values())[1:]  # without self
  elif "parent:" in (signature or ""):
    parameters = [
      p for p in inspect.signature(obj).parameters.values() if p.name not in ("parent", "name")
    ]
  else:
    return None
  shown = inspect.Signature(parameters)
  return sphinx.util.inspect.stringify_signature(shown, show_return_annotation=False), None


# In docstrings, `name` links to the API entry of a jaxdrop name and is plain code otherwise
# (an argument, a JAX function): a cross-reference that may miss. Explicit roles in the pages
# ({func}`...`) must still resolve.
_PY_OBJ = PyXRefRole()


def _code_or_link(name, rawtext, text, lineno, inliner, options=None, content=()):
  nodes, messages = _PY_OBJ("py:obj", rawtext, text, lineno, inliner, options or {}, content)
  for node in nodes:
    if isinstance(node, sphinx.addnodes.pending_xref):
      node["jaxdrop_optional"] = True
  return nodes, messages


def _optional_reference(app, env, node, contnode):
  return contnode if node.get("jaxdrop_optional") else None


default_role = "code-or-link"


def setup(app):
  app.add_role("code-or-link", _code_or_link)
  app.connect("autodoc-process-signature", _constructor_signature)
  app.connect("missing-reference", _optional_reference)
