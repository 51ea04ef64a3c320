"""The key chain: which key may sign which checkpoint, and the handovers between enclaves.

Every signing key must come from an `enclave_started` entry whose evidence verifies under
the policy (auditor/_enclave.py); every later enclave's entry must hand over from
the last checkpoint of the one before (fedseal/logformat.py), which is proven with the
consistency proof from the old key's last checkpoint to the new key's first. A checkpoint
passes here when it is signed by the current, attested key, names that key's entry and
is not dated after the audit time; whether its root is the log's, `LogTree` decides.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from attestation import CollateralFetcher, Policy
from fedseal.checkpoint import Checkpoint
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import CheckpointExtensions, LogEntry
from fedseal.logschema import EnclaveStarted
from fedseal.merkle import MerkleTree, verify_consistency
from fedseal.note import NoteVerifier, SignatureLine, open_note, unverified_signatures

from ._access import AccessAuditor
from ._enclave import AttestedKey, KeyAttestationError, attest_enclave_entry
from ._findings import FindingKind, Findings
from ._report import Handover, KeySummary

__all__ = ["KeyChain", "KeyState", "SignedCheckpoint"]


@dataclass
class KeyState:
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


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint signed by the log's current, attested key; its root is not checked yet."""

    checkpoint: Checkpoint
    note: str
    key: KeyState


@dataclass
class _PendingHandover:
    entry_index: int
    old_key_entry: int
    new_key_entry: int
    old_size: int
    old_root: bytes
    old_note: str


class KeyChain:
    """Follows the log's `enclave_started` entries and judges every checkpoint's signer."""

    def __init__(
        self,
        findings: Findings,
        tree: MerkleTree,
        access: AccessAuditor,
        policy: Policy,
        now: dt.datetime,
        max_clock_skew: float,
        *,
        fetcher: CollateralFetcher | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.findings = findings
        self.tree = tree  # the recomputed tree, owned by LogTree; read here for handovers
        self.access = access
        self.policy = policy
        self.now = now
        self.max_future_ms = int((now.timestamp() + max_clock_skew) * 1000)
        self.keys: dict[bytes, KeyState] = {}
        self.order: list[KeyState] = []
        self.current: KeyState | None = None
        self.origin = ""
        self.pending: _PendingHandover | None = None
        self.handovers: list[Handover] = []

    @property
    def current_entry(self) -> int:
        """The `enclave_started` entry of the enclave writing now (-1 before the first)."""
        return self.current.entry_index if self.current is not None else -1

    def attested_verifiers(self) -> list[NoteVerifier]:
        return [k.verifier for k in self.order if k.attested is not None]

    # ------------------------------------------------------------------ enclaves
    def enclave(self, entry: LogEntry, body: EnclaveStarted, position: int, number: int) -> None:
        add = self.findings.add
        origin = body.log_origin
        if self.current is None and not self.origin:
            self.origin = origin
        elif origin != self.origin:
            add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: enclave_started for log origin {origin!r}, this log is {self.origin!r}",
            )
            return
        previous = body.previous_checkpoint
        if self.current is None:
            if previous is not None:
                add(
                    FindingKind.BROKEN_HANDOVER,
                    number,
                    position,
                    f"line {number}: the log's first enclave names a previous checkpoint: "
                    "the entries before it were removed",
                )
        else:
            self._handover(previous, position, number)
        try:
            verifier = NoteVerifier(origin, body.log_public_key)
        except FedSealError as exc:
            add(
                FindingKind.MALFORMED_ENTRY,
                number,
                position,
                f"line {number}: bad log key: {exc}",
                field="log_public_key",
            )
            return
        if verifier.key_id in self.keys:
            add(
                FindingKind.BROKEN_HANDOVER,
                number,
                position,
                f"line {number}: the log key of entry {self.keys[verifier.key_id].entry_index} is "
                "introduced again; every enclave makes fresh keys",
            )
            return
        self.access.enclave_started(body.log_public_key)
        state = KeyState(position, number, verifier, None)
        try:
            state.attested = attest_enclave_entry(entry, self.policy, fetcher=self.fetcher)
        except (KeyAttestationError, FormatError) as exc:
            state.failure = str(exc)
            add(FindingKind.ATTESTATION_FAILED, number, position, f"line {number}: {exc}")
        self.keys[verifier.key_id] = state
        self.order.append(state)
        self.current = state

    def _handover(self, previous: str | None, position: int, number: int) -> None:
        assert self.current is not None
        old = self.current

        def broken(message: str) -> None:
            self.findings.add(FindingKind.BROKEN_HANDOVER, number, position, f"line {number}: {message}")

        if previous is None:
            broken(
                "a new enclave took over without naming the previous enclave's last checkpoint "
                "(no key handover)"
            )
            return
        try:
            note = open_note(previous, [old.verifier])
            cp = Checkpoint.parse_body(note.text)
        except FedSealError as exc:
            broken(
                f"the handover's previous checkpoint is not signed by the key of entry "
                f"{old.entry_index}: {exc}"
            )
            return
        if cp.size != position or self.tree.root(position) != cp.root_hash:
            broken(
                f"the handover continues from a checkpoint of size {cp.size} that is not the "
                f"log's first {position} entries"
            )
            return
        self.pending = _PendingHandover(position, old.entry_index, position, cp.size, cp.root_hash, previous)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, note: str, number: int) -> SignedCheckpoint | None:
        """The checkpoint if the current attested key signed it; otherwise a finding and None."""
        add = self.findings.add
        sigs = _signature_lines(note)
        known = {
            s.key_id: self.keys[s.key_id] for s in sigs if s.key_id in self.keys and s.name == self.origin
        }
        if not known:
            who = ", ".join(f"{s.name}/{s.key_id.hex()}" for s in sigs) or "nobody"
            add(
                FindingKind.UNATTESTED_KEY,
                number,
                None,
                f"line {number}: checkpoint signed only by {who}: no enclave_started entry "
                "before it introduced that key",
            )
            return None
        try:
            verified = open_note(note, [k.verifier for k in known.values()])
            cp = Checkpoint.parse_body(verified.text)
            ext = CheckpointExtensions.of(cp)
        except FedSealError as exc:
            add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                None,
                f"line {number}: checkpoint does not verify: {exc}",
            )
            return None
        key = known[verified.signatures[0].key_id]
        last = cp.size - 1 if cp.size > 0 else None
        if cp.origin != self.origin or ext.key_entry != key.entry_index:
            add(
                FindingKind.BAD_CHECKPOINT_SIGNATURE,
                number,
                last,
                f"line {number}: checkpoint for origin {cp.origin!r} naming key entry "
                f"{ext.key_entry}, but it is signed by the key of entry {key.entry_index}",
            )
            return None
        if key.attested is None:
            if not key.reported_unattested:
                key.reported_unattested = True
                add(
                    FindingKind.UNATTESTED_KEY,
                    number,
                    last,
                    f"line {number}: checkpoint signed by the key of entry {key.entry_index}, "
                    f"whose evidence does not verify under policy {self.policy.name!r}",
                )
            return None
        if key is not self.current:
            if not key.reported_retired:
                key.reported_retired = True
                assert self.current is not None
                add(
                    FindingKind.RETIRED_KEY,
                    number,
                    last,
                    f"line {number}: checkpoint signed by the key of entry {key.entry_index} after "
                    f"entry {self.current.entry_index} handed the log over to a new key",
                )
            return None
        if ext.time_ms > self.max_future_ms:
            ahead = (ext.time_ms - self.now.timestamp() * 1000) / 1000
            add(
                FindingKind.FUTURE_TIMESTAMP,
                number,
                last,
                f"line {number}: checkpoint for size {cp.size} is dated {_ms_text(ext.time_ms)}, "
                f"{ahead:.0f} s after the audit time",
            )
        key.checkpoints += 1
        key.first_size = cp.size if key.first_size is None else key.first_size
        key.last_size = cp.size
        return SignedCheckpoint(cp, note, key)

    def matched(self, signed: SignedCheckpoint, number: int) -> None:
        """`signed` matches the recomputed tree: it may complete a pending handover."""
        pending = self.pending
        if pending is None or signed.key.entry_index != pending.new_key_entry:
            return
        self.pending = None
        size, root = signed.checkpoint.size, signed.checkpoint.root_hash
        proof: list[bytes] = []
        try:
            if pending.old_size > 0:
                proof = self.tree.consistency_proof(pending.old_size, size)
                verify_consistency(pending.old_size, size, proof, pending.old_root, root)
        except (FedSealError, ValueError) as exc:
            self.findings.add(
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
                new_checkpoint=signed.note,
                consistency_proof=tuple(proof),
            )
        )


def _signature_lines(note: str) -> list[SignatureLine]:
    """The parseable signature lines of a note (open_note checks the rest strictly)."""
    try:
        return list(unverified_signatures(note))
    except FedSealError:
        return []


def _ms_text(ms: int) -> str:
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch"
