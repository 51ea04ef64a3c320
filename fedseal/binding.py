"""The attestation binding: what ties an enclave's fresh public keys to one client's challenge.

    binding = SHA-256( lp(DOMAIN) || lp(hpke_public_key) || lp(log_public_key) || lp(challenge) )

where lp(x) is the 4-byte big-endian length of x followed by x. Length prefixes make the
encoding injective (no two different inputs share an encoding); the domain string keeps
this hash from ever colliding with another use of SHA-256 in the protocol.

The evidence carries the binding in its report data, so a verifier that checks the
evidence also learns which keys the enclave made and that the evidence is fresh for its
own challenge.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fedseal.errors import FormatError

__all__ = [
    "BINDING_DOMAIN",
    "CHALLENGE_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "X25519_PUBLIC_KEY_SIZE",
    "BoundKeys",
    "compute_binding",
    "length_prefixed",
]

BINDING_DOMAIN = b"fedseal/attestation-binding/v1"
CHALLENGE_SIZE = 32
X25519_PUBLIC_KEY_SIZE = 32
ED25519_PUBLIC_KEY_SIZE = 32


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
    """The enclave's public keys that a binding covers."""

    hpke_public_key: bytes  # raw X25519 public key, 32 bytes
    log_public_key: bytes  # raw Ed25519 public key, 32 bytes

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

    def binding_for(self, challenge: bytes) -> bytes:
        return compute_binding(self.hpke_public_key, self.log_public_key, challenge)


def compute_binding(hpke_public_key: bytes, log_public_key: bytes, challenge: bytes) -> bytes:
    """Return the 32-byte binding of both public keys to a client's 32-byte challenge."""
    keys = BoundKeys(hpke_public_key, log_public_key)  # validates the key lengths
    if len(challenge) != CHALLENGE_SIZE:
        raise FormatError(f"challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    encoded = length_prefixed(BINDING_DOMAIN, keys.hpke_public_key, keys.log_public_key, challenge)
    return hashlib.sha256(encoded).digest()


def bindings_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison, for callers that then raise a specific error."""
    return hmac.compare_digest(a, b)
