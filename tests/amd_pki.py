"""A test PKI that imitates AMD's for SEV-SNP: ARK -> ASK -> VCEK, and signed reports.

Nothing here can sign as AMD, so tests that need a *positive* SEV-SNP path build evidence
with this PKI. Its layout follows AMD's (VCEK Certificate and KDS Interface Specification,
publication 57230; SEV-SNP ABI, publication 56860): the VCEK carries the product name, the
TCB components and the chip's hardware id as extensions, and the report is signed with
ECDSA P-384 over bytes 0x000..0x29F with R and S little-endian at 0x2A0 and 0x2E8. The
ARK and ASK are ECDSA here (AMD's are RSA-PSS); the verifier accepts either. A policy
points the verifier at this ARK through ``amd_sev_snp.roots``; under the pinned ARKs the
same evidence fails.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from attestation.cpu import SevSnpProduct, SnpTcb, vcek_kds_url
from attestation.cpu._snp import SnpSigningKey
from attestation.cpu._staple import amd_cert_chain_url

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
FAR = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
PRODUCT = SevSnpProduct.MILAN
#: Milan's TCB_VERSION layout: BOOT_LOADER, TEE, SNP, MICROCODE in bytes 0, 1, 6, 7.
TCB = SnpTcb(bootloader=4, tee=0, snp=24, microcode=219)
TCB_BYTES = bytes([4, 0, 0, 0, 0, 0, 24, 219])
MEASUREMENT = hashlib.sha384(b"fedseal test guest image").digest()


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return b"\x02" + bytes([len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    extensions: tuple[x509.ExtensionType, ...] = (),
    not_after: datetime.datetime = FAR,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0] if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA384())


@dataclass
class AmdPki:
    """One chip: the test ARK and ASK of ``PRODUCT``, and the chip's VCEK at ``TCB``."""

    chip_id: bytes = field(default_factory=lambda: os.urandom(64))
    ark_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    ask_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    vcek_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )

    def __post_init__(self) -> None:
        self.ark = _cert("ARK-Milan (test)", self.ark_key, None, ca=True)
        self.ask = _cert("SEV-Milan (test)", self.ask_key, (self.ark.subject, self.ark_key), ca=True)
        self.vcek = self.make_vcek()

    def make_vcek(self, *, not_after: datetime.datetime = FAR) -> x509.Certificate:
        extensions = (
            _ext("1.3.6.1.4.1.3704.1.2", b"\x16\x08Milan-B0"),  # IA5String product name
            _ext("1.3.6.1.4.1.3704.1.3.1", _der_integer(TCB.bootloader)),
            _ext("1.3.6.1.4.1.3704.1.3.2", _der_integer(TCB.tee)),
            _ext("1.3.6.1.4.1.3704.1.3.3", _der_integer(TCB.snp)),
            _ext("1.3.6.1.4.1.3704.1.3.8", _der_integer(TCB.microcode)),
            _ext("1.3.6.1.4.1.3704.1.4", self.chip_id),
        )
        return _cert(
            "SEV-VCEK (test)",
            self.vcek_key,
            (self.ask.subject, self.ask_key),
            ca=False,
            extensions=extensions,
            not_after=not_after,
        )

    def ark_pem(self) -> str:
        return self.ark.public_bytes(serialization.Encoding.PEM).decode()

    def report_template(self, measurement: bytes = MEASUREMENT) -> bytes:
        """An unsigned version 3 ATTESTATION_REPORT of this chip (report data zero)."""
        report = bytearray(0x4A0)
        struct.pack_into("<IIQ", report, 0x00, 3, 0, (1 << 17) | (1 << 16))  # version, svn, policy
        struct.pack_into("<II", report, 0x30, 0, 1)  # VMPL 0, ECDSA P-384 with SHA-384
        report[0x38:0x40] = TCB_BYTES  # CURRENT_TCB
        report[0x90:0xC0] = measurement
        report[0x180:0x188] = TCB_BYTES  # REPORTED_TCB
        report[0x188:0x18B] = bytes([0x19, 0x01, 0x01])  # CPUID family/model/stepping: Milan
        report[0x1A0:0x1E0] = self.chip_id
        report[0x1E0:0x1E8] = TCB_BYTES  # COMMITTED_TCB
        report[0x1F0:0x1F8] = TCB_BYTES  # LAUNCH_TCB
        return bytes(report)

    def sign(self, report: bytes) -> bytes:
        """``report`` with its signature (over 0x000..0x29F) by the VCEK."""
        r, s = utils.decode_dss_signature(self.vcek_key.sign(report[:0x2A0], ec.ECDSA(hashes.SHA384())))
        signed = bytearray(report)
        signed[0x2A0:0x4A0] = bytes(0x200)
        signed[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
        signed[0x2E8 : 0x2E8 + 72] = s.to_bytes(72, "little")
        return bytes(signed)

    def kds_answers(self) -> dict[str, bytes]:
        """What AMD KDS serves for this chip: its VCEK (DER) and the ASK+ARK chain (PEM)."""
        return {
            vcek_kds_url(PRODUCT, self.chip_id, TCB): self.vcek.public_bytes(serialization.Encoding.DER),
            amd_cert_chain_url(PRODUCT, SnpSigningKey.VCEK): b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in (self.ask, self.ark)
            ),
        }
