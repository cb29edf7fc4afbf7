"""Fails when a notebook's committed outputs are stale.

Run after the notebooks have been executed in place (``pytest --nbmake --overwrite
notebooks``): each executed notebook in the working tree is compared with its committed
version (git HEAD). They must have the same code cells, each executed, with outputs of the
same kinds in the same order and the same text once every number is masked: timings and the
last digits of a trained model's figures may differ between machines; a new or missing line,
a changed message, an error or a missing figure may not. The documentation renders the
committed outputs, so this keeps what it shows current.

    python .ci/notebooks_current.py
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?")


def outline(notebook: dict) -> list[list[tuple[str, str]]]:
  """Per code cell: its source, then (kind, text with numbers masked) per output; a stream's
  chunks are joined (how a kernel flushes them does not matter), figures count by kind."""
  cells = []
  for cell in notebook["cells"]:
    if cell["cell_type"] != "code":
      continue
    items: list[tuple[str, str]] = [("source", "".join(cell["source"]))]
    for output in cell.get("outputs", []):
      kind = output["output_type"]
      if kind == "stream":
        text = "".join(output["text"])
        if items[-1][0] == f"stream:{output['name']}":
          items[-1] = (items[-1][0], items[-1][1] + text)
        else:
          items.append((f"stream:{output['name']}", text))
      elif kind == "error":
        items.append(("error", output["ename"]))
      else:  # a result or a figure: its kinds of data and its plain-text form
        data = output.get("data", {})
        items.append((kind, " ".join(sorted(data)) + "\n" + "".join(data.get("text/plain", ""))))
    # Numbers masked, then runs of spaces (NumPy pads columns to the widest number).
    cells.append([(kind, re.sub(r"[ \t]+", " ", NUMBER.sub("#", text))) for kind, text in items])
  return cells


def main() -> int:
  stale = []
  paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
  for path in paths:
    relative = path.relative_to(ROOT).as_posix()
    committed = json.loads(
      subprocess.run(
        ["git", "show", f"HEAD:{relative}"], cwd=ROOT, capture_output=True, text=True, check=True
      ).stdout
    )
    executed = json.loads(path.read_text())
    code = [c for c in committed["cells"] if c["cell_type"] == "code" and "".join(c["source"])]
    if any(c.get("execution_count") is None for c in code):
      stale.append(f"{relative}: committed with code cells not executed")
    elif outline(committed) != outline(executed):
      stale.append(f"{relative}: its committed outputs differ from a fresh run")
  for line in stale:
    print(line, file=sys.stderr)
  if stale:
    print(
      "Run `python -m pytest --nbmake --overwrite notebooks` and commit the notebooks.",
      file=sys.stderr,
    )
    return 1
  print(f"the committed outputs of the {len(paths)} notebooks are current")
  return 0


if __name__ == "__main__":
  sys.exit(main())
