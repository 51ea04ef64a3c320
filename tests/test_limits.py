"""Abuse limits: per-identity streams, calls and bytes per round; public calls rate-limited;
unauthenticated callers get nothing but the attestation and the log calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client

from aggregator import AccessLimits, ConfigError, RunningAggregator, start_aggregator
from attestation import Policy
from auditor import audit_log
from auditor._endpoint import AuditEndpointError, AuditorConnection
from client_sdk import AccessDeniedError, AccessDeniedReason, FedSealClient
from client_sdk._transport import AggregatorConnection
from fedseal.logformat import EntryKind, decode_record


def _start(tmp_path: Path, **limits: object) -> RunningAggregator:
    return start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/limits",
        collectors=[simulated_collector()],
        access=access_config(AccessLimits(**limits)),  # type: ignore[arg-type]
    )


@pytest.fixture
def one_stream(tmp_path: Path) -> Iterator[RunningAggregator]:
    running = _start(tmp_path, max_streams_per_identity=1)
    try:
        yield running
    finally:
        running.stop(0.2)


def _denied(call: object) -> AccessDeniedReason:
    with pytest.raises(AccessDeniedError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_a_client_opening_too_many_streams_is_throttled_while_the_others_finish(
    one_stream: RunningAggregator, dev_policy: Policy
) -> None:
    endpoint = one_stream.endpoint
    one_stream.rounds.open_round(round_config(1, min_clients=3, max_clients=3))
    release = threading.Event()
    first_chunk_sent = threading.Event()
    outcome: dict[str, object] = {}

    with site_client(endpoint, dev_policy, "site-0", timeout=30) as greedy:
        slow = greedy.seal_update(make_adapter(0), round_id=1, num_examples=10)
        second = greedy.seal_update(make_adapter(9), round_id=1, num_examples=10)
        connection: AggregatorConnection = greedy._connection

        def slow_chunks() -> Iterator[bytes]:
            yield slow.chunks[0]
            first_chunk_sent.set()
            release.wait(30)
            yield from slow.chunks[1:]

        def upload() -> None:
            try:
                outcome["receipt"] = connection.submit(slow.header, slow_chunks(), timeout=30)
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        uploader = threading.Thread(target=upload)
        uploader.start()
        assert first_chunk_sent.wait(10)
        time.sleep(0.2)  # the first chunk is on the wire: its stream holds site-0's one slot
        # A second stream from the same site is throttled at once, before a byte is read...
        assert _denied(lambda: connection.submit(second.header, second.chunks, timeout=10)) is (
            AccessDeniedReason.THROTTLED
        )
        # ...while the other sites go through and the round goes on.
        for n in (1, 2):
            with site_client(endpoint, dev_policy, f"site-{n}", timeout=30) as other:
                other.submit_update(make_adapter(n), round_id=1, num_examples=10)
        assert one_stream.rounds.snapshot(1).accepted == 2
        release.set()
        uploader.join(30)
        assert "error" not in outcome, outcome.get("error")
        aggregate = greedy.fetch_aggregate(1, wait_seconds=10)
    assert aggregate.manifest.participants == ("site-0", "site-1", "site-2")
    # The throttled stream left no trace in the log (it came before any header was read).
    kinds = [
        e.kind
        for n, line in enumerate(one_stream.log.path.read_bytes().splitlines(), 1)
        if (e := decode_record(line, line_number=n).entry)
    ]
    assert EntryKind.UPDATE_REJECTED not in kinds
    assert audit_log(one_stream.log.path, dev_policy).findings == ()


def test_calls_per_round_are_counted_per_identity_and_reset_with_the_round(
    tmp_path: Path, dev_policy: Policy
) -> None:
    running = _start(tmp_path, max_calls_per_round=3)
    try:
        running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
        with (
            site_client(running.endpoint, dev_policy, "site-0") as site0,
            site_client(running.endpoint, dev_policy, "site-1") as site1,
        ):
            for _ in range(3):
                site0.round_info(1)
            assert _denied(lambda: site0.round_info(1)) is AccessDeniedReason.THROTTLED
            assert site1.round_info(1).config.round_id == 1  # another identity, its own budget
            site1.submit_update(make_adapter(1), round_id=1, num_examples=1)  # closes round 1
            running.rounds.open_round(round_config(2, min_clients=1, max_clients=1))
            assert site0.round_info(2).config.round_id == 2  # a new round, a new budget
    finally:
        running.stop(0.2)


def test_upload_bytes_per_round_are_limited(tmp_path: Path, dev_policy: Policy) -> None:
    running = _start(tmp_path, max_bytes_per_round=4096)
    try:
        running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
        with site_client(running.endpoint, dev_policy, "site-0") as site:
            sealed = site.seal_update(make_adapter(0), round_id=1, num_examples=1)
            assert sealed.header.ciphertext_size > 4096
            assert _denied(lambda: site.send(sealed)) is AccessDeniedReason.THROTTLED
    finally:
        running.stop(0.2)


def test_public_calls_are_rate_limited_and_refill(tmp_path: Path, dev_policy: Policy) -> None:
    running = _start(tmp_path, public_rate_per_peer=4.0, public_burst_per_peer=2)
    try:
        with FedSealClient(running.endpoint, dev_policy) as anonymous:
            anonymous.attest()
            anonymous.attest()
            assert _denied(anonymous.attest) is AccessDeniedReason.RATE_LIMITED
            time.sleep(0.4)  # 1.6 tokens back
            anonymous.attest()
    finally:
        running.stop(0.2)
    total = _start(tmp_path / "total", public_rate_total=0.01, public_burst_total=1)
    try:
        with AuditorConnection(total.endpoint, timeout=5) as auditor:
            auditor.get_checkpoint()
            with pytest.raises(AuditEndpointError, match="RESOURCE_EXHAUSTED"):
                auditor.get_checkpoint()
    finally:
        total.stop(0.2)


def test_unauthenticated_callers_get_only_the_public_calls(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0") as site:
        sealed = site.seal_update(make_adapter(0), round_id=1, num_examples=1)
    with FedSealClient(live_aggregator.endpoint, dev_policy) as anonymous:
        anonymous.attest()  # public
        connection: AggregatorConnection = anonymous._connection
        assert connection.get_checkpoint()  # public
        assert _denied(lambda: connection.get_round(1)) is AccessDeniedReason.UNAUTHENTICATED
        assert (
            _denied(lambda: connection.get_aggregate(1, wait_seconds=0)) is AccessDeniedReason.UNAUTHENTICATED
        )
        # Even a validly signed update is refused without the caller proving it is that site.
        assert _denied(lambda: connection.submit(sealed.header, sealed.chunks, timeout=10)) is (
            AccessDeniedReason.UNAUTHENTICATED
        )
    with AuditorConnection(live_aggregator.endpoint, timeout=5) as auditor:
        proof = auditor.get_inclusion_proof(0, 0, with_entry=True)
        assert proof.entry and auditor.get_consistency_proof(1, 0).checkpoint


def test_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_streams_per_identity"):
        AccessLimits(max_streams_per_identity=0)
    with pytest.raises(ConfigError, match="public_rate_per_peer"):
        AccessLimits(public_rate_per_peer=0)
