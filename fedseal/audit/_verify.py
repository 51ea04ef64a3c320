"""Full verification of an audit log file, from the log and a policy alone.

The auditor reads every line once. It recomputes every leaf and the RFC 9162 tree;
checks every checkpoint's signature, its key and its root against the recomputed tree;
verifies the key chain (every signing key must come from an `enclave_started` entry whose
evidence verifies under the policy, and every later enclave's entry must hand over from
the last checkpoint of the one before, see fedseal/logformat.py); checks that the log's
story holds together (entry indices in sequence, round transitions in order, a closed
round's participants equal to its accepted updates); and compares the log with any
checkpoints the caller trusts (a client's receipt, a witness's cosigned checkpoint).

It reports *every* finding, each with a `FindingKind`, the line and the entry index, so
a tampered log is both detected and located:

* an entry changed after it was signed: `modified_entry` (the first entry of the range
  the first mismatching checkpoint covers beyond the last matching one);
* entries taken out: `removed_entry`; moved: `reordered_entries`; repeated: `duplicated_entry`;
* the log cut or rolled back below a checkpoint the caller trusts: `rollback`;
* two validly signed checkpoints that cannot both describe one append-only log: `fork`,
  with both notes (and the consistency proof the log yields) as transferable evidence;
* a checkpoint signed by a key no attested `enclave_started` entry introduced:
  `unattested_key`; by a key that already handed over: `retired_key`;
* a checkpoint dated after the audit time (plus the allowed clock skew): `future_timestamp`;
* identity and access (fedseal/audit/_access.py): an accepted update whose site signature
  does not verify under a key enrolled for it at that point: `bad_update_signature`; an
  operator action not signed by a recorded principal allowed to perform it:
  `unauthorized_action`; enrolment or principals that change without a signed request:
  `inconsistent_access`;
* an accepted update whose adapter spec digest is neither its round's nor that of a LoRA
  rank the round allows (`client_ranks`, derived as in fedseal.roundconfig): `inconsistent_round`;
* async weighting (aggregator/_rounds.py, "Staleness"): an accepted update whose recorded
  `staleness` is not the number of releases between its base's and its entry, or whose
  base or staleness its round must have refused: `wrong_staleness`.

Key handovers are reported with the consistency proof from the old key's last checkpoint
to the new key's first, which the auditor recomputes and verifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import Policy
from fedseal.canonical import b64encode, canonical_json, parse_canonical
from fedseal.checkpoint import TLOG_PROOF_HEADER, Checkpoint, TlogProof
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import (
    ENTRY_RECORD_PREFIX,
    CheckpointExtensions,
    EntryKind,
    FailureCause,
    LogEntry,
    decode_record,
    released_round,
)
from fedseal.logschema import (
    AggregateReleased,
    AggregateWithheld,
    ApprovalRecorded,
    DpBudgetRecorded,
    DpRoundRefused,
    EnclaveStarted,
    EntryFieldError,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    TornTailDropped,
    UpdateAccepted,
    UpdateRejected,
)
from fedseal.merkle import MerkleTree, verify_consistency
from fedseal.note import NoteVerifier, SignatureLine, open_note, parse_signature_line
from fedseal.roundconfig import RoundConfig
from fedseal.spec import AdapterSpec
from fedseal.wire import StaleBaseError, update_staleness

from ._access import AccessAuditor
from ._enclave import AttestedKey, KeyAttestationError, attest_enclave_entry

__all__ = [
    "AuditReport",
    "Finding",
    "FindingKind",
    "Handover",
    "KeySummary",
    "LogVerificationError",
    "RoundSummary",
    "TrustedCheckpoint",
    "TrustedCheckpointResult",
    "VerifiedLog",
    "audit_log",
    "verify_log",
]

DEFAULT_MAX_CLOCK_SKEW = 300.0
_PROGRESS_EVERY = 10_000
_MAX_FINDINGS_PER_KIND = 50


class FindingKind(enum.Enum):
    """What is wrong; see the module docstring and `fedseal-audit verify --help`."""

    MALFORMED_RECORD = "malformed_record"
    # An entry line that does not decode under the log schema (fedseal/logschema.py).
    MALFORMED_ENTRY = "malformed_entry"
    TORN_TAIL = "torn_tail"
    MODIFIED_ENTRY = "modified_entry"
    REMOVED_ENTRY = "removed_entry"
    REORDERED_ENTRIES = "reordered_entries"
    DUPLICATED_ENTRY = "duplicated_entry"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    UNATTESTED_KEY = "unattested_key"
    RETIRED_KEY = "retired_key"
    FUTURE_TIMESTAMP = "future_timestamp"
    FORK = "fork"
    ROLLBACK = "rollback"
    UNTRUSTED_CHECKPOINT = "untrusted_checkpoint"
    NO_CHECKPOINT = "no_checkpoint"
    UNCHECKPOINTED_ENTRIES = "uncheckpointed_entries"
    MISSING_ENCLAVE_START = "missing_enclave_start"
    ATTESTATION_FAILED = "attestation_failed"
    BROKEN_HANDOVER = "broken_handover"
    INCONSISTENT_ROUND = "inconsistent_round"
    BAD_UPDATE_SIGNATURE = "bad_update_signature"
    UNAUTHORIZED_ACTION = "unauthorized_action"
    INCONSISTENT_ACCESS = "inconsistent_access"
    WRONG_STALENESS = "wrong_staleness"


# Findings that show the entries themselves were changed.
_DAMAGE = frozenset(
    {
        FindingKind.MODIFIED_ENTRY,
        FindingKind.REMOVED_ENTRY,
        FindingKind.REORDERED_ENTRIES,
        FindingKind.DUPLICATED_ENTRY,
        FindingKind.MALFORMED_RECORD,
        FindingKind.MALFORMED_ENTRY,
        FindingKind.TORN_TAIL,
    }
)
# Entries about identity and access (no round id); update_accepted is checked there too.
# DP budget and approval entries: checked against their round (`_release_entry`).
_RELEASE_KINDS = frozenset(
    {
        EntryKind.DP_BUDGET,
        EntryKind.DP_ROUND_REFUSED,
        EntryKind.APPROVAL_RECORDED,
        EntryKind.AGGREGATE_RELEASED,
        EntryKind.AGGREGATE_WITHHELD,
    }
)
_ACCESS_KINDS = frozenset(
    {
        EntryKind.ENROLMENT_RECORDED,
        EntryKind.PRINCIPALS_RECORDED,
        EntryKind.OPERATOR_ACTION,
        EntryKind.REVOCATION_LIST_LOADED,
    }
)
# Findings that usually follow from others and are listed after them.
_CONSEQUENCES = frozenset(
    {
        FindingKind.INCONSISTENT_ROUND,
        FindingKind.UNCHECKPOINTED_ENTRIES,
        # A changed entry breaks the signatures it carries; alone, they are the finding.
        FindingKind.BAD_UPDATE_SIGNATURE,
        FindingKind.UNAUTHORIZED_ACTION,
        FindingKind.INCONSISTENT_ACCESS,
        # Removed or altered release entries change what later staleness must be.
        FindingKind.WRONG_STALENESS,
    }
)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    line: int | None
    index: int | None
    message: str
    # Transferable evidence (for a fork: both signed checkpoint notes and the proof).
    evidence: tuple[str, ...] = ()
    # When the offending entry is one of a range (entries committed under one checkpoint):
    # the range is index..last_index.
    last_index: int | None = None
    # The entry field at fault, where one is (a malformed entry names it).
    field: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "line": self.line,
            "index": self.index,
            "last_index": self.last_index,
            "field": self.field,
            "message": self.message,
            "evidence": list(self.evidence),
        }


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
        """A signed checkpoint note, or a tlog-proof (a receipt) whose checkpoint is taken."""
        if text.startswith(TLOG_PROOF_HEADER + "\n"):
            text = TlogProof.parse(text).checkpoint_note
        return cls(source, text)


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


ProgressCallback = Callable[[int, int, int], None]  # (lines, bytes read, total bytes)


def verify_log(
    path: Path,
    policy: Policy,
    *,
    trusted: Sequence[TrustedCheckpoint] = (),
    now: dt.datetime | None = None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> VerifiedLog:
    """Verify a log file; raise LogVerificationError listing every finding."""
    report = audit_log(path, policy, trusted=trusted, now=now, max_clock_skew=max_clock_skew)
    if report.findings:
        raise LogVerificationError(report)
    return VerifiedLog(report)


def audit_log(
    path: Path,
    policy: Policy,
    *,
    trusted: Sequence[TrustedCheckpoint] = (),
    now: dt.datetime | None = None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    progress: ProgressCallback | None = None,
) -> AuditReport:
    """Check everything and return the report; never stops at the first finding.

    `now` (aware; default: the current time) is the audit time that checkpoint timestamps
    must not exceed by more than `max_clock_skew` seconds. Raises OSError if the file
    cannot be read.
    """
    return _audit(path, policy, trusted, now, max_clock_skew, progress).report


# ----------------------------------------------------------------------------- internals


@dataclass
class _KeyState:
    entry_index: int
    line: int
    verifier: NoteVerifier
    attested: AttestedKey | None
    failure: str = ""
    checkpoints: int = 0
    first_size: int | None = None
    last_size: int | None = None
    reported_unattested: bool = False
    reported_retired: bool = False

    def summary(self) -> KeySummary:
        a = self.attested
        return KeySummary(
            entry_index=self.entry_index,
            line=self.line,
            verifier_key=self.verifier.key_string(),
            attested=a is not None,
            insecure=a.insecure if a is not None else False,
            evidence_kinds=a.evidence_kinds if a is not None else (),
            failure=self.failure,
            checkpoints=self.checkpoints,
            first_size=self.first_size,
            last_size=self.last_size,
        )


@dataclass
class _PendingHandover:
    entry_index: int
    old_key_entry: int
    new_key_entry: int
    old_size: int
    old_root: bytes
    old_note: str


@dataclass
class _Mismatch:
    line: int
    size: int
    root: bytes
    note: str
    last_match: int  # the largest matching checkpoint size before it


@dataclass
class _RoundState:
    round_id: int
    key_entry: int
    config: RoundConfig
    config_digest: bytes
    state: str = "open"
    accepted: list[UpdateAccepted] = field(default_factory=list)
    accepted_index: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    closed: RoundClosed | None = None
    failed: RoundFailed | None = None
    dp: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None

    def summary(self) -> RoundSummary:
        config = _as_logged(self.config.to_json_obj())
        closed, failed = self.closed, self.failed
        specs = self.config.update_specs
        return RoundSummary(
            round_id=self.round_id,
            state=self.state,
            key_entry=self.key_entry,
            strategy=self.config.strategy,
            parameters={k: v for k, v in config.items() if k not in ("adapter_spec", "round_id", "format")},
            adapter_spec_digest=b64encode(self.config.adapter_spec.digest()),
            config_digest=b64encode(self.config_digest),
            min_clients=self.config.min_clients,
            max_clients=self.config.max_clients,
            accepted=tuple(
                {
                    "index": index,
                    "client_id": a.client_id,
                    "ciphertext_digest": b64encode(a.ciphertext_digest),
                    "ciphertext_size": a.ciphertext_size,
                    "num_examples": a.num_examples,
                    "base_round_id": a.base_round_id,
                    "staleness": a.staleness,
                    "lora_ranks": list(_lora_ranks(specs.get(a.adapter_spec_digest))),
                }
                for index, a in zip(self.accepted_index, self.accepted, strict=True)
            ),
            rejected=tuple(self.rejected),
            participants=closed.participants if closed is not None else (),
            total_examples=closed.total_examples if closed is not None else 0,
            aggregate_digest=b64encode(closed.aggregate_digest) if closed is not None else "",
            aggregate_size=closed.aggregate_size if closed is not None else 0,
            failure_reason=failed.reason if failed is not None else "",
            failure_cause=failed.cause.value if failed is not None and failed.cause is not None else "",
            dp=self.dp,
            approval=self.approval,
            lora_residuals=(
                tuple(r.to_fields() for r in closed.lora_residuals)
                if closed is not None
                and closed.lora_residuals is not None
                and self.config.strategy == "lora-exact"
                else None
            ),
        )


def _as_logged(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as its canonical JSON reads back (8.0 is written 8): the values the log shows."""
    value = parse_canonical(canonical_json(obj), what="report")
    assert isinstance(value, dict)
    return value


def _lora_ranks(spec: AdapterSpec | None) -> tuple[int, ...]:
    """The LoRA ranks of an allowed update spec (none for a non-LoRA spec or no spec)."""
    if spec is None:
        return ()
    try:
        return spec.lora_ranks()
    except FormatError:
        return ()  # a non-LoRA spec (strategies other than lora-exact take any tensors)


@dataclass
class _Latest:
    size: int
    root: bytes
    note: str
    key: _KeyState


@dataclass
class _AuditResult:
    """The report, plus what `check-receipt` needs from the audit."""

    report: AuditReport
    tree: MerkleTree
    keys: tuple[_KeyState, ...]
    latest: _Latest | None


def _audit(
    path: Path,
    policy: Policy,
    trusted: Sequence[TrustedCheckpoint],
    now: dt.datetime | None,
    max_clock_skew: float,
    progress: ProgressCallback | None,
) -> _AuditResult:
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise FormatError("the audit time must be timezone-aware")
    auditor = _Auditor(path, policy, moment, max_clock_skew)
    auditor.read(progress)
    auditor.finish(trusted)
    return auditor.result()


def _lines(path: Path) -> Iterator[tuple[int, int, bytes, bool]]:
    """(line number, byte offset, line without newline, whether it ended in a newline)."""
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            complete = raw.endswith(b"\n")
            yield number, offset, raw[:-1] if complete else raw, complete
            offset += len(raw)


def _signature_lines(note: str) -> list[SignatureLine]:
    """The parseable signature lines of a note (open_note checks the rest strictly)."""
    _, sep, block = note.rpartition("\n\n")
    lines = []
    for text in block.splitlines() if sep else ():
        try:
            lines.append(parse_signature_line(text))
        except FormatError:
            continue
    return lines


class _Auditor:
    def __init__(self, path: Path, policy: Policy, now: dt.datetime, max_clock_skew: float) -> None:
        self.path = path
        self.policy = policy
        self.now = now
        self.max_future_ms = int((now.timestamp() + max_clock_skew) * 1000)
        self.findings: list[Finding] = []
        self._per_kind: dict[FindingKind, int] = {}
        self.tree = MerkleTree()
        self.leaf_lines = array("Q")
        self.claimed = array("q")  # the index each leaf's entry claims (-1: unreadable)
        self.unreadable: set[int] = set()  # leaf positions whose entry does not decode
        self.keys: dict[bytes, _KeyState] = {}
        self.key_order: list[_KeyState] = []
        self.current: _KeyState | None = None
        self.origin = ""
        self.rounds: dict[int, _RoundState] = {}
        self.open_round: int | None = None
        self.released: list[int] = []  # rounds whose aggregate became the global, in log order
        self.dp_budget: dict[str, Any] | None = None
        self.dp_refusals: list[dict[str, Any]] = []
        self.checkpoints_verified = 0
        self.covered = 0
        self.last_match = 0
        self.match_sizes = array("Q")
        self.match_offsets = array("Q")
        self.mismatches: list[_Mismatch] = []
        self.removed_at: set[int] = set()
        # Checkpoints that cover more entries than precede them: (line, entries, size).
        self.beyond: list[tuple[int, int, int]] = []
        self.beyond_deficit = 0
        self.latest: _Latest | None = None
        self.pending_handover: _PendingHandover | None = None
        self.handovers: list[Handover] = []
        self.tail_drops: list[dict[str, Any]] = []
        self.trusted_results: list[TrustedCheckpointResult] = []
        self.access = AccessAuditor()

    def add(
        self,
        kind: FindingKind,
        line: int | None,
        index: int | None,
        message: str,
        evidence: tuple[str, ...] = (),
        last_index: int | None = None,
        field: str | None = None,
    ) -> None:
        count = self._per_kind.get(kind, 0) + 1
        self._per_kind[kind] = count
        # A badly broken log can yield a finding per line; the first ones locate the damage.
        if count <= _MAX_FINDINGS_PER_KIND:
            self.findings.append(Finding(kind, line, index, message, evidence, last_index, field))

    # ------------------------------------------------------------------ reading
    def read(self, progress: ProgressCallback | None) -> None:
        total = self.path.stat().st_size
        for number, offset, line, complete in _lines(self.path):
            if progress is not None and number % _PROGRESS_EVERY == 0:
                progress(number, offset, total)
            if not complete:
                self.add(
                    FindingKind.TORN_TAIL,
                    number,
                    None,
                    f"line {number} is incomplete (no final newline): a torn or truncated write",
                )
                continue
            try:
                record = decode_record(line, line_number=number)
            except FedSealError as exc:
                self._unreadable(number, line, exc)
                continue
            if record.entry is not None:
                assert record.leaf_data is not None
                self._entry(record.entry, record.leaf_data, number)
            else:
                assert record.checkpoint is not None
                self._checkpoint(record.checkpoint, number, offset)
        if progress is not None:
            progress(len(self.leaf_lines), total, total)

    def _unreadable(self, number: int, line: bytes, exc: FedSealError) -> None:
        if line.startswith(ENTRY_RECORD_PREFIX):
            position = self.tree.size
            # Keep leaf positions aligned so later findings still name the right entries;
            # whether the bytes are the ones signed, the checkpoints decide (modified_entry).
            self.tree.append(line[len(ENTRY_RECORD_PREFIX) : -1])
            self.leaf_lines.append(number)
            index = exc.index if isinstance(exc, EntryFieldError) else None
            self.claimed.append(index if index is not None else -1)
            self.unreadable.add(position)
            field_name = exc.field if isinstance(exc, EntryFieldError) else None
            self.add(
                FindingKind.MALFORMED_ENTRY,
                number,
                index if index is not None else position,
                f"line {number}: entry {index if index is not None else position} does not decode, so "
                f"nothing it says can be checked: {exc}",
                field=field_name,
            )
        else:
            self.add(
                FindingKind.MALFORMED_RECORD,
                number,
                None,
                f"line {number} is neither an entry nor a checkpoint record ({exc})",
            )

    def _entry(self, entry: LogEntry, leaf: bytes, number: int) -> None:
        position = self.tree.size
        self.tree.append(leaf)
        self.leaf_lines.append(number)
        self.claimed.append(entry.index)
        if position == 0 and entry.kind is not EntryKind.ENCLAVE_STARTED:
            self.add(
                FindingKind.MISSING_ENCLAVE_START,
                number,
                position,
                "the first entry must be 'enclave_started' (it carries the attested log key)",
            )
        body = entry.body
        if isinstance(body, EnclaveStarted):
            self._enclave(entry, body, position, number)
        elif isinstance(body, TornTailDropped):
            self.tail_drops.append(
                {
                    "index": entry.index,
                    "offset": body.offset,
                    "dropped_bytes": body.dropped_bytes,
                    "dropped_digest": b64encode(body.dropped_digest),
                    "dropped_lines": body.dropped_lines,
                }
            )
        elif entry.kind in _ACCESS_KINDS:
            self._access_entry(entry, number)
        elif entry.kind in _RELEASE_KINDS:
            self._release_entry(entry, number)
        else:
            self._round_entry(entry, number)
            if entry.kind is EntryKind.UPDATE_ACCEPTED:
                self._access_entry(entry, number)
        released = released_round(entry)
        if released is not None:
            self.released.append(released)

    def _access_entry(self, entry: LogEntry, number: int) -> None:
        for problem in self.access.entry(entry):
            self.add(
                FindingKind(problem.kind.value), number, entry.index, f"line {number}: {problem.message}"
            )

    # ------------------------------------------------------------------ key chain
    def _enclave(self, entry: LogEntry, body: EnclaveStarted, position: int, number: int) -> None:
        origin = body.log_origin
        if self.current is None and not self.origin:
            self.origin = origin
        elif origin != self.origin:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: enclave_started for log origin {origin!r}, this log is {self.origin!r}",
            )
            return
        previous = body.previous_checkpoint
        if self.current is None:
            if previous is not None:
                self.add(
                    FindingKind.BROKEN_HANDOVER,
                    number,
                    position,
                    f"line {number}: the log's first enclave names a previous checkpoint: "
                    "the entries before it were removed",
                )
        else:
            self._handover(previous, position, number)
        log_key = body.log_public_key
        try:
            verifier = NoteVerifier(origin, log_key)
        except FedSealError as exc:
            self.add(
                FindingKind.MALFORMED_ENTRY,
                number,
                position,
                f"line {number}: bad log key: {exc}",
                field="log_public_key",
            )
            return
        if verifier.key_id in self.keys:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: the log key of entry {self.keys[verifier.key_id].entry_index} is "
                "introduced again; every enclave makes fresh keys",
            )
            return
        self.access.enclave_started(log_key)
        state = _KeyState(position, number, verifier, None)
        try:
            state.attested = attest_enclave_entry(entry, self.policy)
        except (KeyAttestationError, FormatError) as exc:
            state.failure = str(exc)
            self.add(FindingKind.ATTESTATION_FAILED, number, position, f"line {number}: {exc}")
        self.keys[verifier.key_id] = state
        self.key_order.append(state)
        self.current = state

    def _handover(self, previous: str | None, position: int, number: int) -> None:
        assert self.current is not None
        old = self.current
        if previous is None:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: a new enclave took over without naming the previous enclave's "
                "last checkpoint (no key handover)",
            )
            return
        try:
            note = open_note(previous, [old.verifier])
            cp = Checkpoint.parse_body(note.text)
        except FedSealError as exc:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: the handover's previous checkpoint is not signed by the key of "
                f"entry {old.entry_index}: {exc}",
            )
            return
        if cp.size != position or self.tree.root(position) != cp.root_hash:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: the handover continues from a checkpoint of size {cp.size} that "
                f"is not the log's first {position} entries",
            )
            return
        self.pending_handover = _PendingHandover(
            position, old.entry_index, position, cp.size, cp.root_hash, previous
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, note: str, number: int, offset: int) -> None:
        sigs = _signature_lines(note)
        known = {
            s.key_id: self.keys[s.key_id] for s in sigs if s.key_id in self.keys and s.name == self.origin
        }
        if not known:
            who = ", ".join(f"{s.name}/{s.key_id.hex()}" for s in sigs) or "nobody"
            self.add(
                FindingKind.UNATTESTED_KEY,
                number,
                None,
                f"line {number}: checkpoint signed only by {who}: no enclave_started entry "
                "before it introduced that key",
            )
            return
        try:
            verified = open_note(note, [k.verifier for k in known.values()])
            cp = Checkpoint.parse_body(verified.text)
            ext = CheckpointExtensions.of(cp)
        except FedSealError as exc:
            self.add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                None,
                f"line {number}: checkpoint does not verify: {exc}",
            )
            return
        key = known[verified.signatures[0].key_id]
        last = cp.size - 1 if cp.size > 0 else None
        if cp.origin != self.origin or ext.key_entry != key.entry_index:
            self.add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                last,
                f"line {number}: checkpoint for origin {cp.origin!r} naming key entry "
                f"{ext.key_entry}, but it is signed by the key of entry {key.entry_index}",
            )
            return
        if key.attested is None:
            if not key.reported_unattested:
                key.reported_unattested = True
                self.add(
                    FindingKind.UNATTESTED_KEY,
                    number,
                    last,
                    f"line {number}: checkpoint signed by the key of entry {key.entry_index}, "
                    f"whose evidence does not verify under policy {self.policy.name!r}",
                )
            return
        if key is not self.current:
            if not key.reported_retired:
                key.reported_retired = True
                assert self.current is not None
                self.add(
                    FindingKind.RETIRED_KEY,
                    number,
                    last,
                    f"line {number}: checkpoint signed by the key of entry {key.entry_index} after "
                    f"entry {self.current.entry_index} handed the log over to a new key",
                )
            return
        if ext.time_ms > self.max_future_ms:
            ahead = (ext.time_ms - self.now.timestamp() * 1000) / 1000
            self.add(
                FindingKind.FUTURE_TIMESTAMP,
                number,
                last,
                f"line {number}: checkpoint for size {cp.size} is dated {_ms_text(ext.time_ms)}, "
                f"{ahead:.0f} s after the audit time",
            )
        key.checkpoints += 1
        key.first_size = cp.size if key.first_size is None else key.first_size
        key.last_size = cp.size
        if cp.size > self.tree.size:
            deficit = cp.size - self.tree.size
            if deficit != self.beyond_deficit:
                self.beyond_deficit = deficit
                self.beyond.append((number, self.tree.size, cp.size))
            return
        if self.tree.root(cp.size) != cp.root_hash:
            self.mismatches.append(_Mismatch(number, cp.size, cp.root_hash, note, self.last_match))
            return
        self.checkpoints_verified += 1
        self.covered = max(self.covered, cp.size)
        self.last_match = max(self.last_match, cp.size)
        self.match_sizes.append(cp.size)
        self.match_offsets.append(offset)
        if self.latest is None or cp.size >= self.latest.size:
            self.latest = _Latest(cp.size, cp.root_hash, note, key)
        pending = self.pending_handover
        if pending is not None and key.entry_index == pending.new_key_entry:
            self.pending_handover = None
            self._prove_handover(pending, cp.size, cp.root_hash, note, number)

    def _prove_handover(
        self, pending: _PendingHandover, size: int, root: bytes, note: str, number: int
    ) -> None:
        proof: list[bytes] = []
        try:
            if pending.old_size > 0:
                proof = self.tree.consistency_proof(pending.old_size, size)
                verify_consistency(pending.old_size, size, proof, pending.old_root, root)
        except (FedSealError, ValueError) as exc:
            self.add(
                FindingKind.BROKEN_HANDOVER,
                number,
                pending.entry_index,
                f"line {number}: the new key's first checkpoint is not consistent with the old "
                f"key's last: {exc}",
            )
            return
        self.handovers.append(
            Handover(
                entry_index=pending.entry_index,
                old_key_entry=pending.old_key_entry,
                new_key_entry=pending.new_key_entry,
                old_size=pending.old_size,
                new_size=size,
                old_checkpoint=pending.old_note,
                new_checkpoint=note,
                consistency_proof=tuple(proof),
            )
        )

    def _removed(self, index: int, line: int, message: str) -> None:
        if index not in self.removed_at:
            self.removed_at.add(index)
            self.add(FindingKind.REMOVED_ENTRY, line, index, message)

    # ------------------------------------------------------------------ rounds
    def _round_entry(self, entry: LogEntry, line: int) -> None:
        body = entry.body
        assert isinstance(body, RoundOpened | UpdateAccepted | UpdateRejected | RoundClosed | RoundFailed)
        kind = entry.kind
        rid = body.round_id
        key_entry = self.current.entry_index if self.current is not None else -1

        def inconsistent(message: str) -> None:
            self.add(FindingKind.INCONSISTENT_ROUND, line, entry.index, f"line {line}: {message}")

        if isinstance(body, RoundOpened):
            config = body.config
            if body.config_digest != config.digest():
                inconsistent(f"round {rid}'s config_digest is not the digest of its config")
            if rid in self.rounds or (self.rounds and rid <= max(self.rounds)):
                inconsistent(f"round {rid} opened again or out of order (round ids only grow)")
                return
            if self.open_round is not None:
                inconsistent(f"round {rid} opened while round {self.open_round} is still open")
            if config.round_id != rid:
                inconsistent(f"round {rid}'s config names round {config.round_id}")
            state = _RoundState(rid, key_entry, config, body.config_digest)
            if config.dp is not None:
                state.dp = {
                    "params": _as_logged(config.dp.to_json_obj()),
                    "budget": self.dp_budget,
                    "spend": None,
                }
            if config.approval is not None:
                state.approval = {
                    "params": config.approval.to_json_obj(),
                    "decisions": [],
                    "state": "not closed",
                }
            self.rounds[rid] = state
            self.open_round = rid
            return
        summary = self.rounds.get(rid)
        if summary is None:
            if kind is not EntryKind.UPDATE_REJECTED:
                # (A refusal for a round that never existed is legitimate: the client named it.)
                inconsistent(f"{kind.value} for round {rid}, which was never opened")
            return
        if isinstance(body, UpdateRejected):
            summary.rejected.append(
                {"index": entry.index, "client_id": body.client_id, "reason": body.reason.value}
            )
            return
        if summary.state != "open":
            inconsistent(f"{kind.value} for round {rid} after it was {summary.state}")
            return
        abandoned = isinstance(body, RoundFailed) and body.cause is FailureCause.ENCLAVE_RESTARTED
        if abandoned != (key_entry != summary.key_entry):
            inconsistent(
                f"{kind.value} for round {rid} opened by the enclave of entry {summary.key_entry}, "
                f"logged by the enclave of entry {key_entry}: only a restarted enclave may "
                "(and must) record the round as abandoned"
            )
        if isinstance(body, UpdateAccepted):
            self._accepted(summary, entry, body, inconsistent)
            self._staleness(summary, entry, body, line)
            return
        self.open_round = None
        if isinstance(body, RoundClosed):
            self._close(summary, body, inconsistent)
        else:
            summary.state = "abandoned" if abandoned else "failed"
            summary.failed = body
            if body.accepted != len(summary.accepted):
                inconsistent(
                    f"round {rid} failed saying {body.accepted} updates were accepted; the log "
                    f"accepted {len(summary.accepted)}"
                )

    @staticmethod
    def _accepted(
        summary: _RoundState, entry: LogEntry, body: UpdateAccepted, inconsistent: Callable[[str], None]
    ) -> None:
        rid, config = summary.round_id, summary.config
        if any(a.client_id == body.client_id for a in summary.accepted):
            inconsistent(f"second accepted update from {body.client_id!r} in round {rid}")
        if config.update_spec(body.adapter_spec_digest) is None:
            inconsistent(
                f"update_accepted entry {entry.index} from {body.client_id!r} names an adapter spec "
                f"that is neither round {rid}'s nor one of its client ranks' (LoRA ranks "
                f"{list(config.allowed_lora_ranks)}): the round must have refused it"
            )
        summary.accepted.append(body)
        summary.accepted_index.append(entry.index)
        if len(summary.accepted) > config.max_clients:
            inconsistent(
                f"round {rid} accepted update number {len(summary.accepted)} (from {body.client_id!r}), "
                f"above its max_clients of {config.max_clients}"
            )

    def _staleness(self, summary: _RoundState, entry: LogEntry, body: UpdateAccepted, line: int) -> None:
        """The update's recorded staleness must be what the releases before it imply."""
        bound = summary.config.params.staleness
        max_staleness = bound.max_staleness if bound is not None else None
        base, recorded = body.base_round_id, body.staleness
        where = f"line {line}: update_accepted entry {entry.index} (round {summary.round_id})"
        try:
            expected = update_staleness(base, summary.round_id, self.released, max_staleness)
        except StaleBaseError as exc:
            self.add(
                FindingKind.WRONG_STALENESS,
                line,
                entry.index,
                f"{where} accepted an update its round must refuse ({exc.reason.value}): {exc.detail}",
            )
            return
        if recorded != expected:
            self.add(
                FindingKind.WRONG_STALENESS,
                line,
                entry.index,
                f"{where} records staleness {recorded}, but {expected} aggregate(s) were released "
                f"between its base (round {base}) and it: it was weighted alpha**{recorded}, "
                f"not alpha**{expected}",
            )

    def _release_entry(self, entry: LogEntry, line: int) -> None:
        """DP budget, DP refusals, approvals and releases: each must fit its round."""
        body = entry.body
        assert isinstance(
            body, DpBudgetRecorded | DpRoundRefused | ApprovalRecorded | AggregateReleased | AggregateWithheld
        )
        rid = body.round_id

        def inconsistent(message: str) -> None:
            self.add(FindingKind.INCONSISTENT_ROUND, line, entry.index, f"line {line}: {message}")

        if isinstance(body, DpBudgetRecorded):
            if self.dp_budget is not None:
                inconsistent("a second dp_budget entry: a job has one DP budget")
            self.dp_budget = dict(body.budget)
            return
        if isinstance(body, DpRoundRefused):
            self.dp_refusals.append({"index": entry.index, "round_id": rid, "reason": body.reason})
            return
        summary = self.rounds.get(rid)
        gate = summary.approval if summary is not None else None
        if summary is None or summary.closed is None or gate is None or gate["state"] != "pending":
            inconsistent(f"{entry.kind.value} for round {rid}, which does not await approval")
            return
        params = summary.config.approval
        assert params is not None  # the gate exists only for a config with an approval section
        if body.aggregate_digest != summary.closed.aggregate_digest:
            inconsistent(f"{entry.kind.value} for round {rid} names another aggregate than its round_closed")
        if isinstance(body, ApprovalRecorded):
            if body.approver not in params.approvers:
                inconsistent(f"approval in round {rid} by a key the round config does not list")
            if any(d["approver"] == b64encode(body.approver) for d in gate["decisions"]):
                inconsistent(f"second decision by one approver in round {rid}")
            gate["decisions"].append(
                {
                    "index": entry.index,
                    "approver": b64encode(body.approver),
                    "key_id": body.approver_key_id,
                    "decision": body.decision.value,
                }
            )
        elif isinstance(body, AggregateReleased):
            approved = [d for d in gate["decisions"] if d["decision"] == "approve"]
            if len(approved) < params.min_approvals:
                inconsistent(
                    f"round {rid}'s aggregate released with {len(approved)} approval(s), below min_approvals"
                )
            gate["state"] = "released"
        else:
            if not any(d["decision"] == "refuse" for d in gate["decisions"]):
                inconsistent(f"round {rid}'s aggregate withheld without a recorded refusal")
            gate["state"] = "withheld"

    @staticmethod
    def _close(summary: _RoundState, body: RoundClosed, inconsistent: Callable[[str], None]) -> None:
        rid, config = summary.round_id, summary.config
        summary.state = "closed"
        summary.closed = body
        if summary.dp is not None:
            if body.dp is None:
                inconsistent(f"round {rid} has a DP config but its round_closed records no DP spend")
            summary.dp["spend"] = dict(body.dp) if body.dp is not None else None
        if summary.approval is not None:
            if body.approval_required is not True:
                inconsistent(f"round {rid} requires approval but its round_closed does not say so")
            summary.approval["state"] = "pending"
            summary.approval["metrics"] = dict(body.metrics) if body.metrics is not None else None
        elif body.approval_required is True:
            inconsistent(f"round {rid} has no approval gate but its round_closed withholds the aggregate")
        residuals = body.lora_residuals
        if config.strategy == "lora-exact":
            if not residuals or any(not 1 <= r.rank <= r.stacked_rank for r in residuals):
                inconsistent(
                    f"round {rid} is a lora-exact round but its round_closed records no valid "
                    "lora_residuals (module, rank, stacked_rank, residual in [0, 1] per LoRA module)"
                )
        elif residuals is not None:
            inconsistent(f"round {rid} ({config.strategy}) records lora_residuals, which only lora-exact has")
        accepted = sorted(a.client_id for a in summary.accepted)
        if sorted(body.participants) != accepted:
            inconsistent(
                f"round {rid} closed with participants {list(body.participants)} but the log "
                f"accepted updates from {accepted}"
            )
        if body.total_examples != sum(a.num_examples for a in summary.accepted):
            inconsistent(f"round {rid} total_examples does not equal the sum over accepted updates")
        if body.strategy != config.strategy:
            inconsistent(f"round {rid} closed with strategy {body.strategy!r}, not its configured one")
        if len(accepted) < config.min_clients:
            inconsistent(f"round {rid} closed with {len(accepted)} updates, below min_clients")
        if len(body.participants) > config.max_clients:
            inconsistent(
                f"round {rid} closed with {len(body.participants)} participants, above max_clients "
                f"({config.max_clients})"
            )

    # ------------------------------------------------------------------ conclusions
    def finish(self, trusted: Sequence[TrustedCheckpoint]) -> None:
        damaged_from = self._check_sequence()
        for line, entries, size in self.beyond:
            # Where the entries' own indices already located the gap, that is the finding;
            # otherwise (the last entries went) the gap starts where the entries end.
            if not any(index < size for index in self.removed_at):
                self._removed(
                    entries,
                    line,
                    f"line {line}: checkpoint for tree size {size} but only {entries} entries "
                    f"precede it: entries from {entries} on were removed",
                )
        self._classify_mismatches(damaged_from)
        for item in trusted:
            self._trusted(item)
        size = self.tree.size
        damaged = any(f.kind in _DAMAGE for f in self.findings)
        if size == 0:
            self.add(FindingKind.MISSING_ENCLAVE_START, None, None, "the log has no entries")
        elif self.checkpoints_verified == 0:
            self.add(FindingKind.NO_CHECKPOINT, None, None, "no checkpoint in the log verifies")
        elif self.covered < size and not damaged:
            # (With damage found, lost coverage is its consequence, already reported.)
            self.add(
                FindingKind.UNCHECKPOINTED_ENTRIES,
                self.leaf_lines[self.covered],
                self.covered,
                f"entries {self.covered}..{size - 1} are not covered by any valid checkpoint",
            )

    def _check_sequence(self) -> int:
        """Removed, reordered and repeated entries from the indices entries claim.

        Returns the first leaf position whose entry is not the expected one.
        """
        claimed = self.claimed
        n = len(claimed)
        if claimed == array("q", range(n)):
            return n
        # An entry that does not decode still holds its place in the tree (the checkpoints
        # say whether it is the one signed); only entries claiming another place are damage.
        damaged_from = next((p for p in range(n) if claimed[p] != p and claimed[p] >= 0), n)
        line_of: dict[int, int] = {}
        highest, highest_line = -1, 0
        for position, index in enumerate(claimed):
            line = self.leaf_lines[position]
            if index < 0:
                continue
            if index in line_of:
                self.add(
                    FindingKind.DUPLICATED_ENTRY,
                    line,
                    index,
                    f"line {line}: entry {index} appears again (first at line {line_of[index]})",
                )
                continue
            line_of[index] = line
            if index < highest:
                self.add(
                    FindingKind.REORDERED_ENTRIES,
                    line,
                    index,
                    f"line {line}: entry {index} comes after entry {highest} (line {highest_line}): "
                    "entries were reordered",
                )
            if index > highest:
                highest, highest_line = index, line
        missing = [i for i in range(highest + 1) if i not in line_of]
        unreadable = {p for p in range(n) if claimed[p] < 0}
        for start, end in _runs(missing):
            if all(p in unreadable for p in range(start, end + 1)):
                continue  # the entry is there, only unreadable (reported as modified)
            after = next((line_of[i] for i in range(end + 1, highest + 1) if i in line_of), None)
            self._removed(
                start,
                after if after is not None else 0,
                f"entries {start}..{end} are missing from the log"
                if end > start
                else f"entry {start} is missing from the log",
            )
        return damaged_from

    def _classify_mismatches(self, damaged_from: int) -> None:
        reported: set[int] = set()
        for m in self.mismatches:
            partner = self._matching_at_or_above(m.size)
            same_size_other = next(
                (o for o in self.mismatches if o.size == m.size and o.root != m.root and o is not m), None
            )
            if partner is not None or same_size_other is not None:
                self._fork(m, partner, same_size_other)
                continue
            if damaged_from < m.size:
                continue  # explained by a removed, reordered or unreadable entry (reported)
            suspect = m.last_match
            if suspect in reported:
                continue
            reported.add(suspect)
            line = self.leaf_lines[suspect] if suspect < len(self.leaf_lines) else m.line
            self.add(
                FindingKind.MODIFIED_ENTRY,
                line,
                suspect,
                f"line {m.line}: checkpoint for size {m.size} does not match the recomputed tree: "
                f"an entry in index range [{suspect}, {m.size - 1}] was modified "
                f"(first suspect: entry {suspect} at line {line})",
                last_index=m.size - 1 if m.size - 1 > suspect else None,
            )

    def _matching_at_or_above(self, size: int) -> tuple[int, str] | None:
        """The log's matching checkpoint of exactly `size`, else the smallest above it."""
        best: tuple[int, int] | None = None
        for s, off in zip(self.match_sizes, self.match_offsets, strict=True):
            if s >= size and (best is None or s < best[0]):
                best = (s, off)
                if s == size:
                    break
        if best is None:
            return None
        return best[0], self._note_at(best[1])

    def _note_at(self, offset: int) -> str:
        with self.path.open("rb") as fh:
            fh.seek(offset)
            record = decode_record(fh.readline().rstrip(b"\n"), line_number=0)
        assert record.checkpoint is not None
        return record.checkpoint

    def _fork(self, m: _Mismatch, partner: tuple[int, str] | None, other: _Mismatch | None) -> None:
        if partner is not None:
            size, note = partner
            evidence = [m.note, note, *self._fork_proof(m.size, size)]
            detail = f"the log's own checkpoint for size {size} commits to a different tree"
        else:
            assert other is not None
            evidence = [m.note, other.note]
            detail = f"another checkpoint in the log (line {other.line}) has the same size and another root"
        self.add(
            FindingKind.FORK,
            m.line,
            m.size - 1 if m.size else None,
            f"line {m.line}: validly signed checkpoint for size {m.size} is inconsistent with "
            f"this log: {detail}. Both signed checkpoints are attached as proof",
            tuple(evidence),
        )

    def _fork_proof(self, old_size: int, new_size: int) -> list[str]:
        """The log's own consistency proof from `old_size`: it commits to the log's root there."""
        if old_size == 0 or old_size > self.tree.size:
            return []
        root = self.tree.root(old_size)
        lines = [f"log root at size {old_size}: {base64.b64encode(root).decode('ascii')}"]
        if old_size < new_size:
            proof = self.tree.consistency_proof(old_size, new_size)
            lines.append(
                f"consistency proof {old_size} -> {new_size} (verifies against that root and the "
                "log's checkpoint): " + " ".join(base64.b64encode(h).decode("ascii") for h in proof)
            )
        return lines

    def _trusted(self, item: TrustedCheckpoint) -> None:
        attested = [k for k in self.key_order if k.attested is not None]
        try:
            verified = open_note(item.note, [k.verifier for k in attested]) if attested else None
        except FedSealError:
            verified = None
        if verified is None:
            self._untrusted(item)
            return
        try:
            cp = Checkpoint.parse_body(verified.text)
        except FedSealError as exc:
            self._untrusted(item, str(exc))
            return
        if cp.size > self.tree.size or cp.size > self.covered:
            self.trusted_results.append(TrustedCheckpointResult(item.source, cp.size, "rollback"))
            self.add(
                FindingKind.ROLLBACK,
                None,
                self.covered,
                f"trusted checkpoint {item.source} shows {cp.size} entries, but this log's "
                f"signed checkpoints cover only {self.covered}: the log was truncated or rolled back",
                (item.note,),
            )
            return
        if self.tree.root(cp.size) == cp.root_hash:
            self.trusted_results.append(TrustedCheckpointResult(item.source, cp.size, "consistent"))
            return
        partner = self._matching_at_or_above(cp.size)
        assert partner is not None  # covered >= cp.size
        size, note = partner
        self.trusted_results.append(TrustedCheckpointResult(item.source, cp.size, "fork"))
        self.add(
            FindingKind.FORK,
            None,
            cp.size - 1 if cp.size else None,
            f"trusted checkpoint {item.source} (size {cp.size}) and this log's checkpoint for size "
            f"{size} are both validly signed but describe different trees. Both are attached as proof",
            (item.note, note, *self._fork_proof(cp.size, size)),
        )

    def _untrusted(self, item: TrustedCheckpoint, why: str = "") -> None:
        size: int | None = None
        try:
            size = Checkpoint.parse_body(item.note.rpartition("\n\n")[0] + "\n").size
        except FedSealError:
            size = None
        if size is not None and size > self.tree.size:
            self.trusted_results.append(TrustedCheckpointResult(item.source, size, "rollback"))
            self.add(
                FindingKind.ROLLBACK,
                None,
                self.tree.size,
                f"trusted checkpoint {item.source} shows {size} entries, signed by a key this log "
                f"does not contain; the log has only {self.tree.size} entries: it was cut, "
                "possibly before a key handover",
                (item.note,),
            )
            return
        self.trusted_results.append(TrustedCheckpointResult(item.source, size, "untrusted"))
        self.add(
            FindingKind.UNTRUSTED_CHECKPOINT,
            None,
            None,
            f"trusted checkpoint {item.source} is not signed by any attested key of this log"
            + (f" ({why})" if why else ""),
            (item.note,),
        )

    def result(self) -> _AuditResult:
        # What the log's entries and checkpoints show first; the round story after (it is
        # usually a consequence of the former). Each group keeps log order.
        findings = sorted(self.findings, key=lambda f: f.kind in _CONSEQUENCES)
        insecure = any(k.attested is not None and k.attested.insecure for k in self.key_order)
        report = AuditReport(
            path=str(self.path),
            policy_name=self.policy.name,
            log_origin=self.origin,
            audited_at=self.now.astimezone(dt.UTC).isoformat(timespec="seconds"),
            entries=self.tree.size,
            checkpoints_verified=self.checkpoints_verified,
            root_hash=self.tree.root(self.tree.size),
            latest_checkpoint=self.latest.note if self.latest is not None else None,
            insecure_simulated=insecure,
            keys=tuple(k.summary() for k in self.key_order),
            handovers=tuple(self.handovers),
            tail_drops=tuple(self.tail_drops),
            rounds=tuple(r.summary() for r in sorted(self.rounds.values(), key=lambda r: r.round_id)),
            trusted=tuple(self.trusted_results),
            findings=tuple(findings),
            operator_actions=tuple(self.access.actions),
            enrolments=tuple(self.access.enrolments),
        )
        return _AuditResult(report, self.tree, tuple(self.key_order), self.latest)


def _runs(values: list[int]) -> Iterator[tuple[int, int]]:
    """Contiguous runs (start, end) of a sorted list of integers."""
    if not values:
        return
    start = end = values[0]
    for v in values[1:]:
        if v != end + 1:
            yield start, end
            start = v
        end = v
    yield start, end


def _ms_text(ms: int) -> str:
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch"
