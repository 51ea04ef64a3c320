"""The audit report: what `fedseal-audit verify` found and what the log says happened."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fedseal.canonical import canonical_json, parse_canonical
from fedseal.checkpoint import TLOG_PROOF_HEADER, Checkpoint, TlogProof
from fedseal.errors import FedSealError, FormatError
from fedseal.note import split_note

from ._bandwidth import bandwidth_summary
from ._findings import Finding

__all__ = [
    "AuditReport",
    "Handover",
    "KeySummary",
    "LogVerificationError",
    "RoundSummary",
    "TrustedCheckpoint",
    "TrustedCheckpointResult",
    "VerifiedLog",
    "as_logged",
]


@dataclass(frozen=True)
class KeySummary:
    """One link of the key chain: a log key and what its `enclave_started` entry proved."""

    entry_index: int
    line: int
    verifier_key: str
    attested: bool
    insecure: bool
    evidence_kinds: tuple[str, ...]
    failure: str
    checkpoints: int
    first_size: int | None
    last_size: int | None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "entry_index": self.entry_index,
            "line": self.line,
            "verifier_key": self.verifier_key,
            "attested": self.attested,
            "insecure": self.insecure,
            "evidence_kinds": list(self.evidence_kinds),
            "failure": self.failure,
            "checkpoints": self.checkpoints,
            "first_size": self.first_size,
            "last_size": self.last_size,
        }


@dataclass(frozen=True)
class Handover:
    """A key handover, proven: the old key's last checkpoint is a prefix of the new key's first."""

    entry_index: int
    old_key_entry: int
    new_key_entry: int
    old_size: int
    new_size: int
    old_checkpoint: str
    new_checkpoint: str
    consistency_proof: tuple[bytes, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "entry_index": self.entry_index,
            "old_key_entry": self.old_key_entry,
            "new_key_entry": self.new_key_entry,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_checkpoint": self.old_checkpoint,
            "new_checkpoint": self.new_checkpoint,
            "consistency_proof": [base64.b64encode(h).decode("ascii") for h in self.consistency_proof],
        }


@dataclass(frozen=True)
class TrustedCheckpoint:
    """A checkpoint the caller trusts (from a receipt, a witness, an earlier audit)."""

    source: str
    note: str

    @classmethod
    def from_text(cls, text: str, *, source: str) -> TrustedCheckpoint:
        """A signed checkpoint note, or a tlog-proof (a receipt) whose checkpoint is taken;
        FormatError (or NoteError) if it is neither. Its signatures are checked later,
        against the log's keys."""
        if _PRIVATE_KEY_MARK in text or _NOTE_PRIVATE_KEY_PREFIX in text:
            # A findings report would otherwise quote it as the checkpoint's text.
            raise FormatError(
                f"{source} holds a private key, not a checkpoint or a receipt (nothing of it is shown)"
            )
        if text.startswith(TLOG_PROOF_HEADER + "\n"):
            text = TlogProof.parse(text).checkpoint_note
        Checkpoint.parse_body(split_note(text)[0])
        return cls(source, text)


_PRIVATE_KEY_MARK = "PRIVATE KEY-----"  # PEM
_NOTE_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"  # a witness key file (auditor/_witness.py)


@dataclass(frozen=True)
class TrustedCheckpointResult:
    source: str
    size: int | None
    status: str  # "consistent", "fork", "rollback", "untrusted"

    def to_json_obj(self) -> dict[str, Any]:
        return {"source": self.source, "size": self.size, "status": self.status}


@dataclass(frozen=True)
class RoundSummary:
    round_id: int
    state: str  # "open", "closed", "failed", "abandoned"
    key_entry: int  # the enclave_started entry of the enclave that ran it
    strategy: str
    parameters: dict[str, Any]  # the round config without its adapter spec
    adapter_spec_digest: str
    config_digest: str
    min_clients: int
    max_clients: int
    accepted: tuple[dict[str, Any], ...]
    rejected: tuple[dict[str, Any], ...]
    participants: tuple[str, ...]
    total_examples: int
    aggregate_digest: str
    aggregate_size: int
    failure_reason: str
    failure_cause: str
    # Slots for what later log versions record; None means "not recorded by this log".
    dp: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None
    lora_residuals: tuple[dict[str, Any], ...] | None = None  # lora-exact rounds
    # The round's own HPKE key (base64), as its round_opened records it (auditor/_roundkeys.py
    # checks its signature); None: the entry records none.
    round_public_key: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "state": self.state,
            "key_entry": self.key_entry,
            "strategy": self.strategy,
            "parameters": self.parameters,
            "adapter_spec_digest": self.adapter_spec_digest,
            "config_digest": self.config_digest,
            "min_clients": self.min_clients,
            "max_clients": self.max_clients,
            "accepted": list(self.accepted),
            "rejected": list(self.rejected),
            "participants": list(self.participants),
            "total_examples": self.total_examples,
            "aggregate_digest": self.aggregate_digest,
            "aggregate_size": self.aggregate_size,
            "failure_reason": self.failure_reason,
            "failure_cause": self.failure_cause,
            "dp": self.dp,
            "approval": self.approval,
            "lora_residuals": list(self.lora_residuals) if self.lora_residuals is not None else None,
            "round_public_key": self.round_public_key,
        }


@dataclass(frozen=True)
class AuditReport:
    path: str
    policy_name: str
    log_origin: str
    audited_at: str
    entries: int
    checkpoints_verified: int
    root_hash: bytes
    latest_checkpoint: str | None  # the largest verified checkpoint of the log
    insecure_simulated: bool
    keys: tuple[KeySummary, ...]
    handovers: tuple[Handover, ...]
    tail_drops: tuple[dict[str, Any], ...]  # torn tails a resuming enclave cut (its entries)
    rounds: tuple[RoundSummary, ...]
    trusted: tuple[TrustedCheckpointResult, ...]
    findings: tuple[Finding, ...]
    # Identity and access: every signed operator action and every enrolment recorded.
    operator_actions: tuple[dict[str, Any], ...] = ()
    enrolments: tuple[dict[str, Any], ...] = ()

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "policy": self.policy_name,
            "log_origin": self.log_origin,
            "audited_at": self.audited_at,
            "entries": self.entries,
            "checkpoints_verified": self.checkpoints_verified,
            "root_hash": base64.b64encode(self.root_hash).decode("ascii"),
            "latest_checkpoint": self.latest_checkpoint,
            "insecure_simulated": self.insecure_simulated,
            "verdict": "verified" if not self.findings else "FAILED",
            "keys": [k.to_json_obj() for k in self.keys],
            "handovers": [h.to_json_obj() for h in self.handovers],
            "tail_drops": list(self.tail_drops),
            "rounds": [r.to_json_obj() for r in self.rounds],
            "bandwidth": bandwidth_summary(self.rounds),
            "trusted_checkpoints": [t.to_json_obj() for t in self.trusted],
            "operator_actions": list(self.operator_actions),
            "enrolments": list(self.enrolments),
            "findings": [f.to_json_obj() for f in self.findings],
        }


class LogVerificationError(FedSealError):
    """The log did not verify; `report.findings` lists every problem found."""

    def __init__(self, report: AuditReport) -> None:
        first = report.findings[0]
        more = f" (and {len(report.findings) - 1} more)" if len(report.findings) > 1 else ""
        super().__init__(f"{report.path}: [{first.kind.value}] {first.message}{more}")
        self.report = report


@dataclass(frozen=True)
class VerifiedLog:
    """A log with no finding: every entry is covered by a valid checkpoint of an attested key."""

    report: AuditReport


def as_logged(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as its canonical JSON reads back (8.0 is written 8): the values the log shows."""
    value = parse_canonical(canonical_json(obj), what="report")
    assert isinstance(value, dict)
    return value
