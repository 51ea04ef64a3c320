"""The aggregator tunes glibc's malloc (aggregator/_malloc.py says why)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from aggregator._malloc import _set, tune_malloc

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt is glibc's",
)

_OURS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")


def _in_fresh_process(
    env: dict[str, str], code: str = "from aggregator._malloc import _set, tune_malloc; print(tune_malloc())"
) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    return result.stdout.strip()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _OURS}


@glibc_only
def test_caps_the_arenas_and_fixes_the_mmap_threshold_on_glibc() -> None:
    assert _in_fresh_process(_clean_env()) == "malloc arenas capped at 2; mmap threshold fixed at 2048 KiB"


@glibc_only
def test_a_freed_block_of_a_few_mb_goes_back_to_the_system() -> None:
    # What the fixed threshold is for: after an 8 MB block is freed, glibc's sliding
    # threshold puts 4 MiB blocks in the heap, where freed ones between live blocks stay
    # resident (measured: all 64 MiB; with the fixed threshold, 64 KiB).
    code = """
import ctypes
from aggregator._malloc import _set, tune_malloc
tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
libc.free(libc.malloc(8 << 20))  # freed from mmap: glibc's own rule would raise its threshold here
before = rss()
blocks, pins = [], []
for _ in range(16):
    blocks.append(libc.malloc(4 << 20))
    pins.append(libc.malloc(512 << 10))  # kept: the freed blocks between them cannot merge
for b in blocks:
    ctypes.memset(b, 1, 4 << 20)
for b in blocks:
    libc.free(b)
print(rss() - before)
"""
    kept_kib = int(_in_fresh_process(_clean_env(), code))
    assert kept_kib < 8 * 1024, f"{kept_kib} KiB of 64 MiB freed stayed resident"


def test_an_operators_setting_wins() -> None:
    env = {**_clean_env(), "MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "131072"}
    assert _in_fresh_process(env) == (
        "MALLOC_ARENA_MAX set by the environment; left as it is; "
        "MALLOC_MMAP_THRESHOLD_ set by the environment; left as it is"
    )


def test_elsewhere_than_linux_malloc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_malloc() == "not glibc; malloc left as it is"


@glibc_only
def test_a_setting_glibc_refuses_is_reported_not_raised() -> None:
    # The glibc here accepts any arena cap and mmap threshold (older ones refused a
    # threshold above 32 MiB), so the refusal comes from an option it does refuse on every
    # version: a fast-bin size above its maximum (M_MXFAST = 1). Real mallopt, real refusal.
    mallopt = ctypes.CDLL(None).mallopt
    assert _set(mallopt, "FEDSEAL_TEST_UNSET_", 1, 1 << 20, "done") == (
        "mallopt refused FEDSEAL_TEST_UNSET; left as it is"
    )
