"""One well-formed body of every log entry kind, for schema and auditor corpus tests."""

from __future__ import annotations

import hashlib

from conftest import round_config

from fedseal.approval import Decision
from fedseal.logschema import (
    AggregateReleased,
    AggregateWithheld,
    ApprovalRecorded,
    DpBudgetRecorded,
    DpRoundRefused,
    EnclaveStarted,
    EnrolmentCause,
    EnrolmentRecorded,
    EntryBody,
    EntryKind,
    FailureCause,
    LoraResidual,
    OperatorAction,
    PrincipalRecord,
    PrincipalsRecorded,
    RejectReason,
    RevocationListLoaded,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    TornTailDropped,
    UpdateAccepted,
    UpdateRejected,
)
from fedseal.roundconfig import ApprovalParams


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def sample_bodies() -> dict[EntryKind, EntryBody]:
    config = round_config(2, approval=ApprovalParams((_digest("approver"),), 1))
    bodies: list[EntryBody] = [
        EnclaveStarted(
            log_origin="fedseal.test/log",
            hpke_public_key=_digest("hpke"),
            log_public_key=_digest("log"),
            evidence_bundle=b"{}",
            evidence_digest=_digest("{}"),
            challenge=_digest("challenge"),
            insecure_simulated=True,
            previous_checkpoint="fedseal.test/log\n1\nAAAA\n\n- sig\n",
        ),
        RoundOpened(
            round_id=2,
            config=config,
            config_digest=config.digest(),
            round_public_key=_digest("round key"),
            round_key_signature=bytes(range(64)),
        ),
        UpdateAccepted(
            round_id=2,
            client_id="site-a",
            ciphertext_digest=_digest("ct"),
            ciphertext_size=4096,
            num_examples=12,
            adapter_spec_digest=config.adapter_spec.digest(),
            idempotency_key_digest=_digest("idem"),
            key_id="site-a-key",
            signature=bytes(64),
            protocol_version=2,
            hpke_suite=1,
            challenge=_digest("c"),
            chunk_size=4096,
            base_round_id=1,
            staleness=0,
        ),
        UpdateRejected(round_id=2, client_id="site-b", reason=RejectReason.TAMPERED, detail="tag mismatch"),
        RoundClosed(
            round_id=2,
            strategy="lora-exact",
            participants=("site-a",),
            total_examples=12,
            aggregate_digest=_digest("agg"),
            aggregate_size=100,
            strategy_params={"rank": 8},
            metrics={"accepted": 1, "rejected": 1},
            approval_required=True,
            lora_residuals=(LoraResidual("layers.0.q_proj", 8, 8, 0.0),),
        ),
        RoundFailed(round_id=3, reason="quorum", accepted=0, cause=FailureCause.QUORUM_NOT_REACHED),
        TornTailDropped(offset=10, dropped_bytes=5, dropped_digest=_digest("tail"), dropped_lines=0),
        EnrolmentRecorded(
            enrolment={"format": "x", "version": 1},
            enrolment_digest=_digest("enrol"),
            version=1,
            cause=EnrolmentCause.START,
        ),
        PrincipalsRecorded(
            principals=(PrincipalRecord("ops", "operator", _digest("ops")),),
            principals_digest=_digest("principals"),
        ),
        OperatorAction(
            action="open_round",
            signer="ops",
            role="operator",
            key_id="ops-key",
            request={"action": "open_round"},
            signature=bytes(64),
            request_digest=_digest("req"),
        ),
        RevocationListLoaded(
            issuer="CN=ca", crl_number=3, crl_digest=_digest("crl"), revoked=1, next_update="2027-01-01"
        ),
        DpBudgetRecorded(round_id=2, budget={"noise_multiplier": 1.5}),
        DpRoundRefused(round_id=4, reason="over budget"),
        ApprovalRecorded(
            round_id=2,
            approver=_digest("approver"),
            approver_key_id="approver-1",
            decision=Decision.APPROVE,
            aggregate_digest=_digest("agg"),
            signature=bytes(64),
            approval_digest=_digest("approval"),
        ),
        AggregateReleased(round_id=2, aggregate_digest=_digest("agg"), approvals=("approver-1",)),
        AggregateWithheld(round_id=2, aggregate_digest=_digest("agg"), refused_by="approver-1"),
    ]
    return {body.kind: body for body in bodies}
