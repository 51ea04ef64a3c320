"""The signed aggregate manifest: what a client checks before it uses a published aggregate.

The enclave publishes each closed round's aggregate as safetensors bytes plus this
manifest, signed with its attested log key (Ed25519). The signature covers

    b"fedseal/aggregate-manifest/v1\\n" || canonical_json(manifest)

and the manifest names the SHA-256 of the aggregate bytes, so a client that verified the
enclave's attestation (and therefore knows its log key) can prove the aggregate came out
of that enclave for that round. The same digest is in the log's `round_closed` entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseal.canonical import b64decode_field, b64encode, canonical_json, parse_canonical
from fedseal.errors import FormatError, SignatureError
from fedseal.sitemetrics import check_site_metrics

__all__ = ["AggregateManifest", "SignedManifest", "sign_manifest", "verify_manifest"]

_DOMAIN = b"fedseal/aggregate-manifest/v1\n"
_FORMAT = "fedseal-aggregate-manifest/v1"


@dataclass(frozen=True)
class AggregateManifest:
    log_origin: str
    round_id: int
    strategy: str
    adapter_spec: dict[str, Any]  # the round's spec, JSON form (see fedseal.spec)
    aggregate_digest: bytes  # SHA-256 of the safetensors bytes
    aggregate_size: int
    participants: tuple[str, ...]
    total_examples: int
    round_closed_index: int  # the log entry recording this aggregate
    # The sites' metrics as the enclave aggregated them (example-weighted means, as logged in
    # round_closed.metrics["client"]); None when no site sent any (and then not written).
    client_metrics: Mapping[str, float] | None = None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "log_origin": self.log_origin,
            "round_id": self.round_id,
            "strategy": self.strategy,
            "adapter_spec": self.adapter_spec,
            "aggregate_digest": b64encode(self.aggregate_digest),
            "aggregate_size": self.aggregate_size,
            "participants": list(self.participants),
            "total_examples": self.total_examples,
            "round_closed_index": self.round_closed_index,
        } | ({"client_metrics": dict(self.client_metrics)} if self.client_metrics is not None else {})

    @classmethod
    def from_json_obj(cls, obj: object) -> AggregateManifest:
        expected = {
            "format",
            "log_origin",
            "round_id",
            "strategy",
            "adapter_spec",
            "aggregate_digest",
            "aggregate_size",
            "participants",
            "total_examples",
            "round_closed_index",
        }
        if not isinstance(obj, dict) or not expected <= set(obj) <= expected | {"client_metrics"}:
            raise FormatError("aggregate manifest has missing or unknown fields")
        if obj["format"] != _FORMAT:
            raise FormatError(f"unknown aggregate manifest format {obj['format']!r}")
        participants = obj["participants"]
        if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
            raise FormatError("aggregate manifest 'participants' must be a list of strings")
        for key in ("round_id", "aggregate_size", "total_examples", "round_closed_index"):
            if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                raise FormatError(f"aggregate manifest {key!r} must be an integer")
        if not isinstance(obj["adapter_spec"], dict):
            raise FormatError("aggregate manifest 'adapter_spec' must be an object")
        return cls(
            log_origin=str(obj["log_origin"]),
            round_id=obj["round_id"],
            strategy=str(obj["strategy"]),
            adapter_spec=obj["adapter_spec"],
            aggregate_digest=b64decode_field(obj["aggregate_digest"], field="aggregate_digest", size=32),
            aggregate_size=obj["aggregate_size"],
            participants=tuple(participants),
            total_examples=obj["total_examples"],
            round_closed_index=obj["round_closed_index"],
            client_metrics=_client_metrics(obj["client_metrics"]) if "client_metrics" in obj else None,
        )


def _client_metrics(value: object) -> dict[str, float]:
    try:
        return check_site_metrics(value)  # type: ignore[arg-type]
    except FormatError as exc:
        raise FormatError(f"aggregate manifest 'client_metrics': {exc}") from None


@dataclass(frozen=True)
class SignedManifest:
    manifest: AggregateManifest
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {"manifest": self.manifest.to_json_obj(), "signature": b64encode(self.signature)}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        obj = parse_canonical(data, what="signed aggregate manifest")
        if not isinstance(obj, dict) or set(obj) != {"manifest", "signature"}:
            raise FormatError("signed aggregate manifest must have exactly 'manifest' and 'signature'")
        return cls(
            AggregateManifest.from_json_obj(obj["manifest"]),
            b64decode_field(obj["signature"], field="signature", size=64),
        )


def _signed_bytes(manifest: AggregateManifest) -> bytes:
    return _DOMAIN + canonical_json(manifest.to_json_obj())


def sign_manifest(manifest: AggregateManifest, key: Ed25519PrivateKey) -> SignedManifest:
    return SignedManifest(manifest, key.sign(_signed_bytes(manifest)))


def verify_manifest(
    signed: SignedManifest, log_public_key: Ed25519PublicKey, aggregate: bytes | memoryview, *, round_id: int
) -> AggregateManifest:
    """Check the signature, that the manifest is `round_id`'s, and that `aggregate` is the
    data it names; SignatureError otherwise."""
    try:
        log_public_key.verify(signed.signature, _signed_bytes(signed.manifest))
    except InvalidSignature:
        raise SignatureError(
            f"aggregate manifest for round {signed.manifest.round_id} is not signed by the attested log key"
        ) from None
    if signed.manifest.round_id != round_id:
        # Genuine, but another round's: handed over in place of the round asked for.
        raise SignatureError(
            f"asked for round {round_id}'s aggregate, got one signed for round {signed.manifest.round_id}"
        )
    if len(aggregate) != signed.manifest.aggregate_size:
        raise SignatureError(
            f"aggregate for round {signed.manifest.round_id} has {len(aggregate)} bytes, "
            f"the signed manifest says {signed.manifest.aggregate_size}"
        )
    if hashlib.sha256(aggregate).digest() != signed.manifest.aggregate_digest:
        raise SignatureError(
            f"aggregate for round {signed.manifest.round_id} does not match the signed manifest's digest"
        )
    return signed.manifest
