"""The audit log's file format, entry kinds and checkpoint extension lines.

The log is one append-only file of lines. Each line is RFC 8785 canonical JSON of one record:

    {"entry": {...}}          a log entry: a leaf of the RFC 9162 Merkle tree
    {"checkpoint": "<note>"}  a C2SP tlog-checkpoint signed note for the tree so far

Canonical JSON never contains a raw newline, so lines frame records unambiguously. The
leaf data of an entry is the canonical JSON of the inner entry object (the bytes after
`{"entry":` up to the record's closing brace): the auditor refuses a line that is not
canonical, so those bytes are the only encoding of the entry.

Every entry has `v` (format version 1), `index` (its leaf index), `time` (UTC,
RFC 3339 with milliseconds), `kind` and kind-specific fields: one typed body per kind in
`fedseal/logschema.py`, decoded strictly (`EntryFieldError` names the entry and the
field). Binary values are standard base64; digests are SHA-256.

A commit writes one or more entry lines, then one checkpoint line covering every entry
before it, then fsyncs. A log survives restarts: a new enclave appends an
`enclave_started` entry whose `previous_checkpoint` is the last checkpoint the previous
enclave signed (the key handover), and whose evidence is made for the challenge
`handover_challenge(previous_checkpoint)`, so the new key's attestation is bound to the
exact log state it continues. Every later checkpoint is signed by the new key.

Checkpoint extension lines (after the root hash line, in this order, both required):

    fedseal-time <unix time in milliseconds>   when the enclave signed it
    fedseal-key-entry <index>                  the `enclave_started` entry that introduced
                                               (and attests) the signing key

so a checkpoint alone says where to find the attestation of its key, and an auditor can
refuse a checkpoint dated in the future.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedseal import strictjson
from fedseal.canonical import canonical_json, parse_canonical
from fedseal.checkpoint import Checkpoint
from fedseal.errors import FormatError
from fedseal.logschema import (
    AggregateReleased,
    EntryBody,
    EntryFieldError,
    EntryKind,
    FailureCause,
    RejectReason,
    RoundClosed,
    decode_body,
)

__all__ = [
    "CHECKPOINT_KEY_ENTRY_PREFIX",
    "CHECKPOINT_TIME_PREFIX",
    "ENTRY_RECORD_PREFIX",
    "CheckpointExtensions",
    "EntryBody",
    "EntryFieldError",
    "EntryKind",
    "FailureCause",
    "LogEntry",
    "LogRecord",
    "RejectReason",
    "decode_record",
    "encode_checkpoint_record",
    "encode_entry_record",
    "handover_challenge",
    "released_round",
    "utc_now_text",
]

FORMAT_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024 * 1024  # an enclave_started entry carries the evidence bundle
ENTRY_RECORD_PREFIX = b'{"entry":'
CHECKPOINT_TIME_PREFIX = "fedseal-time "
CHECKPOINT_KEY_ENTRY_PREFIX = "fedseal-key-entry "
_HANDOVER_DOMAIN = b"fedseal/key-handover/v1\n"
_DECIMAL = re.compile("0|[1-9][0-9]{0,18}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def released_round(entry: LogEntry) -> int | None:
    """The round whose aggregate `entry` releases (makes the global adapter), if it does.

    A `round_closed` entry releases its round's aggregate unless it awaits approval
    (`approval_required`); then its `aggregate_released` entry does. Failed and withheld
    rounds release nothing. Staleness counts these entries (aggregator/_rounds.py).
    """
    body = entry.body
    if isinstance(body, AggregateReleased) or (
        isinstance(body, RoundClosed) and body.approval_required is not True
    ):
        return body.round_id
    return None


def utc_now_text(now: _dt.datetime | None = None) -> str:
    moment = now or _dt.datetime.now(_dt.UTC)
    return moment.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def handover_challenge(previous_checkpoint: str) -> bytes:
    """The attestation challenge of a resuming enclave: bound to the checkpoint it continues."""
    return hashlib.sha256(_HANDOVER_DOMAIN + previous_checkpoint.encode("utf-8")).digest()


@dataclass(frozen=True)
class CheckpointExtensions:
    """The FedSeal extension lines of a checkpoint (see the module docstring)."""

    time_ms: int
    key_entry: int

    def lines(self) -> tuple[str, ...]:
        return (f"{CHECKPOINT_TIME_PREFIX}{self.time_ms}", f"{CHECKPOINT_KEY_ENTRY_PREFIX}{self.key_entry}")

    @classmethod
    def of(cls, cp: Checkpoint) -> CheckpointExtensions:
        """Parse the extension lines of `cp`; FormatError names what is missing or wrong."""
        if len(cp.extensions) != 2:
            raise FormatError(
                f"checkpoint has {len(cp.extensions)} extension lines, expected 2 "
                f"({CHECKPOINT_TIME_PREFIX.strip()!r}, {CHECKPOINT_KEY_ENTRY_PREFIX.strip()!r})"
            )
        time_line, key_line = cp.extensions
        return cls(
            _decimal_after(time_line, CHECKPOINT_TIME_PREFIX),
            _decimal_after(key_line, CHECKPOINT_KEY_ENTRY_PREFIX),
        )


def _decimal_after(line: str, prefix: str) -> int:
    if not line.startswith(prefix) or not _DECIMAL.fullmatch(line[len(prefix) :]):
        raise FormatError(f"checkpoint extension {line[:40]!r} is not {prefix.strip()!r} and a decimal")
    return int(line[len(prefix) :])


@dataclass(frozen=True)
class LogEntry:
    """One entry: its place, its time and its typed body (fedseal/logschema.py)."""

    index: int
    time: str
    body: EntryBody

    @classmethod
    def of(cls, index: int, time: str, kind: EntryKind, fields: Mapping[str, Any]) -> LogEntry:
        """An entry from JSON fields, decoded strictly (EntryFieldError names the field)."""
        return cls(index, time, decode_body(kind, fields))

    @property
    def kind(self) -> EntryKind:
        return self.body.KIND

    @property
    def fields(self) -> dict[str, Any]:
        """The body's JSON fields as written (a fresh dict: tools and tests only)."""
        return self.body.to_fields()

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "index": self.index,
            "time": self.time,
            "kind": self.kind.value,
            **self.body.to_fields(),
        }

    def leaf_data(self) -> bytes:
        """The bytes hashed into the Merkle tree for this entry."""
        return canonical_json(self.to_json_obj())

    def timestamp(self) -> _dt.datetime:
        """`time` as an aware datetime; FormatError if it is not RFC 3339 UTC."""
        try:
            moment = _dt.datetime.fromisoformat(self.time)
        except ValueError:
            raise FormatError(f"entry {self.index}: 'time' {self.time[:40]!r} is not RFC 3339") from None
        if moment.tzinfo is None or moment.utcoffset() != _dt.timedelta(0):
            raise FormatError(f"entry {self.index}: 'time' must be UTC")
        return moment

    @classmethod
    def from_json_obj(cls, obj: object, *, where: str = "entry") -> LogEntry:
        """Decode strictly; an `EntryFieldError` names the entry index (when readable) and field."""
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: must be a JSON object")
        index = obj.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise EntryFieldError("entry", "index", "must be a non-negative integer", where=where)
        at = f"{where}: entry {index}"
        kind_text = obj.get("kind")
        try:
            kind = EntryKind(kind_text)
        except ValueError:
            raise EntryFieldError(
                "entry", "kind", f"is not a known entry kind: {str(kind_text)[:40]!r}", where=at, index=index
            ) from None
        version = obj.get("v")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            problem = "is missing" if "v" not in obj else f"must be the integer {FORMAT_VERSION}"
            raise EntryFieldError(kind.value, "v", problem, where=at, index=index)
        time = obj.get("time")
        if not isinstance(time, str) or not _TIME.fullmatch(time):
            raise EntryFieldError(
                kind.value, "time", "must be RFC 3339 UTC with milliseconds", where=at, index=index
            )
        fields = {k: v for k, v in obj.items() if k not in ("v", "index", "time", "kind")}
        try:
            body = decode_body(kind, fields)
        except EntryFieldError as exc:
            raise EntryFieldError(exc.kind, exc.field, exc.problem, where=at, index=index) from None
        return cls(index, time, body)

    @classmethod
    def from_leaf_data(cls, data: bytes, *, where: str = "entry") -> LogEntry:
        return cls.from_json_obj(parse_canonical(data, what=where), where=where)


@dataclass(frozen=True)
class LogRecord:
    """One parsed line: exactly one of `entry` or `checkpoint` is set."""

    entry: LogEntry | None
    checkpoint: str | None
    leaf_data: bytes | None  # the exact bytes hashed as the leaf, for entries


def encode_entry_record(entry: LogEntry) -> bytes:
    return ENTRY_RECORD_PREFIX + entry.leaf_data() + b"}\n"


def encode_checkpoint_record(note: str) -> bytes:
    return canonical_json({"checkpoint": note}) + b"\n"


def decode_record(line: bytes, *, line_number: int) -> LogRecord:
    """Parse one line (without its newline); errors name the line number."""
    where = f"line {line_number}"
    if len(line) > MAX_RECORD_BYTES:
        raise FormatError(f"{where}: record longer than {MAX_RECORD_BYTES} bytes")
    obj = _parse_canonical_record(line, where)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise FormatError(f"{where}: a record must be an object with one key")
    if "entry" in obj:
        entry = LogEntry.from_json_obj(obj["entry"], where=where)
        # The line is canonical, so the inner object's canonical bytes are exactly these.
        return LogRecord(entry, None, line[len(ENTRY_RECORD_PREFIX) : -1])
    if "checkpoint" in obj:
        note = obj["checkpoint"]
        if not isinstance(note, str):
            raise FormatError(f"{where}: checkpoint must be a string")
        return LogRecord(None, note, None)
    raise FormatError(f"{where}: unknown record type {next(iter(obj))!r}")


_MAX_SAFE_INTEGER = 2**53 - 1


def _parse_canonical_record(line: bytes, where: str) -> Any:
    """`parse_canonical`, with a fast path for the values log records hold.

    An auditor parses every line of a log of millions; the RFC 8785 encoder (pure Python)
    would dominate. For JSON without floats, with integers in the IEEE-754 safe range and
    with ASCII object keys, RFC 8785 output equals the standard library's compact, sorted,
    non-ASCII-preserving `json.dumps` (same key order, same string escapes: `\\b \\t \\n
    \\f \\r`, other controls as lowercase `\\u00xx`, nothing else escaped). A line equal to
    that encoding of its own value is canonical; anything else (and any error) goes through
    `parse_canonical`, which decides and words the error.
    """
    try:
        value = strictjson.loads(
            line, what=where, parse_float=_no_float, parse_constant=_no_float, parse_int=_safe_int
        )
        if (line.isascii() or _ascii_keys(value)) and (
            json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
            == line
        ):
            return value
    except (ValueError, UnicodeError, RecursionError):
        pass
    return parse_canonical(line, what=where)


def _no_float(text: str) -> Any:
    raise ValueError("not on the fast path")  # floats and NaN/Infinity: RFC 8785 decides


def _safe_int(text: str) -> int:
    value = int(text)
    if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        raise ValueError("not on the fast path")
    return value


def _ascii_keys(value: Any) -> bool:
    if isinstance(value, list):
        return all(_ascii_keys(v) for v in value)
    if isinstance(value, dict):
        return all(k.isascii() and _ascii_keys(v) for k, v in value.items())
    return True
