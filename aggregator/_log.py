"""The aggregator's append-only, signed audit log (writer side).

File format: see fedseal/logformat.py. Every append writes the entry's line and a fresh
checkpoint (C2SP tlog-checkpoint signed by the enclave's log key) and fsyncs both before
it returns, so no receipt is ever handed out for an entry that is not on disk.

This first cut starts a new log file per enclave start and refuses to write into an
existing, non-empty one; resuming a log across restarts (key handover) is tracked as its
own issue.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal.checkpoint import Checkpoint, TlogProof, sign_checkpoint
from fedseal.errors import FedSealError
from fedseal.logformat import (
    EntryKind,
    LogEntry,
    encode_checkpoint_record,
    encode_entry_record,
    utc_now_text,
)
from fedseal.merkle import MerkleTree
from fedseal.note import NoteSigner

__all__ = ["AppendResult", "AuditLog", "AuditLogError"]


class AuditLogError(FedSealError):
    """The audit log cannot be opened or written; the aggregator must stop accepting updates."""


@dataclass(frozen=True)
class AppendResult:
    entry: LogEntry
    leaf_data: bytes
    tree_size: int
    checkpoint_note: str

    def receipt(self, log: AuditLog) -> TlogProof:
        """A C2SP tlog-proof of this entry against the checkpoint written with it."""
        return TlogProof(
            extra=self.leaf_data,
            index=self.entry.index,
            proof=tuple(log.inclusion_proof(self.entry.index, self.tree_size)),
            checkpoint_note=self.checkpoint_note,
        )


class AuditLog:
    def __init__(self, path: Path, origin: str, log_key: Ed25519PrivateKey) -> None:
        self._path = path
        self._origin = origin
        self._signer = NoteSigner(origin, log_key)
        self._tree = MerkleTree()
        self._lock = threading.Lock()
        self._failed = False
        try:
            # O_EXCL-like refusal of an existing non-empty log: never rewrite what is there.
            if path.exists() and path.stat().st_size > 0:
                raise AuditLogError(
                    f"audit log {path} already has entries; start the aggregator with a new "
                    "--log path (resuming an existing log is not supported yet)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise AuditLogError(f"cannot open audit log {path}: {exc.strerror}") from exc

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
    def size(self) -> int:
        with self._lock:
            return self._tree.size

    def append(self, kind: EntryKind, fields: Mapping[str, Any]) -> AppendResult:
        """Append one entry and a checkpoint covering it; durable when this returns."""
        with self._lock:
            if self._failed:
                raise AuditLogError("the audit log failed earlier; no further entries are accepted")
            entry = LogEntry(self._tree.size, utc_now_text(), kind, dict(fields))
            leaf = entry.leaf_data()
            self._tree.append(leaf)
            size = self._tree.size
            note = sign_checkpoint(Checkpoint(self._origin, size, self._tree.root(size), ()), self._signer)
            self._write(encode_entry_record(entry) + encode_checkpoint_record(note))
            return AppendResult(entry, leaf, size, note)

    def checkpoint(self, size: int | None = None) -> tuple[int, str]:
        """A signed checkpoint for `size` (default: the current size)."""
        with self._lock:
            n = self._tree.size if size is None else size
            if not 0 <= n <= self._tree.size:
                raise AuditLogError(f"tree size {n} is beyond the log's size {self._tree.size}")
            root = self._tree.root(n)
        return n, sign_checkpoint(Checkpoint(self._origin, n, root, ()), self._signer)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            if not 0 <= index < size <= self._tree.size:
                raise AuditLogError(f"no inclusion proof for index {index} in tree size {size}")
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            if not 0 < old_size <= new_size <= self._tree.size:
                raise AuditLogError(f"no consistency proof from size {old_size} to {new_size}")
            return self._tree.consistency_proof(old_size, new_size)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            # The in-memory tree is now ahead of the file: stop for good rather than
            # hand out receipts for entries that may not be durable.
            self._failed = True
            raise AuditLogError(f"cannot write audit log {self._path}: {exc.strerror}") from exc
