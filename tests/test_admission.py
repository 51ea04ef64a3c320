"""Uploads are admitted before they send: one waiting for a decryption buffer has sent only
its header, and a retry of an accepted upload gets its receipt without sending chunks.

This is what keeps the aggregator's memory flat in the number of clients without shrinking
gRPC's flow-control windows (which would slow every upload across a WAN): the chunks of
an upload that cannot be decrypted yet stay at the client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import make_adapter, round_config, serving_aggregator, site_client
from logfiles import log_entries

from aggregator import RunningAggregator
from aggregator._intake import MAX_HINT_TURNS, UploadDeferredError, _RetryTickets
from aggregator._rounds import DEFAULT_UPLOAD_LINE, RoundFailedError
from aggregator.enclave._receive import BuffersBusyError, PlaintextBuffers
from attestation import Policy
from client_sdk import AggregatorUnavailableError
from client_sdk._transport import AggregatorConnection
from fedseal.logformat import EntryKind, RejectReason
from fedseal.wire import RoundState, UpdateRejectedError


@pytest.fixture
def short_line_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    """A line of 4 (the default is longer), so a few uploads fill it and the next are turned away."""
    with serving_aggregator(tmp_path, upload_line=4) as running:
        yield running


@dataclass
class _Counted:
    """A chunk source that records how many chunks the transport pulled, and can hold."""

    chunks: list[bytes]
    hold_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    pulled: int = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.hold_after:
                self.held.set()
                assert self.release.wait(30)
            self.pulled += 1
            yield chunk


class _Uploads:
    """n sites' uploads to round 1 on threads of their own; the first two hold both
    decryption buffers mid-upload until `release_held`. Use as a context manager."""

    def __init__(self, aggregator: RunningAggregator, policy: Policy, n: int) -> None:
        aggregator.rounds.open_round(round_config(1, min_clients=n, max_clients=n))
        endpoint = aggregator.endpoint
        self.clients = [site_client(endpoint, policy, f"site-{i}", timeout=60) for i in range(n)]
        self.sealed = [
            c.seal_update(make_adapter(i), round_id=1, num_examples=10 + i)
            for i, c in enumerate(self.clients)
        ]
        self.sources = [_Counted(list(s.chunks), hold_after=1) for s in self.sealed[:2]]
        self.sources += [_Counted(list(s.chunks)) for s in self.sealed[2:]]
        self.results: dict[int, object] = {}
        self.threads = [threading.Thread(target=self._upload, args=(i,)) for i in range(n)]

    def _upload(self, i: int) -> None:
        try:
            header = self.sealed[i].header
            self.results[i] = self.clients[i]._connection.submit(header, self.sources[i], timeout=60)
        except Exception as exc:  # reported by the callers' assertions
            self.results[i] = exc

    def start(self, first: int, end: int) -> None:
        for t in self.threads[first:end]:
            t.start()
        if first == 0:
            assert self.sources[0].held.wait(10) and self.sources[1].held.wait(10)

    def release_held(self) -> None:
        for s in self.sources[:2]:
            s.release.set()

    def join(self) -> dict[int, object]:
        for t in self.threads:
            if t.ident is not None:  # started
                t.join(60)
        return self.results

    def __enter__(self) -> _Uploads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for s in self.sources:
            s.release.set()
        for c in self.clients:
            c.close()


def test_a_waiting_upload_sends_nothing_but_its_header(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    rounds = live_aggregator.rounds
    rounds.open_round(round_config(1, min_clients=3, max_clients=3))
    endpoint = live_aggregator.endpoint
    clients = [site_client(endpoint, dev_policy, f"site-{i}", timeout=30) for i in range(3)]
    sealed = [c.seal_update(make_adapter(i), round_id=1, num_examples=10 + i) for i, c in enumerate(clients)]
    assert all(len(s.chunks) >= 3 for s in sealed)
    # The first two hold both decryption buffers (the pool has two slots) mid-upload.
    sources = [_Counted(list(s.chunks), hold_after=1) for s in sealed[:2]] + [
        _Counted(list(sealed[2].chunks))
    ]
    results: dict[int, object] = {}

    def upload(i: int) -> None:
        try:
            connection: AggregatorConnection = clients[i]._connection
            results[i] = connection.submit(sealed[i].header, sources[i], timeout=30)
        except Exception as exc:  # reported by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(3)]
    try:
        for t in threads[:2]:
            t.start()
        assert sources[0].held.wait(10)
        assert sources[1].held.wait(10)
        threads[2].start()
        time.sleep(0.5)  # ample time to send chunks, were it allowed to
        assert sources[2].pulled == 0, "the waiting upload sent chunks before it was admitted"
        assert 2 not in results
        for s in sources[:2]:
            s.release.set()
        for t in threads:
            t.join(30)
        assert all(isinstance(results[i], str) for i in range(3)), results
        assert [s.pulled for s in sources] == [len(s.chunks) for s in sources]
        assert rounds.snapshot(1).accepted == 3
    finally:
        for s in sources:
            s.release.set()
        for c in clients:
            c.close()


def test_busy_uploads_are_turned_away_and_retried_instead_of_holding_streams(
    short_line_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    """Buffers for 2 updates and a line of 4, 10 uploads at once: 4 wait in line (header
    only), the 4 others are turned away with a retry hint (not left open waiting), come
    back, and all 10 are accepted."""
    live_aggregator = short_line_aggregator
    rounds, registry = live_aggregator.rounds, live_aggregator.metrics.registry
    n = 10

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    with _Uploads(live_aggregator, dev_policy, n) as uploads:
        uploads.start(0, 2)
        uploads.start(2, n)
        open_streams = []
        for _ in range(20):  # while both buffers stay busy
            time.sleep(0.05)
            open_streams.append(value("fedseal_submit_streams"))
        # The two admitted uploads and the four in line are the open streams; the others
        # come and go in a few milliseconds (before the line: all 10 open, 8 waiting).
        assert sorted(open_streams)[len(open_streams) // 2] == 6, open_streams
        assert max(open_streams) < n
        assert value("fedseal_uploads_in_line") == 4  # the line is full
        assert all(s.pulled == 0 for s in uploads.sources[2:]), "a waiting or turned-away upload sent chunks"
        assert value("fedseal_uploads_deferred_total") >= n - 6
        uploads.release_held()
        results = uploads.join()
        assert all(isinstance(results[i], str) for i in range(n)), results
        assert [s.pulled for s in uploads.sources] == [len(s.chunks) for s in uploads.sources]
        assert rounds.snapshot(1).accepted == n
        # The retries show: in the server's metrics and in each client's count.
        deferred = value("fedseal_uploads_deferred_total")
        assert value("fedseal_submit_update_seconds_count", {"outcome": "deferred"}) == deferred
        assert value("fedseal_submit_update_seconds_count", {"outcome": "accepted"}) == n
        assert sum(c._connection.deferrals for c in uploads.clients) == deferred
        assert value("fedseal_updates_rejected_total", {"reason": "cancelled"}) == 0
        assert value("fedseal_submit_streams") == 0
        assert value("fedseal_uploads_in_line") == 0
        # A busy refusal is not a refusal of the update: the audit log records none.
        kinds = [e.kind for e in log_entries(live_aggregator.log.path)]
        assert EntryKind.UPDATE_REJECTED not in kinds


def test_a_retry_of_an_accepted_upload_gets_its_receipt_without_sending(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=2))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=30) as client:
        sealed = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
        first = client._connection.submit(sealed.header, sealed.chunks, timeout=30)
        again = _Counted(list(sealed.chunks))
        assert client._connection.submit(sealed.header, again, timeout=30) == first
        assert again.pulled == 0


def test_the_last_receipt_does_not_wait_for_the_rounds_close(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    rounds = live_aggregator.rounds
    rounds.open_round(round_config(1, min_clients=2, max_clients=2))
    strategy = rounds._book.rounds[1].aggregator.strategy  # internal: the round's own accumulator
    finalize = strategy.finalize
    in_close, release = threading.Event(), threading.Event()

    def slow_finalize() -> dict[str, torch.Tensor]:
        in_close.set()
        assert release.wait(30)
        return finalize()

    strategy.finalize = slow_finalize  # type: ignore[method-assign]
    opened: list[object] = []
    opener = threading.Thread(target=lambda: opened.append(rounds.open_round(round_config(2))))
    try:
        for i in range(2):
            with site_client(live_aggregator.endpoint, dev_policy, f"site-{i}", timeout=30) as client:
                receipt = client.submit_update(make_adapter(i), round_id=1, num_examples=10)
                assert receipt.entry.fields["client_id"] == f"site-{i}"
        # The round is full and its close is stuck in finalize (holding the round lock, so
        # nothing here may ask the round manager), yet the last receipt came back.
        assert in_close.wait(10)
        opener.start()
        time.sleep(0.3)
        assert opened == []  # the next round waits for the close
    finally:
        release.set()
    opener.join(30)
    assert len(opened) == 1
    published = rounds.wait_aggregate(1, 10.0)
    expected = {n: (make_adapter(0)[n] + make_adapter(1)[n]) / 2 for n in make_adapter(0)}
    aggregate = safetensors.torch.load(published.data)
    assert all(torch.allclose(aggregate[n], expected[n], atol=1e-6) for n in expected)


def test_a_close_that_fails_on_its_thread_fails_the_round_for_its_waiters(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    rounds = live_aggregator.rounds
    rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    strategy = rounds._book.rounds[1].aggregator.strategy  # internal: the round's own accumulator

    def broken_finalize() -> dict[str, torch.Tensor]:
        raise RuntimeError("simulated failure while finalizing")

    strategy.finalize = broken_finalize  # type: ignore[method-assign]
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=30) as client:
        client.submit_update(make_adapter(0), round_id=1, num_examples=10)
    snapshot = rounds.wait_closed(1, 10.0)  # not left open and full for ever
    assert snapshot.state is RoundState.FAILED
    with pytest.raises(RoundFailedError, match="closing the round failed"):
        rounds.wait_aggregate(1, 1.0)
    (failed,) = [e for e in log_entries(live_aggregator.log.path) if e.kind is EntryKind.ROUND_FAILED]
    assert failed.fields["cause"] == "aggregation_failed"
    rounds.open_round(round_config(2))  # the job can go on


def test_a_retry_hint_that_is_not_a_number_is_an_error() -> None:
    from client_sdk import AggregatorUnavailableError
    from client_sdk._transport import _retry_seconds

    assert _retry_seconds("250") == 0.25
    for bad in ("", "-5", "1.5", "1e9", "\u0669", "9" * 10):
        with pytest.raises(AggregatorUnavailableError, match="retry hint"):
            _retry_seconds(bad)


def test_the_first_retry_hints_are_sized_by_the_update_until_uploads_are_timed() -> None:
    """The uploads turned away first have their retries spread over the hold time a buffer
    is expected to be lent for; before any upload of a round's size was timed, that is
    guessed from the size (a fixed guess left 8 MB updates' buffers idle most of a round)."""
    buffers = PlaintextBuffers(slots=2)
    buffers.reserve(8_000_000)
    small = buffers.hold_seconds()
    buffers.reserve(80_000_000)
    large = buffers.hold_seconds()
    assert 0 < small < large and large == pytest.approx(10 * small)
    # A timed upload moves the estimate; reserving the same size again keeps what was timed.
    lent = buffers.acquire(80_000_000, wait_seconds=1)
    time.sleep(0.05)
    buffers.release(lent)
    timed = buffers.hold_seconds()
    assert timed != large
    buffers.reserve(80_000_000)
    assert buffers.hold_seconds() == timed
    # An upload slower than the estimate stretches it while it holds its buffer, so the
    # waiting ones do not retry at a pace only its release would correct.
    buffers.reserve(8_000)  # a tiny guess (2 ms)
    slow = buffers.acquire(8_000, wait_seconds=1)
    time.sleep(0.2)
    assert buffers.hold_seconds() >= 0.1
    buffers.release(slow)


def _take_now(buffers: PlaintextBuffers) -> bytearray:
    """A buffer if one is free now (no wait), else UpdateRejectedError."""
    return buffers.acquire(1000, wait_seconds=0)


def test_a_freed_buffer_goes_to_the_first_upload_in_line_and_the_line_is_bounded() -> None:
    buffers = PlaintextBuffers(slots=1, line=2)
    held = _take_now(buffers)
    got: dict[str, bytearray] = {}

    def wait_in_line(name: str) -> None:
        got[name] = buffers.acquire_in_line(1000, 30, threading.Event())

    first = threading.Thread(target=wait_in_line, args=("first",))
    second = threading.Thread(target=wait_in_line, args=("second",))
    first.start()
    _until(lambda: buffers.waiting() == 1)
    second.start()
    _until(lambda: buffers.waiting() == 2)
    with pytest.raises(BuffersBusyError, match="line is full"):
        buffers.acquire_in_line(1000, 30, threading.Event())
    with pytest.raises(UpdateRejectedError):
        _take_now(buffers)  # nobody jumps the line
    buffers.release(held)
    first.join(10)
    assert set(got) == {"first"} and buffers.waiting() == 1
    buffers.release(got["first"])
    second.join(10)
    assert set(got) == {"first", "second"} and buffers.waiting() == 0
    buffers.release(got["second"])
    again = _take_now(buffers)  # the slot is free again
    buffers.release(again)
    with pytest.raises(ValueError, match="not lent"):
        buffers.release(again)  # a second release would count the slot twice
    with pytest.raises(ValueError, match="not lent"):
        buffers.release(bytearray(1000))
    held_again = _take_now(buffers)
    with pytest.raises(UpdateRejectedError):
        _take_now(buffers)  # still one slot
    buffers.release(held_again)


def test_an_upload_that_goes_away_or_waits_too_long_leaves_the_line() -> None:
    buffers = PlaintextBuffers(slots=1, line=1)
    held = _take_now(buffers)
    gone = threading.Event()
    failed: list[BaseException] = []

    def wait_in_line() -> None:
        try:
            buffers.acquire_in_line(1000, 30, gone)
        except BuffersBusyError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    _until(lambda: buffers.waiting() == 1)
    gone.set()
    waiter.join(10)
    assert len(failed) == 1 and buffers.waiting() == 0
    started = time.monotonic()
    with pytest.raises(BuffersBusyError, match="in time"):
        buffers.acquire_in_line(1000, 0.05, threading.Event())
    assert time.monotonic() - started < 5 and buffers.waiting() == 0
    buffers.release(held)
    buffers.release(_take_now(buffers))  # the released slot was not handed to a leaver


def test_a_buffer_handed_over_as_the_upload_leaves_is_still_its_own() -> None:
    """A release that hands the slot over just as the caller's call ends: the waiter owns
    the buffer (and gives it back on its way out), so no slot is lost."""
    buffers = PlaintextBuffers(slots=1, line=1)
    held = _take_now(buffers)

    class _Both(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            buffers.release(held)  # the hand-over ...
            self.set()  # ... and the call going away, before the waiter looks
            return True

    mine = buffers.acquire_in_line(1000, 30, _Both())
    assert buffers.waiting() == 0
    with pytest.raises(UpdateRejectedError):
        _take_now(buffers)
    buffers.release(mine)
    buffers.release(_take_now(buffers))


def test_a_turned_away_upload_keeps_its_place_across_retries() -> None:
    tickets = _RetryTickets()
    assert [tickets.requeue(site, tickets.take(site)) for site in ("a", "b", "c")] == [0, 1, 2]
    # b tries again and is turned away again: still one ahead of it, c still two.
    assert tickets.requeue("b", tickets.take("b")) == 1
    assert tickets.requeue("c", tickets.take("c")) == 2
    tickets.take("a")  # a got in
    assert tickets.requeue("c", tickets.take("c")) == 1
    assert tickets.requeue("d", tickets.take("d")) == 2  # a newcomer queues behind


def test_the_retry_hint_asks_an_upload_back_when_the_line_has_room_for_it(
    short_line_aggregator: RunningAggregator, dev_policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads hold both buffers, four wait in line: the first turned away is asked back
    after one buffer's turn (a hold time per slot), each later one a turn later."""
    live_aggregator = short_line_aggregator
    rounds = live_aggregator.rounds
    buffers = rounds._buffers  # internal: the round manager's pool
    first_turned_away = 2 + buffers.line
    n = first_turned_away + 3
    with _Uploads(live_aggregator, dev_policy, n) as uploads:
        uploads.start(0, 2)
        uploads.start(2, first_turned_away)
        _until(lambda: buffers.waiting() == buffers.line)
        monkeypatch.setattr(buffers, "hold_seconds", lambda: 1.0)  # the test's uploads are tiny
        hints = []
        for i in range(first_turned_away, n):  # turned away one after the other
            with pytest.raises(UploadDeferredError) as busy:
                rounds.admit(uploads.sealed[i].header, line=threading.Event())
            hints.append(busy.value.retry_after)
        turn = 1.0 / buffers.slots
        assert hints == [pytest.approx(turn), pytest.approx(2 * turn), pytest.approx(3 * turn)]
        monkeypatch.undo()
        uploads.release_held()
        uploads.start(first_turned_away, n)
        results = uploads.join()
        assert all(isinstance(results[i], str) for i in range(n)), results


def test_a_hint_far_ahead_is_capped_so_the_upload_comes_back_for_a_fresh_one(
    live_aggregator: RunningAggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 40 uploads turned away, the last is not told to come back 40 turns later (the
    estimate and its jitter would miss the line by then) but after MAX_HINT_TURNS."""
    intake = live_aggregator.rounds._intake  # internal: hints as the service computes them
    buffers = live_aggregator.rounds._buffers
    monkeypatch.setattr(buffers, "hold_seconds", lambda: 0.25)
    monkeypatch.setattr(buffers, "waiting", lambda: buffers.line)  # the line is full
    hints = [intake._deferred(f"site-{i}", None).retry_after for i in range(40)]
    turn = 0.25 / buffers.slots
    assert hints[:3] == [pytest.approx(turn), pytest.approx(2 * turn), pytest.approx(3 * turn)]
    assert MAX_HINT_TURNS == 16  # README: "at most 16 turns"
    assert max(hints) == pytest.approx(MAX_HINT_TURNS * turn) == hints[-1]
    assert hints == sorted(hints)


def test_an_upload_whose_call_ends_in_line_leaves_it_and_can_come_back(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    rounds = live_aggregator.rounds
    with _Uploads(live_aggregator, dev_policy, 3) as uploads:
        uploads.start(0, 2)
        client, sealed = uploads.clients[2], uploads.sealed[2]
        waiting = _Counted(list(sealed.chunks))
        with pytest.raises(AggregatorUnavailableError):
            client._connection.submit(sealed.header, waiting, timeout=0.5)  # gives up in line
        assert waiting.pulled == 0
        registry = live_aggregator.metrics.registry
        assert (registry.get_sample_value("fedseal_uploads_deferred_total") or 0) == 0  # it was in line
        _until(lambda: rounds._buffers.waiting() == 0)
        uploads.release_held()
        results = uploads.join()
        assert isinstance(results[0], str) and isinstance(results[1], str)
        assert client._connection.submit(sealed.header, sealed.chunks, timeout=60)
        assert rounds.snapshot(1).accepted == 3
        kinds = [e.kind for e in log_entries(live_aggregator.log.path)]
        assert EntryKind.UPDATE_REJECTED not in kinds  # leaving the line refuses nothing


def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_sdk_comes_back_within_ten_percent_of_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from client_sdk import _transport

    connection = AggregatorConnection.__new__(AggregatorConnection)  # no channel needed
    connection._endpoint = "aggregator.test:443"
    hints = iter([0.2] * 200)
    waits: list[float] = []

    def busy_then_in(header: object, chunks: object, *, timeout: float) -> str:
        hint = next(hints, None)
        if hint is None:
            return "receipt"
        raise _transport._Deferred(hint)

    monkeypatch.setattr(connection, "_submit_once", busy_then_in)
    monkeypatch.setattr(time, "sleep", waits.append)  # the module the SDK sleeps with
    assert connection.submit(object(), [], timeout=3600) == "receipt"  # type: ignore[arg-type]
    assert connection.deferrals == len(waits) == 200
    assert 0.18 <= min(waits) < 0.19 and 0.21 < max(waits) <= 0.22  # spread, within 10 %


def test_uploads_in_progress_cost_no_timer_thread_of_their_own(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    """Each upload's watchdog is an entry in the server's one deadline thread, not a timer
    thread of its own (which every retry of a turned-away upload would start, twice)."""

    def timer_threads() -> int:
        return sum(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate())

    with _Uploads(live_aggregator, dev_policy, 2) as uploads:
        before = timer_threads()  # the round's deadline (and any other test's leftovers)
        uploads.start(0, 2)
        assert timer_threads() == before
        assert live_aggregator.deadlines.armed() >= 2
        uploads.release_held()
        assert all(isinstance(r, str) for r in uploads.join().values())
    assert live_aggregator.deadlines.armed() == 0


def test_uploads_waiting_in_line_when_the_round_closes_are_refused_by_name(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    """The operator closes the round while uploads hold both buffers and one waits in line:
    each gets a named refusal once a buffer frees, none hangs until its time-out."""
    rounds = live_aggregator.rounds
    with _Uploads(live_aggregator, dev_policy, 3) as uploads:
        uploads.start(0, 2)
        uploads.start(2, 3)
        _until(lambda: rounds._buffers.waiting() == 1)
        rounds.close_round(1, "the operator ends the round early")
        started = time.monotonic()
        uploads.release_held()
        results = uploads.join()
        assert time.monotonic() - started < 10
        assert all(isinstance(r, UpdateRejectedError) for r in results.values()), results
        reasons = {r.reason for r in results.values() if isinstance(r, UpdateRejectedError)}
        assert reasons <= {RejectReason.ROUND_NOT_OPEN}, reasons
        assert rounds._buffers.waiting() == 0


def test_the_aggregator_lets_32_uploads_wait_in_line_by_default(live_aggregator: RunningAggregator) -> None:
    # A retry costs a new call (~2.3-2.7 ms of CPU on the two sides); waiting costs a blocked
    # thread. A line of 32 keeps a 64-client burst to a few dozen retries (README, ingest).
    assert DEFAULT_UPLOAD_LINE == 32
    assert live_aggregator.rounds._buffers.line == DEFAULT_UPLOAD_LINE  # internal: the pool


def test_a_full_line_leaves_the_threads_other_calls_need(tmp_path: Path, dev_policy: Policy) -> None:
    """The line's threads come on top of max_workers: with 4 workers, 2 uploads receiving
    and a full line of 4, an enrolled site's GetRound is still served at once (were the
    line's uploads on the 4 workers, it would queue until a buffer freed)."""
    with (
        serving_aggregator(tmp_path, upload_line=4, max_workers=4) as running,
        _Uploads(running, dev_policy, 6) as uploads,
    ):
        uploads.start(0, 2)
        uploads.start(2, 6)
        _until(lambda: running.rounds._buffers.waiting() == 4)  # internal: the pool
        with site_client(running.endpoint, dev_policy, "site-9", timeout=5) as other:
            started = time.monotonic()
            assert other.round_info(1).state is RoundState.OPEN
            assert time.monotonic() - started < 5
        uploads.release_held()
        results = uploads.join()
        assert all(isinstance(results[i], str) for i in range(6)), results
