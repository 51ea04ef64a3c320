"""FedSeal's own types for what crosses the wire, and their conversion to and from protobuf.

Generated protobuf classes stop here: the aggregator's service and the client's transport
call these converters, and everything else speaks in the frozen dataclasses below.

The update header is signed by the submitting site's enrolled Ed25519 key (`key_id`),
over every header field and the ciphertext digest of the chunks that follow::

    message = lp("fedseal/update-signature/v2") || lp(u64(protocol_version)) || lp(u64(round_id))
              || lp(u64(base_round_id)) || lp(ascii(client_id)) || lp(ascii(key_id))
              || lp(adapter_spec_digest) || lp(u64(num_examples)) || lp(u64(hpke suite wire id))
              || lp(SHA-256(idempotency_key)) || lp(challenge) || lp(u64(chunk_size))
              || lp(u64(ciphertext_size)) || lp(ciphertext_digest)

(lp: 4-byte big-endian length prefix, u64: 8-byte big-endian). A header that carries a data
card digest or a validation summary (fedseal/datacard.py, fedseal/validation.py) is signed
under ``fedseal/update-signature/v3``: the same fields, then
``lp(data_card_digest) || lp(SHA-256(validation_summary))`` (each empty when absent). One
without either is signed as v2, so logs and clients from before data cards still verify;
the domains differ, so a v3 signature never verifies as v2 (stripping the card or the
summary breaks the signature). The wrapped key is covered
through the ciphertext digest, which hashes it first (fedseal/envelope.py); the
idempotency key through its digest, which is what the log records. So the signature can be
checked from an `update_accepted` log entry alone, and proves which site submitted which
ciphertext whatever carried it (the digest covers the chunks' AEAD tags, which only the
holders of the update's data key can produce: fedseal/envelope.py, item 5). A client seals
first, then signs, then sends. (Protocol version 1, without `base_round_id`, is refused at
the header: a v1 signature says nothing about which global the update was trained from.)

`base_round_id` names the round whose released aggregate the client trained from (0: the
job's initial adapter). `update_staleness` turns it into the update's staleness, given the
rounds released so far; the aggregator (aggregator/_rounds.py), the client SDK (before it
sends) and the auditor (from the log alone) all use it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal.binding import CHALLENGE_SIZE, length_prefixed
from fedseal.datacard import MAX_DATA_CARD_SIZE
from fedseal.envelope import HpkeSuite, SealContext
from fedseal.errors import FedSealError, FormatError, SignatureError
from fedseal.logformat import RejectReason
from fedseal.signed_request import key_id
from fedseal.validation import ValidationSummary, parse_validation_summary

__all__ = [
    "ACCESS_DENIED_METADATA_KEY",
    "CALL_AUTH_METADATA_KEY",
    "PROTOCOL_VERSION",
    "REJECT_REASON_METADATA_KEY",
    "RETRY_AFTER_METADATA_KEY",
    "STATUS_FOR_ACCESS",
    "STATUS_FOR_REASON",
    "UPDATE_SIGNATURE_DOMAIN",
    "UPDATE_SIGNATURE_DOMAIN_V3",
    "AccessDeniedError",
    "AccessDeniedReason",
    "StaleBaseError",
    "UpdateHeader",
    "UpdateRejectedError",
    "header_from_proto",
    "header_to_proto",
    "update_signature_message",
    "update_staleness",
]

# 2: bidirectional SubmitUpdate (send_chunks), base_round_id, update-signature/v2,
# seal-context/v2, ciphertext-digest/v2. 3: per-round keys (fedseal/roundkey.py), sealed
# under seal-context/v3, which names the round key. A header of another version is refused
# by name (a version 2 client seals to the enclave-lifetime key, which opens nothing now).
PROTOCOL_VERSION = 3
REJECT_REASON_METADATA_KEY = "fedseal-reject-reason"
ACCESS_DENIED_METADATA_KEY = "fedseal-access-denied"
# SubmitUpdate turned away for now (RESOURCE_EXHAUSTED): every decryption buffer is busy and
# the line of uploads waiting for one is full.
# The value is the suggested wait in milliseconds; the client retries the same upload then.
RETRY_AFTER_METADATA_KEY = "fedseal-retry-after-ms"
# A caller's signed call token (fedseal/signed_request.py, action "call"); binary metadata.
CALL_AUTH_METADATA_KEY = "fedseal-call-auth-bin"
UPDATE_SIGNATURE_DOMAIN = b"fedseal/update-signature/v2"
UPDATE_SIGNATURE_DOMAIN_V3 = b"fedseal/update-signature/v3"  # with data card / validation
MAX_WRAPPED_KEY_SIZE = 256  # X25519 enc (32) + sealed 32-byte key + tag: far below this
_U64_MAX = 2**64 - 1
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SIGNATURE_SIZE = 64


class UpdateRejectedError(FedSealError):
    """The aggregator refused an update; `reason` says why in one word, `detail` in a sentence."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"update rejected ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


# How each refusal maps onto a gRPC status code; the reason itself travels in trailing metadata.
STATUS_FOR_REASON: dict[RejectReason, grpc.StatusCode] = {
    RejectReason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.UNKNOWN_ROUND: grpc.StatusCode.NOT_FOUND,
    RejectReason.ROUND_NOT_OPEN: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.SPEC_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.OVERSIZE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectReason.UNWRAP_FAILED: grpc.StatusCode.PERMISSION_DENIED,
    RejectReason.TAMPERED: grpc.StatusCode.DATA_LOSS,
    RejectReason.TRUNCATED: grpc.StatusCode.DATA_LOSS,
    RejectReason.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    RejectReason.NOT_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.CANCELLED: grpc.StatusCode.CANCELLED,
    RejectReason.ROUND_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectReason.IDENTITY_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    RejectReason.BAD_SIGNATURE: grpc.StatusCode.PERMISSION_DENIED,
    # Train on the current global (fetch it) and send again.
    RejectReason.UNKNOWN_BASE: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.STALE_UPDATE: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.NORM_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
    # Data governance (fedseal/datacard.py, fedseal/validation.py; RoundConfig.require_*).
    RejectReason.DATA_CARD_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.DATA_CARD_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.DATA_CARD_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.VALIDATION_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.VALIDATION_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
}


class AccessDeniedReason(enum.Enum):
    """Why a call was refused before it reached the service (aggregator/_identity.py).

    These refusals come from callers that are not (or not yet) known, so they are not
    written to the audit log (which they could otherwise flood); the service logs them.
    """

    UNAUTHENTICATED = "unauthenticated"  # no client certificate and no call token
    NOT_ENROLLED = "not_enrolled"  # certificate or key not in the enrolment (or removed)
    REVOKED = "revoked"  # client certificate on the CA's revocation list
    REVOCATION_UNKNOWN = "revocation_unknown"  # the revocation list is missing or stale
    CERTIFICATE_REQUIRED = "certificate_required"  # site enrolled with a certificate came without
    IDENTITY_MISMATCH = "identity_mismatch"  # certificate and key name different sites
    NOT_ALLOWED = "not_allowed"  # authenticated, but this call is not for this kind of caller
    # The signed call token or operator request (fedseal.signed_request reasons):
    MALFORMED_REQUEST = "malformed_request"
    WRONG_AUDIENCE = "wrong_audience"
    UNKNOWN_SIGNER = "unknown_signer"
    FORGED_REQUEST = "forged_request"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED_REQUEST = "expired_request"
    UNKNOWN_ACTION = "unknown_action"
    WRONG_ROLE = "wrong_role"
    REPLAYED_REQUEST = "replayed_request"
    TOO_MANY_REQUESTS = "too_many_requests"
    # Abuse limits:
    THROTTLED = "throttled"  # a per-identity limit (streams, bytes or calls per round)
    RATE_LIMITED = "rate_limited"  # the public endpoints' rate limit


class AccessDeniedError(FedSealError):
    """The aggregator refused a call: `reason` in one word, `detail` in a sentence."""

    def __init__(self, reason: AccessDeniedReason, detail: str) -> None:
        super().__init__(f"access denied ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


STATUS_FOR_ACCESS: dict[AccessDeniedReason, grpc.StatusCode] = {
    reason: (
        grpc.StatusCode.RESOURCE_EXHAUSTED
        if reason
        in (
            AccessDeniedReason.THROTTLED,
            AccessDeniedReason.RATE_LIMITED,
            AccessDeniedReason.TOO_MANY_REQUESTS,
        )
        else grpc.StatusCode.PERMISSION_DENIED
        if reason
        in (
            AccessDeniedReason.NOT_ENROLLED,
            AccessDeniedReason.REVOKED,
            AccessDeniedReason.CERTIFICATE_REQUIRED,
            AccessDeniedReason.IDENTITY_MISMATCH,
            AccessDeniedReason.NOT_ALLOWED,
            AccessDeniedReason.WRONG_ROLE,
            AccessDeniedReason.UNKNOWN_ACTION,
        )
        else grpc.StatusCode.UNAVAILABLE
        if reason is AccessDeniedReason.REVOCATION_UNKNOWN
        else grpc.StatusCode.UNAUTHENTICATED
    )
    for reason in AccessDeniedReason
}


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def update_signature_message(
    *,
    protocol_version: int,
    round_id: int,
    base_round_id: int,
    client_id: str,
    key_id: str,
    adapter_spec_digest: bytes,
    num_examples: int,
    suite_wire_id: int,
    idempotency_key_digest: bytes,
    challenge: bytes,
    chunk_size: int,
    ciphertext_size: int,
    ciphertext_digest: bytes,
    data_card_digest: bytes = b"",
    validation_digest: bytes = b"",
) -> bytes:
    """The bytes a site signs for one update (module docstring); the auditor rebuilds them
    from an `update_accepted` entry. `validation_digest` is SHA-256 of the summary's bytes."""
    extended = bool(data_card_digest or validation_digest)
    try:
        return length_prefixed(
            UPDATE_SIGNATURE_DOMAIN_V3 if extended else UPDATE_SIGNATURE_DOMAIN,
            _u64(protocol_version),
            _u64(round_id),
            _u64(base_round_id),
            client_id.encode("ascii"),
            key_id.encode("ascii"),
            adapter_spec_digest,
            _u64(num_examples),
            _u64(suite_wire_id),
            idempotency_key_digest,
            challenge,
            _u64(chunk_size),
            _u64(ciphertext_size),
            ciphertext_digest,
            *((data_card_digest, validation_digest) if extended else ()),
        )
    except (OverflowError, UnicodeEncodeError) as exc:
        raise FormatError(f"update signature fields out of range: {exc}") from None


@dataclass(frozen=True)
class UpdateHeader:
    """The first message of a SubmitUpdate stream."""

    protocol_version: int
    round_id: int
    client_id: str
    adapter_spec_digest: bytes
    num_examples: int
    suite: HpkeSuite
    wrapped_key: bytes
    idempotency_key: bytes
    challenge: bytes
    chunk_size: int
    ciphertext_size: int
    key_id: str  # the enrolled site key that signs (fedseal.signed_request.key_id)
    ciphertext_digest: bytes  # fedseal.envelope.CiphertextDigest of wrapped key and chunks
    signature: bytes = b""  # Ed25519 over signed_message(); empty until sign()
    # The round whose released aggregate the update was trained from; 0: the initial adapter.
    base_round_id: int = 0
    # Data governance, all optional and all signed (module docstring): the SHA-256 of the
    # site's data card, the card itself when the site publishes it (canonical JSON), and
    # the summary of its local data validation (canonical JSON).
    data_card_digest: bytes = b""
    data_card: bytes = b""
    validation_summary: bytes = b""

    def __post_init__(self) -> None:
        if self.protocol_version != PROTOCOL_VERSION:
            raise FormatError(
                f"protocol version {self.protocol_version} is not supported (this side speaks "
                f"{PROTOCOL_VERSION})"
            )
        if len(self.challenge) != CHALLENGE_SIZE:
            raise FormatError(f"header challenge must be {CHALLENGE_SIZE} bytes")
        if not 0 < len(self.wrapped_key) <= MAX_WRAPPED_KEY_SIZE:
            raise FormatError("header wrapped_key is empty or too long")
        if self.ciphertext_size <= 0:
            raise FormatError("header ciphertext_size must be positive")
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise FormatError("header key_id must be 16 lowercase hex digits")
        if len(self.ciphertext_digest) != 32:
            raise FormatError("header ciphertext_digest must be 32 bytes (SHA-256)")
        if len(self.signature) not in (0, _SIGNATURE_SIZE):
            raise FormatError(f"header signature must be {_SIGNATURE_SIZE} bytes (Ed25519)")
        base = self.base_round_id
        # Only the range here: whether the round accepts this base is the round's decision
        # (update_staleness), refused and logged under its own reason.
        if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base <= _U64_MAX:
            raise FormatError(f"header base_round_id must be an integer in 0..{_U64_MAX}")
        if len(self.data_card_digest) not in (0, 32):
            raise FormatError("header data_card_digest must be empty or 32 bytes (SHA-256)")
        if len(self.data_card) > MAX_DATA_CARD_SIZE:
            raise FormatError(f"header data_card is longer than {MAX_DATA_CARD_SIZE} bytes")
        if self.validation_summary:
            parse_validation_summary(self.validation_summary)  # FormatError names the problem

    @property
    def validation_digest(self) -> bytes:
        """SHA-256 of the validation summary's bytes; empty when there is none."""
        return hashlib.sha256(self.validation_summary).digest() if self.validation_summary else b""

    def validation(self) -> ValidationSummary | None:
        return parse_validation_summary(self.validation_summary) if self.validation_summary else None

    def signed_message(self) -> bytes:
        """What the site's key signs (module docstring)."""
        return update_signature_message(
            protocol_version=self.protocol_version,
            round_id=self.round_id,
            base_round_id=self.base_round_id,
            client_id=self.client_id,
            key_id=self.key_id,
            adapter_spec_digest=self.adapter_spec_digest,
            num_examples=self.num_examples,
            suite_wire_id=self.suite.wire_id,
            idempotency_key_digest=hashlib.sha256(self.idempotency_key).digest(),
            challenge=self.challenge,
            chunk_size=self.chunk_size,
            ciphertext_size=self.ciphertext_size,
            ciphertext_digest=self.ciphertext_digest,
            data_card_digest=self.data_card_digest,
            validation_digest=self.validation_digest,
        )

    def sign(self, private_key: Ed25519PrivateKey) -> UpdateHeader:
        """This header signed by `private_key`, whose key id must be this header's key_id."""
        if key_id(private_key.public_key().public_bytes_raw()) != self.key_id:
            raise FormatError("the signing key is not the key the header names (key_id)")
        return replace(self, signature=private_key.sign(self.signed_message()))

    def verify_signature(self, public_key: bytes) -> None:
        """Raise SignatureError unless the header carries a valid signature by `public_key`."""
        if len(self.signature) != _SIGNATURE_SIZE:
            raise SignatureError("the update header is not signed")
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.signed_message())
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"the update header's signature does not verify under key {self.key_id}"
            ) from None

    def seal_context(self, binding: bytes, round_public_key: bytes) -> SealContext:
        """The envelope context both sides bind into HPKE `info` and every chunk's AAD;
        `round_public_key` is the round's key (the client's verified one, the enclave's own)."""
        return SealContext(
            protocol_version=self.protocol_version,
            round_id=self.round_id,
            client_id=self.client_id,
            adapter_spec_digest=self.adapter_spec_digest,
            num_examples=self.num_examples,
            binding=binding,
            round_public_key=round_public_key,
            idempotency_key=self.idempotency_key,
            chunk_size=self.chunk_size,
            suite=self.suite,
            base_round_id=self.base_round_id,
            data_card_digest=self.data_card_digest,
            validation_digest=self.validation_digest,
        )


def header_to_proto(h: UpdateHeader) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        protocol_version=h.protocol_version,
        round_id=h.round_id,
        client_id=h.client_id,
        adapter_spec_digest=h.adapter_spec_digest,
        num_examples=h.num_examples,
        hpke_suite=h.suite.wire_id,
        wrapped_key=h.wrapped_key,
        idempotency_key=h.idempotency_key,
        challenge=h.challenge,
        chunk_size=h.chunk_size,
        ciphertext_size=h.ciphertext_size,
        key_id=h.key_id,
        ciphertext_digest=h.ciphertext_digest,
        signature=h.signature,
        base_round_id=h.base_round_id,
        data_card_digest=h.data_card_digest,
        data_card=h.data_card,
        validation_summary=h.validation_summary,
    )


def header_from_proto(m: pb.UpdateHeader) -> UpdateHeader:
    try:
        suite = HpkeSuite.from_wire_id(m.hpke_suite)
    except ValueError:
        raise FormatError(f"unknown HPKE suite id {m.hpke_suite}") from None
    return UpdateHeader(
        protocol_version=m.protocol_version,
        round_id=m.round_id,
        client_id=m.client_id,
        adapter_spec_digest=bytes(m.adapter_spec_digest),
        num_examples=m.num_examples,
        suite=suite,
        wrapped_key=bytes(m.wrapped_key),
        idempotency_key=bytes(m.idempotency_key),
        challenge=bytes(m.challenge),
        chunk_size=m.chunk_size,
        ciphertext_size=m.ciphertext_size,
        key_id=m.key_id,
        ciphertext_digest=bytes(m.ciphertext_digest),
        signature=bytes(m.signature),
        base_round_id=m.base_round_id,
        data_card_digest=bytes(m.data_card_digest),
        data_card=bytes(m.data_card),
        validation_summary=bytes(m.validation_summary),
    )


class StaleBaseError(FedSealError):
    """An update's base round is not one its round accepts.

    `reason` is RejectReason.UNKNOWN_BASE (no released aggregate has that round id at this
    point) or RejectReason.STALE_UPDATE (too many aggregates were released since: any in a
    synchronous round, more than `max_staleness` in an async one); `detail` says which.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def update_staleness(
    base_round_id: int,
    round_id: int,
    released: Sequence[int],
    max_staleness: int | None,
    *,
    complete: bool = True,
) -> int:
    """The staleness of an update for round `round_id` trained from round `base_round_id`'s
    aggregate (0: the job's initial adapter), or StaleBaseError.

    `released` are the rounds whose aggregates were released so far, in release order (its
    last is the current global). Staleness is the number of them released after the base
    (for base 0: all of them). `max_staleness` None means a synchronous round: staleness
    must be 0, i.e. the base is the current global. With `complete` False, `released` is
    only the latest releases (a RoundInfo's), enough to decide any base the round accepts.
    """
    limit = 0 if max_staleness is None else max_staleness
    if base_round_id >= round_id:
        raise StaleBaseError(
            RejectReason.UNKNOWN_BASE,
            f"base round {base_round_id} is not before round {round_id}: no such global can exist yet",
        )
    # Most bases are among the last few releases: look there first, from the newest.
    staleness: int | None = None
    for back, rid in enumerate(reversed(released[max(0, len(released) - limit - 1) :])):
        if rid == base_round_id:
            staleness = back
            break
    at_least = False
    if staleness is None:
        # A partial list holds the last limit + 1 releases, or all of them when shorter.
        whole = complete or len(released) <= limit
        if base_round_id != 0 and base_round_id in released:
            staleness = len(released) - 1 - list(released).index(base_round_id)
        elif base_round_id == 0 and whole:
            staleness = len(released)
        elif whole:
            raise StaleBaseError(
                RejectReason.UNKNOWN_BASE,
                f"base round {base_round_id} names no released aggregate (it failed, was withheld, "
                "or awaits approval)",
            )
        else:  # older than every release listed, or never released: refused either way
            staleness, at_least = limit + 1, True
    if staleness > limit:
        current = _global_name(released[-1] if released else 0)
        base = _global_name(base_round_id)
        if max_staleness is None:
            raise StaleBaseError(
                RejectReason.STALE_UPDATE,
                f"trained from {base}, but {current} is the current global; round {round_id} is "
                "synchronous and accepts only updates trained from the current global",
            )
        raise StaleBaseError(
            RejectReason.STALE_UPDATE,
            f"trained from {base}, {'at least ' if at_least else ''}{staleness} release(s) ago; "
            f"round {round_id} accepts at most max_staleness {limit} (the current global is {current})",
        )
    return staleness


def _global_name(round_id: int) -> str:
    return "the initial adapter (round 0)" if round_id == 0 else f"round {round_id}'s aggregate"


class RoundState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"
