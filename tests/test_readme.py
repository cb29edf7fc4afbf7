"""Every Python block of the README runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
  assert capsys.readouterr().out.strip(), "each README example prints its result"


def test_quickstart_trains():
  namespace = {}
  exec(compile(BLOCKS[0], "README.md quickstart", "exec"), namespace)
  y, logits = namespace["y"], namespace["logits"]
  assert float((logits.argmax(-1) == y).mean()) > 0.9
