"""Bounding glibc's per-thread malloc arenas in the aggregator process.

gRPC's handler threads each allocate and free the 1 MiB chunk messages. glibc gives busy
threads their own arenas (up to 8 per core) and keeps freed chunks in each of them, so the
memory an upload leaves behind grows with the number of threads that served one: measured
with `benchmarks/bench_ingest.py` at n = 64 bfloat16 uploads, the peak was 364-395 MB
above idle by default and 300-312 MB with two arenas, at the same throughput. Two arenas is
also the usual advice for threaded Python servers (MALLOC_ARENA_MAX=2).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ARENA_MAX", "limit_malloc_arenas"]

ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> str:
    """Cap glibc's malloc arenas for this process; what was done, for the start-up log.

    An operator's own MALLOC_ARENA_MAX wins (glibc read it at start-up). Elsewhere than
    glibc on Linux this does nothing: the setting is an optimisation, never a requirement.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return "MALLOC_ARENA_MAX set by the environment; left as it is"
    if not sys.platform.startswith("linux"):
        return "not glibc; malloc arenas left as they are"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "no mallopt in this C library; malloc arenas left as they are"
    if mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)) != 1:
        return "mallopt refused M_ARENA_MAX; malloc arenas left as they are"
    return f"malloc arenas capped at {arenas}"
