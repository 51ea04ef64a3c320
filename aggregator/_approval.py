"""The release gate of one round: collects signed approvals of the computed aggregate.

A gated round computes its aggregate at close and logs its digest and metrics in
`round_closed`, but serves nothing until `min_approvals` distinct approvers listed in the
round config approved that exact digest (fedseal/approval.py). Any listed approver may
refuse it instead: the aggregate is then withheld for good (a veto). Every accepted
decision is an `approval_recorded` log entry (the caller writes it); an approval that fails
verification is refused with its named error and not logged (anyone may send bytes, and
the log must not be floodable; the service logs the refusal to its own log).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import InitVar, dataclass, field

from fedseal.approval import (
    Approval,
    ApprovalNotExpectedError,
    Decision,
    ReplayedApprovalError,
    UnknownApproverError,
    WrongAggregateError,
    WrongRoundError,
)
from fedseal.roundconfig import ApprovalParams
from fedseal.signed_request import key_id

__all__ = ["ApprovalGate", "GateState", "VerifiedApproval"]

_TOKEN = object()


class GateState(enum.Enum):
    PENDING = "pending"
    RELEASED = "released"
    WITHHELD = "withheld"


@dataclass(frozen=True)
class VerifiedApproval:
    """An approval that passed every check; only `ApprovalGate.verify` makes one."""

    approval: Approval
    approver_key_id: str
    digest: bytes  # SHA-256 of the approval's bytes, as logged
    _token: InitVar[object] = None

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("VerifiedApproval is made by ApprovalGate.verify only")


@dataclass
class ApprovalGate:
    params: ApprovalParams
    log_origin: str
    round_id: int
    aggregate_digest: bytes
    approved: list[str] = field(default_factory=list)  # key ids, in order
    refused_by: str | None = None
    _decided: set[bytes] = field(default_factory=set)

    @property
    def state(self) -> GateState:
        if self.refused_by is not None:
            return GateState.WITHHELD
        if len(self.approved) >= self.params.min_approvals:
            return GateState.RELEASED
        return GateState.PENDING

    def verify(self, approval: Approval) -> VerifiedApproval:
        """Check `approval` against this round (order as in fedseal/approval.py); raises."""
        if approval.approver not in self.params.approvers:
            raise UnknownApproverError(
                f"key {key_id(approval.approver)} is not an approver of round {self.round_id}"
            )
        approval.verify_signature()
        if approval.log_origin != self.log_origin or approval.round_id != self.round_id:
            raise WrongRoundError(
                f"the approval is for round {approval.round_id} of another log or round; this is "
                f"round {self.round_id}"
            )
        if approval.aggregate_digest != self.aggregate_digest:
            raise WrongAggregateError(
                f"the approval names another aggregate than round {self.round_id}'s "
                "(see its round_closed entry)"
            )
        if approval.approver in self._decided:
            raise ReplayedApprovalError(
                f"approver {key_id(approval.approver)} has already decided on round {self.round_id}"
            )
        if self.state is not GateState.PENDING:
            raise ApprovalNotExpectedError(
                f"round {self.round_id}'s aggregate was already {self.state.value}"
            )
        return VerifiedApproval(
            approval, key_id(approval.approver), hashlib.sha256(approval.to_bytes()).digest(), _TOKEN
        )

    def record(self, verified: VerifiedApproval) -> GateState:
        """Count a verified decision (after its log entry is written); the new state."""
        self._decided.add(verified.approval.approver)
        if verified.approval.decision is Decision.REFUSE:
            self.refused_by = verified.approver_key_id
        else:
            self.approved.append(verified.approver_key_id)
        return self.state
