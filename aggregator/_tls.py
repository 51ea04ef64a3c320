"""The enclave's TLS key and certificate, made in memory at every start.

Nobody signs the certificate: it is self-signed, and what makes a client trust it is the
attestation, whose binding (v2) covers its SHA-256 (fedseal/tls.py describes the client's
side). The private key never leaves this process: gRPC gets it as PEM bytes in memory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from fedseal.tls import ENCLAVE_TLS_NAME

__all__ = ["EnclaveTlsIdentity"]

# Validity does not carry trust here (the attestation does, and a restart makes a new key);
# it only has to outlast any enclave's life.
_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class EnclaveTlsIdentity:
    """An ECDSA P-256 key made in memory and its self-signed certificate."""

    private_key_pem: bytes = field(repr=False)
    certificate_der: bytes

    @classmethod
    def generate(cls, names: Sequence[str] = (), *, now: dt.datetime | None = None) -> EnclaveTlsIdentity:
        """`names`: DNS names to add next to the enclave name (the service's public names, for
        load balancers that route TLS by server name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        moment = now or dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ENCLAVE_TLS_NAME)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment - dt.timedelta(hours=1))
            .not_valid_after(moment + _VALIDITY)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in (ENCLAVE_TLS_NAME, *names)]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return cls(pem, certificate.public_bytes(Encoding.DER))

    @property
    def certificate_sha256(self) -> bytes:
        """What the attestation binds and clients pin."""
        return hashlib.sha256(self.certificate_der).digest()

    @property
    def certificate_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.certificate_der).public_bytes(Encoding.PEM)

    def server_credentials(self, client_ca_pem: bytes | None = None) -> grpc.ServerCredentials:
        """TLS with this certificate; with `client_ca_pem`, clients must present a certificate
        issued by that CA (gRPC Python can only require client certificates or not ask)."""
        return grpc.ssl_server_credentials(
            [(self.private_key_pem, self.certificate_pem)],
            root_certificates=client_ca_pem,
            require_client_auth=client_ca_pem is not None,
        )
