"""The collateral cache refreshed in the background: items are fetched again before their
refresh time, so GetAttestation finds them fresh; a failed background fetch keeps the cached
copy; stopping joins the thread. The cache runs on a fake clock; the thread on short sleeps.
The aggregator's hardware-mode start-up runs such a refresher over its collectors' cache."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aggregator._cli import _collectors, _parser
from aggregator._metrics import Metrics
from attestation import (
    CollateralCache,
    CollateralEvent,
    CollateralRefresher,
    CollateralRequest,
    CollateralUnavailableError,
    CollateralValidity,
)
from attestation.cpu import TdxCollateralStapler
from attestation.nvidia import NrasTokenStapler, NvidiaCollateralStapler

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
FAST = {"min_sleep": datetime.timedelta(milliseconds=5), "max_sleep": datetime.timedelta(milliseconds=20)}


@dataclass
class Clock:
    now: datetime.datetime = T0

    def __call__(self) -> datetime.datetime:
        return self.now


@dataclass
class Vendor:
    up: bool = True
    version: int = 1
    calls: list[str] = field(default_factory=list)
    fetched: threading.Event = field(default_factory=threading.Event)

    def fetch(self, request: CollateralRequest) -> bytes:
        self.calls.append(request.url)
        self.fetched.set()
        if not self.up:
            raise CollateralUnavailableError("vendor down")
        return f"{request.url} v{self.version}".encode()


def appraise(data: bytes, now: datetime.datetime) -> CollateralValidity:
    return CollateralValidity(refresh_at=now + 10 * HOUR, expires_at=now + 20 * HOUR)


def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the refresher did not act in time"
        time.sleep(0.005)


def test_items_are_refreshed_before_their_refresh_time_and_served_fresh() -> None:
    clock, vendor = Clock(), Vendor()
    events: list[CollateralEvent] = []
    cache = CollateralCache(vendor, clock=clock, on_event=lambda event, _: events.append(event))
    requests = [CollateralRequest(url=f"https://vendor.example/{name}") for name in ("a", "b")]
    for request in requests:
        assert cache.get(request, appraise, what=request.url).endswith(b"v1")
    with CollateralRefresher(cache, lead=HOUR, **FAST) as refresher:
        rounds = refresher.rounds
        wait_until(lambda: refresher.rounds > rounds + 2)
        assert len(vendor.calls) == 2  # nothing due yet: nothing fetched
        vendor.version = 2
        clock.now = T0 + 9 * HOUR + datetime.timedelta(minutes=1)  # within the lead of refresh_at
        wait_until(lambda: len(vendor.calls) == 4)
        for request in requests:  # GetAttestation now finds the new copies, without a fetch
            assert cache.get(request, appraise, what=request.url).endswith(b"v2")
        assert len(vendor.calls) == 4
    assert events.count(CollateralEvent.FETCHED) == 4
    assert events[-2:] == [CollateralEvent.CACHED, CollateralEvent.CACHED]


def test_a_failed_background_refresh_keeps_the_cache_and_is_retried_later() -> None:
    clock, vendor = Clock(), Vendor()
    events: list[CollateralEvent] = []
    cache = CollateralCache(
        vendor,
        clock=clock,
        on_event=lambda event, _: events.append(event),
        retry_after=datetime.timedelta(minutes=1),
    )
    request = CollateralRequest(url="https://vendor.example/item")
    cache.get(request, appraise, what="item")
    vendor.up = False
    clock.now = T0 + 9.5 * HOUR
    with CollateralRefresher(cache, lead=HOUR, **FAST) as refresher:
        wait_until(lambda: len(vendor.calls) == 2)
        rounds = refresher.rounds
        wait_until(lambda: refresher.rounds > rounds + 2)
        assert len(vendor.calls) == 2  # not hammered: retried only after retry_after
        assert cache.get(request, appraise, what="item").endswith(b"v1")  # not due yet for get
        vendor.up, vendor.version = True, 2
        clock.now += datetime.timedelta(minutes=2)
        wait_until(lambda: len(vendor.calls) == 3)
        wait_until(lambda: cache.get(request, appraise, what="item").endswith(b"v2"))
    assert CollateralEvent.REFRESH_FAILED in events
    assert CollateralEvent.EXPIRED not in events and CollateralEvent.SERVED_STALE not in events


def test_stop_joins_the_thread_and_arguments_are_checked() -> None:
    cache = CollateralCache(Vendor(), clock=Clock())
    refresher = CollateralRefresher(cache, **FAST)
    refresher.start()
    with pytest.raises(RuntimeError, match="already running"):
        refresher.start()
    refresher.stop()
    assert not any(t.name == "fedseal-collateral-refresh" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="min_sleep"):
        CollateralRefresher(cache, min_sleep=datetime.timedelta(0))
    with pytest.raises(ValueError, match="lead"):
        CollateralRefresher(cache, lead=-HOUR)
    # An idle refresher (nothing cached) sleeps the longest and stops at once.
    slow = CollateralRefresher(cache, max_sleep=datetime.timedelta(hours=1))
    started = time.monotonic()
    with slow:
        pass
    assert time.monotonic() - started < 2


def _refresher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "fedseal-collateral-refresh" and t.is_alive()}


def test_the_aggregators_hardware_start_up_runs_a_refresher_over_its_collectors_collateral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedseal-aggregator` in hardware mode builds its collectors (GPU with NRAS, TDX) over one
    collateral cache and enters a CollateralRefresher over that cache on the start-up's
    ExitStack: its thread runs while the stack is open, and is stopped and joined when it closes."""
    # NVIDIA's nvattest is looked up on PATH when the collector is made (not run here): a stand-in.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvattest").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "nvattest").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = _parser().parse_args(
        ["--log", str(tmp_path / "audit.log"), "--enrolment", "e.json"]
        + ["--gpu-collector", "nvattest", "--cpu-tee", "tdx", "--nras"]
    )
    before = _refresher_threads()
    with contextlib.ExitStack() as stack:
        gpu, cpu = _collectors(args, stack, Metrics())
        assert isinstance(gpu, NrasTokenStapler) and isinstance(gpu._inner, NvidiaCollateralStapler)
        assert isinstance(cpu, TdxCollateralStapler)
        caches = {id(c._cache) for c in (gpu, gpu._inner, cpu)}
        assert len(caches) == 1, "the collectors staple from one collateral cache"
        (thread,) = _refresher_threads() - before
        (refresher,) = [o for o in gc.get_objects() if type(o) is CollateralRefresher and o._thread is thread]
        assert isinstance(refresher._cache, CollateralCache) and id(refresher._cache) in caches
        wait_until(lambda: refresher.rounds >= 1)  # its first pass over the (still empty) cache
        assert thread.is_alive()
    assert not thread.is_alive(), "leaving the start-up's stack stops and joins the refresher"
    assert _refresher_threads() == before
