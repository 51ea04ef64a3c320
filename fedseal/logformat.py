"""The audit log's file format, entry kinds and checkpoint extension lines.

The log is one append-only file of lines. Each line is RFC 8785 canonical JSON of one record:

    {"entry": {...}}          a log entry: a leaf of the RFC 9162 Merkle tree
    {"checkpoint": "<note>"}  a C2SP tlog-checkpoint signed note for the tree so far

Canonical JSON never contains a raw newline, so lines frame records unambiguously. The
leaf data of an entry is the canonical JSON of the inner entry object (the bytes after
`{"entry":` up to the record's closing brace): the auditor refuses a line that is not
canonical, so those bytes are the only encoding of the entry.

Every entry has `v` (format version 1), `index` (its leaf index), `time` (UTC,
RFC 3339 with milliseconds), `kind` and kind-specific fields; `ENTRY_FIELDS` lists the
required ones and `OPTIONAL_ENTRY_FIELDS` the optional ones. Binary values are standard
base64; digests are SHA-256.

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
import enum
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

__all__ = [
    "CHECKPOINT_KEY_ENTRY_PREFIX",
    "CHECKPOINT_TIME_PREFIX",
    "ENTRY_FIELDS",
    "ENTRY_RECORD_PREFIX",
    "OPTIONAL_ENTRY_FIELDS",
    "CheckpointExtensions",
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


class EntryKind(enum.Enum):
    ENCLAVE_STARTED = "enclave_started"
    ROUND_OPENED = "round_opened"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    ROUND_CLOSED = "round_closed"
    ROUND_FAILED = "round_failed"
    TORN_TAIL_DROPPED = "torn_tail_dropped"
    # Identity and access (aggregator/_identity.py): who may submit and who may operate.
    ENROLMENT_RECORDED = "enrolment_recorded"
    PRINCIPALS_RECORDED = "principals_recorded"
    OPERATOR_ACTION = "operator_action"
    REVOCATION_LIST_LOADED = "revocation_list_loaded"
    # Central DP and the release gate (aggregator/_dp.py, aggregator/_approval.py).
    DP_BUDGET = "dp_budget"
    DP_ROUND_REFUSED = "dp_round_refused"
    APPROVAL_RECORDED = "approval_recorded"
    AGGREGATE_RELEASED = "aggregate_released"
    AGGREGATE_WITHHELD = "aggregate_withheld"


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
    # The header names another site than the authenticated caller, or is signed by a key
    # of another site.
    IDENTITY_MISMATCH = "identity_mismatch"
    # The header's signature is missing or does not verify under the enrolled key it names.
    BAD_SIGNATURE = "bad_signature"
    # The header's base_round_id names no released aggregate (fedseal.wire.update_staleness).
    UNKNOWN_BASE = "unknown_base"
    # Trained from a global too old for the round: any but the current one in a synchronous
    # round, more than max_staleness releases old in an async one.
    STALE_UPDATE = "stale_update"


class FailureCause(enum.Enum):
    """Why a round failed (the optional `cause` field of `round_failed`)."""

    QUORUM_NOT_REACHED = "quorum_not_reached"
    # The enclave that ran the round stopped; its updates lived in enclave memory only.
    ENCLAVE_RESTARTED = "enclave_restarted"
    # The strategy produced no aggregate (e.g. too few updates for its guarantee): fail closed.
    AGGREGATION_FAILED = "aggregation_failed"


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
        # The site's signature over the header and ciphertext digest (fedseal/wire.py):
        # these fields and the ones above rebuild the signed message.
        "key_id": str,
        "signature": str,
        "protocol_version": int,
        "hpke_suite": int,
        "challenge": str,
        "chunk_size": int,
        # The round whose aggregate the update was trained from (signed, like the fields
        # above), and its staleness: the releases between that one and this entry
        # (aggregator/_rounds.py); an auditor recomputes it from the entries before.
        "base_round_id": int,
        "staleness": int,
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
    # Written by a resuming enclave when the previous one left a torn (uncommitted) tail:
    # the bytes were cut from the file (and kept aside); no receipt covered them.
    EntryKind.TORN_TAIL_DROPPED: {
        "offset": int,  # file offset where the dropped bytes started
        "dropped_bytes": int,
        "dropped_digest": str,  # SHA-256 of the dropped bytes
        "dropped_lines": int,  # complete lines among them (a partial last line is not counted)
    },
    # The enrolment in force from here on (fedseal/enrolment.py): at every enclave start and
    # after every rotation. `cause` is "start" or "rotation".
    EntryKind.ENROLMENT_RECORDED: {
        "enrolment": dict,
        "enrolment_digest": str,  # SHA-256 of the canonical JSON of `enrolment`
        "version": int,
        "cause": str,
    },
    # The operator and approver keys of the job config, at every enclave start.
    EntryKind.PRINCIPALS_RECORDED: {
        "principals": list,  # [{"name", "role", "key": base64 raw Ed25519}]
        "principals_digest": str,  # SHA-256 of the canonical JSON of `principals`
    },
    # An accepted signed request (fedseal/signed_request.py), before its action runs.
    EntryKind.OPERATOR_ACTION: {
        "action": str,
        "signer": str,
        "role": str,
        "key_id": str,
        "request": dict,  # the signed body, verbatim
        "signature": str,
        "request_digest": str,
    },
    # A certificate revocation list the aggregator loaded (signature checked against the CA).
    EntryKind.REVOCATION_LIST_LOADED: {
        "issuer": str,
        "crl_number": int,
        "crl_digest": str,  # SHA-256 of the DER CRL
        "revoked": int,
        "next_update": str,
    },
    # The job's DP budget, when its first DP round opens: the round config's `dp` section,
    # the calibrated noise multiplier and the accountant (aggregator/_dp.py DpBudget).
    EntryKind.DP_BUDGET: {"round_id": int, "budget": dict},
    # A DP round refused before it opened: over the budget, or not the job's DP parameters.
    EntryKind.DP_ROUND_REFUSED: {"round_id": int, "reason": str},
    # One approver's decision on a gated round's aggregate (fedseal/approval.py).
    EntryKind.APPROVAL_RECORDED: {
        "round_id": int,
        "approver": str,  # base64 raw Ed25519 key, listed in the round config
        "approver_key_id": str,
        "decision": str,  # "approve" or "refuse"
        "aggregate_digest": str,
        "signature": str,
        "approval_digest": str,  # SHA-256 of the approval's canonical bytes
    },
    # A gated round's aggregate released (enough approvals) or withheld for good (a refusal).
    EntryKind.AGGREGATE_RELEASED: {"round_id": int, "aggregate_digest": str, "approvals": list},
    EntryKind.AGGREGATE_WITHHELD: {"round_id": int, "aggregate_digest": str, "refused_by": str},
}

# Optional fields: present only in some entries of a kind.
OPTIONAL_ENTRY_FIELDS: Mapping[EntryKind, Mapping[str, type | tuple[type, ...]]] = {
    # Key handover: the last checkpoint signed by the previous enclave (a signed note).
    EntryKind.ENCLAVE_STARTED: {"previous_checkpoint": str},
    EntryKind.ROUND_FAILED: {"cause": str},
    EntryKind.ROUND_CLOSED: {
        "strategy_params": dict,  # the resolved parameters the strategy ran with
        "dp": dict,  # this round's DP spend (aggregator/_dp.py DpSpend) and noise
        "metrics": dict,  # what a gated round publishes for its approvers
        "approval_required": bool,  # the aggregate waits for approvals (not served yet)
        # lora-exact: per LoRA module, how much of ΔW = Σ pᵢBᵢAᵢ the rank-r aggregate loses
        # ({"module", "rank", "stacked_rank", "residual"}: relative Frobenius norm).
        "lora_residuals": list,
    },
}


def released_round(entry: LogEntry) -> int | None:
    """The round whose aggregate `entry` releases (makes the global adapter), if it does.

    A `round_closed` entry releases its round's aggregate unless it awaits approval
    (`approval_required`); then its `aggregate_released` entry does. Failed and withheld
    rounds release nothing. Staleness counts these entries (aggregator/_rounds.py).
    """
    if entry.kind is EntryKind.AGGREGATE_RELEASED or (
        entry.kind is EntryKind.ROUND_CLOSED and entry.fields.get("approval_required") is not True
    ):
        return int(entry.fields["round_id"])
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
    optional = OPTIONAL_ENTRY_FIELDS.get(kind, {})
    missing = sorted(set(spec) - set(fields))
    extra = sorted(set(fields) - set(spec) - set(optional))
    if missing or extra:
        raise FormatError(f"{where} ({kind.value}): missing fields {missing}, unknown fields {extra}")
    for name, value in fields.items():
        expected = spec.get(name) or optional[name]
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
