"""Deadlines: one thread that runs each armed callback when its time comes.

The server owns one (`start_aggregator`) and shares it between the admission interceptor
(a call must send its request in time) and the upload watchdog (an upload must finish by
its round's deadline): a call costs an entry in a heap, not a timer thread of its own,
which under a flood of calls, or of uploads turned away and retried, would cost a thread
start (and its GIL hand-offs) per call.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Deadlines"]


class Deadlines:
    """Run callbacks at their deadlines on one thread (started on first use; `stop` ends it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: set[int] = set()  # armed, neither fired nor disarmed
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, seconds: float, callback: Callable[[], None]) -> int:
        """Call `callback` in `seconds` unless disarmed first; a handle for `disarm`. After
        `stop` nothing fires any more (the server that armed it has stopped too)."""
        with self._cond:
            handle = next(self._ids)
            if self._stopped:
                return handle
            heapq.heappush(self._heap, (time.monotonic() + seconds, handle, callback))
            self._pending.add(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fedseal-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
            return handle

    def disarm(self, handle: int) -> None:
        with self._cond:
            self._pending.discard(handle)

    def armed(self) -> int:
        """How many callbacks are armed now."""
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        """Drop every armed callback and end the thread."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._pending.clear()
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                when, handle, callback = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if handle not in self._pending:
                    continue  # disarmed
                self._pending.discard(handle)
            callback()
