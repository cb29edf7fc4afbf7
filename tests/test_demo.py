"""The main job, `python -m jaxdrop.demo`, at a small size: its output and its plot."""

import re
import subprocess
import sys

import pytest

from jaxdrop import demo


@pytest.mark.optax  # the demo trains with optax.adamw
def test_demo_runs_and_ends_with_the_accuracy_line(tmp_path, capsys):
  out = tmp_path / "curves.png"
  result = demo.main(["--steps", "300", "--hidden", "64", "--chunks", "3", "--out", str(out)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert re.fullmatch(r"test accuracy  no-dropout=\d\.\d{3}  dropout=\d\.\d{3}", lines[-1]), lines[
    -1
  ]
  assert sum(line.startswith("[") for line in lines) == 3  # one progress line per chunk
  assert any(line.startswith("| dropout 0.5 |") for line in lines)
  assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # MNIST-1D has 10 balanced classes (chance 0.1); 300 steps already clear twice that.
  assert 0.2 < result["no_dropout"] <= 1 and 0.2 < result["dropout"] <= 1


def test_demo_rejects_bad_options():
  done = subprocess.run(
    [sys.executable, "-m", "jaxdrop.demo", "--rate", "1.5"], capture_output=True, text=True
  )
  assert done.returncode == 2 and "--rate must be in [0, 1), got 1.5" in done.stderr
