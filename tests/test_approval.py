"""The approval gate over gRPC: metrics first, no aggregate without approvals, forged or
misdirected approvals refused with named errors, refusals withhold; and crypto-erasure of a
round's spool once it closes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logfiles import log_entries

from aggregator import RunningAggregator
from aggregator._server import start_aggregator
from aggregator.enclave._spool import SpoolErasedError
from attestation import Policy
from auditor import audit_log
from client_sdk import RoundUnavailableError
from fedseal.approval import (
    Decision,
    ForgedApprovalError,
    MalformedApprovalError,
    ReplayedApprovalError,
    UnknownApproverError,
    WrongAggregateError,
    WrongRoundError,
    sign_approval,
)
from fedseal.logformat import EntryKind
from fedseal.roundconfig import ApprovalParams

ORIGIN = "fedseal.test/log"
APPROVERS = [
    Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"approver %d" % i).digest()) for i in range(3)
]
GATE = ApprovalParams(tuple(k.public_key().public_bytes_raw() for k in APPROVERS), min_approvals=2)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningAggregator]:
    agg = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin=ORIGIN,
        collectors=[simulated_collector()],
        access=access_config(),
    )
    try:
        yield agg
    finally:
        agg.stop(grace=0.5)


def _close_gated_round(running: RunningAggregator, policy: Policy, round_id: int = 1) -> bytes:
    running.rounds.open_round(round_config(round_id, approval=GATE))
    for i in range(3):
        with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=round_id, num_examples=10)
    running.rounds.wait_closed(round_id, 10.0)  # the last update's receipt comes first
    (closed,) = [
        e
        for e in log_entries(running.log.path)
        if e.kind is EntryKind.ROUND_CLOSED and e.fields["round_id"] == round_id
    ]
    assert closed.fields["approval_required"] is True
    metrics = closed.fields["metrics"]
    assert metrics["accepted"] == 3 and len(metrics["update_norms_milli"]) == 3
    return base64.b64decode(closed.fields["aggregate_digest"])


def test_aggregate_is_released_only_after_enough_valid_approvals(
    running: RunningAggregator, dev_policy: Policy
) -> None:
    digest = _close_gated_round(running, dev_policy)
    with site_client(running.endpoint, dev_policy, "site-0", timeout=20) as client:
        with pytest.raises(RoundUnavailableError, match="awaits approval"):
            client.fetch_aggregate(1, wait_seconds=0.5)

        outsider = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        with pytest.raises(UnknownApproverError):
            client.submit_approval(
                sign_approval(outsider, log_origin=ORIGIN, round_id=1, aggregate_digest=digest)
            )
        good = sign_approval(APPROVERS[0], log_origin=ORIGIN, round_id=1, aggregate_digest=digest)
        forged = type(good)(
            good.log_origin, good.round_id, good.aggregate_digest, good.decision, good.approver, bytes(64)
        )
        with pytest.raises(ForgedApprovalError):
            client.submit_approval(forged)
        with pytest.raises(WrongAggregateError):
            client.submit_approval(
                sign_approval(APPROVERS[0], log_origin=ORIGIN, round_id=1, aggregate_digest=bytes(32))
            )
        with pytest.raises(WrongRoundError):
            client._connection.submit_approval(
                1,
                sign_approval(
                    APPROVERS[0], log_origin=ORIGIN, round_id=2, aggregate_digest=digest
                ).to_bytes(),
            )
        with pytest.raises(WrongRoundError):
            client.submit_approval(
                sign_approval(APPROVERS[0], log_origin="other.log", round_id=1, aggregate_digest=digest)
            )
        with pytest.raises(MalformedApprovalError):
            client._connection.submit_approval(1, b"{}")

        first = client.submit_approval(good)
        assert (first.state, first.approvals, first.min_approvals) == ("pending", 1, 2)
        with pytest.raises(ReplayedApprovalError):
            client.submit_approval(good)
        with pytest.raises(RoundUnavailableError, match="awaits approval"):
            client.fetch_aggregate(1, wait_seconds=0.5)

        second = client.submit_approval(
            sign_approval(APPROVERS[2], log_origin=ORIGIN, round_id=1, aggregate_digest=digest)
        )
        assert second.state == "released"
        aggregate = client.fetch_aggregate(1, wait_seconds=5)
        assert hashlib.sha256(aggregate.data).digest() == digest

    kinds = [e.kind for e in log_entries(running.log.path)]
    assert kinds.count(EntryKind.APPROVAL_RECORDED) == 2 and EntryKind.AGGREGATE_RELEASED in kinds
    report = audit_log(running.log.path, dev_policy)
    assert report.findings == ()
    gate = report.rounds[0].approval
    assert gate is not None and gate["state"] == "released" and len(gate["decisions"]) == 2


def test_a_refusal_withholds_the_aggregate_for_good(running: RunningAggregator, dev_policy: Policy) -> None:
    digest = _close_gated_round(running, dev_policy)
    with site_client(running.endpoint, dev_policy, "site-0", timeout=20) as client:
        refusal = sign_approval(
            APPROVERS[1], log_origin=ORIGIN, round_id=1, aggregate_digest=digest, decision=Decision.REFUSE
        )
        assert client.submit_approval(refusal).state == "withheld"
        with pytest.raises(RoundUnavailableError, match="withheld"):
            client.fetch_aggregate(1, wait_seconds=0.5)
    kinds = [e.kind for e in log_entries(running.log.path)]
    assert EntryKind.AGGREGATE_WITHHELD in kinds and EntryKind.AGGREGATE_RELEASED not in kinds
    assert audit_log(running.log.path, dev_policy).findings == ()


def test_spooled_ciphertext_is_undecryptable_after_the_round_closes(
    running: RunningAggregator, dev_policy: Policy
) -> None:
    running.rounds.open_round(round_config(1, strategy="fedmedian"))
    for i in range(2):
        with site_client(running.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=1, num_examples=10)
    strategy = running.rounds._book.rounds[1].aggregator.strategy
    spool = strategy._spool  # type: ignore[attr-defined]
    reader = spool.reader()
    piece = spool.pieces[0]
    import torch

    out = torch.empty(piece.numel, dtype=torch.float32)
    reader.read_piece(0, piece, out)  # readable while the round is open
    torch.testing.assert_close(out, make_adapter(0)[piece.tensor].reshape(-1)[: piece.numel])
    with site_client(running.endpoint, dev_policy, "site-2", timeout=20) as client:
        client.submit_update(make_adapter(2), round_id=1, num_examples=10)  # fills it
    running.rounds.wait_aggregate(1, 10.0)  # the close runs on its own thread
    # The per-update keys are gone: the same reader, on the same slot, can no longer decrypt.
    with pytest.raises(SpoolErasedError):
        reader.read_piece(0, piece, out)
    assert spool.spooled_bytes == 0
