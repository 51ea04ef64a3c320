"""Tuning glibc's malloc in the aggregator process: two arenas, a fixed mmap threshold.

gRPC's handler threads each allocate and free the 1 MiB chunk messages. glibc gives busy
threads their own arenas (up to 8 per core) and keeps freed chunks in each of them, so the
memory an upload leaves behind grows with the number of threads that served one: measured
with `benchmarks/bench_ingest.py` at n = 64 bfloat16 uploads, the peak was 364-395 MB
above idle by default and 300-312 MB with two arenas, at the same throughput. Two arenas is
also the usual advice for threaded Python servers (MALLOC_ARENA_MAX=2).

glibc also raises its mmap threshold each time a large mmapped block is freed (up to
32 MB), after which blocks of a few MB (gRPC's read buffers of up to 4 MiB) come from the
arenas, where freed ones are rarely given back: with 32 uploads waiting in line the
aggregator's RSS grew ~2.5 MB per accepted upload through a round, and the peak of n = 64
bfloat16 uploads reached 0.90-1.00 of its memory target. A fixed threshold of 2 MiB keeps
the 1 MiB chunk messages in the arenas (reused, no page faults) and gives larger blocks
back when freed: 0.70-0.74 of the target in the same alternating runs, at the same
throughput.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["ARENA_MAX", "MMAP_THRESHOLD", "tune_malloc"]

ARENA_MAX = 2
MMAP_THRESHOLD = 2 * 1024 * 1024
_M_ARENA_MAX = -8  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def tune_malloc(arenas: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> str:
    """Cap glibc's malloc arenas and fix its mmap threshold for this process; what was
    done, for the start-up log.

    An operator's own MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ wins (glibc read it at
    start-up). Elsewhere than glibc on Linux this does nothing: the settings are an
    optimisation, never a requirement.
    """
    if not sys.platform.startswith("linux"):
        return "not glibc; malloc left as it is"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "no mallopt in this C library; malloc left as it is"
    done = [
        _set(mallopt, "MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas, f"malloc arenas capped at {arenas}"),
        _set(
            mallopt,
            "MALLOC_MMAP_THRESHOLD_",
            _M_MMAP_THRESHOLD,
            mmap_threshold,
            f"mmap threshold fixed at {mmap_threshold // 1024} KiB",
        ),
    ]
    return "; ".join(done)


def _set(
    mallopt: Callable[[ctypes.c_int, ctypes.c_int], int], variable: str, option: int, value: int, done: str
) -> str:
    if os.environ.get(variable):
        return f"{variable} set by the environment; left as it is"
    if mallopt(ctypes.c_int(option), ctypes.c_int(value)) != 1:
        return f"mallopt refused {variable.rstrip('_')}; left as it is"
    return done
