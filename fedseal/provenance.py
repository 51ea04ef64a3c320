"""An aggregate's provenance: an in-toto Statement v1 in a DSSE envelope, signed by the enclave.

When a round closes, the enclave states what it produced and from what, and signs that
with its attested log key (Ed25519), the same key that signs the log's checkpoints and the
aggregate manifest. The envelope is recorded in the round's `round_closed` entry, so the
log carries it and anyone who verified the log key's attestation can check it with any
DSSE implementation (the tests check ours against securesystemslib's):

* Statement: `_type` https://in-toto.io/Statement/v1; one subject, the aggregate's
  safetensors bytes (`round-<id>-aggregate.safetensors`, its SHA-256 in hex);
* `predicateType` `PREDICATE_TYPE` (below), a predicate of these fields: `log_origin`,
  `log_public_key` (base64 of the raw Ed25519 key that signs), `round_id`,
  `round_config_digest` (base64 SHA-256 of the round config its `round_opened` logs: the
  policy the round ran under: strategy, cohort bounds, DP, approval), `strategy`,
  `participants` (sorted site ids), `updates` (per site: `client_id`, `num_examples`,
  `ciphertext_digest` base64, as `update_accepted` logs them), `total_examples`,
  `aggregate_digest` (base64), `aggregate_size`, `dp` (the round's DP spend, as
  `round_closed.dp`, or null), `approval_required` (the aggregate waits for approvals);
* DSSE v1: `payloadType` application/vnd.in-toto+json, the payload the statement's RFC 8785
  canonical JSON, one signature over PAE(payloadType, payload) whose `keyid` is
  `fedseal.signed_request.key_id` of the log key.

The predicate type is a URN: FedSeal claims no web domain to name it by.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseal.canonical import b64decode_field, b64encode, canonical_json, parse_canonical
from fedseal.errors import FormatError, SignatureError
from fedseal.signed_request import key_id

__all__ = [
    "DSSE_PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "DsseEnvelope",
    "ProvenanceSignatureError",
    "UpdateProvenance",
    "aggregate_statement",
    "pae",
    "sign_statement",
    "verify_statement",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:fedseal:aggregate-provenance:v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_MAX_PAYLOAD = 4 * 1024 * 1024


class ProvenanceSignatureError(SignatureError):
    """A provenance envelope is not signed by the key it must be signed by."""


@dataclass(frozen=True)
class UpdateProvenance:
    client_id: str
    num_examples: int
    ciphertext_digest: bytes

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "num_examples": self.num_examples,
            "ciphertext_digest": b64encode(self.ciphertext_digest),
        }


def aggregate_statement(
    *,
    log_origin: str,
    log_public_key: bytes,
    round_id: int,
    round_config_digest: bytes,
    strategy: str,
    updates: Sequence[UpdateProvenance],
    aggregate_digest: bytes,
    aggregate_size: int,
    dp: Mapping[str, Any] | None,
    approval_required: bool,
) -> dict[str, Any]:
    """The in-toto statement of one round's aggregate (see the module docstring)."""
    ordered = sorted(updates, key=lambda u: u.client_id)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f"round-{round_id}-aggregate.safetensors", "digest": {"sha256": aggregate_digest.hex()}}
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "log_origin": log_origin,
            "log_public_key": b64encode(log_public_key),
            "round_id": round_id,
            "round_config_digest": b64encode(round_config_digest),
            "strategy": strategy,
            "participants": [u.client_id for u in ordered],
            "updates": [u.to_json_obj() for u in ordered],
            "total_examples": sum(u.num_examples for u in ordered),
            "aggregate_digest": b64encode(aggregate_digest),
            "aggregate_size": aggregate_size,
            "dp": dict(dp) if dp is not None else None,
            "approval_required": approval_required,
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class DsseEnvelope:
    """A DSSE envelope with one signature (the enclave's log key)."""

    payload_type: str
    payload: bytes
    keyid: str
    signature: bytes

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": self.keyid, "sig": b64encode(self.signature)}],
        }

    @classmethod
    def from_json_obj(cls, obj: object) -> DsseEnvelope:
        if not isinstance(obj, Mapping) or set(obj) != {"payload", "payloadType", "signatures"}:
            raise FormatError("a DSSE envelope has exactly 'payload', 'payloadType' and 'signatures'")
        signatures = obj["signatures"]
        if not isinstance(signatures, list) or len(signatures) != 1:
            raise FormatError("a provenance envelope carries exactly one signature (the enclave's)")
        (sig,) = signatures
        if not isinstance(sig, Mapping) or set(sig) != {"keyid", "sig"} or not isinstance(sig["keyid"], str):
            raise FormatError("a DSSE signature has exactly a string 'keyid' and a base64 'sig'")
        if not isinstance(obj["payloadType"], str):
            raise FormatError("field 'payloadType' must be a string")
        if isinstance(obj["payload"], str) and len(obj["payload"]) > (_MAX_PAYLOAD * 4) // 3 + 4:
            raise FormatError(f"field 'payload' is longer than {_MAX_PAYLOAD} bytes")
        return cls(
            payload_type=obj["payloadType"],
            payload=b64decode_field(obj["payload"], field="payload"),
            keyid=sig["keyid"],
            signature=b64decode_field(sig["sig"], field="sig", size=64),
        )


def sign_statement(statement: Mapping[str, Any], key: Ed25519PrivateKey) -> DsseEnvelope:
    payload = canonical_json(dict(statement))
    public = key.public_key().public_bytes_raw()
    return DsseEnvelope(DSSE_PAYLOAD_TYPE, payload, key_id(public), key.sign(pae(DSSE_PAYLOAD_TYPE, payload)))


def verify_statement(envelope: DsseEnvelope, log_public_key: bytes) -> dict[str, Any]:
    """The statement, once its signature verifies under `log_public_key` and it is one of ours.

    Raises ProvenanceSignatureError (wrong key or signature) or FormatError (not an in-toto
    statement of FedSeal's predicate type, or not canonical JSON)."""
    if envelope.payload_type != DSSE_PAYLOAD_TYPE:
        raise FormatError(f"payloadType must be {DSSE_PAYLOAD_TYPE!r}, got {envelope.payload_type!r}")
    if not hmac.compare_digest(envelope.keyid, key_id(log_public_key)):
        raise ProvenanceSignatureError(
            f"the envelope names key {envelope.keyid!r}, not the attested log key {key_id(log_public_key)}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(log_public_key).verify(
            envelope.signature, pae(envelope.payload_type, envelope.payload)
        )
    except InvalidSignature:
        raise ProvenanceSignatureError(
            "the provenance envelope's signature does not verify under the attested log key"
        ) from None
    statement = parse_canonical(envelope.payload, what="provenance statement")
    if not isinstance(statement, dict) or set(statement) != {
        "_type",
        "subject",
        "predicateType",
        "predicate",
    }:
        raise FormatError("the provenance statement is not an in-toto statement (fields)")
    if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
        raise FormatError(
            f"the statement must be {STATEMENT_TYPE} with predicate type {PREDICATE_TYPE}, got "
            f"{statement['_type']!r} / {statement['predicateType']!r}"
        )
    predicate = statement["predicate"]
    if not isinstance(predicate, dict) or predicate.get("log_public_key") != b64encode(log_public_key):
        raise FormatError("the statement's predicate does not name the key that signed it")
    return statement
