"""DP spend and the release gate, re-verified by the auditor's own rules.

DP: every figure of the `dp_budget` entry and of each DP round's `round_closed.dp` is
re-derived by `DpAudit` (auditor/_dpcheck.py, its own accountant calls and formulas); a
difference is an `invalid_dp_spend` finding.

The enclave checks approvals before it logs them (aggregator/_approval.py); the auditor
does not trust that, and shares no code with it but the formats (fedseal/approval.py,
fedseal/roundconfig.py). Every `approval_recorded` entry must carry an Ed25519 signature,
by a key its round config's `approval.approvers` lists, over the approval body (this
log's origin, the round id, the aggregate digest, the decision, the approver key); it
must name the aggregate of its round's `round_closed`, come while the round awaits a
decision, be the approver's only decision, and carry `approval_digest` = SHA-256 of the
approval's canonical bytes and the approver's key id. Anything else is an
`invalid_approval` finding, and the approval does not count.

`aggregate_released` needs at least `min_approvals` valid approvals (listed in order in
its `approvals`), `aggregate_withheld` a valid refusal by the approver it names; either
for another aggregate, for a round without a pending gate, or without those decisions is
an `invalid_release` finding. A round config without `min_approvals` does not decode at
all (fedseal/logschema.py): its `round_opened` is a `malformed_entry` finding, and every
approval and release of that round is then unexpected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedseal.approval import Approval, Decision, ForgedApprovalError
from fedseal.canonical import b64encode
from fedseal.logformat import LogEntry
from fedseal.logschema import (
    AggregateReleased,
    AggregateWithheld,
    ApprovalRecorded,
    DpBudgetRecorded,
    DpRoundRefused,
    RoundClosed,
)
from fedseal.roundconfig import ApprovalParams, RoundConfig
from fedseal.signed_request import key_id

from ._dpcheck import DpAudit
from ._findings import FindingKind, Findings
from ._report import as_logged

__all__ = ["ReleaseBody", "ReleaseGate"]

ReleaseBody = DpBudgetRecorded | DpRoundRefused | ApprovalRecorded | AggregateReleased | AggregateWithheld


@dataclass
class _Gate:
    params: ApprovalParams
    state: str = "not closed"  # then "pending", then "released" or "withheld"
    aggregate_digest: bytes | None = None  # its round_closed's, once closed
    metrics: dict[str, Any] | None = None
    decided: set[bytes] = field(default_factory=set)  # approver keys with a decision entry
    approved: list[str] = field(default_factory=list)  # key ids of valid approvals, in order
    refused: list[str] = field(default_factory=list)  # key ids of valid refusals
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def decided_already(self) -> bool:
        """The enclave must have released or withheld by now (no decision is expected)."""
        return bool(self.refused) or len(self.approved) >= self.params.min_approvals

    def summary(self) -> dict[str, Any]:
        return {
            "params": as_logged(self.params.to_json_obj()),
            "decisions": list(self.decisions),
            "state": self.state,
            "metrics": self.metrics,
        }


@dataclass
class _Dp:
    params: dict[str, Any]
    budget: dict[str, Any] | None
    spend: dict[str, Any] | None = None
    config: RoundConfig | None = None

    def summary(self) -> dict[str, Any]:
        return {"params": self.params, "budget": self.budget, "spend": self.spend}


class ReleaseGate:
    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.dp_budget: dict[str, Any] | None = None
        self._dp: dict[int, _Dp] = {}
        self._dp_audit = DpAudit()
        self._gates: dict[int, _Gate] = {}

    def dp_summary(self, round_id: int) -> dict[str, Any] | None:
        dp = self._dp.get(round_id)
        return dp.summary() if dp is not None else None

    def approval_summary(self, round_id: int) -> dict[str, Any] | None:
        gate = self._gates.get(round_id)
        return gate.summary() if gate is not None else None

    # ------------------------------------------------------------------ from the round story
    def opened(self, round_id: int, config: RoundConfig, *, line: int = 0, index: int = 0) -> None:
        if config.dp is not None:
            self._dp[round_id] = _Dp(as_logged(config.dp.to_json_obj()), self.dp_budget, config=config)
            self._invalid_dp(index, line, self._dp_audit.round_opened(config))
        if config.approval is not None:
            self._gates[round_id] = _Gate(config.approval)

    def closed(
        self,
        round_id: int,
        body: RoundClosed,
        inconsistent: Callable[[str], None],
        *,
        line: int = 0,
        index: int = 0,
    ) -> None:
        dp = self._dp.get(round_id)
        if dp is not None:
            if body.dp is None:
                inconsistent(f"round {round_id} has a DP config but its round_closed records no DP spend")
            dp.spend = dict(body.dp) if body.dp is not None else None
            if body.dp is not None and dp.config is not None:
                self._invalid_dp(
                    index, line, self._dp_audit.round_closed(dp.config, body.dp, len(body.participants))
                )
        elif body.dp is not None:
            inconsistent(f"round {round_id} has no DP config but its round_closed records a DP spend")
        gate = self._gates.get(round_id)
        if gate is None:
            if body.approval_required is True:
                inconsistent(
                    f"round {round_id} has no approval gate but its round_closed withholds the aggregate"
                )
            return
        if body.approval_required is not True:
            inconsistent(f"round {round_id} requires approval but its round_closed does not say so")
        gate.state = "pending"
        gate.aggregate_digest = body.aggregate_digest
        gate.metrics = dict(body.metrics) if body.metrics is not None else None

    # ------------------------------------------------------------------ release entries
    def entry(self, entry: LogEntry, body: ReleaseBody, line: int, origin: str) -> None:
        """One DP or release entry of the log whose origin is `origin`."""
        if isinstance(body, DpBudgetRecorded):
            if self.dp_budget is not None:
                self.findings.add(
                    FindingKind.INCONSISTENT_ROUND,
                    line,
                    entry.index,
                    f"line {line}: a second dp_budget entry: a job has one DP budget",
                )
            self.dp_budget = dict(body.budget)
            self._invalid_dp(entry.index, line, self._dp_audit.budget_entry(body.budget))
        elif isinstance(body, ApprovalRecorded):
            self._approval(entry.index, body, line, origin)
        elif isinstance(body, AggregateReleased):
            self._released(entry.index, body, line)
        elif isinstance(body, AggregateWithheld):
            self._withheld(entry.index, body, line)
        # dp_round_refused: a round that never opened; nothing in the story depends on it.

    def _approval(self, index: int, body: ApprovalRecorded, line: int, origin: str) -> None:
        rid = body.round_id
        where = f"line {line}: approval_recorded entry {index} (round {rid})"

        def invalid(reason: str, message: str) -> None:
            # `reason` is the name fedseal/approval.py gives the same refusal.
            self.findings.add(FindingKind.INVALID_APPROVAL, line, index, f"{where}: [{reason}] {message}")

        gate = self._gates.get(rid)
        if gate is None or gate.state != "pending" or gate.decided_already:
            state = "has no approval gate" if gate is None else f"is {gate.state}"
            if gate is not None and gate.state == "pending":
                state = "has its decision already"
            invalid("approval_not_expected", f"the round {state}: no decision is expected")
            return
        approval = Approval(origin, rid, body.aggregate_digest, body.decision, body.approver, body.signature)
        problems = []
        if body.approver not in gate.params.approvers:
            problems.append(
                ("unknown_approver", f"key {key_id(body.approver)} is not an approver in the round config")
            )
        try:
            approval.verify_signature()
        except ForgedApprovalError:
            problems.append(
                (
                    "forged_approval",
                    "the signature does not verify under the approver key over this log's origin, "
                    "the round id, the aggregate digest and the decision",
                )
            )
        if body.aggregate_digest != gate.aggregate_digest:
            problems.append(("wrong_aggregate", "it names another aggregate than the round's round_closed"))
        if body.approver in gate.decided:
            problems.append(("replayed_approval", f"approver {key_id(body.approver)} already decided"))
        if body.approval_digest != hashlib.sha256(approval.to_bytes()).digest():
            problems.append(("malformed_approval", "approval_digest is not the SHA-256 of the approval"))
        if body.approver_key_id != key_id(body.approver):
            problems.append(("malformed_approval", "approver_key_id is not the id of the approver key"))
        for reason, message in problems:
            invalid(reason, message)
        gate.decided.add(body.approver)
        valid = not problems
        if valid and body.decision is Decision.APPROVE:
            gate.approved.append(body.approver_key_id)
        elif valid:
            gate.refused.append(body.approver_key_id)
        gate.decisions.append(
            {
                "index": index,
                "approver": b64encode(body.approver),
                "key_id": body.approver_key_id,
                "decision": body.decision.value,
                "valid": valid,
            }
        )

    def _pending_gate(self, index: int, round_id: int, what: str, digest: bytes, line: int) -> _Gate | None:
        gate = self._gates.get(round_id)
        if gate is None or gate.state != "pending":
            state = "has no approval gate" if gate is None else f"is {gate.state}"
            self._invalid_release(index, line, f"{what} for round {round_id}, which {state}")
            return None
        if digest != gate.aggregate_digest:
            self._invalid_release(
                index, line, f"{what} for round {round_id} names another aggregate than its round_closed"
            )
        return gate

    def _released(self, index: int, body: AggregateReleased, line: int) -> None:
        rid = body.round_id
        gate = self._pending_gate(index, rid, "aggregate_released", body.aggregate_digest, line)
        if gate is None:
            return
        needed = gate.params.min_approvals
        if len(gate.approved) < needed:
            self._invalid_release(
                index,
                line,
                f"round {rid}'s aggregate released with {len(gate.approved)} valid approval(s); "
                f"its config's min_approvals is {needed}",
            )
        if list(body.approvals) != gate.approved:
            self._invalid_release(
                index,
                line,
                f"round {rid}'s release lists approvals {list(body.approvals)}; the valid approvals "
                f"recorded before it are {gate.approved}",
            )
        gate.state = "released"

    def _withheld(self, index: int, body: AggregateWithheld, line: int) -> None:
        rid = body.round_id
        gate = self._pending_gate(index, rid, "aggregate_withheld", body.aggregate_digest, line)
        if gate is None:
            return
        if not gate.refused:
            self._invalid_release(index, line, f"round {rid}'s aggregate withheld without a valid refusal")
        elif body.refused_by not in gate.refused:
            self._invalid_release(
                index,
                line,
                f"round {rid}'s aggregate withheld naming {body.refused_by!r}, who did not validly refuse it",
            )
        gate.state = "withheld"

    def _invalid_dp(self, index: int, line: int, problems: list[str]) -> None:
        for message in problems:
            self.findings.add(FindingKind.INVALID_DP_SPEND, line, index, f"line {line}: {message}")

    def _invalid_release(self, index: int, line: int, message: str) -> None:
        self.findings.add(FindingKind.INVALID_RELEASE, line, index, f"line {line}: {message}")
