"""The enclave's key pairs, made fresh in memory at every start and never written anywhere.

Updates are sealed to per-round keys (aggregator/enclave/_roundkey.py), signed by the log
key below. The attestation binding (fedseal/binding.py v1/v2) and `enclave_started` still
carry an X25519 key, as their formats require: its private half is discarded the moment
it is made, so nothing the enclave holds for its lifetime can open an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedseal.binding import BoundKeys

__all__ = ["EnclaveKeys"]


@dataclass(frozen=True)
class EnclaveKeys:
    """Ed25519 key for the log (it signs checkpoints, receipts, aggregates and round keys)
    and the X25519 public key the attestation format binds (module docstring)."""

    hpke_public_key: bytes
    log_private_key: Ed25519PrivateKey = field(repr=False)
    # SHA-256 of the DER certificate of the TLS key made in this enclave (aggregator/_tls.py):
    # bound into the attestation (binding v2) so that clients pin it. None: no TLS endpoint.
    tls_certificate_sha256: bytes | None = None

    @classmethod
    def generate(cls, tls_certificate_sha256: bytes | None = None) -> EnclaveKeys:
        # Only the public half is kept (module docstring).
        hpke_public_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
        return cls(hpke_public_key, Ed25519PrivateKey.generate(), tls_certificate_sha256)

    @property
    def bound(self) -> BoundKeys:
        return BoundKeys(
            self.hpke_public_key,
            self.log_private_key.public_key().public_bytes_raw(),
            self.tls_certificate_sha256,
        )
