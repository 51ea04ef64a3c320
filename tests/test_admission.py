"""Uploads are admitted before they send: one waiting for a decryption buffer has sent only
its header, and a retry of an accepted upload gets its receipt without sending chunks.

This is what keeps the aggregator's memory flat in the number of clients without shrinking
gRPC's flow-control windows (which would slow every upload across a WAN): the chunks of
an upload that cannot be decrypted yet stay at the client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import safetensors.torch
import torch
from conftest import make_adapter, round_config, site_client
from logfiles import log_entries

from aggregator import RunningAggregator
from aggregator._rounds import RoundFailedError
from aggregator.enclave._receive import PlaintextBuffers
from attestation import Policy
from client_sdk._transport import AggregatorConnection
from fedseal.logformat import EntryKind
from fedseal.wire import RoundState


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
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    """Buffers for 2 updates, 8 uploads at once: the 6 that cannot be admitted are turned
    away with a retry hint (not left open waiting), come back, and all 8 are accepted."""
    rounds, registry = live_aggregator.rounds, live_aggregator.metrics.registry
    n = 8
    rounds.open_round(round_config(1, min_clients=n, max_clients=n))
    clients = [site_client(live_aggregator.endpoint, dev_policy, f"site-{i}", timeout=60) for i in range(n)]
    sealed = [c.seal_update(make_adapter(i), round_id=1, num_examples=10 + i) for i, c in enumerate(clients)]
    # The first two hold both decryption buffers mid-upload until released.
    sources = [_Counted(list(s.chunks), hold_after=1) for s in sealed[:2]]
    sources += [_Counted(list(s.chunks)) for s in sealed[2:]]
    results: dict[int, object] = {}

    def upload(i: int) -> None:
        try:
            results[i] = clients[i]._connection.submit(sealed[i].header, sources[i], timeout=60)
        except Exception as exc:  # reported by the assertions below
            results[i] = exc

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
    try:
        for t in threads[:2]:
            t.start()
        assert sources[0].held.wait(10) and sources[1].held.wait(10)
        for t in threads[2:]:
            t.start()
        open_streams = []
        for _ in range(20):  # while both buffers stay busy
            time.sleep(0.05)
            open_streams.append(value("fedseal_submit_streams"))
        # The two admitted uploads are the open streams; the others come and go in a few
        # milliseconds (before: all 8 open, 6 of them waiting in the server).
        assert sorted(open_streams)[len(open_streams) // 2] == 2, open_streams
        assert max(open_streams) < n
        assert all(s.pulled == 0 for s in sources[2:]), "a turned-away upload sent chunks"
        assert value("fedseal_uploads_deferred_total") >= n - 2
        for s in sources[:2]:
            s.release.set()
        for t in threads:
            t.join(60)
        assert all(isinstance(results[i], str) for i in range(n)), results
        assert [s.pulled for s in sources] == [len(s.chunks) for s in sources]
        assert rounds.snapshot(1).accepted == n
        # The retries show: in the server's metrics and in each client's count.
        deferred = value("fedseal_uploads_deferred_total")
        assert value("fedseal_submit_update_seconds_count", {"outcome": "deferred"}) == deferred
        assert value("fedseal_submit_update_seconds_count", {"outcome": "accepted"}) == n
        assert sum(c._connection.deferrals for c in clients) == deferred
        assert value("fedseal_updates_rejected_total", {"reason": "cancelled"}) == 0
        assert value("fedseal_submit_streams") == 0
        # A busy refusal is not a refusal of the update: the audit log records none.
        kinds = [e.kind for e in log_entries(live_aggregator.log.path)]
        assert EntryKind.UPDATE_REJECTED not in kinds
    finally:
        for s in sources:
            s.release.set()
        for c in clients:
            c.close()


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
