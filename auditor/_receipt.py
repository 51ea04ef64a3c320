"""`check-receipt`: prove that a receipt's entry is still in the log's current tree.

A receipt (C2SP tlog-proof, fedseal/receipt.py) proves an entry was in the tree of the
checkpoint it carries. It still holds when (1) that checkpoint is signed by an attested
key of the log, (2) the inclusion proof leads to its root, and (3) the log's current
checkpoint, signed by an attested key, is consistent with it (RFC 9162 consistency
proof): then the entry is in the current tree too, at the same index. If the log was cut
below the receipt's size (rollback) or rewritten (fork), the check fails and says which.

Against a log file, the whole log is audited first (every key, every checkpoint) with
the receipt's checkpoint as a trusted one, so a rollback or fork is reported with
evidence. Against a running aggregator, the current key is attested with a fresh
challenge, and an older key (the receipt came from an enclave before a restart) through
its `enclave_started` entry, fetched with an inclusion proof in the current tree.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path

from attestation import AttestationError, Policy, verify_bundle
from fedseal.checkpoint import Checkpoint, TlogProof, open_checkpoint, verify_tlog_proof
from fedseal.errors import FedSealError, ReceiptError
from fedseal.logformat import CheckpointExtensions, LogEntry
from fedseal.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedseal.note import NoteVerifier, split_note, unverified_signatures

from ._enclave import KeyAttestationError, attest_enclave_entry
from ._endpoint import AuditorConnection
from ._verify import DEFAULT_MAX_CLOCK_SKEW, AuditReport, FindingKind, TrustedCheckpoint, _audit

__all__ = [
    "ReceiptCheck",
    "ReceiptCheckError",
    "check_receipt_at_endpoint",
    "check_receipt_in_log",
    "check_receipts_in_log",
]

_TOKEN = object()


class ReceiptCheckError(ReceiptError):
    """The receipt does not hold against the log; `finding` says why when the audit knows
    (`rollback`, `fork`, ...), `evidence` carries transferable proof (signed notes)."""

    def __init__(
        self,
        message: str,
        *,
        finding: FindingKind | None = None,
        evidence: tuple[str, ...] = (),
        report: AuditReport | None = None,
    ) -> None:
        super().__init__(message)
        self.finding = finding
        self.evidence = evidence
        self.report = report


@dataclass(frozen=True)
class ReceiptCheck:
    """A receipt that still holds; made only by the check functions of this module."""

    _token: InitVar[object]
    source: str
    entry: LogEntry
    receipt_checkpoint: Checkpoint
    current_checkpoint: str
    current_size: int
    consistency_proof: tuple[bytes, ...]

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("ReceiptCheck is made only by check_receipt_in_log/at_endpoint")

    @property
    def index(self) -> int:
        return self.entry.index


def _parse(receipt_text: str) -> tuple[TlogProof, Checkpoint, LogEntry]:
    try:
        proof = TlogProof.parse(receipt_text)
        if proof.extra is None:
            raise ReceiptCheckError("the receipt carries no log entry (no 'extra' line)")
        cp = Checkpoint.parse_body(split_note(proof.checkpoint_note)[0])
        entry = LogEntry.from_leaf_data(proof.extra, where="receipt entry")
    except ReceiptCheckError:
        raise
    except FedSealError as exc:
        raise ReceiptCheckError(f"the receipt is malformed: {exc}") from exc
    if entry.index != proof.index:
        raise ReceiptCheckError(
            f"the receipt's entry says index {entry.index}, its proof is for {proof.index}"
        )
    return proof, cp, entry


def check_receipt_in_log(
    receipt_text: str,
    log_path: Path,
    policy: Policy,
    *,
    now: dt.datetime | None = None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> ReceiptCheck:
    """Audit `log_path` and prove the receipt's entry is in its current tree; raise ReceiptCheckError."""
    (check,) = check_receipts_in_log([receipt_text], log_path, policy, now=now, max_clock_skew=max_clock_skew)
    return check


def check_receipts_in_log(
    receipt_texts: Sequence[str],
    log_path: Path,
    policy: Policy,
    *,
    now: dt.datetime | None = None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> tuple[ReceiptCheck, ...]:
    """`check_receipt_in_log` for many receipts with one audit of the log; raises at the first
    receipt that does not hold (ReceiptCheckError)."""
    parsed = [_parse(text) for text in receipt_texts]
    trusted = [
        TrustedCheckpoint(f"the checkpoint of receipt {i} (entry {entry.index})", proof.checkpoint_note)
        for i, (proof, _, entry) in enumerate(parsed)
    ]
    result = _audit(log_path, policy, trusted, now, max_clock_skew, None)
    report = result.report
    if report.findings:
        decisive = next(
            (f for f in report.findings if f.kind in (FindingKind.ROLLBACK, FindingKind.FORK)),
            report.findings[0],
        )
        raise ReceiptCheckError(
            f"the log does not verify, so the receipt cannot be checked against it: "
            f"[{decisive.kind.value}] {decisive.message}",
            finding=decisive.kind,
            evidence=decisive.evidence,
            report=report,
        )
    latest = result.latest
    assert latest is not None  # a log without findings has a verified checkpoint
    verifiers = [k.attested.verifier for k in result.keys if k.attested is not None]
    checks = []
    for proof, receipt_cp, entry in parsed:
        assert proof.extra is not None
        try:
            verify_tlog_proof(proof, proof.extra, verifiers, receipt_cp.origin)
            n, m = receipt_cp.size, latest.size
            hashes = result.tree.consistency_proof(n, m)
            verify_consistency(n, m, hashes, receipt_cp.root_hash, latest.root)
        except (FedSealError, ValueError) as exc:
            raise ReceiptCheckError(
                f"the receipt for entry {entry.index} does not hold against {log_path}: {exc}", report=report
            ) from exc
        if not hmac.compare_digest(result.tree.leaf_hash_at(entry.index), leaf_hash(proof.extra)):
            raise ReceiptCheckError(
                f"entry {entry.index} of {log_path} is not the receipt's entry", report=report
            )
        checks.append(
            ReceiptCheck(
                _TOKEN,
                source=str(log_path),
                entry=entry,
                receipt_checkpoint=receipt_cp,
                current_checkpoint=latest.note,
                current_size=m,
                consistency_proof=tuple(hashes),
            )
        )
    return tuple(checks)


def check_receipt_at_endpoint(
    receipt_text: str, endpoint: str, policy: Policy, *, timeout: float = 30.0
) -> ReceiptCheck:
    """Prove against a running aggregator that the receipt's entry is in its current tree.

    Raises ReceiptCheckError (the receipt does not hold), AttestationError (the
    aggregator's evidence does not satisfy the policy) or AuditEndpointError (unreachable).
    """
    proof, receipt_cp, entry = _parse(receipt_text)
    origin = receipt_cp.origin
    with AuditorConnection(endpoint, timeout=timeout) as conn:
        challenge = os.urandom(32)
        attested = verify_bundle(conn.get_attestation(challenge), policy, challenge)
        current_key = NoteVerifier(origin, attested.log_public_key)
        current_note = conn.get_checkpoint(0)
        try:
            current = open_checkpoint(current_note, [current_key], origin).checkpoint
        except FedSealError as exc:
            raise ReceiptCheckError(f"the aggregator's current checkpoint does not verify: {exc}") from exc
        m = current.size
        receipt_key = _receipt_key(conn, proof, receipt_cp, current_key, current, policy)
        try:
            assert proof.extra is not None
            verify_tlog_proof(proof, proof.extra, [receipt_key], origin)
        except FedSealError as exc:
            raise ReceiptCheckError(f"the receipt's own proof does not verify: {exc}") from exc
        n = receipt_cp.size
        if n > m:
            raise ReceiptCheckError(
                f"the aggregator's current checkpoint has {m} entries, fewer than the {n} of the "
                "receipt's checkpoint: the log was rolled back",
                finding=FindingKind.ROLLBACK,
                evidence=(proof.checkpoint_note, current_note),
            )
        reply = conn.get_consistency_proof(n, m)
    try:
        verify_consistency(n, m, reply.hashes, receipt_cp.root_hash, current.root_hash)
    except FedSealError as exc:
        raise ReceiptCheckError(
            f"the receipt's checkpoint (size {n}) and the aggregator's current one (size {m}) are "
            f"both validly signed but not consistent ({exc}): a fork",
            finding=FindingKind.FORK,
            evidence=(proof.checkpoint_note, current_note),
        ) from exc
    return ReceiptCheck(
        _TOKEN,
        source=endpoint,
        entry=entry,
        receipt_checkpoint=receipt_cp,
        current_checkpoint=current_note,
        current_size=m,
        consistency_proof=reply.hashes,
    )


def _receipt_key(
    conn: AuditorConnection,
    proof: TlogProof,
    receipt_cp: Checkpoint,
    current_key: NoteVerifier,
    current: Checkpoint,
    policy: Policy,
) -> NoteVerifier:
    """The attested key that signed the receipt's checkpoint (current, or an earlier one)."""
    signers = {s.key_id for s in unverified_signatures(proof.checkpoint_note)}
    if current_key.key_id in signers:
        return current_key
    # An earlier enclave's key: its enclave_started entry must be in the current tree and
    # its evidence must verify under the policy.
    try:
        index = CheckpointExtensions.of(receipt_cp).key_entry
        if index >= current.size:
            raise ReceiptCheckError(f"the receipt's key entry {index} is beyond the current tree")
        reply = conn.get_inclusion_proof(index, current.size, with_entry=True)
        verify_inclusion(leaf_hash(reply.entry), index, current.size, reply.hashes, current.root_hash)
        key = attest_enclave_entry(LogEntry.from_leaf_data(reply.entry, where="key entry"), policy)
    except ReceiptCheckError:
        raise
    except (KeyAttestationError, AttestationError) as exc:
        raise ReceiptCheckError(f"the key that signed the receipt is not attested: {exc}") from exc
    except FedSealError as exc:
        raise ReceiptCheckError(f"cannot establish the key that signed the receipt: {exc}") from exc
    if key.entry_index != index or key.verifier.key_id not in signers:
        raise ReceiptCheckError(
            f"the receipt's checkpoint is not signed by the key its key entry {index} attests"
        )
    return key.verifier
