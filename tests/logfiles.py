"""Audit log files in tests: reading their entries, forging one under the enclave's key."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal.canonical import canonical_json
from fedseal.checkpoint import Checkpoint, sign_checkpoint
from fedseal.logformat import ENTRY_RECORD_PREFIX, LogEntry, decode_record, encode_checkpoint_record
from fedseal.merkle import MerkleTree
from fedseal.note import NoteSigner, split_note


def log_entries(path: Path) -> list[LogEntry]:
    """Every entry of the log at `path`, in order."""
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            out.append(record.entry)
    return out


def resigned_log(
    source: Path,
    out: Path,
    origin: str,
    log_key: Ed25519PrivateKey,
    index: int,
    fields: dict[str, object] | None = None,
    *,
    raw: bytes | None = None,
) -> Path:
    """`source` with entry `index`'s fields replaced and every checkpoint re-signed by
    `log_key` over the changed tree: a forgery only the enclave's key could make, so what
    the auditor then finds is the semantic check under test, not a broken signature.

    With `raw`, the entry becomes exactly those bytes (the inner entry object, which need
    not be an object, canonical or even JSON; no newline) instead of `fields`."""
    assert (fields is None) != (raw is None), "give fields or raw"
    tree = MerkleTree()
    lines = []
    signer = NoteSigner(origin, log_key)
    for number, line in enumerate(source.read_bytes().splitlines(), 1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            entry = record.entry
            leaf = entry.leaf_data()
            if entry.index == index:
                # Written raw, not through the schema: a forgery need not be well formed.
                leaf = (
                    raw
                    if raw is not None
                    else canonical_json(
                        {
                            "v": 1,
                            "index": entry.index,
                            "time": entry.time,
                            "kind": entry.kind.value,
                            **(fields or {}),
                        }
                    )
                )
                assert b"\n" not in leaf
            tree.append(leaf)
            lines.append(ENTRY_RECORD_PREFIX + leaf + b"}\n")
        else:
            assert record.checkpoint is not None
            old = Checkpoint.parse_body(split_note(record.checkpoint)[0])
            assert old.size == tree.size
            fresh = Checkpoint(origin, tree.size, tree.root(), old.extensions)
            lines.append(encode_checkpoint_record(sign_checkpoint(fresh, signer)))
    out.write_bytes(b"".join(lines))
    return out
