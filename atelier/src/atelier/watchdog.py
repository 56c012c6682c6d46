"""A watchdog on the Celery worker's event loop: a worker that is alive but no longer consuming exits.

Seen in the chaos run (Celery/kombu 5.7, redis-py 8): after a Redis restart the worker's event loop called
kombu's pub/sub reader (the remote-control channel) on a connection with nothing to read, and redis-py's
blocking read never returned. The process stayed up, so nothing restarted it, and every stage queued for its
role waited for ever. The reconciler re-drives such stages, but only a consuming worker can run them.

The loop turns a timer every second; a thread checks it. While the worker runs a task the loop may be busy
(the solo pool runs tasks in the loop's thread), so a running task counts as a sign of life. When the loop has
not turned for ``worker_loop_stall_s`` with no task running, the thread writes every thread's stack to stderr
and ends the process with :data:`EXIT_STALLED`; `atelier worker`'s supervisor starts a fresh one, the broker
redelivers what it held unacknowledged, and the reconciler re-drives its stages. While the consumer is
reconnecting (Redis down) the watchdog is disarmed: that wait is Celery's own, and it ends by itself.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.worker import state

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: a restart is the remedy


class LoopWatchdog:
    """The decision, apart from Celery: armed/disarmed, ticks, and whether the loop has stalled."""

    def __init__(self, stall_s: float, *, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.stall_s, self.busy, self.clock = stall_s, busy, clock
        self.armed = False
        self.last = clock()

    def arm(self) -> None:
        self.armed, self.last = True, self.clock()

    def disarm(self) -> None:
        self.armed = False

    def tick(self) -> None:
        self.last = self.clock()

    def stalled(self) -> bool:
        """True when the loop is armed, no task runs, and the loop has not ticked for ``stall_s``."""
        if not self.armed:
            return False
        if self.busy():  # a running task may hold the loop (solo pool): a fresh window once it ends
            self.last = self.clock()
            return False
        return self.clock() - self.last > self.stall_s


def _tasks_running() -> bool:
    return bool(state.active_requests)


def _die(stall_s: float) -> None:
    msg = (f"atelier worker: the Celery event loop has not turned for {stall_s:.0f} s while no task ran; "
           f"exiting ({EXIT_STALLED}) so the supervisor starts a fresh worker. Thread stacks follow.")
    log.critical(msg)
    print(msg, file=sys.__stderr__, flush=True)
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    os._exit(EXIT_STALLED)


def touch(path: Path) -> None:
    """Set ``path``'s modification time to now (creating it): the worker's heartbeat for ``atelier healthcheck``."""
    try:
        path.touch()
    except OSError:  # a full or read-only disk: the healthcheck says so by the file's age
        log.warning("could not touch the heartbeat file %s", path, exc_info=True)


def watchdog_step(stall_s: float, heartbeat_file: Path | None = None) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep (``app.steps["consumer"].add(...)``) that runs the watchdog for this worker.

    ``stall_s`` 0: no stall exit (the heartbeat only). ``heartbeat_file``: touched on every loop tick, and every
    second while a task runs (a solo pool's task holds the loop) — alive means consuming or working."""
    dog = LoopWatchdog(stall_s, busy=_tasks_running)

    def tick() -> None:
        dog.tick()
        if heartbeat_file is not None:
            touch(heartbeat_file)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if heartbeat_file is not None and dog.armed and dog.busy():
                touch(heartbeat_file)
            if stall_s > 0 and dog.stalled():
                _die(stall_s)

    class EventLoopWatchdog(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)  # started once connected and consuming
        thread: threading.Thread | None = None

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.timer_entry: Any = None

        def start(self, c: Any) -> None:
            if self.timer_entry is None:
                self.timer_entry = c.timer.call_repeatedly(min(1.0, stall_s / 4) if stall_s > 0 else 1.0, tick)
            dog.arm()
            if EventLoopWatchdog.thread is None:
                EventLoopWatchdog.thread = threading.Thread(target=watch, name="loop-watchdog", daemon=True)
                EventLoopWatchdog.thread.start()

        def stop(self, c: Any) -> None:  # the consumer restarts (reconnects) or shuts down
            dog.disarm()
            if self.timer_entry is not None:
                self.timer_entry.cancel()
                self.timer_entry = None

        shutdown = stop

    return EventLoopWatchdog
