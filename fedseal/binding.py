"""The attestation binding: what ties an enclave's fresh public keys to one client's challenge.

Two versions, told apart by their domain string:

    v1 = SHA-256( lp("fedseal/attestation-binding/v1") || lp(hpke_public_key)
                  || lp(log_public_key) || lp(challenge) )
    v2 = SHA-256( lp("fedseal/attestation-binding/v2") || lp(hpke_public_key)
                  || lp(log_public_key) || lp(tls_certificate_sha256) || lp(challenge) )

where lp(x) is the 4-byte big-endian length of x followed by x. Length prefixes make the
encoding injective (no two different inputs share an encoding); the domain strings keep
this hash from ever colliding with another use of SHA-256 in the protocol, or one version
with the other.

v2 adds the SHA-256 of the DER encoding of the TLS certificate the enclave serves with (its
key is made in enclave memory, like the other two): a client that verified the evidence
knows which certificate the enclave's own TLS endpoint presents, and refuses a channel that
presents any other (attested TLS; see fedseal/tls.py). An aggregator that serves TLS
always binds v2; v1 remains for evidence made without a TLS endpoint (tooling, old logs).

The evidence carries the binding in its report data, so a verifier that checks the
evidence also learns which keys the enclave made and that the evidence is fresh for its
own challenge.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from fedseal.errors import FormatError

__all__ = [
    "BINDING_DOMAIN",
    "BINDING_DOMAIN_V2",
    "CHALLENGE_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "TLS_CERTIFICATE_DIGEST_SIZE",
    "X25519_PUBLIC_KEY_SIZE",
    "BindingVersion",
    "BoundKeys",
    "compute_binding",
    "length_prefixed",
]

BINDING_DOMAIN = b"fedseal/attestation-binding/v1"
BINDING_DOMAIN_V2 = b"fedseal/attestation-binding/v2"
CHALLENGE_SIZE = 32
X25519_PUBLIC_KEY_SIZE = 32
ED25519_PUBLIC_KEY_SIZE = 32
TLS_CERTIFICATE_DIGEST_SIZE = 32


class BindingVersion(enum.IntEnum):
    """v1: the two public keys; v2: also the enclave's TLS certificate digest."""

    V1 = 1
    V2 = 2


def length_prefixed(*fields: bytes) -> bytes:
    """Concatenate fields, each preceded by its 4-byte big-endian length."""
    out = bytearray()
    for field in fields:
        if len(field) > 0xFFFFFFFF:
            raise FormatError("field longer than 2**32-1 bytes cannot be length-prefixed")
        out += len(field).to_bytes(4, "big")
        out += field
    return bytes(out)


@dataclass(frozen=True)
class BoundKeys:
    """The enclave's public keys (and, for v2, its TLS certificate digest) that a binding covers."""

    hpke_public_key: bytes  # raw X25519 public key, 32 bytes
    log_public_key: bytes  # raw Ed25519 public key, 32 bytes
    # SHA-256 of the DER certificate the enclave's TLS endpoint presents; None: binding v1.
    tls_certificate_sha256: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.hpke_public_key) != X25519_PUBLIC_KEY_SIZE:
            raise FormatError(
                f"HPKE public key must be {X25519_PUBLIC_KEY_SIZE} bytes (raw X25519), "
                f"got {len(self.hpke_public_key)}"
            )
        if len(self.log_public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise FormatError(
                f"log public key must be {ED25519_PUBLIC_KEY_SIZE} bytes (raw Ed25519), "
                f"got {len(self.log_public_key)}"
            )
        tls = self.tls_certificate_sha256
        if tls is not None and len(tls) != TLS_CERTIFICATE_DIGEST_SIZE:
            raise FormatError(
                f"TLS certificate digest must be {TLS_CERTIFICATE_DIGEST_SIZE} bytes (SHA-256 of "
                f"the DER certificate), got {len(tls)}"
            )

    @property
    def version(self) -> BindingVersion:
        return BindingVersion.V1 if self.tls_certificate_sha256 is None else BindingVersion.V2

    def binding_for(self, challenge: bytes) -> bytes:
        return compute_binding(
            self.hpke_public_key, self.log_public_key, challenge, self.tls_certificate_sha256
        )


def compute_binding(
    hpke_public_key: bytes,
    log_public_key: bytes,
    challenge: bytes,
    tls_certificate_sha256: bytes | None = None,
) -> bytes:
    """Return the 32-byte binding of the keys to a client's 32-byte challenge.

    Without `tls_certificate_sha256` this is binding v1, with it v2 (module docstring).
    """
    keys = BoundKeys(hpke_public_key, log_public_key, tls_certificate_sha256)  # validates lengths
    if len(challenge) != CHALLENGE_SIZE:
        raise FormatError(f"challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    if keys.tls_certificate_sha256 is None:
        encoded = length_prefixed(BINDING_DOMAIN, keys.hpke_public_key, keys.log_public_key, challenge)
    else:
        encoded = length_prefixed(
            BINDING_DOMAIN_V2,
            keys.hpke_public_key,
            keys.log_public_key,
            keys.tls_certificate_sha256,
            challenge,
        )
    return hashlib.sha256(encoded).digest()
