"""The enclave's key pairs, made fresh in memory at every start and never written anywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedseal.binding import BoundKeys

__all__ = ["EnclaveKeys"]


def _raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class EnclaveKeys:
    """X25519 key for HPKE (clients seal data keys to it) and Ed25519 key for the log."""

    hpke_private_key: X25519PrivateKey = field(repr=False)
    log_private_key: Ed25519PrivateKey = field(repr=False)
    # SHA-256 of the DER certificate of the TLS key made in this enclave (aggregator/_tls.py):
    # bound into the attestation (binding v2) so that clients pin it. None: no TLS endpoint.
    tls_certificate_sha256: bytes | None = None

    @classmethod
    def generate(cls, tls_certificate_sha256: bytes | None = None) -> EnclaveKeys:
        return cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), tls_certificate_sha256)

    @property
    def bound(self) -> BoundKeys:
        return BoundKeys(
            _raw_public(self.hpke_private_key), _raw_public(self.log_private_key), self.tls_certificate_sha256
        )
