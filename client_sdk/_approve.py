"""`fedseal-approve`: show an approver what a gated round's aggregate is, then sign approve or refuse.

    fedseal-approve show LOG --round N
    fedseal-approve approve LOG --round N --key approver.pem --endpoint HOST:PORT --policy NAME
    fedseal-approve refuse  LOG --round N --key approver.pem --endpoint HOST:PORT --policy NAME

The brief is read from the audit log (the file the operator hands on): the round's
participants with their example counts, data card digests and validation results; the
sites' metrics the enclave aggregated (fedseal/sitemetrics.py) beside those of earlier
rounds; the DP spend and what remains of the budget; exact LoRA's residuals; refusals by
reason; and the decisions already recorded. Then the approver's Ed25519 key (PEM, PKCS#8)
signs an approval of exactly the aggregate digest shown (fedseal/approval.py), and it is
submitted over SubmitApproval to an aggregator that attested under the policy. Without
`--yes` the decision is asked for again on the terminal. Run `fedseal-audit verify` on
the log first: this command reads it, it does not audit it.

Exit status: 0 decision recorded (or brief shown), 1 the aggregator refused the decision,
2 bad input (log, round, key, policy, endpoint, timeout) or the aggregator could not be reached.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation import Policy, builtin_policy_names, load_builtin_policy
from client_sdk._client import FedSealClient
from client_sdk._errors import ClientError
from client_sdk._identity import IdentityError, _load_key
from fedseal.approval import ApprovalError, Decision, sign_approval
from fedseal.canonical import b64encode
from fedseal.cliargs import host_port, positive_seconds
from fedseal.errors import FedSealError
from fedseal.logformat import MAX_RECORD_BYTES, decode_record
from fedseal.logschema import (
    ApprovalRecorded,
    DpBudgetRecorded,
    EnclaveStarted,
    RoundClosed,
    UpdateAccepted,
    UpdateRejected,
)

__all__ = ["ApprovalBrief", "main", "read_approval_brief", "render_brief"]


class BriefError(ClientError):
    """The log cannot give a brief for that round (unreadable, or no such closed round)."""


@dataclass(frozen=True)
class SiteLine:
    client_id: str
    num_examples: int
    data_card_digest: str | None
    validation_passed: bool | None


@dataclass(frozen=True)
class ApprovalBrief:
    log_origin: str
    round_id: int
    strategy: str
    aggregate_digest: bytes
    approval_required: bool
    sites: tuple[SiteLine, ...]
    total_examples: int
    metrics: Mapping[str, float]  # this round's numbers (round_closed.metrics, flattened)
    earlier: Mapping[int, Mapping[str, float]]  # the same for earlier closed rounds
    dp: Mapping[str, Any] | None
    epsilon_budget: float | None
    lora_residuals: tuple[tuple[str, float], ...]  # (module, residual), worst first
    rejections: Mapping[str, int]  # reason -> count
    decisions: tuple[tuple[str, str], ...] = field(default=())  # (approver key id, decision)

    @property
    def epsilon_remaining(self) -> float | None:
        spent = (self.dp or {}).get("epsilon_spent")
        if self.epsilon_budget is None or not isinstance(spent, int | float):
            return None
        return self.epsilon_budget - float(spent)


def read_approval_brief(path: Path, round_id: int) -> ApprovalBrief:
    """The brief for `round_id` from the log at `path`; BriefError if there is none."""
    origin = ""
    closed: dict[int, RoundClosed] = {}
    accepted: list[UpdateAccepted] = []
    rejections: collections.Counter[str] = collections.Counter()
    decisions: list[tuple[str, str]] = []
    budget: float | None = None
    try:
        with path.open("rb") as fh:
            # Bounded reads: a line longer than any record (or a file without newlines, such
            # as /dev/zero) is refused after one record's length, not read without end.
            limit = MAX_RECORD_BYTES + 1  # a record and its newline
            for number, raw in enumerate(iter(lambda: fh.readline(limit), b""), start=1):
                if not raw.endswith(b"\n"):
                    if len(raw) == limit:
                        raise BriefError(
                            f"{path.name} line {number} is longer than a log record "
                            f"({MAX_RECORD_BYTES} bytes): not an audit log"
                        )
                    continue  # a torn tail: not an entry yet
                try:
                    entry = decode_record(raw[:-1], line_number=number).entry
                except FedSealError as exc:
                    raise BriefError(f"{path.name} line {number} is not a log record: {exc}") from None
                body = entry.body if entry is not None else None
                if isinstance(body, EnclaveStarted):
                    origin = body.log_origin
                elif isinstance(body, RoundClosed):
                    closed[body.round_id] = body
                elif isinstance(body, UpdateAccepted) and body.round_id == round_id:
                    accepted.append(body)
                elif isinstance(body, UpdateRejected) and body.round_id == round_id:
                    rejections[body.reason.value] += 1
                elif isinstance(body, ApprovalRecorded) and body.round_id == round_id:
                    decisions.append((body.approver_key_id, body.decision.value))
                elif isinstance(body, DpBudgetRecorded):
                    epsilon = (body.budget.get("params") or {}).get("epsilon")
                    budget = float(epsilon) if isinstance(epsilon, int | float) else None
    except OSError as exc:
        raise BriefError(f"cannot read the log {path}: {exc.strerror}") from None
    this = closed.get(round_id)
    if this is None:
        raise BriefError(f"the log {path.name} has no round_closed entry for round {round_id}")
    by_site = {a.client_id: a for a in accepted}
    sites = tuple(_site_line(site, by_site.get(site)) for site in this.participants)
    residuals = tuple(
        sorted(((r.module, r.residual) for r in this.lora_residuals or ()), key=lambda mr: -mr[1])
    )
    return ApprovalBrief(
        log_origin=origin,
        round_id=round_id,
        strategy=this.strategy,
        aggregate_digest=this.aggregate_digest,
        approval_required=bool(this.approval_required),
        sites=sites,
        total_examples=this.total_examples,
        metrics=_numbers(this.metrics or {}),
        earlier={rid: _numbers(c.metrics or {}) for rid, c in sorted(closed.items()) if rid < round_id},
        dp=this.dp,
        epsilon_budget=budget,
        lora_residuals=residuals,
        rejections=dict(sorted(rejections.items())),
        decisions=tuple(decisions),
    )


def render_brief(brief: ApprovalBrief) -> str:
    """The brief as text for a terminal (what the approver reads before deciding)."""
    lines = [
        f"Round {brief.round_id} of {brief.log_origin or '(unknown origin)'} ({brief.strategy})",
        f"Aggregate SHA-256: {brief.aggregate_digest.hex()}",
        "Approval required: " + ("yes" if brief.approval_required else "no (this round is not gated)"),
        "",
        f"Participants ({len(brief.sites)}, {brief.total_examples} examples):",
    ]
    for site in brief.sites:
        card = f"data card {site.data_card_digest}" if site.data_card_digest else "no data card"
        check = {None: "no validation", True: "validation passed", False: "validation FAILED"}
        lines.append(
            f"  {site.client_id}: {site.num_examples} examples, {card}, {check[site.validation_passed]}"
        )
    lines += ["", "Metrics (this round, then earlier rounds):"]
    names = sorted({*brief.metrics, *(k for m in brief.earlier.values() for k in m)})
    if not names:
        lines.append("  none logged")
    recent = list(brief.earlier.items())[-4:]
    for name in names:
        history = ", ".join(f"r{rid}={_fmt(m.get(name))}" for rid, m in recent)
        lines.append(f"  {name}: {_fmt(brief.metrics.get(name))}" + (f"   ({history})" if history else ""))
    lines += ["", "Differential privacy:"]
    if brief.dp is None:
        lines.append("  none (this round adds no noise)")
    else:
        spent = brief.dp.get("epsilon_spent")
        remaining = brief.epsilon_remaining
        lines.append(
            f"  epsilon spent {_fmt(spent)} of {_fmt(brief.epsilon_budget)}"
            f" (remaining {_fmt(remaining)}), delta {_fmt(brief.dp.get('delta'))}, "
            f"clipped {brief.dp.get('clipped')} of {brief.dp.get('updates')} updates"
        )
    if brief.lora_residuals:
        worst = ", ".join(f"{m} {r:.4f}" for m, r in brief.lora_residuals[:5])
        lines += ["", f"Exact LoRA residuals (worst of {len(brief.lora_residuals)}): {worst}"]
    lines += [
        "",
        "Refused updates: " + (", ".join(f"{k} {v}" for k, v in brief.rejections.items()) or "none"),
    ]
    lines.append("Decisions so far: " + (", ".join(f"{k} {d}" for k, d in brief.decisions) or "none"))
    return "\n".join(lines) + "\n"


def _site_line(site: str, update: UpdateAccepted | None) -> SiteLine:
    if update is None:  # a participant without an entry: the audit's finding, shown as such
        return SiteLine(site, 0, None, None)
    digest = update.data_card_digest
    return SiteLine(
        site, update.num_examples, b64encode(digest) if digest else None, _passed(update.validation)
    )


def _passed(validation: Mapping[str, Any] | None) -> bool | None:
    if validation is None:
        return None
    return validation.get("passed") is True


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[prefix + key] = float(value)
        elif isinstance(value, Mapping):
            out |= _numbers(value, f"{prefix}{key}.")
    return out


def _fmt(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _policy(name: str) -> Policy:
    return load_builtin_policy(name) if name in builtin_policy_names() else Policy.from_file(name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedseal-approve",
        description="Show a gated round's aggregate with its numbers, then sign approve or refuse.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("show", "print the brief for a round"),
        ("approve", "print the brief, then sign and submit an approval"),
        ("refuse", "print the brief, then sign and submit a refusal (withholds the aggregate for good)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("log", type=Path, help="the audit log file")
        cmd.add_argument("--round", type=int, required=True, dest="round_id")
        if name != "show":
            cmd.add_argument(
                "--key", type=Path, required=True, help="the approver's Ed25519 key (PEM, PKCS#8)"
            )
            # Checked here, as a usage error, so a bad address fails before anything is signed.
            cmd.add_argument("--endpoint", type=host_port(), required=True, help="the aggregator, HOST:PORT")
            cmd.add_argument("--policy", required=True, help="a built-in policy name or a policy JSON file")
            cmd.add_argument("--yes", action="store_true", help="do not ask again on the terminal")
            cmd.add_argument(
                "--timeout", type=positive_seconds, default=60.0, help="seconds to wait for the aggregator"
            )
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout
    args = _parser().parse_args(argv)
    try:
        brief = read_approval_brief(args.log, args.round_id)
    except BriefError as exc:
        print(f"fedseal-approve: {exc}", file=sys.stderr)
        return 2
    out.write(render_brief(brief))
    if args.command == "show":
        return 0
    decision = Decision.APPROVE if args.command == "approve" else Decision.REFUSE
    try:
        key = _load_key(args.key)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{args.key} holds a {type(key).__name__}, not an Ed25519 private key")
        policy = _policy(args.policy)
    except (IdentityError, FedSealError, OSError) as exc:
        print(f"fedseal-approve: {exc}", file=sys.stderr)
        return 2
    if not args.yes:
        out.write(f"\nType '{decision.value}' to sign this decision for the aggregate above: ")
        out.flush()
        answer = (stdin if stdin is not None else sys.stdin).readline().strip()
        if answer != decision.value:
            print("fedseal-approve: not confirmed; nothing was signed or sent", file=sys.stderr)
            return 2
    approval = sign_approval(
        key,
        log_origin=brief.log_origin,
        round_id=brief.round_id,
        aggregate_digest=brief.aggregate_digest,
        decision=decision,
    )
    try:
        with FedSealClient(args.endpoint, policy, timeout=args.timeout) as client:
            result = client.submit_approval(approval)
    except ApprovalError as exc:
        print(f"fedseal-approve: the aggregator refused the decision ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    except FedSealError as exc:  # unreachable, not attested, or a value the client refuses
        print(f"fedseal-approve: {exc}", file=sys.stderr)
        return 2
    out.write(
        f"\n{decision.value} recorded at log entry {result.log_index}: the aggregate is {result.state} "
        f"({result.approvals} of {result.min_approvals} approvals)\n"
    )
    return 0
