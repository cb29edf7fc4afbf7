"""The Python examples of the README and of the documentation pages, as the tests run them."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# docs/notebooks is a copy the docs build makes; docs/_build its output.
PAGES = [README] + sorted(
  p
  for p in (ROOT / "docs").rglob("*.md")
  if not {"_build", "notebooks"} & set(p.relative_to(ROOT / "docs").parts)
)
MULTI_DEVICE = "xla_force_host_platform_device_count"


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


# (page, index, code) for every example; ids such as "docs/guides/keys.md[0]".
EXAMPLES = [(page, i, code) for page in PAGES for i, code in enumerate(python_blocks(page))]


def example_id(page: pathlib.Path, index: int) -> str:
  return f"{page.relative_to(ROOT)}[{index}]"


def is_fragment(code: str) -> bool:
  """A fragment defines a function for a setting the page's full example makes (the shard_map
  body needs the mesh of the sharded example): it runs there, in tests/multidevice."""
  return "def block_fn" in code
