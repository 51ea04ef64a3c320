"""The log as a tree: every leaf recomputed, every checkpoint's root compared with it.

`LogTree` holds the RFC 9162 tree of the entry lines as they are in the file (an entry
that does not decode keeps its place, so later findings still name the right entries),
the index each entry claims, and the checkpoints whose roots match or do not. From these
it finds entries changed after they were signed (`modified_entry`), taken out, moved or
repeated, entries no checkpoint covers, forks (two validly signed checkpoints that cannot
both describe one append-only log) and rollbacks against the checkpoints a caller trusts.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedseal.checkpoint import Checkpoint
from fedseal.errors import FedSealError
from fedseal.logformat import decode_record
from fedseal.merkle import MerkleTree
from fedseal.note import NoteVerifier, open_note, split_note

from ._findings import DAMAGE, FindingKind, Findings
from ._keychain import KeyState, SignedCheckpoint
from ._report import TrustedCheckpoint, TrustedCheckpointResult

__all__ = ["Latest", "LogTree"]


@dataclass
class _Mismatch:
    line: int
    size: int
    root: bytes
    note: str
    last_match: int  # the largest matching checkpoint size before it


@dataclass
class Latest:
    size: int
    root: bytes
    note: str
    key: KeyState


class LogTree:
    def __init__(self, path: Path, findings: Findings) -> None:
        self.path = path
        self.findings = findings
        self.tree = MerkleTree()
        self.leaf_lines = array("Q")
        self.claimed = array("q")  # the index each leaf's entry claims (-1: unreadable)
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
        self.latest: Latest | None = None
        self.trusted_results: list[TrustedCheckpointResult] = []

    @property
    def size(self) -> int:
        return self.tree.size

    def leaf(self, data: bytes, line: int, claimed: int | None) -> int:
        """Append an entry line's leaf; `claimed` is the index the entry names (None: unknown)."""
        position = self.tree.size
        self.tree.append(data)
        self.leaf_lines.append(line)
        self.claimed.append(claimed if claimed is not None else -1)
        return position

    def checkpoint(self, signed: SignedCheckpoint, number: int, offset: int) -> bool:
        """Whether the signed checkpoint's root is the recomputed one (else it is classified later)."""
        cp = signed.checkpoint
        if cp.size > self.tree.size:
            deficit = cp.size - self.tree.size
            if deficit != self.beyond_deficit:
                self.beyond_deficit = deficit
                self.beyond.append((number, self.tree.size, cp.size))
            return False
        if self.tree.root(cp.size) != cp.root_hash:
            self.mismatches.append(_Mismatch(number, cp.size, cp.root_hash, signed.note, self.last_match))
            return False
        self.checkpoints_verified += 1
        self.covered = max(self.covered, cp.size)
        self.last_match = max(self.last_match, cp.size)
        self.match_sizes.append(cp.size)
        self.match_offsets.append(offset)
        if self.latest is None or cp.size >= self.latest.size:
            self.latest = Latest(cp.size, cp.root_hash, signed.note, signed.key)
        return True

    # ------------------------------------------------------------------ conclusions
    def finish(self, trusted: Sequence[TrustedCheckpoint], verifiers: list[NoteVerifier]) -> None:
        """Sequence, coverage, forks and the trusted checkpoints (`verifiers`: the attested keys)."""
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
            self._trusted(item, verifiers)
        size = self.tree.size
        damaged = self.findings.any_of(DAMAGE)
        if size == 0:
            self.findings.add(FindingKind.MISSING_ENCLAVE_START, None, None, "the log has no entries")
        elif self.checkpoints_verified == 0:
            self.findings.add(FindingKind.NO_CHECKPOINT, None, None, "no checkpoint in the log verifies")
        elif self.covered < size and not damaged:
            # (With damage found, lost coverage is its consequence, already reported.)
            self.findings.add(
                FindingKind.UNCHECKPOINTED_ENTRIES,
                self.leaf_lines[self.covered],
                self.covered,
                f"entries {self.covered}..{size - 1} are not covered by any valid checkpoint",
            )

    def _removed(self, index: int, line: int, message: str) -> None:
        if index not in self.removed_at:
            self.removed_at.add(index)
            self.findings.add(FindingKind.REMOVED_ENTRY, line, index, message)

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
                self.findings.add(
                    FindingKind.DUPLICATED_ENTRY,
                    line,
                    index,
                    f"line {line}: entry {index} appears again (first at line {line_of[index]})",
                )
                continue
            line_of[index] = line
            if index < highest:
                self.findings.add(
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
            self.findings.add(
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
        self.findings.add(
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

    def _trusted(self, item: TrustedCheckpoint, verifiers: list[NoteVerifier]) -> None:
        try:
            verified = open_note(item.note, verifiers) if verifiers else None
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
            self.findings.add(
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
        self.findings.add(
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
            size = Checkpoint.parse_body(split_note(item.note)[0]).size
        except FedSealError:
            size = None
        if size is not None and size > self.tree.size:
            self.trusted_results.append(TrustedCheckpointResult(item.source, size, "rollback"))
            self.findings.add(
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
        self.findings.add(
            FindingKind.UNTRUSTED_CHECKPOINT,
            None,
            None,
            f"trusted checkpoint {item.source} is not signed by any attested key of this log"
            + (f" ({why})" if why else ""),
            (item.note,),
        )


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
