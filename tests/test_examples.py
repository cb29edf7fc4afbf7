"""Every Python example of the README and of the documentation runs as written and prints its
result. Examples that need 8 devices run in tests/multidevice/test_examples_sharded.py."""

import pytest
from examples import EXAMPLES, MULTI_DEVICE, README, example_id, is_fragment, python_blocks

SINGLE_DEVICE = [
  (page, i, code)
  for page, i, code in EXAMPLES
  if MULTI_DEVICE not in code and not is_fragment(code)
]


def test_readme_and_docs_have_examples():
  assert len(python_blocks(README)) >= 1
  assert len(EXAMPLES) >= 15


@pytest.mark.parametrize(
  "page, index, code",
  [
    pytest.param(
      *example,
      marks=[pytest.mark.optax] if "optax" in example[2] else [],
      id=example_id(*example[:2]),
    )
    for example in SINGLE_DEVICE
  ],
)
def test_example_runs(page, index, code, capsys):
  exec(compile(code, example_id(page, index), "exec"), {})
  assert capsys.readouterr().out.strip(), "each example prints its result"


@pytest.mark.optax
def test_quickstart_trains():
  namespace = {}
  exec(compile(python_blocks(README)[0], "README.md quickstart", "exec"), namespace)
  y, logits = namespace["y"], namespace["logits"]
  assert float((logits.argmax(-1) == y).mean()) > 0.9


@pytest.mark.parametrize(
  "code", [code for _, _, code in EXAMPLES if is_fragment(code)], ids=lambda c: c.split("(")[0]
)
def test_fragments_bring_their_own_imports(code):
  # A fragment copied on its own must not fail with a NameError (it runs in full elsewhere).
  exec(compile(code, "fragment", "exec"), {})
