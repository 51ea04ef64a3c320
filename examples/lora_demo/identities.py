"""The demo consortium's identities, made fresh in the run folder.

A consortium CA (ECDSA P-256) issues each hospital a TLS client certificate; each hospital
also gets an Ed25519 key, which signs its updates. The enrolment file lists both (the key,
and the certificate by its subject); the aggregator takes it with `--enrolment` and the CA
with `--client-ca`. In a real consortium each site makes its own keys and sends only the
public half and a certificate request; here one process makes everything for brevity.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_sdk import write_signing_key
from fedseal.canonical import b64encode
from fedseal.enrolment import ENROLMENT_FORMAT

__all__ = ["DemoIdentities", "make_identities"]

_ORGANIZATION = "FedSeal Demo Consortium"


@dataclass(frozen=True)
class DemoIdentities:
    ca_certificate: Path
    enrolment: Path
    keys: dict[str, Path]  # hospital -> Ed25519 key (PEM)
    certificates: dict[str, tuple[Path, Path]]  # hospital -> (TLS certificate, TLS key)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def make_identities(directory: Path, hospitals: list[str]) -> DemoIdentities:
    """A CA, and for each hospital an Ed25519 key and a client certificate; the enrolment."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{_ORGANIZATION} CA"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "consortium-ca.pem"
    ca_file.write_bytes(ca.public_bytes(Encoding.PEM))
    keys, certificates, sites = {}, {}, []
    for name in hospitals:
        keys[name] = directory / f"{name}.key"
        public = write_signing_key(keys[name])
        tls_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(tls_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{name}-tls.pem", directory / f"{name}-tls.key"
        cert_file.write_bytes(certificate.public_bytes(Encoding.PEM))
        _write_private(key_file, _pem_key(tls_key))
        certificates[name] = (cert_file, key_file)
        sites.append(
            {"id": name, "keys": [b64encode(public)], "certificate_subject": subject.rfc4514_string()}
        )
    enrolment = directory / "enrolment.json"
    enrolment.write_text(json.dumps({"format": ENROLMENT_FORMAT, "version": 1, "sites": sites}, indent=2))
    return DemoIdentities(ca_file, enrolment, keys, certificates)
