"""Full verification of an audit log file, from the log and a policy alone.

The auditor re-reads every line, recomputes every leaf and every tree root, checks every
checkpoint's signature under the attested log key and its root against the recomputed
tree, and checks that the log's own story holds together (entry indices in sequence,
round transitions in order, participants of a closed round equal to its accepted
updates). It reports *every* finding, each naming the line and entry index, so a
tampered log is both detected and located.

The log key comes from the first entry (`enclave_started`), whose evidence bundle must
verify under the auditor's policy for the challenge recorded with it: the auditor trusts
no key the operator merely asserts.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import AttestationError, Policy, verify_bundle
from fedseal.checkpoint import open_checkpoint
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind, LogEntry, decode_record
from fedseal.merkle import MerkleTree
from fedseal.note import NoteVerifier

__all__ = [
    "AuditReport",
    "Finding",
    "FindingKind",
    "LogVerificationError",
    "RoundSummary",
    "VerifiedLog",
    "audit_log",
    "verify_log",
]


class FindingKind(enum.Enum):
    MALFORMED_RECORD = "malformed_record"
    TORN_TAIL = "torn_tail"
    INDEX_OUT_OF_SEQUENCE = "index_out_of_sequence"
    MODIFIED_ENTRY = "modified_entry"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    CHECKPOINT_BEYOND_LOG = "checkpoint_beyond_log"
    NO_CHECKPOINT = "no_checkpoint"
    UNCHECKPOINTED_ENTRIES = "uncheckpointed_entries"
    MISSING_ENCLAVE_START = "missing_enclave_start"
    ATTESTATION_FAILED = "attestation_failed"
    INCONSISTENT_ROUND = "inconsistent_round"


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    line: int | None
    index: int | None
    message: str

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "line": self.line,
            "index": self.index,
            "message": self.message,
        }


@dataclass
class RoundSummary:
    round_id: int
    state: str = "open"
    strategy: str = ""
    min_clients: int = 0
    max_clients: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    total_examples: int = 0
    aggregate_digest: str = ""
    failure_reason: str = ""

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "state": self.state,
            "strategy": self.strategy,
            "min_clients": self.min_clients,
            "max_clients": self.max_clients,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "participants": self.participants,
            "total_examples": self.total_examples,
            "aggregate_digest": self.aggregate_digest,
            "failure_reason": self.failure_reason,
        }


@dataclass(frozen=True)
class AuditReport:
    path: str
    policy_name: str
    log_origin: str
    entries: int
    checkpoints_verified: int
    root_hash: bytes
    insecure_simulated: bool
    rounds: tuple[RoundSummary, ...]
    findings: tuple[Finding, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "policy": self.policy_name,
            "log_origin": self.log_origin,
            "entries": self.entries,
            "checkpoints_verified": self.checkpoints_verified,
            "root_hash": base64.b64encode(self.root_hash).decode("ascii"),
            "insecure_simulated": self.insecure_simulated,
            "verdict": "verified" if not self.findings else "FAILED",
            "rounds": [r.to_json_obj() for r in self.rounds],
            "findings": [f.to_json_obj() for f in self.findings],
        }


class LogVerificationError(FedSealError):
    """The log did not verify; `report.findings` lists every problem found."""

    def __init__(self, report: AuditReport) -> None:
        first = report.findings[0]
        more = f" (and {len(report.findings) - 1} more)" if len(report.findings) > 1 else ""
        super().__init__(f"{report.path}: {first.message}{more}")
        self.report = report


@dataclass(frozen=True)
class VerifiedLog:
    """A log with no finding: every entry is covered by a valid checkpoint of the attested key."""

    report: AuditReport


def verify_log(path: Path, policy: Policy) -> VerifiedLog:
    """Verify a log file; raise LogVerificationError listing every finding."""
    report = audit_log(path, policy)
    if report.findings:
        raise LogVerificationError(report)
    return VerifiedLog(report)


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without newline, whether it ended in a newline)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            complete = raw.endswith(b"\n")
            yield number, raw[:-1] if complete else raw, complete


def audit_log(path: Path, policy: Policy, *, progress: Callable[[int], None] | None = None) -> AuditReport:
    """Check everything and return the report; never stops at the first finding."""
    findings: list[Finding] = []
    tree = MerkleTree()
    verifier: NoteVerifier | None = None
    origin = ""
    insecure = False
    checkpoints = 0
    covered = 0  # largest tree size a verified checkpoint covers
    rounds: dict[int, RoundSummary] = {}
    # Where each leaf came from, so a root mismatch can name the first suspect entry.
    leaf_lines: list[int] = []
    last_verified_size = 0
    reported_suspects: set[int] = set()
    index_offset = 0  # entry.index - leaf position of the previous entry
    beyond_deficit = 0  # how far the previous over-long checkpoint ran past the entries

    def add(kind: FindingKind, line: int | None, index: int | None, message: str) -> None:
        findings.append(Finding(kind, line, index, message))

    for number, line, complete in _lines(path):
        if progress is not None and number % 10_000 == 0:
            progress(number)
        if not complete:
            add(
                FindingKind.TORN_TAIL,
                number,
                None,
                f"line {number} is incomplete (no final newline): a torn or truncated write",
            )
            continue
        try:
            record = decode_record(line, line_number=number)
        except FedSealError as exc:
            add(
                FindingKind.MALFORMED_RECORD,
                number,
                tree.size if line.startswith(b'{"entry":') else None,
                f"line {number} cannot be parsed ({exc}); the entry or checkpoint was modified",
            )
            if line.startswith(b'{"entry":'):
                # Keep leaf positions aligned so later findings still name the right entries.
                tree.append(line)
                leaf_lines.append(number)
                reported_suspects.add(tree.size - 1)
            continue
        if record.entry is not None:
            entry = record.entry
            assert record.leaf_data is not None
            offset = entry.index - tree.size
            if offset != 0 and offset != index_offset:
                add(
                    FindingKind.INDEX_OUT_OF_SEQUENCE,
                    number,
                    entry.index,
                    f"line {number}: entry says index {entry.index} but it is leaf {tree.size}: "
                    "an entry was removed, inserted or reordered",
                )
            index_offset = offset
            tree.append(record.leaf_data)
            leaf_lines.append(number)
            if entry.index == 0 or tree.size == 1:
                if entry.kind is not EntryKind.ENCLAVE_STARTED:
                    add(
                        FindingKind.MISSING_ENCLAVE_START,
                        number,
                        entry.index,
                        "the first entry must be 'enclave_started' (it carries the attested log key)",
                    )
                else:
                    verifier, origin, insecure = _attested_key(entry, policy, number, add)
            elif entry.kind is EntryKind.ENCLAVE_STARTED:
                add(
                    FindingKind.INCONSISTENT_ROUND,
                    number,
                    entry.index,
                    "a second 'enclave_started' entry: key handover is not supported by this log version",
                )
            _apply_to_rounds(entry, rounds, number, add)
            continue
        assert record.checkpoint is not None
        if verifier is None:
            add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                None,
                f"line {number}: checkpoint before any attested log key is known",
            )
            continue
        try:
            cp = open_checkpoint(record.checkpoint, [verifier], origin).checkpoint
        except FedSealError as exc:
            add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                None,
                f"line {number}: checkpoint does not verify under the attested log key: {exc}",
            )
            continue
        if cp.size > tree.size:
            deficit = cp.size - tree.size
            if deficit == beyond_deficit:
                continue  # the same gap as the last checkpoint: already reported
            beyond_deficit = deficit
            add(
                FindingKind.CHECKPOINT_BEYOND_LOG,
                number,
                tree.size,
                f"line {number}: checkpoint for tree size {cp.size} but only {tree.size} entries "
                "precede it: entries were removed",
            )
            continue
        if tree.root(cp.size) != cp.root_hash:
            suspect = last_verified_size
            if suspect in reported_suspects:
                continue
            reported_suspects.add(suspect)
            add(
                FindingKind.MODIFIED_ENTRY,
                leaf_lines[suspect] if suspect < len(leaf_lines) else number,
                suspect,
                f"line {number}: checkpoint for size {cp.size} does not match the recomputed tree: "
                f"an entry in index range [{last_verified_size}, {cp.size - 1}] was modified "
                f"(first suspect: entry {suspect} at line "
                f"{leaf_lines[suspect] if suspect < len(leaf_lines) else '?'})",
            )
            continue
        checkpoints += 1
        last_verified_size = max(last_verified_size, cp.size)
        covered = max(covered, cp.size)

    if tree.size == 0:
        add(FindingKind.MISSING_ENCLAVE_START, None, None, "the log has no entries")
    elif checkpoints == 0:
        add(FindingKind.NO_CHECKPOINT, None, None, "no checkpoint in the log verifies")
    elif covered < tree.size:
        add(
            FindingKind.UNCHECKPOINTED_ENTRIES,
            leaf_lines[covered],
            covered,
            f"entries {covered}..{tree.size - 1} are not covered by any valid checkpoint",
        )
    for summary in rounds.values():
        _check_round(summary, add)

    return AuditReport(
        path=str(path),
        policy_name=policy.name,
        log_origin=origin,
        entries=tree.size,
        checkpoints_verified=checkpoints,
        root_hash=tree.root(tree.size),
        insecure_simulated=insecure,
        rounds=tuple(sorted(rounds.values(), key=lambda r: r.round_id)),
        findings=tuple(findings),
    )


def _attested_key(
    entry: LogEntry,
    policy: Policy,
    line: int,
    add: Callable[[FindingKind, int | None, int | None, str], None],
) -> tuple[NoteVerifier | None, str, bool]:
    f = entry.fields
    try:
        bundle = base64.b64decode(f["evidence_bundle"], validate=True)
        challenge = base64.b64decode(f["challenge"], validate=True)
        log_key = base64.b64decode(f["log_public_key"], validate=True)
        attested = verify_bundle(bundle, policy, challenge)
    except (binascii.Error, ValueError) as exc:
        add(
            FindingKind.MALFORMED_RECORD,
            line,
            entry.index,
            f"line {line}: enclave_started entry: {exc}",
        )
        return None, "", False
    except (AttestationError, FedSealError) as exc:
        add(
            FindingKind.ATTESTATION_FAILED,
            line,
            entry.index,
            f"line {line}: the enclave's evidence does not verify under policy {policy.name!r}: {exc}",
        )
        return None, "", False
    if attested.log_public_key != log_key:
        add(
            FindingKind.ATTESTATION_FAILED,
            line,
            entry.index,
            f"line {line}: the log key in the entry is not the one its evidence attests",
        )
        return None, "", False
    origin = str(f["log_origin"])
    try:
        return NoteVerifier(origin, log_key), origin, attested.insecure
    except FedSealError as exc:
        add(FindingKind.MALFORMED_RECORD, line, entry.index, f"line {line}: bad log origin: {exc}")
        return None, "", False


def _apply_to_rounds(
    entry: LogEntry,
    rounds: dict[int, RoundSummary],
    line: int,
    add: Callable[[FindingKind, int | None, int | None, str], None],
) -> None:
    f = entry.fields
    kind = entry.kind
    if kind is EntryKind.ENCLAVE_STARTED:
        return
    rid = int(f["round_id"])
    if kind is EntryKind.ROUND_OPENED:
        if rid in rounds:
            add(FindingKind.INCONSISTENT_ROUND, line, entry.index, f"round {rid} opened twice")
        config = f["config"]
        rounds[rid] = RoundSummary(
            round_id=rid,
            strategy=str(config.get("strategy", "")),
            min_clients=int(config.get("min_clients", 0)),
            max_clients=int(config.get("max_clients", 0)),
        )
        return
    summary = rounds.get(rid)
    if summary is None:
        if kind is EntryKind.UPDATE_REJECTED:
            # A refusal for a round that never existed is legitimate (the client named it).
            return
        add(
            FindingKind.INCONSISTENT_ROUND,
            line,
            entry.index,
            f"line {line}: {kind.value} for round {rid}, which was never opened",
        )
        return
    if kind is EntryKind.UPDATE_REJECTED:
        summary.rejected.append({"client_id": f["client_id"], "reason": f["reason"], "index": entry.index})
        return
    if summary.state != "open":
        add(
            FindingKind.INCONSISTENT_ROUND,
            line,
            entry.index,
            f"line {line}: {kind.value} for round {rid} after it was {summary.state}",
        )
        return
    if kind is EntryKind.UPDATE_ACCEPTED:
        if any(a["client_id"] == f["client_id"] for a in summary.accepted):
            add(
                FindingKind.INCONSISTENT_ROUND,
                line,
                entry.index,
                f"line {line}: second accepted update from {f['client_id']!r} in round {rid}",
            )
        summary.accepted.append(
            {
                "client_id": f["client_id"],
                "ciphertext_digest": f["ciphertext_digest"],
                "num_examples": f["num_examples"],
                "index": entry.index,
            }
        )
    elif kind is EntryKind.ROUND_CLOSED:
        summary.state = "closed"
        summary.participants = list(f["participants"])
        summary.total_examples = int(f["total_examples"])
        summary.aggregate_digest = str(f["aggregate_digest"])
        accepted = sorted(a["client_id"] for a in summary.accepted)
        if sorted(summary.participants) != accepted:
            add(
                FindingKind.INCONSISTENT_ROUND,
                line,
                entry.index,
                f"line {line}: round {rid} closed with participants {summary.participants} "
                f"but the log accepted updates from {accepted}",
            )
        if summary.total_examples != sum(int(a["num_examples"]) for a in summary.accepted):
            add(
                FindingKind.INCONSISTENT_ROUND,
                line,
                entry.index,
                f"line {line}: round {rid} total_examples does not equal the sum over accepted updates",
            )
        if len(accepted) < summary.min_clients:
            add(
                FindingKind.INCONSISTENT_ROUND,
                line,
                entry.index,
                f"line {line}: round {rid} closed with {len(accepted)} updates, below min_clients "
                f"{summary.min_clients}",
            )
    elif kind is EntryKind.ROUND_FAILED:
        summary.state = "failed"
        summary.failure_reason = str(f["reason"])


def _check_round(
    summary: RoundSummary, add: Callable[[FindingKind, int | None, int | None, str], None]
) -> None:
    if len(summary.accepted) > summary.max_clients > 0:
        add(
            FindingKind.INCONSISTENT_ROUND,
            None,
            None,
            f"round {summary.round_id} accepted {len(summary.accepted)} updates, above max_clients",
        )
