"""The aggregator caps glibc's malloc arenas (aggregator/_malloc.py says why)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aggregator._malloc import limit_malloc_arenas

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt(M_ARENA_MAX) is glibc's",
)


def _in_fresh_process(env: dict[str, str]) -> str:
    code = "from aggregator._malloc import limit_malloc_arenas; print(limit_malloc_arenas())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    return result.stdout.strip()


@glibc_only
def test_caps_the_arenas_on_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _in_fresh_process(env) == "malloc arenas capped at 2"


def test_an_operators_setting_wins() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert _in_fresh_process(env) == "MALLOC_ARENA_MAX set by the environment; left as it is"


def test_refusal_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert limit_malloc_arenas() == "not glibc; malloc arenas left as they are"
