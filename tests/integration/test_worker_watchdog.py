"""`atelier worker`'s event-loop watchdog on a real Celery worker (Redis broker).

A worker whose event loop blocks (as kombu 5.7's pub/sub read did after a Redis restart) exits with
EXIT_STALLED and its thread stacks, so the supervisor restarts it; a long task in the solo pool, which holds
the same loop, is not mistaken for a stall.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from atelier.watchdog import EXIT_STALLED

pytestmark = pytest.mark.integration

# the real worker command; a test task and, in "block" mode, a timer that blocks the loop once it is ready
WORKER = """
import sys, time
from celery import shared_task
from celery.signals import worker_ready

@shared_task(name="test.watchdog.sleep")
def sleep_task(seconds):
    time.sleep(seconds)
    open(sys.argv[2], "a").write("slept\\n")

if sys.argv[1] == "block":
    @worker_ready.connect
    def block(**_):
        from kombu.asynchronous import get_event_loop
        get_event_loop().call_later(1.0, time.sleep, 600)  # the loop's thread never comes back

from atelier.cli import app
app(["worker", "--queues", "render", "--pool", "solo", "--no-supervise", "--loglevel", "INFO"])
"""


def _worker(mode: str, tmp_path: Path, redis_url: str) -> subprocess.Popen[str]:
    env = dict(os.environ, ATELIER_BROKER_URL=redis_url, ATELIER_HOME=str(tmp_path), ATELIER_WORKER_LOOP_STALL_S="3",
               ATELIER_WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"))
    return subprocess.Popen([sys.executable, "-c", WORKER, mode, str(tmp_path / "slept")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_blocked_event_loop_ends_the_worker_with_its_stacks(tmp_path: Path, redis_url: str) -> None:
    p = _worker("block", tmp_path, redis_url)
    try:
        out, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == EXIT_STALLED, out[-3000:]
    assert "event loop has not turned" in out
    assert "Current thread" in out or "Thread 0x" in out  # faulthandler's dump of the stuck loop


def _healthcheck(tmp_path: Path, max_age: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ATELIER_HOME=str(tmp_path), ATELIER_WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"))
    return subprocess.run([sys.executable, "-m", "atelier.cli", "healthcheck", "--max-age", str(max_age)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_long_task_in_the_solo_pool_is_not_a_stall(tmp_path: Path, redis_url: str) -> None:
    """...and the worker's heartbeat (what `atelier healthcheck`, the container's healthcheck, reads) stays fresh
    through the task that holds the loop; it goes stale once the worker is gone."""
    from celery import Celery

    p = _worker("normal", tmp_path, redis_url)
    ages = []
    try:
        producer = Celery("t", broker=redis_url)
        producer.send_task("test.watchdog.sleep", args=[8.0], queue="render")  # 8 s > the 3 s limit
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (tmp_path / "slept").exists():
            assert p.poll() is None, p.communicate()[0][-3000:]
            if (tmp_path / "alive").exists():
                ages.append(time.time() - (tmp_path / "alive").stat().st_mtime)
            time.sleep(0.5)
        assert (tmp_path / "slept").exists()
        assert ages and max(ages[-10:]) < 3.0, ages  # fresh while the task held the loop
        ok = _healthcheck(tmp_path, 5)
        assert ok.returncode == 0 and "healthy" in ok.stdout, ok.stdout + ok.stderr
        time.sleep(6)  # idle after the task: the loop ticks again, nothing fires
        assert p.poll() is None, p.communicate()[0][-3000:]
    finally:
        p.terminate()
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    time.sleep(2.5)
    stale = _healthcheck(tmp_path, 2)
    assert stale.returncode == 1 and "unhealthy: last heartbeat" in stale.stderr, stale.stdout + stale.stderr
