"""Release approvals: what an approver signs to let a round's aggregate out (or to refuse it).

A round config with an `approval` section (`fedseal.roundconfig.ApprovalParams`) makes the
enclave withhold the aggregate it computed until `min_approvals` of the listed keys
approved it. An approval names the exact aggregate, so it cannot be moved to another
round, another job or another aggregate. Wire form, RFC 8785 canonical JSON in UTF-8::

    {
      "body": {
        "aggregate_digest": "<base64 SHA-256 of the aggregate's safetensors bytes>",
        "approver":         "<base64 raw Ed25519 public key, listed in the round config>",
        "decision":         "approve" | "refuse",
        "log_origin":       "<the audit log's origin line>",
        "round_id":         3
      },
      "format":    "fedseal-approval/v1",
      "signature": "<base64 Ed25519 over APPROVAL_DOMAIN || canonical(body)>"
    }

The aggregate digest and the participants are in the round's `round_closed` log entry,
with the metrics the approver decides on. Verification (aggregator/_approval.py) raises one
of the named errors below, in this order: malformed, unknown approver, forged signature,
wrong round (origin or round id), wrong aggregate, replayed (that approver already decided).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseal.canonical import b64decode_canonical, b64encode, canonical_json, parse_canonical
from fedseal.errors import FedSealError, FormatError

__all__ = [
    "APPROVAL_DOMAIN",
    "APPROVAL_ERRORS",
    "APPROVAL_FORMAT",
    "APPROVAL_REFUSED_METADATA_KEY",
    "MAX_APPROVAL_BYTES",
    "Approval",
    "ApprovalError",
    "ApprovalNotExpectedError",
    "Decision",
    "ForgedApprovalError",
    "MalformedApprovalError",
    "ReplayedApprovalError",
    "UnknownApproverError",
    "WrongAggregateError",
    "WrongRoundError",
    "sign_approval",
]

APPROVAL_FORMAT = "fedseal-approval/v1"
APPROVAL_DOMAIN = b"fedseal/approval/v1\n"
MAX_APPROVAL_BYTES = 4096
# Trailing metadata of a refused SubmitApproval: the error's one-word `reason`.
APPROVAL_REFUSED_METADATA_KEY = "fedseal-approval-refused"
_BODY_FIELDS = frozenset({"aggregate_digest", "approver", "decision", "log_origin", "round_id"})


class ApprovalError(FedSealError):
    """Root of approval refusals; `reason` is the one-word name the service reports."""

    reason = "bad_approval"


class MalformedApprovalError(ApprovalError, FormatError):
    reason = "malformed_approval"


class UnknownApproverError(ApprovalError):
    """The signing key is not among the round config's approvers."""

    reason = "unknown_approver"


class ForgedApprovalError(ApprovalError):
    """The signature does not verify under the approver key the approval names."""

    reason = "forged_approval"


class WrongRoundError(ApprovalError):
    """The approval is for another round (or another log)."""

    reason = "wrong_round"


class WrongAggregateError(ApprovalError):
    """The approval names another aggregate than the one this round computed."""

    reason = "wrong_aggregate"


class ReplayedApprovalError(ApprovalError):
    """This approver has already decided on this round; one decision per key."""

    reason = "replayed_approval"


class ApprovalNotExpectedError(ApprovalError):
    """The round does not await approval (no gate, not closed yet, or already decided)."""

    reason = "approval_not_expected"


# reason -> error class, so the client raises what the aggregator raised.
APPROVAL_ERRORS: dict[str, type[ApprovalError]] = {
    cls.reason: cls
    for cls in (
        MalformedApprovalError,
        UnknownApproverError,
        ForgedApprovalError,
        WrongRoundError,
        WrongAggregateError,
        ReplayedApprovalError,
        ApprovalNotExpectedError,
    )
}


class Decision(enum.Enum):
    APPROVE = "approve"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Approval:
    """A parsed (not yet verified) approval; see the module docstring."""

    log_origin: str
    round_id: int
    aggregate_digest: bytes
    decision: Decision
    approver: bytes  # raw Ed25519 public key
    signature: bytes

    def body(self) -> dict[str, Any]:
        return {
            "aggregate_digest": b64encode(self.aggregate_digest),
            "approver": b64encode(self.approver),
            "decision": self.decision.value,
            "log_origin": self.log_origin,
            "round_id": self.round_id,
        }

    def signed_message(self) -> bytes:
        return APPROVAL_DOMAIN + canonical_json(self.body())

    def to_bytes(self) -> bytes:
        return canonical_json(
            {"body": self.body(), "format": APPROVAL_FORMAT, "signature": b64encode(self.signature)}
        )

    def verify_signature(self) -> None:
        """Raise ForgedApprovalError unless the signature verifies under `approver`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.approver).verify(self.signature, self.signed_message())
        except (InvalidSignature, ValueError):
            raise ForgedApprovalError(
                "the approval's signature does not verify under its approver key"
            ) from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Approval:
        if len(data) > MAX_APPROVAL_BYTES:
            raise MalformedApprovalError(f"an approval is at most {MAX_APPROVAL_BYTES} bytes")
        try:
            obj = parse_canonical(data, what="approval")
            if not isinstance(obj, dict) or set(obj) != {"body", "format", "signature"}:
                raise FormatError("approval must be an object with 'body', 'format', 'signature'")
            if obj["format"] != APPROVAL_FORMAT:
                raise FormatError(f"approval format must be {APPROVAL_FORMAT!r}")
            body = obj["body"]
            if not isinstance(body, dict) or set(body) != _BODY_FIELDS:
                raise FormatError(f"approval body must have exactly {sorted(_BODY_FIELDS)}")
            round_id, origin = body["round_id"], body["log_origin"]
            if isinstance(round_id, bool) or not isinstance(round_id, int) or round_id < 1:
                raise FormatError("approval 'round_id' must be a positive integer")
            if not isinstance(origin, str) or not 0 < len(origin) <= 256:
                raise FormatError("approval 'log_origin' must be a non-empty string")
            try:
                decision = Decision(body["decision"])
            except ValueError:
                raise FormatError("approval 'decision' must be 'approve' or 'refuse'") from None
            return cls(
                log_origin=origin,
                round_id=round_id,
                aggregate_digest=b64decode_canonical(
                    body["aggregate_digest"], what="aggregate_digest", size=32
                ),
                decision=decision,
                approver=b64decode_canonical(body["approver"], what="approver", size=32),
                signature=b64decode_canonical(obj["signature"], what="signature", size=64),
            )
        except FormatError as exc:
            raise MalformedApprovalError(str(exc)) from None


def sign_approval(
    private_key: Ed25519PrivateKey,
    *,
    log_origin: str,
    round_id: int,
    aggregate_digest: bytes,
    decision: Decision = Decision.APPROVE,
) -> Approval:
    """An approval (or refusal) of `aggregate_digest` in round `round_id` of log `log_origin`."""
    if len(aggregate_digest) != 32:
        raise FormatError("aggregate_digest must be 32 bytes (SHA-256)")
    unsigned = Approval(
        log_origin, round_id, aggregate_digest, decision, private_key.public_key().public_bytes_raw(), b""
    )
    return Approval(
        log_origin,
        round_id,
        aggregate_digest,
        decision,
        unsigned.approver,
        private_key.sign(unsigned.signed_message()),
    )
