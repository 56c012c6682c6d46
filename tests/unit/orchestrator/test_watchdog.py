"""The event-loop watchdog's decision: armed, ticked, busy, stalled."""

from __future__ import annotations

from atelier.watchdog import LoopWatchdog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_loop_that_stops_ticking_is_stalled_only_after_the_limit() -> None:
    clock = Clock()
    dog = LoopWatchdog(10.0, busy=lambda: False, clock=clock)
    dog.arm()
    clock.t += 9.0
    assert not dog.stalled()
    dog.tick()
    clock.t += 9.5
    assert not dog.stalled()  # ticked 9.5 s ago
    clock.t += 1.0
    assert dog.stalled()


def test_disarmed_while_the_consumer_reconnects() -> None:
    clock = Clock()
    dog = LoopWatchdog(10.0, busy=lambda: False, clock=clock)
    assert not dog.stalled()  # never armed: the worker has not connected yet
    dog.arm()
    dog.disarm()  # the consumer lost Redis and waits in Celery's own reconnect loop
    clock.t += 300.0
    assert not dog.stalled()
    dog.arm()  # reconnected: a fresh window
    clock.t += 5.0
    assert not dog.stalled()


def test_a_running_task_counts_as_life_and_gives_a_fresh_window_after_it() -> None:
    clock, running = Clock(), [True]
    dog = LoopWatchdog(10.0, busy=lambda: running[0], clock=clock)
    dog.arm()
    clock.t += 600.0  # a long diffusion task holds the solo pool's loop
    assert not dog.stalled()
    running[0] = False
    clock.t += 5.0  # the loop has not ticked yet since the task ended
    assert not dog.stalled()
    clock.t += 6.0
    assert dog.stalled()
