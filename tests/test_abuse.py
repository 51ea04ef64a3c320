"""Anonymous callers cannot stall enrolled sites (issue 18, items 1 and 2). Loopback only, bounded.

1. Silent calls: 48 unauthenticated calls open and never send their request (more than the
   server's 16 worker threads). Enrolled sites must still complete their round in normal
   time; the silent calls end (refused at once beyond the anonymous slots, cancelled at the
   receive deadline within them).
2. Attestation flood: anonymous GetAttestation calls exhaust the public budget; enrolled
   sites' attestation is authenticated, charged to their own budget, and their round
   completes. The SDK attests once per round and channel, not before every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import access_config, make_adapter, round_config, site_client, start_test_aggregator

from aggregator import AccessLimits, RunningAggregator
from attestation import Policy
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal.tls import pinned_channel, probe_server_certificate

SITES = ("site-0", "site-1", "site-2")
ROUND_SECONDS = 20.0  # an honest round of three small updates takes well under this here


def _start(tmp_path: Path, limits: AccessLimits | None = None) -> RunningAggregator:
    return start_test_aggregator(tmp_path, access_config(limits))


def _round(running: RunningAggregator, policy: Policy) -> float:
    """Three enrolled sites submit concurrently; seconds until all hold receipts."""
    running.rounds.open_round(round_config(1))
    started = time.monotonic()

    def submit(n: int) -> None:
        with site_client(running.endpoint, policy, SITES[n], timeout=ROUND_SECONDS) as client:
            client.submit_update(make_adapter(n), round_id=1, num_examples=10, retries=0)

    with ThreadPoolExecutor(len(SITES)) as pool:
        for future in [pool.submit(submit, n) for n in range(len(SITES))]:
            future.result()
    return time.monotonic() - started


def test_silent_unauthenticated_calls_do_not_stall_enrolled_sites(tmp_path: Path, dev_policy: Policy) -> None:
    running = _start(tmp_path)
    channel = pinned_channel(running.endpoint, probe_server_certificate(running.endpoint))
    release = threading.Event()

    def never_send() -> Iterator[pb.AttestationRequest]:
        release.wait()
        return
        yield  # a generator that yields nothing until released

    silent = [
        channel.stream_unary(
            f"/fedseal.v1.Aggregator/{method}",
            request_serializer=pb.AttestationRequest.SerializeToString,
            response_deserializer=pb.AttestationResponse.FromString,
        ).future(never_send())
        for method in ("GetAttestation", "GetRound", "GetCheckpoint") * 16
    ]
    try:
        time.sleep(0.5)  # let them all reach the server and take what they can
        assert _round(running, dev_policy) < ROUND_SECONDS
        # Refused at once or cancelled at the receive deadline: none is still pinned.
        refused = sum(1 for f in silent if f.done())
        assert refused >= len(silent) - 4, f"only {refused} of {len(silent)} silent calls ended"
        for future in silent:
            if future.done():
                assert future.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNAUTHENTICATED,
                )
    finally:
        release.set()
        for future in silent:
            future.cancel()  # type: ignore[no-untyped-call]
        channel.close()
        running.stop(grace=0.5)


def test_an_attestation_flood_does_not_lock_out_enrolled_sites(tmp_path: Path, dev_policy: Policy) -> None:
    # One peer with a high per-address limit stands for many addresses at theirs: together
    # they exhaust the overall public budget (5 calls/s here).
    limits = AccessLimits(
        public_rate_per_peer=10_000, public_burst_per_peer=10_000, public_rate_total=5, public_burst_total=5
    )
    running = _start(tmp_path, limits)
    channel = pinned_channel(running.endpoint, probe_server_certificate(running.endpoint))
    attest = channel.unary_unary(
        "/fedseal.v1.Aggregator/GetAttestation",
        request_serializer=pb.AttestationRequest.SerializeToString,
        response_deserializer=pb.AttestationResponse.FromString,
    )
    stop = threading.Event()
    counts: dict[str, int] = {}

    def flood() -> None:
        while not stop.is_set():
            try:
                attest(pb.AttestationRequest(challenge=bytes(32)), timeout=5)
                outcome = "served"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            counts[outcome] = counts.get(outcome, 0) + 1

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(0.5)
        assert _round(running, dev_policy) < ROUND_SECONDS
        # The flood did hit the public limit (else the test proves nothing), and nothing else.
        assert counts.get("RESOURCE_EXHAUSTED", 0) > 0, counts
        assert set(counts) <= {"served", "RESOURCE_EXHAUSTED"}, counts
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
        channel.close()
        running.stop(grace=0.5)


def test_the_sdk_attests_once_per_round_and_channel(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    registry = live_aggregator.rounds.metrics.registry

    def attestations() -> float:
        value = registry.get_sample_value("fedseal_attestation_requests_total", {"outcome": "ok"})
        return value or 0.0

    before = attestations()
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
        client.round_info(1)
        client.submit_update(make_adapter(0), round_id=1, num_examples=1)
        client.fetch_aggregate(1, wait_seconds=10)
        assert attestations() - before == 1
        client.round_info(0)  # another round id (0: the current one): a fresh challenge
        assert attestations() - before == 2
        client.reconnect()  # a new channel: attest again
        client.fetch_aggregate(1)
        assert attestations() - before == 3


@pytest.mark.parametrize("method", ["GetRound", "GetAggregate"])
def test_a_bad_call_token_is_refused_before_the_request_is_read(
    live_aggregator: RunningAggregator, method: str
) -> None:
    channel = pinned_channel(live_aggregator.endpoint, probe_server_certificate(live_aggregator.endpoint))
    release = threading.Event()

    def never_send() -> Iterator[pb.GetRoundRequest]:
        release.wait()
        return
        yield

    call = channel.stream_unary(
        f"/fedseal.v1.Aggregator/{method}",
        request_serializer=pb.GetRoundRequest.SerializeToString,
        response_deserializer=pb.RoundInfo.FromString,
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            call(never_send(), metadata=(("fedseal-call-auth-bin", b"garbage"),), timeout=10)
        assert info.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        release.set()
        channel.close()
