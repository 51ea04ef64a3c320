"""One confidential round over real gRPC (attested TLS) on loopback: honest sites, attackers, audit.

Every refusal below must (1) raise a specific UpdateRejectedError at the client, (2) leave
the round open for the honest clients, and (3) appear in the audit log, which must still
verify. The aggregate must equal the weighted mean of exactly the honest updates. The
attackers here are enrolled sites (an unenrolled caller never gets this far; see
test_identity.py): every forged header is re-signed with the sending site's own key, so
what is tested is what the enclave checks beyond the signature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import ADAPTER_SHAPES, adapter_spec, make_adapter, round_config, site_client
from identities import site_identity

from aggregator import RunningAggregator
from attestation import (
    BindingMismatchError,
    Policy,
    SimulatedEvidenceRefusedError,
    load_builtin_policy,
    verify_bundle,
)
from auditor import audit_log
from client_sdk import FedSealClient, SealedSubmission, UpdateRejectedError
from client_sdk._transport import AggregatorConnection
from fedseal.logformat import EntryKind, LogEntry, RejectReason, decode_record
from fedseal.receipt import verify_receipt
from fedseal.spec import WireDtype

DEV = load_builtin_policy("dev-insecure-allow-simulated")


def _send_raw(
    endpoint: str,
    sub: SealedSubmission,
    chunks: Iterable[bytes] | None = None,
    **header_changes: object,
) -> str:
    """Send `sub` with its header changed, as the site the changed header names: signed by
    that site's key, over a channel authenticated as that site."""
    header = dataclasses.replace(sub.header, **header_changes)  # type: ignore[arg-type]
    identity = site_identity(header.client_id)
    header = dataclasses.replace(header, key_id=identity.key_id).sign(identity.signing_key)
    with FedSealClient(endpoint, DEV, identity=identity, timeout=10) as client:
        client.attest()  # binds the channel, so that calls carry the site's call token
        return client._connection.submit(header, sub.chunks if chunks is None else chunks, timeout=10)


def _expect_reject(
    reason: RejectReason,
    endpoint: str,
    sub: SealedSubmission,
    chunks: tuple[bytes, ...] | None = None,
    **header_changes: object,
) -> None:
    with pytest.raises(UpdateRejectedError) as info:
        _send_raw(endpoint, sub, chunks, **header_changes)
    assert info.value.reason is reason, str(info.value)


def _log_entries(path: Path) -> list[LogEntry]:
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            entries.append(record.entry)
    return entries


def _weighted_mean(seeds_and_weights: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    total = sum(w for _, w in seeds_and_weights)
    out = {name: torch.zeros(shape) for name, shape in ADAPTER_SHAPES.items()}
    for seed, weight in seeds_and_weights:
        for name, value in make_adapter(seed).items():
            out[name] += value * weight
    return {name: value / total for name, value in out.items()}


def test_honest_round_end_to_end(live_aggregator: RunningAggregator, dev_policy: Policy) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    receipts = []
    for i, n in enumerate([10, 30, 60]):
        with site_client(live_aggregator.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
            receipt = client.submit_update(make_adapter(i), round_id=1, num_examples=n)
            assert receipt.entry.kind is EntryKind.UPDATE_ACCEPTED
            assert receipt.entry.fields["client_id"] == f"site-{i}"
            assert receipt.entry.fields["key_id"] == site_identity(f"site-{i}").key_id
            receipts.append(receipt)
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
        aggregate = client.fetch_aggregate(1, wait_seconds=10)

    assert aggregate.manifest.participants == ("site-0", "site-1", "site-2")
    assert aggregate.manifest.total_examples == 100
    expected = _weighted_mean([(0, 10), (1, 30), (2, 60)])
    got = aggregate.tensors()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)

    # Receipts stay valid against the final log; the audit sees one closed round.
    report = audit_log(live_aggregator.log.path, dev_policy)
    assert report.findings == ()
    (summary,) = report.rounds
    assert summary.state == "closed"
    assert [a["client_id"] for a in summary.accepted] == ["site-0", "site-1", "site-2"]
    digest = hashlib.sha256(aggregate.data).digest()
    import base64

    assert summary.aggregate_digest == base64.b64encode(digest).decode()


def test_every_attack_is_refused_and_the_round_goes_on(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    endpoint = live_aggregator.endpoint
    live_aggregator.rounds.open_round(round_config(1))
    with contextlib.ExitStack() as stack:
        sites = {
            name: stack.enter_context(site_client(endpoint, dev_policy, name, timeout=20))
            for name in ("site-0", "site-1", "site-2", "site-3")
        }
        client = sites["site-0"]
        honest = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
        other = sites["site-1"].seal_update(make_adapter(1), round_id=1, num_examples=30)
        assert len(honest.chunks) >= 3, "the test adapter must span several chunks"

        # Tampered chunk: one bit flipped in the middle of the stream.
        flipped = bytearray(honest.chunks[1])
        flipped[7] ^= 0x01
        _expect_reject(
            RejectReason.TAMPERED,
            endpoint,
            honest,
            honest.chunks[:1] + (bytes(flipped),) + honest.chunks[2:],
        )
        # Reordered and duplicated chunks.
        _expect_reject(
            RejectReason.TAMPERED,
            endpoint,
            honest,
            (honest.chunks[1], honest.chunks[0]) + honest.chunks[2:],
        )
        _expect_reject(
            RejectReason.TAMPERED,
            endpoint,
            honest,
            (honest.chunks[0], honest.chunks[0]) + honest.chunks[2:],
        )
        # Truncated stream: the final chunk is dropped, with and without a matching header.
        _expect_reject(RejectReason.TRUNCATED, endpoint, honest, honest.chunks[:-1])
        _expect_reject(
            RejectReason.TRUNCATED,
            endpoint,
            honest,
            honest.chunks[:-1],
            ciphertext_size=sum(len(c) for c in honest.chunks[:-1]),
        )
        # Wrong round: the round does not exist; and a header relabelled to another round.
        _expect_reject(RejectReason.UNKNOWN_ROUND, endpoint, honest, round_id=7)
        # Cross-client splice: site-0's header with site-1's chunks, and site-1 passing
        # site-0's wrapped key off as its own (under its own signature).
        _expect_reject(RejectReason.TAMPERED, endpoint, honest, other.chunks)
        _expect_reject(RejectReason.UNWRAP_FAILED, endpoint, honest, client_id="site-1")
        # Inflated example count (a weight the client did not seal).
        _expect_reject(RejectReason.UNWRAP_FAILED, endpoint, honest, num_examples=10_000)
        # Spec mismatch, caught at the header: a digest of another spec.
        _expect_reject(
            RejectReason.SPEC_MISMATCH,
            endpoint,
            honest,
            adapter_spec_digest=adapter_spec(WireDtype.BFLOAT16).digest(),
        )
        # Oversize: a declared size beyond what the spec allows, and an oversized chunk.
        _expect_reject(RejectReason.OVERSIZE, endpoint, honest, ciphertext_size=10**9)
        _expect_reject(
            RejectReason.OVERSIZE,
            endpoint,
            honest,
            (honest.chunks[0] + b"\0" * 64,) + honest.chunks[1:],
        )

        # Lies inside a well-sealed payload: right spec digest, wrong content.
        spec_digest = adapter_spec().digest()
        bad_shape = make_adapter(2)
        bad_shape["layers.0.q_proj.lora_A.weight"] = torch.zeros(8, 63)
        sub = sites["site-2"].seal_payload(
            safetensors.torch.save(bad_shape),
            round_id=1,
            num_examples=5,
            adapter_spec_digest=spec_digest,
            chunk_size=4096,
        )
        _expect_reject(RejectReason.SPEC_MISMATCH, endpoint, sub)
        with_nan = make_adapter(2)
        with_nan["layers.0.v_proj.lora_B.weight"][3, 1] = math.nan
        sub = sites["site-2"].seal_payload(
            safetensors.torch.save(with_nan),
            round_id=1,
            num_examples=5,
            adapter_spec_digest=spec_digest,
            chunk_size=4096,
        )
        _expect_reject(RejectReason.NOT_FINITE, endpoint, sub)

        # Honest site-0 now goes through; a retry with the same idempotency key gets the
        # same receipt and is counted once; a replay under a new key is a duplicate.
        first = client.send(honest)
        assert _send_raw(endpoint, honest) == first.text
        replay = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
        _expect_reject(RejectReason.DUPLICATE, endpoint, replay)

        sites["site-1"].send(other)
        sites["site-2"].submit_update(make_adapter(2), round_id=1, num_examples=60)
        aggregate = client.fetch_aggregate(1, wait_seconds=10)
        # A submission for a closed round is refused, and so is round 1's sealed update
        # relabelled for a newly opened round 2 (the round id is bound into the envelope).
        late = sites["site-3"].seal_update(make_adapter(3), round_id=1, num_examples=1)
        _expect_reject(RejectReason.ROUND_NOT_OPEN, endpoint, late)
        live_aggregator.rounds.open_round(round_config(2))
        # (Relabelled to round 1's aggregate too, the base round 2 accepts: the envelope,
        # sealed for round 1 on the initial adapter, refuses both labels.)
        _expect_reject(RejectReason.UNWRAP_FAILED, endpoint, late, round_id=2, base_round_id=1)

    # Only the honest updates count, each once.
    expected = _weighted_mean([(0, 10), (1, 30), (2, 60)])
    got = aggregate.tensors()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)

    # Every refusal is in the log with its reason, and the log verifies.
    entries = _log_entries(live_aggregator.log.path)
    reasons = [e.fields["reason"] for e in entries if e.kind is EntryKind.UPDATE_REJECTED]
    assert reasons == [
        "tampered",
        "tampered",
        "tampered",
        "truncated",
        "truncated",
        "unknown_round",
        "tampered",
        "unwrap_failed",
        "unwrap_failed",
        "spec_mismatch",
        "oversize",
        "oversize",
        "spec_mismatch",
        "not_finite",
        "duplicate",
        "round_not_open",
        "unwrap_failed",
    ]
    accepted = [e for e in entries if e.kind is EntryKind.UPDATE_ACCEPTED]
    assert [e.fields["client_id"] for e in accepted] == ["site-0", "site-1", "site-2"]
    report = audit_log(live_aggregator.log.path, dev_policy)
    assert report.findings == ()


def test_default_policy_refuses_simulated_evidence_and_sends_nothing(
    live_aggregator: RunningAggregator, default_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    size_before = live_aggregator.log.size
    with (
        site_client(live_aggregator.endpoint, default_policy, "site-0") as client,
        pytest.raises(SimulatedEvidenceRefusedError),
    ):
        client.submit_update(make_adapter(0), round_id=1, num_examples=1)
    # Nothing reached the aggregator: no accepted or rejected entry was written.
    assert live_aggregator.log.size == size_before


def test_dev_policy_accepts_simulated_evidence_and_marks_it_insecure(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    with FedSealClient(live_aggregator.endpoint, dev_policy) as client:
        attested = client.attest()
    assert attested.insecure
    assert attested.log_public_key == live_aggregator.keys.bound.log_public_key


def test_evidence_bound_to_another_challenge_is_refused(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    # A man in the middle replays evidence the enclave produced for someone else's challenge.
    with AggregatorConnection(live_aggregator.endpoint) as conn:
        bundle = conn.get_attestation(b"\x01" * 32)  # the one call an unbound channel makes
    with pytest.raises(BindingMismatchError):
        verify_bundle(bundle, dev_policy, b"\x02" * 32)


def test_receipt_does_not_verify_under_another_key(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedseal.errors import ReceiptError

    live_aggregator.rounds.open_round(round_config(1))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0") as client:
        receipt = client.submit_update(make_adapter(0), round_id=1, num_examples=1)
    with pytest.raises(ReceiptError):
        verify_receipt(receipt.text, Ed25519PrivateKey.generate().public_key())
    tampered = receipt.text.replace("index ", "index 1", 1)
    with pytest.raises(ReceiptError):
        verify_receipt(tampered, live_aggregator.keys.bound.log_public_key)


def test_round_below_min_clients_fails_at_deadline_and_publishes_nothing(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    from client_sdk import RoundUnavailableError

    live_aggregator.rounds.open_round(round_config(1, min_clients=2, deadline_seconds=1.0))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0") as client:
        client.submit_update(make_adapter(0), round_id=1, num_examples=1)
        with pytest.raises(RoundUnavailableError, match="failed"):
            client.fetch_aggregate(1, wait_seconds=5)
    entries = _log_entries(live_aggregator.log.path)
    assert entries[-1].kind is EntryKind.ROUND_FAILED
    assert not any(e.kind is EntryKind.ROUND_CLOSED for e in entries)


def test_round_closes_at_deadline_with_quorum(live_aggregator: RunningAggregator, dev_policy: Policy) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=2, max_clients=5, deadline_seconds=1.5))
    with site_client(live_aggregator.endpoint, dev_policy, "site-1") as other:
        other.submit_update(make_adapter(1), round_id=1, num_examples=3)
    with site_client(live_aggregator.endpoint, dev_policy, "site-0") as client:
        client.submit_update(make_adapter(0), round_id=1, num_examples=1)
        aggregate = client.fetch_aggregate(1, wait_seconds=10)
    assert aggregate.manifest.participants == ("site-0", "site-1")
    expected = _weighted_mean([(0, 1), (1, 3)])
    for name, value in expected.items():
        torch.testing.assert_close(aggregate.tensors()[name], value, rtol=1e-6, atol=1e-6)


def test_bfloat16_on_the_wire_accumulates_in_float32(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(
        round_config(1, adapter_spec=adapter_spec(WireDtype.BFLOAT16), min_clients=2, max_clients=2)
    )
    with site_client(live_aggregator.endpoint, dev_policy, "site-b") as other:
        other.submit_update(make_adapter(1), round_id=1, num_examples=1)
    with site_client(live_aggregator.endpoint, dev_policy, "site-a") as client:
        client.submit_update(make_adapter(0), round_id=1, num_examples=1)
        aggregate = client.fetch_aggregate(1, wait_seconds=10)
    for name in ADAPTER_SHAPES:
        expected = (make_adapter(0)[name].bfloat16().float() + make_adapter(1)[name].bfloat16().float()) / 2
        torch.testing.assert_close(aggregate.tensors()[name], expected, rtol=0, atol=1e-7)


def test_stalled_upload_is_cancelled_at_the_round_deadline(
    live_aggregator: RunningAggregator, dev_policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its header and then goes silent does not hold the server forever."""
    import threading
    import time

    import aggregator._intake as intake_module

    monkeypatch.setattr(intake_module, "UPLOAD_GRACE_SECONDS", 0.2)
    live_aggregator.rounds.open_round(round_config(1, deadline_seconds=1.0))
    with site_client(live_aggregator.endpoint, dev_policy, "site-9") as client:
        sub = client.seal_update(make_adapter(0), round_id=1, num_examples=1)
    release = threading.Event()

    def stalled() -> Iterator[bytes]:
        yield sub.chunks[0]
        release.wait(20)  # never sends the rest while the test runs

    started = time.monotonic()
    try:
        with pytest.raises(Exception):  # noqa: B017 - the client sees a cancelled call
            _send_raw(live_aggregator.endpoint, sub, stalled())
    finally:
        release.set()
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reasons = [
            e.fields.get("reason")
            for e in _log_entries(live_aggregator.log.path)
            if e.kind is EntryKind.UPDATE_REJECTED
        ]
        if reasons:
            break
        time.sleep(0.05)
    # The watchdog cancels the call; depending on when gRPC notices, the server sees the
    # stream cancelled or cut short. Either way it is refused and logged, nothing counted.
    assert reasons in (["cancelled"], ["truncated"])
