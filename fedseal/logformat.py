"""The audit log's file format and entry kinds.

The log is one append-only file of lines. Each line is RFC 8785 canonical JSON of one record:

    {"entry": {...}}          a log entry: a leaf of the RFC 9162 Merkle tree
    {"checkpoint": "<note>"}  a C2SP tlog-checkpoint signed note for the tree so far

Canonical JSON never contains a raw newline, so lines frame records unambiguously. The
leaf data of an entry is the canonical JSON of the inner entry object (the substring
after `{"entry":`): the auditor re-derives it from the parsed value and refuses a line
that is not canonical.

Every entry has `v` (format version 1), `index` (its leaf index), `time` (UTC,
RFC 3339 with milliseconds), `kind` and kind-specific fields; `ENTRY_FIELDS` lists them.
Binary values are standard base64; digests are SHA-256.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedseal.canonical import canonical_json, parse_canonical
from fedseal.errors import FormatError

__all__ = [
    "ENTRY_FIELDS",
    "EntryKind",
    "LogEntry",
    "LogRecord",
    "RejectReason",
    "decode_record",
    "encode_checkpoint_record",
    "encode_entry_record",
    "utc_now_text",
]

FORMAT_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024 * 1024  # an enclave_started entry carries the evidence bundle


class EntryKind(enum.Enum):
    ENCLAVE_STARTED = "enclave_started"
    ROUND_OPENED = "round_opened"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    ROUND_CLOSED = "round_closed"
    ROUND_FAILED = "round_failed"


class RejectReason(enum.Enum):
    """Why an update was refused; recorded in the log and returned to the client."""

    MALFORMED = "malformed"
    UNKNOWN_ROUND = "unknown_round"
    ROUND_NOT_OPEN = "round_not_open"
    SPEC_MISMATCH = "spec_mismatch"
    OVERSIZE = "oversize"
    UNWRAP_FAILED = "unwrap_failed"
    TAMPERED = "tampered"
    TRUNCATED = "truncated"
    DUPLICATE = "duplicate"
    NOT_FINITE = "not_finite"
    CANCELLED = "cancelled"
    ROUND_FULL = "round_full"


# Required fields and their JSON types per kind (beyond v, index, time, kind).
ENTRY_FIELDS: Mapping[EntryKind, Mapping[str, type | tuple[type, ...]]] = {
    EntryKind.ENCLAVE_STARTED: {
        "log_origin": str,
        "hpke_public_key": str,
        "log_public_key": str,
        "evidence_bundle": str,  # base64 of the bundle bytes, bound to `challenge`
        "evidence_digest": str,
        "challenge": str,
        "insecure_simulated": bool,
    },
    EntryKind.ROUND_OPENED: {"round_id": int, "config": dict, "config_digest": str},
    EntryKind.UPDATE_ACCEPTED: {
        "round_id": int,
        "client_id": str,
        "ciphertext_digest": str,
        "ciphertext_size": int,
        "num_examples": int,
        "adapter_spec_digest": str,
        "idempotency_key_digest": str,
    },
    EntryKind.UPDATE_REJECTED: {
        "round_id": int,
        "client_id": str,
        "reason": str,
        "detail": str,
    },
    EntryKind.ROUND_CLOSED: {
        "round_id": int,
        "strategy": str,
        "participants": list,
        "total_examples": int,
        "aggregate_digest": str,
        "aggregate_size": int,
    },
    EntryKind.ROUND_FAILED: {"round_id": int, "reason": str, "accepted": int},
}


def utc_now_text(now: _dt.datetime | None = None) -> str:
    moment = now or _dt.datetime.now(_dt.UTC)
    return moment.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LogEntry:
    index: int
    time: str
    kind: EntryKind
    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        _check_fields(self.kind, self.fields, where=f"entry {self.index}")

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "index": self.index,
            "time": self.time,
            "kind": self.kind.value,
            **self.fields,
        }

    def leaf_data(self) -> bytes:
        """The bytes hashed into the Merkle tree for this entry."""
        return canonical_json(self.to_json_obj())

    @classmethod
    def from_json_obj(cls, obj: object, *, where: str = "entry") -> LogEntry:
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: must be a JSON object")
        if obj.get("v") != FORMAT_VERSION:
            raise FormatError(f"{where}: unsupported entry version {obj.get('v')!r}")
        index, time, kind_text = obj.get("index"), obj.get("time"), obj.get("kind")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise FormatError(f"{where}: 'index' must be a non-negative integer")
        if not isinstance(time, str):
            raise FormatError(f"{where}: 'time' must be a string")
        try:
            kind = EntryKind(kind_text)
        except ValueError:
            raise FormatError(f"{where}: unknown entry kind {kind_text!r}") from None
        fields = {k: v for k, v in obj.items() if k not in ("v", "index", "time", "kind")}
        return cls(index, time, kind, fields)

    @classmethod
    def from_leaf_data(cls, data: bytes, *, where: str = "entry") -> LogEntry:
        return cls.from_json_obj(parse_canonical(data, what=where), where=where)


def _check_fields(kind: EntryKind, fields: Mapping[str, Any], *, where: str) -> None:
    spec = ENTRY_FIELDS[kind]
    missing = sorted(set(spec) - set(fields))
    extra = sorted(set(fields) - set(spec))
    if missing or extra:
        raise FormatError(f"{where} ({kind.value}): missing fields {missing}, unknown fields {extra}")
    for name, expected in spec.items():
        value = fields[name]
        if expected is int and isinstance(value, bool):
            raise FormatError(f"{where} ({kind.value}): field {name!r} must be an integer")
        if not isinstance(value, expected):
            raise FormatError(f"{where} ({kind.value}): field {name!r} has the wrong type")


@dataclass(frozen=True)
class LogRecord:
    """One parsed line: exactly one of `entry` or `checkpoint` is set."""

    entry: LogEntry | None
    checkpoint: str | None
    leaf_data: bytes | None  # the exact bytes hashed as the leaf, for entries


def encode_entry_record(entry: LogEntry) -> bytes:
    return canonical_json({"entry": entry.to_json_obj()}) + b"\n"


def encode_checkpoint_record(note: str) -> bytes:
    return canonical_json({"checkpoint": note}) + b"\n"


def decode_record(line: bytes, *, line_number: int) -> LogRecord:
    """Parse one line (without its newline); errors name the line number."""
    where = f"line {line_number}"
    if len(line) > MAX_RECORD_BYTES:
        raise FormatError(f"{where}: record longer than {MAX_RECORD_BYTES} bytes")
    obj = parse_canonical(line, what=where)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise FormatError(f"{where}: a record must be an object with one key")
    if "entry" in obj:
        entry = LogEntry.from_json_obj(obj["entry"], where=where)
        return LogRecord(entry, None, entry.leaf_data())
    if "checkpoint" in obj:
        note = obj["checkpoint"]
        if not isinstance(note, str):
            raise FormatError(f"{where}: checkpoint must be a string")
        return LogRecord(None, note, None)
    raise FormatError(f"{where}: unknown record type {next(iter(obj))!r}")
