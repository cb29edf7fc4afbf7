"""jaxdrop on JAX's multi-controller runtime: two real processes joined by `jax.distributed`.

The launcher below starts two copies of worker.py on a free local port, each with 4 CPU
devices and gloo collectives, waits for both within a time limit, and on a failure or a
time-out kills both and shows their output. The checks themselves (the same results, shard
for shard, as one process computes alone on one device) are in worker.py. In its own CI step:

    JAXDROP_MULTIPROCESS=1 python -m pytest -q tests/multiprocess
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

WORKER = pathlib.Path(__file__).with_name("worker.py")
TIMEOUT_S = 600  # the step takes 1 to 2 minutes idle; a loaded machine gets room

pytestmark = pytest.mark.skipif(
  os.environ.get("JAXDROP_MULTIPROCESS") != "1",
  reason="two processes over jax.distributed run in their own step: "
  "JAXDROP_MULTIPROCESS=1 python -m pytest tests/multiprocess",
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(script: pathlib.Path, num_processes: int, timeout: float) -> list[tuple[int, str]]:
  """Runs ``script PROCESS_ID NUM_PROCESSES PORT`` in `num_processes` processes, each with 4
  CPU devices; returns each one's exit status (negative if killed) and output. If one fails,
  the time runs out or the launcher is interrupted or terminated, the others are killed (with
  any children: each has a session of its own)."""
  port = free_port()
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    PYTHONUNBUFFERED="1",
  )
  logs = [tempfile.TemporaryFile("w+") for _ in range(num_processes)]
  children = [
    subprocess.Popen(
      [sys.executable, str(script), str(i), str(num_processes), str(port)],
      stdout=log,
      stderr=subprocess.STDOUT,
      env=env,
      start_new_session=True,
    )
    for i, log in enumerate(logs)
  ]
  deadline = time.monotonic() + timeout

  def terminated(signum: int, frame: object) -> None:
    raise SystemExit(f"launch: signal {signum}")  # so that `finally` kills the children

  previous = signal.signal(signal.SIGTERM, terminated)
  try:
    while any(c.poll() is None for c in children):
      failed = any(c.returncode not in (None, 0) for c in children)
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    signal.signal(signal.SIGTERM, previous)
    for c in children:
      if c.poll() is None:
        os.killpg(c.pid, signal.SIGKILL)
        c.wait()
  results = []
  for c, log in zip(children, logs):
    log.seek(0)
    note = "" if c.returncode is not None and c.returncode >= 0 else " (killed)"
    results.append((c.returncode, log.read() + note))
    log.close()
  return results


def test_two_processes_give_the_one_device_results():
  results = launch(WORKER, 2, TIMEOUT_S)
  report = "\n".join(
    f"--- process {i} (exit status {code}) ---\n{output[-6000:]}"
    for i, (code, output) in enumerate(results)
  )
  assert all(code == 0 for code, _ in results), report
  for _, output in results:
    assert output.rstrip().endswith(" passed, 0 failed"), report
  print(report)
