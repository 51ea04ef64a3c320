"""Keeping Python's cyclic garbage collector off the start-up heap while the aggregator serves.

Every gRPC message, receipt and log entry allocates container objects, so the collector runs
often while updates stream in, and each full collection walks every tracked object: the
start-up heap (torch, the DP accountant's scipy, gRPC, keys and config) is by far the largest
part of it. Profiled with perf during `benchmarks/bench_ingest.py` (r16 float32, n = 16), the
collector took about a fifth of the aggregator's CPU while streaming. ``gc.freeze()`` once the
server is built moves those objects to a permanent generation that no collection visits; they
live as long as the server anyway, so nothing collectable is kept alive. Serving ends with
``gc.unfreeze()``, so an in-process caller (the tests) gets its collector back as it was.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["frozen_startup_heap"]


@contextlib.contextmanager
def frozen_startup_heap() -> Iterator[str]:
    """Collect once, then keep every object alive now out of collections until the block
    ends; yields what was done, for the start-up log."""
    gc.collect()
    gc.freeze()
    try:
        yield f"{gc.get_freeze_count()} start-up objects kept out of garbage collection while serving"
    finally:
        gc.unfreeze()
