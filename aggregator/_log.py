"""The aggregator's append-only, signed audit log (writer side).

File format: fedseal/logformat.py. A *commit* writes one or more entry lines and then one
checkpoint line (C2SP tlog-checkpoint signed by this enclave's log key, covering every
entry so far) in a single write, and fsyncs. Nothing is handed out (receipt, proof,
checkpoint) for an entry before its commit is on disk.

Group commit (`CommitMode.GROUP`, the default): appends made while a commit is being
written wait, then go out together in the next commit: one write, one fsync and one
signature for all of them. `CommitMode.PER_ENTRY` commits every entry on its own.

Appends have two steps so that a caller can fix the order of entries under its own lock
and wait for the disk outside it: `stage()` assigns the entry its index (the order in the
file) and returns a `PendingEntry`; `PendingEntry.wait()` blocks until the entry is
durable (and cosigned, when witnesses are configured) and returns its `AppendResult`.
`append()` does both.

Resuming (`AuditLog.open` on an existing file): the file is read and checked: every
checkpoint's root must match the recomputed tree and its key entry, the last checkpoint
of every signing key must verify. The log resumes after the last complete commit (the
last checkpoint that covers every entry before it). What follows it, the torn tail of a
commit that a crash interrupted, is moved to a side file next to the log and cut from
the log; no receipt can have covered it, since receipts wait for the checkpoint's fsync.
Anything else (a damaged record or a bad checkpoint *before* the last signed one, or a
valid checkpoint inside the tail) is not a torn tail: the log refuses to open and the
operator runs `fedseal-audit verify` to see what happened. Committed records are never
rewritten. The new enclave then calls `start_enclave()` (its `enclave_started` entry,
the key handover: see fedseal/logformat.py) before any other append.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal._atomicfile import create_durably, fsync_directory, write_all
from fedseal.canonical import parse_canonical
from fedseal.checkpoint import Checkpoint, TlogProof, sign_checkpoint
from fedseal.errors import FedSealError
from fedseal.logformat import (
    ENTRY_RECORD_PREFIX,
    CheckpointExtensions,
    LogEntry,
    decode_record,
    encode_checkpoint_record,
    utc_now_text,
)
from fedseal.logschema import (
    DpBudgetRecorded,
    EnclaveStarted,
    EntryBody,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    decode_body,
)
from fedseal.merkle import MerkleTree, leaf_hash
from fedseal.note import NoteSigner, NoteVerifier, open_note, split_note, unverified_signatures
from fedseal.roundconfig import ConfigError

__all__ = [
    "AppendResult",
    "AuditLog",
    "AuditLogError",
    "CommitMode",
    "Cosigner",
    "DpHistory",
    "DroppedTail",
    "LogHistory",
    "NotAnAuditLogError",
    "PendingEntry",
]

_CHECKPOINT_RECORD_PREFIX = b'{"checkpoint":'


class AuditLogError(FedSealError):
    """The audit log cannot be opened or written; the aggregator must stop accepting updates."""


class NotAnAuditLogError(AuditLogError, ConfigError):
    """--log names a file that is not a FedSeal audit log: refused untouched (a usage error)."""


class CommitMode(enum.Enum):
    GROUP = "group"  # concurrent appends share one write, fsync and checkpoint
    PER_ENTRY = "per_entry"  # every entry is its own commit


class Cosigner(Protocol):
    """Collects witness cosignatures for a freshly committed checkpoint."""

    def cosign(self, log: AuditLog, note: str, size: int) -> str:
        """Return `note` with any cosignature lines added; must not raise for a witness failure."""
        ...


@dataclass(frozen=True)
class DroppedTail:
    """The torn tail cut from the log on resume, and where its bytes were kept."""

    offset: int
    size: int
    digest: bytes
    complete_lines: int
    saved_to: Path


@dataclass(frozen=True)
class DpHistory:
    """The DP ledger earlier enclaves left in the log (aggregator/_dp.py `DpLedger.resume`)."""

    budgets: tuple[Mapping[str, Any], ...]  # every `dp_budget` entry's budget (a job has one)
    spends: tuple[Mapping[str, Any], ...]  # every `round_closed` entry's `dp`, in log order


@dataclass(frozen=True)
class LogHistory:
    """What a resumed log says about the enclaves before this one."""

    size: int  # entries kept
    last_checkpoint: str | None  # the last committed checkpoint (None: nothing was committed)
    last_round_id: int  # the largest round id ever opened (0: none)
    open_round: tuple[int, int] | None  # (round id, accepted updates) of a round left open
    dropped: DroppedTail | None
    dp: DpHistory | None = None  # None: no DP round ever opened


@dataclass(frozen=True)
class AppendResult:
    entry: LogEntry
    leaf_data: bytes
    tree_size: int
    checkpoint_note: str

    def receipt(self, log: AuditLog) -> TlogProof:
        """A C2SP tlog-proof of this entry against the checkpoint of its commit."""
        return TlogProof(
            extra=self.leaf_data,
            index=self.entry.index,
            proof=tuple(log.inclusion_proof(self.entry.index, self.tree_size)),
            checkpoint_note=self.checkpoint_note,
        )


@dataclass
class PendingEntry:
    """A staged entry: its place in the log is fixed; `wait()` for it to be durable."""

    log: AuditLog
    entry: LogEntry
    leaf_data: bytes
    _result: AppendResult | None = field(default=None, repr=False)

    def wait(self) -> AppendResult:
        if self._result is None:
            size, note = self.log._wait_published(self.entry.index + 1)
            self._result = AppendResult(self.entry, self.leaf_data, size, note)
        return self._result


class AuditLog:
    """Writer of one log file. Use `AuditLog.open()`, then `start_enclave()` once."""

    def __init__(
        self,
        path: Path,
        origin: str,
        log_key: Ed25519PrivateKey,
        *,
        commit_mode: CommitMode = CommitMode.GROUP,
        cosigner: Cosigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._origin = origin
        self._signer = NoteSigner(origin, log_key)
        self._mode = commit_mode
        self._cosigner = cosigner
        self._clock = clock
        self._tree = MerkleTree()
        self._offsets = array("Q")  # file offset of every entry line, for entry_leaf()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[bytes] = deque()  # staged entry lines, in index order
        self._committing = False
        self._failed = False
        self._durable_size = 0  # entries on disk under a checkpoint
        self._published_size = 0  # durable and (if witnesses) offered for cosigning
        self._published_note = ""
        self._file_size = 0
        self._key_entry: int | None = None
        self._fd = -1
        self.history = self._open_file()

    @classmethod
    def open(
        cls,
        path: Path,
        origin: str,
        log_key: Ed25519PrivateKey,
        *,
        commit_mode: CommitMode = CommitMode.GROUP,
        cosigner: Cosigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AuditLog:
        """Create `path`, or resume it (see the module docstring); raises AuditLogError."""
        return cls(path, origin, log_key, commit_mode=commit_mode, cosigner=cosigner, clock=clock)

    # ----------------------------------------------------------------- properties
    @property
    def origin(self) -> str:
        return self._origin

    @property
    def path(self) -> Path:
        return self._path

    @property
    def verifier_key(self) -> str:
        return self._signer.verifier_key_string()

    @property
    def key_entry(self) -> int | None:
        """Index of this enclave's `enclave_started` entry (None before `start_enclave`)."""
        return self._key_entry

    @property
    def size(self) -> int:
        """Entries that are durable (on disk under a signed checkpoint)."""
        with self._cond:
            return self._durable_size

    # ----------------------------------------------------------------- appending
    def start_enclave(self, body: EnclaveStarted) -> AppendResult:
        """Append this enclave's `enclave_started` entry; its key signs from this entry on."""
        if not isinstance(body, EnclaveStarted):
            raise AuditLogError("start_enclave() appends an enclave_started entry only")
        with self._cond:
            if self._key_entry is not None:
                raise AuditLogError("this enclave has already started the log")
            self._key_entry = self._tree.size
            pending = self._stage_locked(body)
        return pending.wait()

    def stage(self, body: EntryBody) -> PendingEntry:
        """Fix the entry's place in the log; durable only once `wait()` returns."""
        if isinstance(body, EnclaveStarted):
            raise AuditLogError("an enclave_started entry is appended with start_enclave()")
        with self._cond:
            if self._key_entry is None:
                raise AuditLogError("start_enclave() must come before any other entry")
            return self._stage_locked(body)

    def append(self, body: EntryBody) -> AppendResult:
        """Append one entry; it is durable (and covered by a checkpoint) when this returns."""
        return self.stage(body).wait()

    def _stage_locked(self, body: EntryBody) -> PendingEntry:
        if self._failed:
            raise AuditLogError("the audit log failed earlier; no further entries are accepted")
        now = self._clock()
        # Encoded, then decoded strictly before it is written: a body whose values are out of
        # range (the dataclasses do not check on construction) is refused here, so the
        # enclave cannot log what an auditor could not read back (fedseal/logschema.py).
        entry = LogEntry(self._tree.size, utc_now_text(_utc(now)), decode_body(body.kind, body.to_fields()))
        leaf = entry.leaf_data()
        self._tree.append(leaf)
        self._queue.append(ENTRY_RECORD_PREFIX + leaf + b"}\n")
        return PendingEntry(self, entry, leaf)

    def _wait_published(self, target: int) -> tuple[int, str]:
        """Block until the first `target` entries are durable; the leader writes the commit."""
        with self._cond:
            while self._published_size < target:
                if self._failed:
                    raise AuditLogError("the audit log failed; the entry is not durable")
                if self._committing or not self._queue:
                    self._cond.wait()
                    continue
                self._commit_locked()
            return self._published_size, self._published_note

    def _commit_locked(self) -> None:
        """Write the queued entries (all, or one in PER_ENTRY mode) and a checkpoint; fsync.

        Called with the lock held; releases it for the write (and the witnesses) so that
        other appends can stage the next commit meanwhile.
        """
        assert self._key_entry is not None
        count = 1 if self._mode is CommitMode.PER_ENTRY else len(self._queue)
        lines = [self._queue.popleft() for _ in range(count)]
        size = self._durable_size + count
        root = self._tree.root(size)
        key_entry = self._key_entry
        offsets = array("Q")
        position = self._file_size
        for line in lines:
            offsets.append(position)
            position += len(line)
        self._committing = True
        self._cond.release()
        failure: BaseException | None = None
        try:
            extensions = CheckpointExtensions(int(self._clock() * 1000), key_entry).lines()
            note = sign_checkpoint(Checkpoint(self._origin, size, root, extensions), self._signer)
            record = encode_checkpoint_record(note)
            self._write(b"".join(lines) + record)
        except BaseException as exc:
            failure = exc
        self._cond.acquire()
        if failure is not None:
            # The in-memory tree is now ahead of the file: stop for good rather than hand
            # out receipts for entries that may not be durable.
            self._failed = True
            self._committing = False
            self._cond.notify_all()
            raise failure
        self._offsets.extend(offsets)
        self._file_size = position + len(record)
        self._durable_size = size
        if self._cosigner is not None:
            self._cond.release()
            try:
                note = self._cosigner.cosign(self, note, size)
            finally:
                self._cond.acquire()
                self._publish_locked(size, note)
        else:
            self._publish_locked(size, note)

    def _publish_locked(self, size: int, note: str) -> None:
        self._published_size = size
        self._published_note = note
        self._committing = False
        self._cond.notify_all()

    def _write(self, data: bytes) -> None:
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditLogError(f"cannot write audit log {self._path}: {exc.strerror}") from exc

    # ----------------------------------------------------------------- serving
    def checkpoint(self, size: int | None = None) -> tuple[int, str]:
        """A signed checkpoint for `size` (default: the latest, with any cosignatures).

        An earlier size gets a checkpoint signed now by this enclave's key: it rebuilt the
        tree from the file and checked it against the earlier enclaves' checkpoints.
        """
        with self._cond:
            if size is None or (size == self._published_size and self._published_note):
                if not self._published_note:
                    raise AuditLogError("the log has no checkpoint yet")
                return self._published_size, self._published_note
            if not 0 <= size <= self._durable_size:
                raise AuditLogError(f"tree size {size} is beyond the log's size {self._durable_size}")
            if self._key_entry is None:
                raise AuditLogError("the log has no signing key yet")
            root = self._tree.root(size)
            key_entry = self._key_entry
        extensions = CheckpointExtensions(int(self._clock() * 1000), key_entry).lines()
        return size, sign_checkpoint(Checkpoint(self._origin, size, root, extensions), self._signer)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._cond:
            if not 0 <= index < size <= self._durable_size:
                raise AuditLogError(f"no inclusion proof for index {index} in tree size {size}")
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._cond:
            if not 0 < old_size <= new_size <= self._durable_size:
                raise AuditLogError(f"no consistency proof from size {old_size} to {new_size}")
            return self._tree.consistency_proof(old_size, new_size)

    def entry_leaf(self, index: int) -> bytes:
        """The leaf data of durable entry `index`, read back from the file."""
        with self._cond:
            if not 0 <= index < self._durable_size:
                raise AuditLogError(f"entry {index} is not in the log (size {self._durable_size})")
            start = self._offsets[index]
            end = self._offsets[index + 1] if index + 1 < len(self._offsets) else self._file_size
            fd = self._fd
            try:
                line = os.pread(fd, end - start, start)
            except OSError as exc:
                raise AuditLogError(f"cannot read audit log {self._path}: {exc.strerror}") from exc
        # The line may be followed by the commit's checkpoint: keep the entry line only.
        line = line.split(b"\n", 1)[0]
        leaf = line[len(ENTRY_RECORD_PREFIX) : -1]
        if not line.startswith(ENTRY_RECORD_PREFIX) or self._tree.leaf_hash_at(index) != leaf_hash(leaf):
            raise AuditLogError(f"entry {index} on disk no longer matches the log's tree")
        return leaf

    def close(self) -> None:
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # ----------------------------------------------------------------- opening
    def _open_file(self) -> LogHistory | None:
        path = self._path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if not existed:
                fsync_directory(path.parent)
            length = os.fstat(self._fd).st_size
        except OSError as exc:
            raise AuditLogError(f"cannot open audit log {path}: {exc.strerror}") from exc
        if length == 0:
            return None
        try:
            history = self._resume(length)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        return history

    def _resume(self, length: int) -> LogHistory:
        scan = _Scanner(self._path, self._origin)
        with self._path.open("rb") as fh:
            scan.run(fh)
        dropped = None
        if scan.good_end < length:
            dropped = self._drop_tail(scan, length)
        self._tree = scan.tree
        del self._offsets[:]
        self._offsets.extend(scan.offsets[: scan.good_size])
        self._file_size = scan.good_end
        self._durable_size = self._published_size = scan.good_size
        self._published_note = scan.good_note or ""
        return LogHistory(
            size=scan.good_size,
            last_checkpoint=scan.good_note,
            last_round_id=scan.good_rounds.last_round_id,
            open_round=scan.good_rounds.open_round(),
            dropped=dropped,
            dp=scan.good_rounds.dp_history(),
        )

    def _drop_tail(self, scan: _Scanner, length: int) -> DroppedTail:
        with self._path.open("rb") as fh:
            fh.seek(scan.good_end)
            tail = fh.read(length - scan.good_end)
        committed = scan.committed_line_in(tail)
        if committed is not None:
            raise AuditLogError(
                f"audit log {self._path} is damaged before its last signed checkpoint "
                f"(near byte {scan.good_end}; a signed checkpoint follows at byte "
                f"{scan.good_end + committed}): this is not a torn tail, so it is not cut. "
                "Run `fedseal-audit verify` on it; start with a new --log once it is examined"
            )
        saved = _save_aside(self._path, scan.good_end, tail)
        try:
            os.ftruncate(self._fd, scan.good_end)
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditLogError(f"cannot cut the torn tail of {self._path}: {exc.strerror}") from exc
        # Only the newline-terminated lines count; a last partial line is the torn write.
        complete = tail.count(b"\n")
        # The tree also holds leaves of complete entry lines in the tail: drop them.
        if scan.tree.size > scan.good_size:
            scan.tree = _prefix_tree(scan.tree, scan.good_size)
        return DroppedTail(scan.good_end, len(tail), hashlib.sha256(tail).digest(), complete, saved)


# ----------------------------------------------------------------------------- resume scan


@dataclass
class _RoundsSeen:
    last_round_id: int = 0
    open_id: int | None = None
    open_accepted: int = 0
    dp_budgets: list[Mapping[str, Any]] = field(default_factory=list)
    dp_spends: list[Mapping[str, Any]] = field(default_factory=list)

    def copy(self) -> _RoundsSeen:
        return _RoundsSeen(
            self.last_round_id, self.open_id, self.open_accepted, list(self.dp_budgets), list(self.dp_spends)
        )

    def open_round(self) -> tuple[int, int] | None:
        return None if self.open_id is None else (self.open_id, self.open_accepted)

    def dp_history(self) -> DpHistory | None:
        if not self.dp_budgets and not self.dp_spends:
            return None
        return DpHistory(tuple(self.dp_budgets), tuple(self.dp_spends))

    def apply(self, entry: LogEntry) -> None:
        body = entry.body
        if isinstance(body, RoundOpened):
            self.last_round_id = max(self.last_round_id, body.round_id)
            self.open_id, self.open_accepted = body.round_id, 0
        elif isinstance(body, UpdateAccepted) and body.round_id == self.open_id:
            self.open_accepted += 1
        elif isinstance(body, RoundClosed | RoundFailed) and body.round_id == self.open_id:
            self.open_id = None
        if isinstance(body, DpBudgetRecorded):
            self.dp_budgets.append(body.budget)
        elif isinstance(body, RoundClosed) and body.dp is not None:
            # Every closed DP round spent, released or not (a gated one showed its metrics).
            self.dp_spends.append(body.dp)


class _Scanner:
    """Reads an existing log to find the last complete commit (see the module docstring)."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = path
        self.origin = origin
        self.tree = MerkleTree()
        self.offsets = array("Q")
        self.keys: dict[bytes, NoteVerifier] = {}  # key id -> verifier, every key seen
        self.key_entry: int | None = None  # the latest enclave_started index
        self.good_end = 0
        self.good_size = 0
        self.good_note: str | None = None
        self.good_rounds = _RoundsSeen()
        self.rounds = _RoundsSeen()
        # The last checkpoint of the current key whose signature is still to be checked.
        self._unchecked: tuple[str, int] | None = None

    def _damaged(self, line: int, why: str) -> AuditLogError:
        return AuditLogError(
            f"audit log {self.path} line {line}: {why}; it is damaged before its last signed "
            "checkpoint, so it is not resumed. Run `fedseal-audit verify` on it"
        )

    def _not_a_log(self, why: str) -> NotAnAuditLogError:
        return NotAnAuditLogError(
            f"--log {self.path} is not a FedSeal audit log ({why}); it was left untouched: "
            "name a new file or an existing log"
        )

    def run(self, fh: BinaryIO) -> None:
        # A log starts with an entry record, even torn in its first write: anything else is
        # some other file, refused before a line of it is read.
        if not ENTRY_RECORD_PREFIX.startswith(fh.read(len(ENTRY_RECORD_PREFIX))):
            raise self._not_a_log("it does not start with a log entry")
        fh.seek(0)
        self._read(fh)
        # Whatever stopped the reading, the last kept checkpoint's signature must verify.
        self._check_signature()

    def _read(self, fh: BinaryIO) -> None:
        offset = 0
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return  # a partial last line: the torn tail starts at good_end
            line = raw[:-1]
            try:
                record = decode_record(line, line_number=number)
            except FedSealError:
                record = None
            if number == 1 and (
                record is None
                or record.entry is None
                or record.entry.index != 0
                or not isinstance(record.entry.body, EnclaveStarted)
            ):
                # Never cut into a file that is not a log at all (a wrong --log path).
                raise self._not_a_log("its first line is no enclave_started entry")
            # Anything unexpected ends the readable part: the tail starts at good_end, and
            # the caller refuses to cut it if a signed checkpoint follows (then it is damage).
            if record is None:
                return
            if record.entry is not None:
                entry = record.entry
                if entry.index != self.tree.size or not self._entry(entry):
                    return
                assert record.leaf_data is not None
                self.tree.append(record.leaf_data)
                self.offsets.append(offset)
                self.rounds.apply(entry)
            else:
                assert record.checkpoint is not None
                if not self._checkpoint(record.checkpoint, number):
                    return
                self.good_end = offset + len(raw)
                self.good_size = self.tree.size
                self.good_note = record.checkpoint
                self.good_rounds = self.rounds.copy()
            offset += len(raw)

    def _entry(self, entry: LogEntry) -> bool:
        body = entry.body
        if not isinstance(body, EnclaveStarted):
            return self.key_entry is not None
        if body.log_origin != self.origin:
            raise AuditLogError(
                f"audit log {self.path} belongs to log origin {body.log_origin!r}, not "
                f"{self.origin!r}: start the aggregator with --log-origin {body.log_origin}"
            )
        # The previous key's last checkpoint must verify before the key changes.
        self._check_signature()
        try:
            key = NoteVerifier(self.origin, body.log_public_key)
        except FedSealError:
            return False
        self.keys[key.key_id] = key
        self.key_entry = entry.index
        return True

    def _checkpoint(self, note: str, number: int) -> bool:
        """Check a committed checkpoint; False if it cannot be one (then the tail starts here)."""
        try:
            cp = Checkpoint.parse_body(split_note(note)[0])
            ext = CheckpointExtensions.of(cp)
        except FedSealError:
            return False
        if (
            self.key_entry is None
            or cp.origin != self.origin
            or cp.size != self.tree.size
            or ext.key_entry != self.key_entry
            or self.tree.root(cp.size) != cp.root_hash
        ):
            return False
        self._unchecked = (note, number)
        return True

    def _check_signature(self) -> None:
        if self._unchecked is None:
            return
        note, number = self._unchecked
        self._unchecked = None
        try:
            open_note(note, list(self.keys.values()))
        except FedSealError as exc:
            raise self._damaged(number, f"checkpoint signature does not verify: {exc}") from exc

    def committed_line_in(self, tail: bytes) -> int | None:
        """Offset of a complete, validly signed checkpoint line inside `tail`, if any."""
        position = 0
        for raw in tail.splitlines(keepends=True):
            if raw.endswith(b"\n") and raw.startswith(_CHECKPOINT_RECORD_PREFIX):
                try:
                    obj = parse_canonical(raw[:-1], what="tail line")
                    note = obj["checkpoint"]
                    signed_by_known = any(s.key_id in self.keys for s in unverified_signatures(note))
                    if signed_by_known:
                        open_note(note, list(self.keys.values()))
                        return position
                except (FedSealError, KeyError, TypeError):
                    pass  # unreadable or unsigned: part of the torn write
            position += len(raw)
        return None


def _prefix_tree(tree: MerkleTree, size: int) -> MerkleTree:
    prefix = MerkleTree()
    for index in range(size):
        prefix.append_leaf_hash(tree.leaf_hash_at(index))
    return prefix


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _save_aside(path: Path, offset: int, tail: bytes) -> Path:
    """Keep the torn tail's bytes next to the log (never overwriting an earlier one)."""
    for attempt in range(1000):
        suffix = f".torn-{offset}" + (f"-{attempt}" if attempt else "")
        target = path.with_name(path.name + suffix)
        try:
            create_durably(target, tail, mode=0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise AuditLogError(f"cannot keep the torn tail aside in {target}: {exc.strerror}") from exc
        return target
    raise AuditLogError(f"too many torn-tail files next to {path}")
