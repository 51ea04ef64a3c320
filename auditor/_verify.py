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
* identity and access (auditor/_access.py): an accepted update whose site signature
  does not verify under a key enrolled for it at that point: `bad_update_signature`; an
  operator action not signed by a recorded principal allowed to perform it:
  `unauthorized_action`; enrolment or principals that change without a signed request:
  `inconsistent_access`;
* an accepted update whose adapter spec digest is neither its round's nor that of a LoRA
  rank the round allows (`client_ranks`, derived as in fedseal.roundconfig): `inconsistent_round`;
* async weighting (aggregator/_rounds.py, "Staleness"): an accepted update whose recorded
  `staleness` is not the number of releases between its base's and its entry, or whose
  base or staleness its round must have refused: `wrong_staleness`;
* an entry that does not decode under the log schema (fedseal/logschema.py: a missing,
  unknown or mistyped field, a value out of range, a round config that is not exactly
  what the enclave writes): `malformed_entry`, with the entry index and the field. It
  keeps its place in the tree, so the checkpoints still say whether it was modified;
* a `round_closed` whose enclave-signed provenance statement (fedseal/provenance.py) does
  not verify under its enclave's attested log key, or says other than the log:
  `invalid_provenance` (auditor/_provenance.py);
* the release gate, re-verified (auditor/_release.py): an approval or refusal not
  validly signed by a listed approver for this round's aggregate, or a second decision:
  `invalid_approval`; a release without `min_approvals` valid approvals, a withholding
  without a valid refusal: `invalid_release`;
* per-round keys (auditor/_roundkeys.py): a `round_opened` entry without a round key, with
  one another round used, or whose signature does not verify under the log key of the
  enclave that opened the round: `invalid_round_key`;
* DP (auditor/_dpcheck.py): a budget, spend, clip, grid step, noise stddev or denominator
  that its own re-derivation from the logged numbers does not give: `invalid_dp_spend`.

Key handovers are reported with the consistency proof from the old key's last checkpoint
to the new key's first, which the auditor recomputes and verifies.

The work is split by concern: `LogTree` (auditor/_tree.py: leaves, roots, sequence,
forks), `KeyChain` (_keychain.py: keys, handovers, checkpoint signers), `RoundStory`
(_rounds.py), `ReleaseGate` (_release.py: DP spend and approvals) and `AccessAuditor`
(_access.py); `_Auditor` below reads the file once and hands each line to them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from attestation import CollateralFetcher, Policy
from fedseal.canonical import b64encode
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import ENTRY_RECORD_PREFIX, EntryKind, LogEntry, decode_record
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
from fedseal.merkle import MerkleTree

from ._access import AccessAuditor
from ._findings import Finding, FindingKind, Findings
from ._keychain import KeyChain, KeyState
from ._provenance import ProvenanceChecker
from ._release import ReleaseGate
from ._report import (
    AuditReport,
    Handover,
    KeySummary,
    LogVerificationError,
    RoundSummary,
    TrustedCheckpoint,
    TrustedCheckpointResult,
    VerifiedLog,
)
from ._roundkeys import RoundKeyAuditor
from ._rounds import RoundStory
from ._tree import Latest, LogTree

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW",
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
    fetcher: CollateralFetcher | None = None,
) -> AuditReport:
    """Check everything and return the report; never stops at the first finding.

    `now` (aware; default: the current time) is the audit time that checkpoint timestamps
    must not exceed by more than `max_clock_skew` seconds. Raises OSError if the file
    cannot be read. Evidence collateral comes from the log's bundles alone unless a
    `fetcher` is given (see `attestation.collateral_fetcher`).
    """
    return _audit(path, policy, trusted, now, max_clock_skew, progress, fetcher).report


@dataclass
class _AuditResult:
    """The report, plus what `check-receipt` needs from the audit."""

    report: AuditReport
    tree: MerkleTree
    keys: tuple[KeyState, ...]
    latest: Latest | None


def _audit(
    path: Path,
    policy: Policy,
    trusted: Sequence[TrustedCheckpoint],
    now: dt.datetime | None,
    max_clock_skew: float,
    progress: ProgressCallback | None,
    fetcher: CollateralFetcher | None = None,
) -> _AuditResult:
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise FormatError("the audit time must be timezone-aware")
    auditor = _Auditor(path, policy, moment, max_clock_skew, fetcher)
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


class _Auditor:
    """Reads the log once and hands every line to the part that judges it."""

    def __init__(
        self,
        path: Path,
        policy: Policy,
        now: dt.datetime,
        max_clock_skew: float,
        fetcher: CollateralFetcher | None = None,
    ) -> None:
        self.path = path
        self.policy = policy
        self.now = now
        self.findings = Findings()
        self.tree = LogTree(path, self.findings)
        self.access = AccessAuditor()
        self.chain = KeyChain(
            self.findings, self.tree.tree, self.access, policy, now, max_clock_skew, fetcher=fetcher
        )
        self.gate = ReleaseGate(self.findings)
        self.rounds = RoundStory(self.findings, self.gate)
        self.round_keys = RoundKeyAuditor(self.findings)
        self.provenance = ProvenanceChecker(self.findings)
        self.tail_drops: list[dict[str, object]] = []

    def read(self, progress: ProgressCallback | None) -> None:
        total = self.path.stat().st_size
        for number, offset, line, complete in _lines(self.path):
            if progress is not None and number % _PROGRESS_EVERY == 0:
                progress(number, offset, total)
            if not complete:
                self.findings.add(
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
                position = self.tree.leaf(record.leaf_data, number, record.entry.index)
                self._entry(record.entry, position, number)
            else:
                assert record.checkpoint is not None
                signed = self.chain.checkpoint(record.checkpoint, number)
                if signed is not None and self.tree.checkpoint(signed, number, offset):
                    self.chain.matched(signed, number)
        if progress is not None:
            progress(len(self.tree.leaf_lines), total, total)

    def _unreadable(self, number: int, line: bytes, exc: FedSealError) -> None:
        if not line.startswith(ENTRY_RECORD_PREFIX):
            self.findings.add(
                FindingKind.MALFORMED_RECORD,
                number,
                None,
                f"line {number} is neither an entry nor a checkpoint record ({exc})",
            )
            return
        # The entry keeps its place in the tree, so later findings still name the right
        # entries, and the checkpoints decide whether these bytes are the ones signed
        # (modified_entry); what it says cannot be checked: it is a finding of its own.
        index = exc.index if isinstance(exc, EntryFieldError) else None
        field = exc.field if isinstance(exc, EntryFieldError) else None
        position = self.tree.leaf(line[len(ENTRY_RECORD_PREFIX) : -1], number, index)
        named = index if index is not None else position
        self.findings.add(
            FindingKind.MALFORMED_ENTRY,
            number,
            named,
            f"line {number}: entry {named} does not decode, so nothing it says can be checked: {exc}",
            field=field,
        )

    def _entry(self, entry: LogEntry, position: int, number: int) -> None:
        if position == 0 and entry.kind is not EntryKind.ENCLAVE_STARTED:
            self.findings.add(
                FindingKind.MISSING_ENCLAVE_START,
                number,
                position,
                "the first entry must be 'enclave_started' (it carries the attested log key)",
            )
        body = entry.body
        if isinstance(body, EnclaveStarted):
            self.chain.enclave(entry, body, position, number)
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
        elif isinstance(body, RoundOpened | UpdateAccepted | UpdateRejected | RoundClosed | RoundFailed):
            if isinstance(body, RoundOpened):
                current = self.chain.current
                log_key = current.verifier.public_key_bytes if current is not None else None
                self.round_keys.opened(entry, body, number, self.chain.origin, log_key)
            self.rounds.entry(entry, body, number, self.chain.current_entry)
            if isinstance(body, RoundOpened | UpdateAccepted | RoundClosed):
                self.provenance.entry(entry, body, number, self.chain.current, self.chain.origin)
        elif isinstance(
            body, DpBudgetRecorded | DpRoundRefused | ApprovalRecorded | AggregateReleased | AggregateWithheld
        ):
            self.gate.entry(entry, body, number, self.chain.origin)
        if entry.kind in _ACCESS_KINDS:
            for problem in self.access.entry(entry):
                self.findings.add(
                    FindingKind(problem.kind.value), number, entry.index, f"line {number}: {problem.message}"
                )
        self.rounds.track_release(entry)

    def finish(self, trusted: Sequence[TrustedCheckpoint]) -> None:
        self.tree.finish(trusted, self.chain.attested_verifiers())

    def result(self) -> _AuditResult:
        keys = self.chain.order
        latest = self.tree.latest
        report = AuditReport(
            path=str(self.path),
            policy_name=self.policy.name,
            log_origin=self.chain.origin,
            audited_at=self.now.astimezone(dt.UTC).isoformat(timespec="seconds"),
            entries=self.tree.size,
            checkpoints_verified=self.tree.checkpoints_verified,
            root_hash=self.tree.tree.root(self.tree.size),
            latest_checkpoint=latest.note if latest is not None else None,
            insecure_simulated=any(k.attested is not None and k.attested.insecure for k in keys),
            keys=tuple(k.summary() for k in keys),
            handovers=tuple(self.chain.handovers),
            tail_drops=tuple(self.tail_drops),
            rounds=self.rounds.summaries(),
            trusted=tuple(self.tree.trusted_results),
            findings=self.findings.ordered(),
            operator_actions=tuple(self.access.actions),
            enrolments=tuple(self.access.enrolments),
        )
        return _AuditResult(report, self.tree.tree, tuple(keys), latest)


# Entries about identity and access; update_accepted is checked there too (its site signature).
_ACCESS_KINDS = frozenset(
    {
        EntryKind.ENROLMENT_RECORDED,
        EntryKind.PRINCIPALS_RECORDED,
        EntryKind.OPERATOR_ACTION,
        EntryKind.REVOCATION_LIST_LOADED,
        EntryKind.UPDATE_ACCEPTED,
    }
)
