"""The worker supervisor: restarts a dead worker, forwards shutdown signals, never restarts after one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atelier.supervise import supervise

# a child that counts its runs in a file, then exits with the code it is given
COUNTING_CHILD = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.write_text(str(int(p.read_text() or 0) + 1) " \
                 "if p.exists() else '1'); sys.exit(int(sys.argv[2]))"


def test_restarts_a_failing_child_with_doubling_backoff(tmp_path: Path) -> None:
    runs, waits = tmp_path / "runs", []
    code = supervise([sys.executable, "-c", COUNTING_CHILD, str(runs), "3"], min_backoff_s=0.5, max_backoff_s=1.5,
                     max_restarts=3, sleep=waits.append)
    assert code == 3
    assert runs.read_text() == "4"  # the first run and three restarts
    assert waits == [0.5, 1.0, 1.5]  # doubled, capped


def test_a_clean_exit_is_not_restarted(tmp_path: Path) -> None:
    runs, waits = tmp_path / "runs", []
    assert supervise([sys.executable, "-c", COUNTING_CHILD, str(runs), "0"], sleep=waits.append) == 0
    assert runs.read_text() == "1" and waits == []


SUPERVISOR = """
import sys
from atelier.supervise import supervise
child = [sys.executable, "-c", "import os, sys, time, pathlib; pathlib.Path(sys.argv[1], str(os.getpid())).touch(); "
         "time.sleep(120)", sys.argv[1]]
sys.exit(supervise(child, min_backoff_s=0.1))
"""


def _pids(folder: Path, n: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sorted(int(p.name) for p in folder.iterdir())
        if len(pids) >= n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"expected {n} child runs, saw {sorted(p.name for p in folder.iterdir())}")


def test_a_killed_child_is_restarted_and_sigterm_stops_both(tmp_path: Path) -> None:
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)])
    try:
        first = _pids(tmp_path, 1)[0]
        os.kill(first, signal.SIGKILL)  # e.g. the OOM killer
        second = [p for p in _pids(tmp_path, 2) if p != first][0]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=20) == 128 + signal.SIGTERM  # the child died of the forwarded SIGTERM
        assert len(list(tmp_path.iterdir())) == 2  # nothing restarted after the shutdown signal
        try:
            os.kill(second, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive
    finally:
        if sup.poll() is None:
            sup.kill()



# the real `atelier worker --no-supervise` (a real Celery worker), with its consumer made to fail at start
FAILING_WORKER = """
import sys
from celery.worker.consumer.consumer import Consumer
def start(self):
    raise RuntimeError("injected consumer failure")
Consumer.start = start
from atelier.cli import app
app(["worker", "--queues", "render", "--no-supervise", "--loglevel", "WARNING"])
"""


def test_the_worker_child_exits_nonzero_after_an_unrecoverable_error(tmp_path: Path) -> None:
    """Celery logs "Unrecoverable error" (seen when Redis restarts under a worker with unacked tasks, Celery/kombu
    5.7) and stops with EX_FAILURE, but its worker_main dropped that code: the child exited 0 and the supervisor
    took it for a clean shutdown and stopped restarting the role."""
    env = dict(os.environ, ATELIER_BROKER_URL="redis://127.0.0.1:6379/15", ATELIER_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", FAILING_WORKER], env=env, capture_output=True, text=True, timeout=120)
    assert "Unrecoverable error" in out.stdout + out.stderr, out.stderr[-2000:]
    assert out.returncode == 1, out.stderr[-2000:]
