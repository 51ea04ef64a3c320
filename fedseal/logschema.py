"""The audit log's entries as types: one frozen dataclass per `EntryKind`.

This is the only place that knows an entry's fields. The enclave builds entries as these
types (aggregator/_log.py writes them), the resume scanner and the auditor decode them
with `decode_body`, and nothing else builds or reads entry dicts: four hand-kept copies of
the field list drift, and an auditor that reads a missing field as 0 fails open.

Decoding is strict and every refusal is an `EntryFieldError` naming the kind, the field
and what is wrong: a missing field, an unknown field, a value of the wrong JSON type (a
JSON `true` is never an integer), a value out of its range, a digest of the wrong length,
base64 that is not canonical, a nested round config that is not exactly what the enclave
writes (`RoundConfig` re-encoded must give the logged object back, so a config without
`min_approvals` does not parse). `to_fields` is the inverse: `decode_body(kind,
body.to_fields()) == body` for every body, which the tests hold for every kind.

Binary values are standard base64 on the wire and `bytes` here; digests are SHA-256.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from fedseal.approval import Decision
from fedseal.canonical import b64decode_canonical, b64encode
from fedseal.errors import FormatError
from fedseal.roundconfig import RoundConfig
from fedseal.strictjson import json_type

__all__ = [
    "BODY_TYPES",
    "AggregateReleased",
    "AggregateWithheld",
    "ApprovalRecorded",
    "DpBudgetRecorded",
    "DpRoundRefused",
    "EnclaveStarted",
    "EnrolmentCause",
    "EnrolmentRecorded",
    "EntryBody",
    "EntryFieldError",
    "EntryKind",
    "FailureCause",
    "LoraResidual",
    "OperatorAction",
    "PrincipalRecord",
    "PrincipalsRecorded",
    "RejectReason",
    "RevocationListLoaded",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "TornTailDropped",
    "UpdateAccepted",
    "UpdateRejected",
    "decode_body",
]

_MAX_INT = 2**53 - 1  # the JSON-safe range: canonical JSON (RFC 8785) holds no more exactly
_MAX_TEXT = 4096
T = TypeVar("T")


class EntryFieldError(FormatError):
    """An entry field is missing, unknown, of the wrong type or out of range."""

    def __init__(
        self, kind: str, field: str, problem: str, *, where: str = "", index: int | None = None
    ) -> None:
        prefix = f"{where} ({kind})" if where else f"{kind} entry"
        super().__init__(f"{prefix}: field {field!r} {problem}")
        self.kind = kind
        self.field = field
        self.problem = problem
        self.index = index  # the entry's index, when it could be read


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
    # Outside DP: the update's delta against the round's global adapter is longer than the
    # round config's max_update_norm (the norm is in the rejection's detail).
    NORM_EXCEEDED = "norm_exceeded"
    # Data governance (fedseal/datacard.py, fedseal/validation.py): the round requires a data
    # card and the header has none; the published card does not parse; it does not hash to
    # the digest the header signs; the round requires a validation summary and there is
    # none; or the summary records a failed check.
    DATA_CARD_MISSING = "data_card_missing"
    DATA_CARD_INVALID = "data_card_invalid"
    DATA_CARD_MISMATCH = "data_card_mismatch"
    VALIDATION_MISSING = "validation_missing"
    VALIDATION_FAILED = "validation_failed"


class FailureCause(enum.Enum):
    """Why a round failed (the optional `cause` field of `round_failed`)."""

    QUORUM_NOT_REACHED = "quorum_not_reached"
    # The enclave that ran the round stopped; its updates lived in enclave memory only.
    ENCLAVE_RESTARTED = "enclave_restarted"
    # The strategy produced no aggregate (e.g. too few updates for its guarantee): fail closed.
    AGGREGATION_FAILED = "aggregation_failed"


class EnrolmentCause(enum.Enum):
    START = "start"
    ROTATION = "rotation"


# ---------------------------------------------------------------- field codecs


class _Codec(Generic[T]):
    """Turns one JSON value into a typed one and back; `decode` raises `_Bad(problem)`."""

    def decode(self, value: object) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> Any:
        raise NotImplementedError


class _Bad(Exception):
    """A value a codec refuses; the caller adds kind and field."""


class _Int(_Codec[int]):
    def __init__(self, lo: int = 0, hi: int = _MAX_INT) -> None:
        self.lo, self.hi = lo, hi

    def decode(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be an integer, got {json_type(value)}")
        if not self.lo <= value <= self.hi:
            raise _Bad(f"must be in [{self.lo}, {self.hi}], got {value}")
        return value

    def encode(self, value: int) -> Any:
        return value


class _Real(_Codec[float]):
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def decode(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(f"must be a number, got {json_type(value)}")
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise _Bad(f"must be in [{self.lo}, {self.hi}], got {value}")
        return value

    def encode(self, value: float) -> Any:
        return value


class _Text(_Codec[str]):
    def __init__(self, max_len: int = _MAX_TEXT, *, empty: bool = False) -> None:
        self.max_len, self.empty = max_len, empty

    def decode(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(f"must be a string, got {json_type(value)}")
        if len(value) > self.max_len or (not value and not self.empty):
            raise _Bad(f"must be a string of {0 if self.empty else 1} to {self.max_len} characters")
        return value

    def encode(self, value: str) -> Any:
        return value


class _Flag(_Codec[bool]):
    def decode(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _Bad(f"must be true or false, got {json_type(value)}")
        return value

    def encode(self, value: bool) -> Any:
        return value


class _Bytes(_Codec[bytes]):
    def __init__(self, size: int | None = None, max_size: int = 16 * 1024 * 1024) -> None:
        self.size, self.max_size = size, max_size

    def decode(self, value: object) -> bytes:
        if isinstance(value, str) and len(value) > (self.max_size * 4) // 3 + 4:
            raise _Bad(f"is longer than {self.max_size} bytes")
        try:
            return b64decode_canonical(value, what="it", size=self.size)
        except FormatError as exc:
            raise _Bad(str(exc).removeprefix("it ")) from None

    def encode(self, value: bytes) -> Any:
        return b64encode(value)


_E = TypeVar("_E", bound=enum.Enum)


class _Enum(_Codec[_E]):
    def __init__(self, cls: type[_E]) -> None:
        self.cls = cls

    def decode(self, value: object) -> _E:
        try:
            return self.cls(value)
        except (ValueError, TypeError):
            allowed = ", ".join(repr(m.value) for m in self.cls)
            raise _Bad(f"must be one of {allowed}, got {_short(value)}") from None

    def encode(self, value: _E) -> Any:
        return value.value


class _Object(_Codec[Mapping[str, Any]]):
    """A JSON object kept as it is (documented by its own format; the auditor reads it)."""

    def decode(self, value: object) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"must be a JSON object, got {json_type(value)}")
        return value

    def encode(self, value: Mapping[str, Any]) -> Any:
        return dict(value)


class _List(_Codec[tuple[T, ...]]):
    def __init__(self, item: _Codec[T], max_items: int = 100_000) -> None:
        self.item, self.max_items = item, max_items

    def decode(self, value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _Bad(f"must be a JSON array, got {json_type(value)}")
        if len(value) > self.max_items:
            raise _Bad(f"has more than {self.max_items} items")
        out = []
        for n, item in enumerate(value):
            try:
                out.append(self.item.decode(item))
            except _Bad as exc:
                raise _Bad(f"item {n} {exc}") from None
        return tuple(out)

    def encode(self, value: tuple[T, ...]) -> Any:
        return [self.item.encode(v) for v in value]


class _Config(_Codec[RoundConfig]):
    """A logged round config: parsed, and its re-encoding must be the logged object itself."""

    def decode(self, value: object) -> RoundConfig:
        if not isinstance(value, dict):
            raise _Bad(f"must be a JSON object, got {json_type(value)}")
        try:
            config = RoundConfig.from_json_obj(value)
        except (FormatError, ValueError, TypeError, KeyError) as exc:
            raise _Bad(f"is not a valid round config: {exc}") from None
        written = config.to_json_obj()
        if written != value:
            fields = sorted(
                k for k in set(written) | set(value) if k not in value or written.get(k) != value.get(k)
            )
            raise _Bad(
                f"is not a round config as the enclave writes it (fields {fields} missing or not in "
                "their written form: every value the round runs with must be recorded)"
            )
        return config

    def encode(self, value: RoundConfig) -> Any:
        return value.to_json_obj()


_R = TypeVar("_R", bound="_Record")


class _Nested(_Codec[_R]):
    def __init__(self, cls: type[_R]) -> None:
        self.cls = cls

    def decode(self, value: object) -> _R:
        if not isinstance(value, dict):
            raise _Bad(f"must be a JSON object, got {json_type(value)}")
        try:
            return self.cls.from_fields(value, kind=self.cls.__name__)
        except EntryFieldError as exc:
            raise _Bad(f"field {exc.field!r} {exc.problem}") from None

    def encode(self, value: _R) -> Any:
        return value.to_fields()


class _Optional(_Codec[T | None]):
    """A field that may be absent; absent decodes to None and None is not written."""

    def __init__(self, inner: _Codec[T]) -> None:
        self.inner = inner

    def decode(self, value: object) -> T | None:
        return self.inner.decode(value)

    def encode(self, value: T | None) -> Any:
        return None if value is None else self.inner.encode(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- records


class _Record:
    """A frozen dataclass whose fields each have a codec in `_codecs` (same names)."""

    _codecs: ClassVar[Mapping[str, _Codec[Any]]]

    @classmethod
    def _check_declaration(cls) -> None:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if sorted(names) != sorted(cls._codecs):
            raise TypeError(f"{cls.__name__}: fields {names} and codecs {sorted(cls._codecs)} differ")

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, codec in self._codecs.items():
            value = getattr(self, name)
            if value is None and isinstance(codec, _Optional):
                continue
            out[name] = codec.encode(value)
        return out

    @classmethod
    def from_fields(cls: type[_R], fields: Mapping[str, Any], *, kind: str) -> _R:
        unknown = sorted(set(fields) - set(cls._codecs))
        if unknown:
            raise EntryFieldError(kind, unknown[0], "is not a field of this entry kind")
        values: dict[str, Any] = {}
        for name, codec in cls._codecs.items():
            if name not in fields:
                if isinstance(codec, _Optional):
                    values[name] = None
                    continue
                raise EntryFieldError(kind, name, "is missing")
            try:
                values[name] = codec.decode(fields[name])
            except _Bad as exc:
                raise EntryFieldError(kind, name, str(exc)) from None
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise EntryFieldError(kind, "*", f"(entry as a whole) {exc}") from None


class EntryBody(_Record):
    """The kind-specific part of an entry (everything but v, index, time and kind)."""

    KIND: ClassVar[EntryKind]

    @property
    def kind(self) -> EntryKind:
        return self.KIND


_DIGEST = _Bytes(32)
_KEY = _Bytes(32)
_SIG = _Bytes(64)
_ROUND = _Int(1)
_COUNT = _Int(0)
_ID = _Text(256)


@dataclass(frozen=True)
class EnclaveStarted(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.ENCLAVE_STARTED
    log_origin: str
    hpke_public_key: bytes
    log_public_key: bytes
    evidence_bundle: bytes  # bound to `challenge`
    evidence_digest: bytes
    challenge: bytes
    insecure_simulated: bool
    # Key handover: the last checkpoint signed by the previous enclave (a signed note).
    previous_checkpoint: str | None = None
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "log_origin": _Text(256),
        "hpke_public_key": _KEY,
        "log_public_key": _KEY,
        "evidence_bundle": _Bytes(),
        "evidence_digest": _DIGEST,
        "challenge": _Bytes(32),
        "insecure_simulated": _Flag(),
        "previous_checkpoint": _Optional(_Text(64 * 1024)),
    }


@dataclass(frozen=True)
class RoundOpened(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.ROUND_OPENED
    round_id: int
    config: RoundConfig
    config_digest: bytes
    # The round's HPKE key (raw X25519) and the log key's signature over its statement
    # (fedseal/roundkey.py: origin, round id, config digest, key). Both or neither: a log
    # written before per-round keys has neither, which the auditor reports.
    round_public_key: bytes | None = None
    round_key_signature: bytes | None = None
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "config": _Config(),
        "config_digest": _DIGEST,
        "round_public_key": _Optional(_KEY),
        "round_key_signature": _Optional(_SIG),
    }

    def __post_init__(self) -> None:
        if (self.round_public_key is None) != (self.round_key_signature is None):
            raise ValueError("round_public_key and round_key_signature come together, or neither")


@dataclass(frozen=True)
class UpdateAccepted(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.UPDATE_ACCEPTED
    round_id: int
    client_id: str
    ciphertext_digest: bytes
    ciphertext_size: int
    num_examples: int
    adapter_spec_digest: bytes
    idempotency_key_digest: bytes
    # The site's signature over the header and ciphertext digest (fedseal/wire.py): these
    # fields and the ones above rebuild the signed message.
    key_id: str
    signature: bytes
    protocol_version: int
    hpke_suite: int
    challenge: bytes
    chunk_size: int
    # The round whose aggregate the update was trained from (signed, like the fields above),
    # and its staleness: the releases between that one and this entry.
    base_round_id: int
    staleness: int
    # Data governance, when the header carried it (signed under update-signature/v3): the
    # data card's SHA-256, the card itself when the site published it (fedseal/datacard.py;
    # inline, it is at most 16 KiB), the validation summary (fedseal/validation.py).
    data_card_digest: bytes | None = None
    data_card: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "client_id": _ID,
        "ciphertext_digest": _DIGEST,
        "ciphertext_size": _COUNT,
        "num_examples": _Int(1),
        "adapter_spec_digest": _DIGEST,
        "idempotency_key_digest": _DIGEST,
        "key_id": _ID,
        "signature": _SIG,
        "protocol_version": _Int(1, 2**16),
        "hpke_suite": _Int(0, 2**32),
        "challenge": _Bytes(32),
        "chunk_size": _Int(1, 2**32),
        "base_round_id": _COUNT,
        "staleness": _COUNT,
        "data_card_digest": _Optional(_DIGEST),
        "data_card": _Optional(_Object()),
        "validation": _Optional(_Object()),
    }


@dataclass(frozen=True)
class UpdateRejected(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.UPDATE_REJECTED
    round_id: int  # as the client named it: a refused round may never have existed
    client_id: str
    reason: RejectReason
    detail: str
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _COUNT,
        "client_id": _Text(256, empty=True),
        "reason": _Enum(RejectReason),
        "detail": _Text(empty=True),
    }


@dataclass(frozen=True)
class LoraResidual(_Record):
    """lora-exact: how much of ΔW = Σ pᵢBᵢAᵢ the rank-r aggregate of one module loses."""

    module: str
    rank: int
    stacked_rank: int
    residual: float  # relative Frobenius norm, in [0, 1]
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "module": _Text(1024),
        "rank": _Int(1, 2**16),
        "stacked_rank": _Int(0, 2**24),
        "residual": _Real(0.0, 1.0),
    }


@dataclass(frozen=True)
class RoundClosed(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.ROUND_CLOSED
    round_id: int
    strategy: str
    participants: tuple[str, ...]
    total_examples: int
    aggregate_digest: bytes
    aggregate_size: int
    strategy_params: Mapping[str, Any] | None = None  # the resolved parameters it ran with
    dp: Mapping[str, Any] | None = None  # this round's DP spend and noise (aggregator/_dp.py)
    metrics: Mapping[str, Any] | None = None  # what a gated round publishes for its approvers
    approval_required: bool | None = None  # the aggregate waits for approvals (not served yet)
    lora_residuals: tuple[LoraResidual, ...] | None = None  # lora-exact only
    # The aggregate's provenance: an in-toto statement in a DSSE envelope signed by this
    # enclave's log key (fedseal/provenance.py; the auditor verifies it).
    provenance: Mapping[str, Any] | None = None
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "strategy": _Text(64),
        "participants": _List(_ID),
        "total_examples": _COUNT,
        "aggregate_digest": _DIGEST,
        "aggregate_size": _COUNT,
        "strategy_params": _Optional(_Object()),
        "dp": _Optional(_Object()),
        "metrics": _Optional(_Object()),
        "approval_required": _Optional(_Flag()),
        "lora_residuals": _Optional(_List(_Nested(LoraResidual))),
        "provenance": _Optional(_Object()),
    }


@dataclass(frozen=True)
class RoundFailed(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.ROUND_FAILED
    round_id: int
    reason: str
    accepted: int
    cause: FailureCause | None = None
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "reason": _Text(empty=True),
        "accepted": _COUNT,
        "cause": _Optional(_Enum(FailureCause)),
    }


@dataclass(frozen=True)
class TornTailDropped(EntryBody):
    """A resuming enclave cut a torn (uncommitted) tail, kept aside; no receipt covered it."""

    KIND: ClassVar[EntryKind] = EntryKind.TORN_TAIL_DROPPED
    offset: int  # file offset where the dropped bytes started
    dropped_bytes: int
    dropped_digest: bytes  # SHA-256 of the dropped bytes
    dropped_lines: int  # complete lines among them
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "offset": _COUNT,
        "dropped_bytes": _COUNT,
        "dropped_digest": _DIGEST,
        "dropped_lines": _COUNT,
    }


@dataclass(frozen=True)
class EnrolmentRecorded(EntryBody):
    """The enrolment in force from here on (fedseal/enrolment.py)."""

    KIND: ClassVar[EntryKind] = EntryKind.ENROLMENT_RECORDED
    enrolment: Mapping[str, Any]
    enrolment_digest: bytes  # SHA-256 of the canonical JSON of `enrolment`
    version: int
    cause: EnrolmentCause
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "enrolment": _Object(),
        "enrolment_digest": _DIGEST,
        "version": _COUNT,
        "cause": _Enum(EnrolmentCause),
    }


@dataclass(frozen=True)
class PrincipalRecord(_Record):
    name: str
    role: str
    key: bytes  # raw Ed25519
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {"name": _ID, "role": _Text(64), "key": _KEY}


@dataclass(frozen=True)
class PrincipalsRecorded(EntryBody):
    """The operator and approver keys of the job config, at every enclave start."""

    KIND: ClassVar[EntryKind] = EntryKind.PRINCIPALS_RECORDED
    principals: tuple[PrincipalRecord, ...]
    principals_digest: bytes  # SHA-256 of the canonical JSON of `principals`
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "principals": _List(_Nested(PrincipalRecord)),
        "principals_digest": _DIGEST,
    }


@dataclass(frozen=True)
class OperatorAction(EntryBody):
    """An accepted signed request (fedseal/signed_request.py), before its action runs."""

    KIND: ClassVar[EntryKind] = EntryKind.OPERATOR_ACTION
    action: str
    signer: str
    role: str
    key_id: str
    request: Mapping[str, Any]  # the signed body, verbatim
    signature: bytes
    request_digest: bytes
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "action": _Text(64),
        "signer": _ID,
        "role": _Text(64),
        "key_id": _ID,
        "request": _Object(),
        "signature": _SIG,
        "request_digest": _DIGEST,
    }


@dataclass(frozen=True)
class RevocationListLoaded(EntryBody):
    """A certificate revocation list the aggregator loaded (signature checked against the CA)."""

    KIND: ClassVar[EntryKind] = EntryKind.REVOCATION_LIST_LOADED
    issuer: str
    crl_number: int
    crl_digest: bytes  # SHA-256 of the DER CRL
    revoked: int
    next_update: str
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "issuer": _Text(1024),
        "crl_number": _Int(0, 2**160),
        "crl_digest": _DIGEST,
        "revoked": _COUNT,
        "next_update": _Text(64, empty=True),
    }


@dataclass(frozen=True)
class DpBudgetRecorded(EntryBody):
    """The job's DP budget, when its first DP round opens (aggregator/_dp.py DpBudget)."""

    KIND: ClassVar[EntryKind] = EntryKind.DP_BUDGET
    round_id: int
    budget: Mapping[str, Any]
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {"round_id": _ROUND, "budget": _Object()}


@dataclass(frozen=True)
class DpRoundRefused(EntryBody):
    """A DP round refused before it opened: over the budget, or not the job's parameters."""

    KIND: ClassVar[EntryKind] = EntryKind.DP_ROUND_REFUSED
    round_id: int
    reason: str
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {"round_id": _ROUND, "reason": _Text(empty=True)}


@dataclass(frozen=True)
class ApprovalRecorded(EntryBody):
    """One approver's decision on a gated round's aggregate (fedseal/approval.py)."""

    KIND: ClassVar[EntryKind] = EntryKind.APPROVAL_RECORDED
    round_id: int
    approver: bytes  # raw Ed25519 key, listed in the round config
    approver_key_id: str
    decision: Decision
    aggregate_digest: bytes
    signature: bytes
    approval_digest: bytes  # SHA-256 of the approval's canonical bytes
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "approver": _KEY,
        "approver_key_id": _ID,
        "decision": _Enum(Decision),
        "aggregate_digest": _DIGEST,
        "signature": _SIG,
        "approval_digest": _DIGEST,
    }


@dataclass(frozen=True)
class AggregateReleased(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.AGGREGATE_RELEASED
    round_id: int
    aggregate_digest: bytes
    approvals: tuple[str, ...]  # the approvers' key ids
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "aggregate_digest": _DIGEST,
        "approvals": _List(_ID, max_items=64),
    }


@dataclass(frozen=True)
class AggregateWithheld(EntryBody):
    KIND: ClassVar[EntryKind] = EntryKind.AGGREGATE_WITHHELD
    round_id: int
    aggregate_digest: bytes
    refused_by: str  # the refusing approver's key id
    _codecs: ClassVar[Mapping[str, _Codec[Any]]] = {
        "round_id": _ROUND,
        "aggregate_digest": _DIGEST,
        "refused_by": _ID,
    }


BODY_TYPES: Mapping[EntryKind, type[EntryBody]] = {
    cls.KIND: cls
    for cls in (
        EnclaveStarted,
        RoundOpened,
        UpdateAccepted,
        UpdateRejected,
        RoundClosed,
        RoundFailed,
        TornTailDropped,
        EnrolmentRecorded,
        PrincipalsRecorded,
        OperatorAction,
        RevocationListLoaded,
        DpBudgetRecorded,
        DpRoundRefused,
        ApprovalRecorded,
        AggregateReleased,
        AggregateWithheld,
    )
}
_RECORD_TYPES: tuple[type[_Record], ...] = (*BODY_TYPES.values(), PrincipalRecord, LoraResidual)
for _cls in _RECORD_TYPES:
    _cls._check_declaration()
if set(BODY_TYPES) != set(EntryKind):  # a new kind without a body type
    _missing = sorted(k.value for k in set(EntryKind) - set(BODY_TYPES))
    raise TypeError(f"entry kinds without a body type: {_missing}")


def decode_body(kind: EntryKind, fields: Mapping[str, Any]) -> EntryBody:
    """The typed body of an entry of `kind`; EntryFieldError names what is wrong."""
    return BODY_TYPES[kind].from_fields(fields, kind=kind.value)
