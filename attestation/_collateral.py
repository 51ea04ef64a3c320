"""Aggregator side: a cache of vendor collateral with refresh semantics, for stapling.

The stapling collectors (``attestation.nvidia.NvidiaCollateralStapler``,
``attestation.cpu.SevSnpCollateralStapler`` / ``TdxCollateralStapler``) attach to every
bundle what a client needs to verify it offline: RIMs, OCSP answers, the VCEK and its
ASK, Intel's PCS collateral (and, with ``--nras``, NRAS's key set beside its token).
They fetch it on the host side through a :class:`~attestation.CollateralFetcher`, through
this cache:

* each item is kept with two times, derived from its content when it is fetched: when
  to refresh it (shortly before its next update) and when it expires (after which no
  verifier would accept it);
* before the refresh time the cached copy is served without any fetch;
* after it, one fetch is tried; if it fails (service down, answer unusable) the cached
  copy keeps being served until it expires, and the fetch is not retried for
  ``retry_after`` so that an outage does not slow every GetAttestation down;
* once expired and not refreshable, :meth:`CollateralCache.get` raises
  :class:`StapledCollateralExpiredError` naming the item: GetAttestation fails closed;
* the next successful fetch restores service: nothing is sticky.

:class:`CollateralRefresher` refreshes the cached items in a daemon thread shortly before
their refresh time, so that a client's GetAttestation never waits on a vendor's service;
a failure there is counted like any other and the cached copy stays.

Every outcome is reported to ``on_event`` (the aggregator counts them in Prometheus).
A failed fetch never raises past this class except as that named error.
"""

from __future__ import annotations

import datetime
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import AttestationError, CollateralUnavailableError, EvidenceCollectionError
from ._fetch import CollateralFetcher, CollateralRequest

__all__ = [
    "CollateralCache",
    "CollateralEvent",
    "CollateralRefresher",
    "CollateralValidity",
    "StapledCollateralExpiredError",
]

_LOG = logging.getLogger(__name__)
DEFAULT_RETRY_AFTER = datetime.timedelta(minutes=1)


class StapledCollateralExpiredError(EvidenceCollectionError):
    """Collateral the bundle must staple could not be fetched and no valid cached copy is left."""


class CollateralEvent(enum.Enum):
    """What one :meth:`CollateralCache.get` did (the aggregator's metric label)."""

    FETCHED = "fetched"
    CACHED = "cached"
    REFRESH_FAILED = "refresh_failed"
    SERVED_STALE = "served_stale"
    EXPIRED = "expired"


@dataclass(frozen=True)
class CollateralValidity:
    """When a fetched item should be refreshed, and after when it is useless."""

    refresh_at: datetime.datetime
    expires_at: datetime.datetime


@dataclass(frozen=True)
class _Entry:
    data: bytes
    validity: CollateralValidity


# Appraises fetched bytes: returns their validity, or raises (then the answer is unusable).
Appraiser = Callable[[bytes, datetime.datetime], CollateralValidity]


class CollateralCache:
    """Collateral by request, with refresh-before-expiry and serve-stale-until-expiry.

    ``clock`` gives the current time (tests move it); ``on_event(event, what)`` is called
    for every get; ``retry_after`` spaces out fetch attempts after a failure.
    """

    def __init__(
        self,
        fetcher: CollateralFetcher,
        *,
        clock: Callable[[], datetime.datetime] | None = None,
        on_event: Callable[[CollateralEvent, str], None] | None = None,
        retry_after: datetime.timedelta = DEFAULT_RETRY_AFTER,
    ) -> None:
        self._fetcher = fetcher
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._on_event = on_event
        self._retry_after = retry_after
        self._entries: dict[str, _Entry] = {}
        # How to fetch each item again, for the background refresher.
        self._sources: dict[str, tuple[CollateralRequest, Appraiser, str]] = {}
        self._next_try: dict[str, datetime.datetime] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def now(self) -> datetime.datetime:
        return self._clock()

    def get(self, request: CollateralRequest, appraise: Appraiser, *, what: str) -> bytes:
        """The item for ``request``: cached, refreshed, or stale-but-valid.

        ``appraise(data, now)`` parses a fetched answer and gives its validity; it raises
        (ValueError or an AttestationError) when the answer is unusable, which counts as a
        failed fetch. Raises :class:`StapledCollateralExpiredError` when no valid copy is left.
        """
        key = request.cache_key()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            self._sources[key] = (request, appraise, what)
        with lock:  # one fetch per item at a time; other items are not held up
            now = self._clock()
            entry = self._entries.get(key)
            if entry is not None and now < entry.validity.refresh_at:
                self._event(CollateralEvent.CACHED, what)
                return entry.data
            next_try = self._next_try.get(key)
            if next_try is not None and now < next_try:  # failed recently: do not wait on it again
                return self._stale_or_fail(entry, now, what, "the last fetch failed")
            fetched = self._fetch(key, request, appraise, what, now)
            if isinstance(fetched, bytes):
                return fetched
            return self._stale_or_fail(entry, now, what, fetched)

    def refresh_due(self, lead: datetime.timedelta) -> int:
        """Fetch again every item whose refresh time is less than ``lead`` away (and that did
        not fail within ``retry_after``), so that GetAttestation finds it fresh. Failures keep
        the cached copy, as in :meth:`get`; nothing raises. Returns how many were attempted."""
        with self._guard:
            sources = dict(self._sources)
            locks = dict(self._locks)
        attempted = 0
        for key, (request, appraise, what) in sources.items():
            with locks[key]:
                now = self._clock()
                entry = self._entries.get(key)
                next_try = self._next_try.get(key)
                due = entry is None or now + lead >= entry.validity.refresh_at
                if not due or (next_try is not None and now < next_try):
                    continue
                attempted += 1
                self._fetch(key, request, appraise, what, now)  # a failure is counted and logged there
        return attempted

    def next_refresh(self) -> datetime.datetime | None:
        """The earliest refresh time of the cached items (None when nothing is cached)."""
        with self._guard:
            times = [entry.validity.refresh_at for entry in self._entries.values()]
        return min(times, default=None)

    def _fetch(
        self, key: str, request: CollateralRequest, appraise: Appraiser, what: str, now: datetime.datetime
    ) -> bytes | str:
        """One fetch (the caller holds the item's lock): the new data, or why it failed."""
        try:
            data = self._fetcher.fetch(request)
            validity = appraise(data, now)
            if validity.expires_at <= now:
                raise CollateralUnavailableError(
                    f"the answer expired at {validity.expires_at:%Y-%m-%dT%H:%M:%SZ}"
                )
        except (AttestationError, ValueError) as exc:
            self._next_try[key] = now + self._retry_after
            self._event(CollateralEvent.REFRESH_FAILED, what)
            _LOG.warning("collateral refresh failed for %s: %s", what, exc)
            return f"fetching it failed ({exc})"
        with self._guard:
            self._entries[key] = _Entry(data, validity)
        self._next_try.pop(key, None)
        self._event(CollateralEvent.FETCHED, what)
        return data

    def _stale_or_fail(self, entry: _Entry | None, now: datetime.datetime, what: str, why: str) -> bytes:
        if entry is not None and now < entry.validity.expires_at:
            self._event(CollateralEvent.SERVED_STALE, what)
            return entry.data
        self._event(CollateralEvent.EXPIRED, what)
        state = (
            f"the cached copy expired at {entry.validity.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            if entry is not None
            else "nothing is cached"
        )
        raise StapledCollateralExpiredError(f"cannot staple {what}: {why} and {state}")

    def _event(self, event: CollateralEvent, what: str) -> None:
        if self._on_event is not None:
            self._on_event(event, what)


def refresh_before(
    expires_at: datetime.datetime,
    fetched_at: datetime.datetime,
    *,
    margin: datetime.timedelta,
    at_most: datetime.timedelta | None = None,
) -> CollateralValidity:
    """Validity that refreshes ``margin`` before ``expires_at`` (never before ``fetched_at``),
    and at the latest ``at_most`` after ``fetched_at``."""
    refresh = max(fetched_at, expires_at - margin)
    if at_most is not None:
        refresh = min(refresh, fetched_at + at_most)
    return CollateralValidity(refresh_at=refresh, expires_at=expires_at)


class CollateralRefresher:
    """Refreshes ``cache``'s items in a daemon thread, ``lead`` before their refresh time.

    It wakes when the earliest item is due (at least every ``max_sleep``, at most every
    ``min_sleep``), calls :meth:`CollateralCache.refresh_due`, and sleeps again. Use it as a
    context manager (or :meth:`start` / :meth:`stop`): leaving stops and joins the thread.
    """

    def __init__(
        self,
        cache: CollateralCache,
        *,
        lead: datetime.timedelta = datetime.timedelta(minutes=10),
        min_sleep: datetime.timedelta = datetime.timedelta(seconds=1),
        max_sleep: datetime.timedelta = datetime.timedelta(minutes=5),
    ) -> None:
        if not datetime.timedelta(0) < min_sleep <= max_sleep or lead < datetime.timedelta(0):
            raise ValueError("need 0 < min_sleep <= max_sleep and lead >= 0")
        self._cache = cache
        self._lead = lead
        self._min_sleep = min_sleep
        self._max_sleep = max_sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0  # refresh passes done (for tests and metrics)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the collateral refresher is already running")
        self._thread = threading.Thread(target=self._run, name="fedseal-collateral-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> CollateralRefresher:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._cache.refresh_due(self._lead)
            except Exception:  # a bug must not end the thread silently; log it and go on
                _LOG.exception("collateral background refresh failed")
            self.rounds += 1
            self._stop.wait(self._sleep().total_seconds())

    def _sleep(self) -> datetime.timedelta:
        due = self._cache.next_refresh()
        if due is None:
            return self._max_sleep
        wait = due - self._lead - self._cache.now()
        return min(max(wait, self._min_sleep), self._max_sleep)
