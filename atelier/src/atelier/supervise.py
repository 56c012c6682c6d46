"""Keep a worker running: restart the Celery worker process when it dies of something other than a shutdown.

``atelier worker`` runs the Celery worker as a child of this small supervisor (``--no-supervise`` runs it
in-process). Why: a worker can exit on an error it cannot recover from while the rest of the system is
fine — seen here with Celery/kombu 5.7 when Redis restarts while tasks are in flight ("Unrecoverable
error: AttributeError: 'NoneType' object has no attribute 'hostname'" in kombu's Redis transport) — and a
queue whose only worker has exited stalls every job behind it until someone notices. Kubernetes or
systemd restart a dead container or unit too; this makes the laptop and docker-compose runs behave the
same, and it costs one idle process.

Rules:

* the child exits 0 (a clean shutdown, e.g. ``celery control shutdown``) → the supervisor exits 0;
* SIGTERM / SIGQUIT to the supervisor → forwarded to the child (Celery's warm / cold shutdown), then the
  supervisor exits with the child's code and restarts nothing; SIGINT (Ctrl+C) reaches the child from the
  terminal's process group already, so it is not forwarded twice (a second SIGINT means cold shutdown);
* any other exit (an error code, or a signal such as the OOM killer's SIGKILL) → restart after a backoff
  that doubles from ``min_backoff_s`` up to ``max_backoff_s`` and starts over once a child has run for
  ``healthy_after_s``;
* the child gets SIGTERM if the supervisor itself dies (``PR_SET_PDEATHSIG`` on Linux), so no worker is
  left behind, and a SIGKILL of the process group (what the chaos harness does) takes both.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("atelier.supervise")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def supervise(argv: Sequence[str], *, min_backoff_s: float = 1.0, max_backoff_s: float = 30.0,
              healthy_after_s: float = 60.0, max_restarts: int | None = None,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Run ``argv`` and restart it until it exits cleanly or the supervisor is told to stop.

    Returns the exit code to leave with. ``max_restarts`` (None: unlimited) is for tests.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None and signum != signal.SIGINT:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    backoff, restarts = min_backoff_s, 0
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(list(argv), preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads here
            code = child.wait()
            ran = time.monotonic() - started
            if stopping or code == 0:
                return code if code >= 0 else 128 - code
            if max_restarts is not None and restarts >= max_restarts:
                log.error("worker exited with %s; not restarting (max_restarts=%s)", code, max_restarts)
                return code if code > 0 else 1
            if ran >= healthy_after_s:
                backoff = min_backoff_s
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.warning("worker exited with %s after %.1f s; restarting in %.1f s", how, ran, backoff)
            print(f"atelier worker: the worker exited with {how}; restarting in {backoff:.1f} s",
                  file=sys.stderr, flush=True)
            sleep(backoff)
            if stopping:
                return 128 + signal.SIGTERM
            backoff = min(backoff * 2, max_backoff_s)
            restarts += 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
