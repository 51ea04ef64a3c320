"""Test identities: deterministic site and principal keys, enrolments, and a consortium PKI.

Keys are derived from their names (SHA-256 of a label), so every test and every process
(the demo's hospitals, the restart test's aggregator) agrees on them without shared state.
The PKI is made with `cryptography`: a CA, client certificates, and signed CRLs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_sdk import ClientIdentity
from fedseal.canonical import b64encode
from fedseal.enrolment import Enrolment
from fedseal.signed_request import Role, Signer
from fedseal.tls import ClientTlsCredentials

# Every site id any test submits as; the shared fixtures enrol them all.
TEST_SITES = (
    *(f"site-{i}" for i in range(10)),
    "site-a",
    "site-b",
    "site-x",
    "site-y",
)


def signing_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"fedseal test key\n" + name.encode()).digest()
    )


def site_identity(name: str, tls: ClientTlsCredentials | None = None) -> ClientIdentity:
    return ClientIdentity(name, signing_key(name), tls)


def principal_identity(name: str) -> ClientIdentity:
    return ClientIdentity(name, signing_key(f"principal {name}"))


OPERATOR = "olivia-operator"
APPROVER = "arthur-approver"


def principals() -> tuple[Signer, ...]:
    return (
        Signer(OPERATOR, Role.OPERATOR, principal_identity(OPERATOR).public_key),
        Signer(APPROVER, Role.APPROVER, principal_identity(APPROVER).public_key),
    )


def principals_json() -> list[dict[str, str]]:
    return [{"name": p.name, "role": p.role.value, "key": b64encode(p.public_key)} for p in principals()]


def enrolment_json(
    names: Iterable[str] = TEST_SITES,
    *,
    version: int = 1,
    certificates: dict[str, str] | None = None,
) -> dict[str, object]:
    """An enrolment document; `certificates` maps site ids to their certificate subject."""
    sites = []
    for name in names:
        site: dict[str, object] = {"id": name, "keys": [b64encode(site_identity(name).public_key)]}
        if certificates and name in certificates:
            site["certificate_subject"] = certificates[name]
        sites.append(site)
    return {"format": "fedseal-enrolment/v1", "version": version, "sites": sites}


def enrolment(
    names: Iterable[str] = TEST_SITES, *, version: int = 1, certificates: dict[str, str] | None = None
) -> Enrolment:
    return Enrolment.from_json_obj(enrolment_json(names, version=version, certificates=certificates))


def write_enrolment(path: Path, names: Iterable[str] = TEST_SITES, **kwargs: object) -> Path:
    path.write_text(json.dumps(enrolment_json(names, **kwargs), indent=2))  # type: ignore[arg-type]
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@dataclass
class ConsortiumPki:
    """A consortium CA that issues site certificates and signs revocation lists."""

    name: str = "FedSeal Test Consortium CA"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    crl_number: int = 0

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    @staticmethod
    def subject_of(site: str) -> str:
        return f"CN={site},O=FedSeal Test Consortium"

    def issue(self, site: str, *, serial: int | None = None) -> tuple[x509.Certificate, ClientTlsCredentials]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedSeal Test Consortium"),
                x509.NameAttribute(NameOID.COMMON_NAME, site),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(hours=1))
            .not_valid_after(self.now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, ClientTlsCredentials(cert.public_bytes(Encoding.PEM), _pem_key(key))

    def crl(
        self, revoked: Sequence[x509.Certificate], *, next_update: dt.timedelta = dt.timedelta(days=7)
    ) -> bytes:
        self.crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(self.now - dt.timedelta(minutes=5))
            .next_update(self.now + next_update)
            .add_extension(x509.CRLNumber(self.crl_number), critical=False)
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(self.now - dt.timedelta(minutes=1))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(Encoding.PEM)
