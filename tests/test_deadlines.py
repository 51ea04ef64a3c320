"""The server's one deadline thread (aggregator/_deadlines.py): callbacks run when due,
disarmed ones never, and a stopped one fires nothing and leaves no thread behind. That
uploads use it rather than a timer thread each: tests/test_admission.py."""

from __future__ import annotations

import threading
import time

from aggregator._deadlines import Deadlines


def test_due_callbacks_run_in_order_and_disarmed_ones_never() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    done = threading.Event()

    def late() -> None:
        fired.append("late")
        done.set()

    try:
        deadlines.arm(0.10, late)
        deadlines.arm(0.02, lambda: fired.append("early"))
        dropped = deadlines.arm(0.05, lambda: fired.append("disarmed"))
        deadlines.disarm(dropped)
        assert deadlines.armed() == 2
        assert done.wait(10)
        assert fired == ["early", "late"] and deadlines.armed() == 0
    finally:
        deadlines.stop()


def test_a_stopped_deadline_thread_fires_nothing_and_ends() -> None:
    deadlines = Deadlines()
    fired: list[int] = []
    deadlines.arm(0.05, lambda: fired.append(1))
    deadlines.stop()
    assert not any(t.name == "fedseal-deadlines" and t.is_alive() for t in threading.enumerate())
    deadlines.arm(0.01, lambda: fired.append(2))  # after stop: accepted, never run
    time.sleep(0.2)
    assert fired == [] and deadlines.armed() == 0
