"""AMD SEV-SNP evidence: the report format, the certificate table, and verification.

Evidence payload (``amd-sev-snp``)
----------------------------------

The payload is the raw ATTESTATION_REPORT (0x4A0 bytes, what configfs-tsm's ``outblob``
gives) followed by the SNP certificate table exactly as configfs-tsm's ``auxblob`` gives it
(possibly empty)::

    payload = report (1184 bytes) || certificate table (0 or more bytes)

Report layout (AMD SEV-SNP ABI specification, publication 56860, ATTESTATION_REPORT)
-----------------------------------------------------------------------------------

All integers little-endian. Versions 2, 3 and 5 are understood; version 3 adds the CPUID
family/model/stepping at 0x188 (which names the product), version 5 the mitigation
vectors at 0x1F8 and 0x200. The signature covers bytes 0x000..0x29F; it is ECDSA P-384
with SHA-384, R and S as 72-byte little-endian integers at 0x2A0 and 0x2E8.

TCB_VERSION (8 bytes) is laid out per product: Milan and Genoa put BOOT_LOADER, TEE, SNP and
MICROCODE in bytes 0, 1, 6, 7; Turin puts FMC, BOOT_LOADER, TEE, SNP in bytes 0..3 and
MICROCODE in byte 7. Turin's VCEK hardware ID is 8 bytes (the first 8 of CHIP_ID), Milan's
and Genoa's is all 64.

Certificate table (GHCB specification, publication 56421, SNP extended guest request)
-----------------------------------------------------------------------------------

A sequence of 24-byte entries ``GUID (16 bytes, RFC 4122 byte order) || offset (u32) ||
length (u32)`` ended by an all-zero entry; offsets count from the start of the table and
point past the entries. GUIDs: VCEK 63da758d-e664-4564-adc5-f4b93be8accd, VLEK
a8074bc2-a25a-483e-aae6-39c045a0b8a1, ASK (also used for the ASVK)
4ab7b379-bbac-4fe4-a02f-05aef327c782, ARK c0b406a4-a803-4952-9743-3fb6014cd0ae.
Certificates are DER (PEM is accepted too).

Trust
-----

The only trust anchors are the ARKs pinned in ``attestation/cpu/roots/``. An ARK found in
the evidence is ignored. The VCEK (or VLEK) comes from the certificate table or, for a
VCEK, from AMD KDS through the verification context's fetcher.
"""

from __future__ import annotations

import datetime
import enum
import hmac
import struct
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.asn1 import IA5String, decode_der
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from .._bundle import Evidence, EvidenceKind
from .._checks import Checklist
from .._errors import AttestationError, CollateralUnavailableError, EvidenceFormatError, PolicyViolationError
from .._fetch import CollateralFetcher, CollateralRequest, OfflineFetcher
from ._common import CheckRecorder, resolve_now, shorten
from ._errors import (
    CpuDebugModeError,
    CpuMeasurementError,
    CpuReportDataMismatchError,
    CpuTcbError,
    SevSnpCertificateChainError,
    SevSnpEndorsementMismatchError,
    SevSnpSignatureError,
)
from ._policy import SevSnpPolicy, SevSnpProduct, SnpTcb
from ._report_data import CPU_REPORT_DATA_SIZE, cpu_report_data
from ._roots import amd_roots

if TYPE_CHECKING:
    from .._verify import VerificationContext

__all__ = [
    "AMD_KDS_BASE_URL",
    "SNP_REPORT_SIZE",
    "SUPPORTED_SNP_REPORT_VERSIONS",
    "SevSnpReport",
    "SnpCertGuid",
    "SnpSigningKey",
    "VerifiedSevSnpReport",
    "encode_snp_cert_table",
    "parse_sev_snp_payload",
    "parse_sev_snp_report",
    "parse_snp_cert_table",
    "vcek_kds_url",
    "verify_sev_snp_evidence",
    "verify_sev_snp_report",
]

SNP_REPORT_SIZE = 0x4A0
SUPPORTED_SNP_REPORT_VERSIONS = (2, 3, 5)
AMD_KDS_BASE_URL = "https://kdsintf.amd.com"

_SIGNED_SIZE = 0x2A0
_VERSIONS_TEXT = "/".join(map(str, SUPPORTED_SNP_REPORT_VERSIONS))
_SIG_COMPONENT_SIZE = 72
_SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
_POLICY_RESERVED_MUST_BE_ONE = 1 << 17
_POLICY_DEBUG = 1 << 19
_CERT_ENTRY = struct.Struct("<16sII")
_MAX_CERT_ENTRIES = 64

# VCEK/VLEK certificate extensions (AMD "VCEK Certificate and KDS Interface Specification",
# publication 57230): product name, TCB component SPLs, hardware ID.
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_BOOTLOADER = "1.3.6.1.4.1.3704.1.3.1"
_OID_TEE = "1.3.6.1.4.1.3704.1.3.2"
_OID_SNP = "1.3.6.1.4.1.3704.1.3.3"
_OID_MICROCODE = "1.3.6.1.4.1.3704.1.3.8"
_OID_FMC = "1.3.6.1.4.1.3704.1.3.9"
_OID_HWID = "1.3.6.1.4.1.3704.1.4"

# A VCEK's hardware ID length, by product (Turin's is the first 8 bytes of CHIP_ID).
_HWID_SIZE = {SevSnpProduct.MILAN: 64, SevSnpProduct.GENOA: 64, SevSnpProduct.TURIN: 8}
# KDS query parameter of each TCB component.
_KDS_PARAMETER = {
    "fmc": "fmcSPL",
    "bootloader": "blSPL",
    "tee": "teeSPL",
    "snp": "snpSPL",
    "microcode": "ucodeSPL",
}


class SnpSigningKey(enum.Enum):
    """Which AMD key signed a report (the report's SIGNING_KEY field)."""

    #: Versioned Chip Endorsement Key: derived from the chip's secret and its TCB.
    VCEK = 0
    #: Versioned Loaded Endorsement Key: provisioned by a cloud provider, signed by AMD.
    VLEK = 1


class SnpCertGuid(enum.Enum):
    """The certificate-table GUIDs of the GHCB specification."""

    VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
    VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
    #: The ASK, or the ASVK when the table serves a VLEK.
    ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
    ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@dataclass(frozen=True)
class SevSnpReport:
    """A parsed SEV-SNP attestation report. Parsing checks the format, never the signature."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SnpSigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    #: CPUID family, model and stepping (version 3 and later), else ``None``.
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb: bytes
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: bytes
    #: Version 5 and later, else ``None``.
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def debug_allowed(self) -> bool:
        """The guest policy's DEBUG bit: the host may decrypt the guest's memory."""
        return bool(self.policy & _POLICY_DEBUG)

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000..0x29F)."""
        return self.raw[:_SIGNED_SIZE]

    def product_from_cpuid(self) -> SevSnpProduct | None:
        """The product named by the CPUID fields (version 3+), ``None`` for a version 2
        report, and ``None`` for a family/model this verifier does not know."""
        if self.cpuid is None:
            return None
        family, model, _ = self.cpuid
        if family == 0x19 and model <= 0x0F:
            return SevSnpProduct.MILAN
        if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
            return SevSnpProduct.GENOA
        if family == 0x1A and model <= 0x1F:
            return SevSnpProduct.TURIN
        return None

    def tcb(self, product: SevSnpProduct) -> SnpTcb:
        """REPORTED_TCB decoded with ``product``'s TCB_VERSION layout."""
        return decode_tcb(self.reported_tcb, product)


def decode_tcb(raw: bytes, product: SevSnpProduct) -> SnpTcb:
    """Decode an 8-byte TCB_VERSION with the layout of ``product`` (see the module docstring)."""
    if product is SevSnpProduct.TURIN:
        return SnpTcb(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])
    return SnpTcb(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


def parse_sev_snp_report(data: bytes, *, field: str = "report") -> SevSnpReport:
    """Parse a raw ATTESTATION_REPORT; raise :class:`EvidenceFormatError` naming the field."""
    if not isinstance(data, bytes) or len(data) != SNP_REPORT_SIZE:
        found = len(data) if isinstance(data, bytes) else type(data).__name__
        raise EvidenceFormatError(f"{field} must be {SNP_REPORT_SIZE} bytes, got {found}", field=field)
    version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0x00)
    if version not in SUPPORTED_SNP_REPORT_VERSIONS:
        raise EvidenceFormatError(
            f"{field} has version {version}; this verifier understands versions "
            f"{', '.join(map(str, SUPPORTED_SNP_REPORT_VERSIONS))}",
            field=f"{field}.version",
        )
    if not policy & _POLICY_RESERVED_MUST_BE_ONE:
        raise EvidenceFormatError(f"{field}.policy bit 17 must be one (ABI)", field=f"{field}.policy")
    vmpl, signature_algo = struct.unpack_from("<II", data, 0x30)
    if signature_algo != _SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise EvidenceFormatError(
            f"{field} signature algorithm is {signature_algo}, not ECDSA P-384 with SHA-384 (1)",
            field=f"{field}.signature_algo",
        )
    (platform_info,) = struct.unpack_from("<Q", data, 0x40)
    (signer_info,) = struct.unpack_from("<I", data, 0x48)
    if signer_info >> 5:
        # Bits 5..31 are reserved; a set bit could change what the fields below mean.
        raise EvidenceFormatError(f"{field} has reserved signer-info bits set", field=f"{field}.signer_info")
    signing_key_value = (signer_info >> 2) & 0b111
    try:
        signing_key = SnpSigningKey(signing_key_value)
    except ValueError:
        what = "is not signed (SIGNING_KEY 7)" if signing_key_value == 7 else "names a reserved SIGNING_KEY"
        raise EvidenceFormatError(f"{field} {what}", field=f"{field}.signing_key") from None
    cpuid = (data[0x188], data[0x189], data[0x18A]) if version >= 3 else None
    mit = struct.unpack_from("<QQ", data, 0x1F8) if version >= 5 else (None, None)
    return SevSnpReport(
        raw=data,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=data[0x38:0x40],
        platform_info=platform_info,
        author_key_en=bool(signer_info & 1),
        mask_chip_key=bool(signer_info & 2),
        signing_key=signing_key,
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=cpuid,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        launch_mit_vector=mit[0],
        current_mit_vector=mit[1],
        signature_r=int.from_bytes(data[0x2A0 : 0x2A0 + _SIG_COMPONENT_SIZE], "little"),
        signature_s=int.from_bytes(data[0x2E8 : 0x2E8 + _SIG_COMPONENT_SIZE], "little"),
    )


def parse_snp_cert_table(data: bytes, *, field: str = "certificate table") -> dict[uuid.UUID, bytes]:
    """Parse an SNP certificate table into ``{GUID: certificate bytes}``.

    An empty input is an empty table. Unknown GUIDs are kept (and ignored by the verifier);
    a GUID listed twice, an entry pointing into the entry list or past the end, or a table
    without its all-zero terminator raise :class:`EvidenceFormatError`.
    """
    if not data:
        return {}
    entries: list[tuple[uuid.UUID, int, int]] = []
    offset = 0
    while True:
        if offset + _CERT_ENTRY.size > len(data):
            raise EvidenceFormatError(f"{field} has no all-zero terminating entry", field=field)
        guid_bytes, cert_offset, cert_length = _CERT_ENTRY.unpack_from(data, offset)
        offset += _CERT_ENTRY.size
        if guid_bytes == bytes(16) and cert_offset == 0 and cert_length == 0:
            break
        if len(entries) == _MAX_CERT_ENTRIES:
            raise EvidenceFormatError(f"{field} has more than {_MAX_CERT_ENTRIES} entries", field=field)
        entries.append((uuid.UUID(bytes=guid_bytes), cert_offset, cert_length))
    table: dict[uuid.UUID, bytes] = {}
    for guid, cert_offset, cert_length in entries:
        if guid in table:
            raise EvidenceFormatError(f"{field} lists GUID {guid} twice", field=field)
        if cert_offset < offset or cert_offset + cert_length > len(data) or cert_length == 0:
            raise EvidenceFormatError(
                f"{field} entry {guid} points outside the table's certificate area", field=field
            )
        table[guid] = data[cert_offset : cert_offset + cert_length]
    return table


def encode_snp_cert_table(certificates: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """Encode ``(GUID, certificate)`` pairs as an SNP certificate table (the inverse of
    :func:`parse_snp_cert_table`), e.g. to staple separately obtained certificates."""
    items = list(certificates)
    header_size = _CERT_ENTRY.size * (len(items) + 1)
    header = bytearray()
    body = bytearray()
    for guid, certificate in items:
        header += _CERT_ENTRY.pack(guid.bytes, header_size + len(body), len(certificate))
        body += certificate
    return bytes(header + bytes(_CERT_ENTRY.size) + body)


def parse_sev_snp_payload(
    payload: bytes, *, field: str = "payload"
) -> tuple[SevSnpReport, dict[uuid.UUID, bytes]]:
    """Split an ``amd-sev-snp`` evidence payload into the parsed report and certificate table."""
    if not isinstance(payload, bytes) or len(payload) < SNP_REPORT_SIZE:
        raise EvidenceFormatError(
            f"{field} must start with a {SNP_REPORT_SIZE}-byte SEV-SNP report", field=field
        )
    report = parse_sev_snp_report(payload[:SNP_REPORT_SIZE], field=f"{field}.report")
    table = parse_snp_cert_table(payload[SNP_REPORT_SIZE:], field=f"{field}.certificate_table")
    return report, table


def vcek_kds_url(product: SevSnpProduct, chip_id: bytes, tcb: SnpTcb) -> str:
    """AMD KDS URL of the VCEK for this chip and TCB (publication 57230, "Get VCEK")."""
    hwid = chip_id[: _HWID_SIZE[product]].hex()
    query = "&".join(f"{_KDS_PARAMETER[name]}={value:02d}" for name, value in tcb.components())
    return f"{AMD_KDS_BASE_URL}/vcek/v1/{product.value}/{hwid}?{query}"


def _load_amd_certificate(data: bytes) -> x509.Certificate:
    """Load a VCEK/VLEK (DER, or PEM).

    AMD issues VCEKs and VLEKs with serial number 0, which RFC 5280 forbids; cryptography
    warns that a future release will refuse to load such certificates. The warning is
    silenced here and only here, for this one message. If a release does refuse them,
    loading raises ValueError and verification fails closed (watch cryptography's
    changelog). Note: warnings.catch_warnings is process-global, not thread-local.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Parsed a serial number which wasn't positive",
            category=CryptographyDeprecationWarning,
        )
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)


def _extension_value(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _der_spl(value: bytes | None, what: str) -> int:
    if value is None:
        raise ValueError(f"has no {what} extension")
    number = decode_der(int, value)
    if not 0 <= number <= 255:
        raise ValueError(f"{what} extension is {number}, outside 0..255")
    return number


@dataclass(frozen=True)
class _Endorsement:
    """What a VCEK or VLEK certificate says about the chip and firmware it endorses."""

    product_name: str | None
    tcb: SnpTcb
    hwid: bytes | None


def _read_endorsement(cert: x509.Certificate, product: SevSnpProduct) -> _Endorsement:
    raw_name = _extension_value(cert, _OID_PRODUCT_NAME)
    product_name = decode_der(IA5String, raw_name).as_str() if raw_name is not None else None
    fmc = _der_spl(_extension_value(cert, _OID_FMC), "fmcSPL") if product is SevSnpProduct.TURIN else None
    tcb = SnpTcb(
        bootloader=_der_spl(_extension_value(cert, _OID_BOOTLOADER), "blSPL"),
        tee=_der_spl(_extension_value(cert, _OID_TEE), "teeSPL"),
        snp=_der_spl(_extension_value(cert, _OID_SNP), "snpSPL"),
        microcode=_der_spl(_extension_value(cert, _OID_MICROCODE), "ucodeSPL"),
        fmc=fmc,
    )
    hwid = _extension_value(cert, _OID_HWID)
    size = _HWID_SIZE[product]
    if hwid is not None and len(hwid) == size + 2 and hwid[:2] == bytes((0x04, size)):
        # Some issuers wrap the hardware ID in a DER OCTET STRING; AMD's KDS sends it raw.
        hwid = hwid[2:]
    return _Endorsement(product_name=product_name, tcb=tcb, hwid=hwid)


def _product_from_name(name: str | None) -> SevSnpProduct | None:
    """ "Milan-B0" -> MILAN: KDS product names carry a stepping suffix."""
    if name is None:
        return None
    try:
        return SevSnpProduct(name.split("-", 1)[0])
    except ValueError:
        return None


def _check_validity(cert: x509.Certificate, what: str, now: datetime.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SevSnpCertificateChainError(
            f"{what} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%d %H:%M} UTC"
        )


def _verify_chain(
    leaf: x509.Certificate,
    leaf_name: str,
    intermediate: x509.Certificate,
    intermediate_name: str,
    ark: x509.Certificate,
    now: datetime.datetime,
) -> None:
    for cert, what in ((leaf, leaf_name), (intermediate, intermediate_name), (ark, "the pinned ARK")):
        _check_validity(cert, what, now)
    for child, child_name, parent, parent_name in (
        (intermediate, intermediate_name, ark, "the pinned ARK"),
        (leaf, leaf_name, intermediate, intermediate_name),
    ):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            reason = "bad signature" if isinstance(exc, InvalidSignature) else shorten(str(exc), 120)
            raise SevSnpCertificateChainError(
                f"{child_name} is not issued by {parent_name} ({reason})"
            ) from None
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise SevSnpCertificateChainError(f"{leaf_name} does not hold an ECDSA P-384 key")


# Only this module holds the token, so only verify_sev_snp_report can make the result.
_CONSTRUCTION_TOKEN = object()


@dataclass(frozen=True)
class VerifiedSevSnpReport:
    """A SEV-SNP report that passed every check of :func:`verify_sev_snp_report`.

    Only :func:`verify_sev_snp_report` constructs one (a module-private token guards the
    constructor, as for :class:`~attestation.VerifiedAttestation`).
    """

    _token: InitVar[object]
    report: SevSnpReport
    product: SevSnpProduct
    signing_key: SnpSigningKey
    tcb: SnpTcb

    def __post_init__(self, _token: object) -> None:
        if _token is not _CONSTRUCTION_TOKEN:
            raise TypeError("VerifiedSevSnpReport is created only by verify_sev_snp_report()")


@dataclass(frozen=True)
class _Appraisal:
    report: SevSnpReport
    product: SevSnpProduct | None
    tcb: SnpTcb | None


def _appraise(
    label: str,
    payload: bytes,
    *,
    expected_report_data: bytes,
    policy: SevSnpPolicy | None,
    now: datetime.datetime,
    fetcher: CollateralFetcher,
    checks: CheckRecorder,
) -> _Appraisal | None:
    """Record every check of one SEV-SNP evidence payload in ``checks`` (never raises for a
    failed check). Returns what was parsed, or ``None`` when the payload does not parse."""
    try:
        report, table = parse_sev_snp_payload(payload, field=f"{label}.payload")
    except EvidenceFormatError as exc:
        checks.record(
            f"{label} payload format",
            expected=f"SEV-SNP report (version {_VERSIONS_TEXT}) + certificate table",
            found="malformed",
            passed=False,
            error=EvidenceFormatError,
            message=str(exc),
        )
        return None
    checks.record(
        f"{label} payload format",
        expected="SEV-SNP report + certificate table",
        found=(
            f"report version {report.version}, {report.signing_key.name}-signed, {len(table)} certificate(s)"
        ),
        passed=True,
        error=EvidenceFormatError,
        message="",
    )
    checks.record(
        f"{label} policy section",
        expected="policy has an 'amd_sev_snp' section",
        found="present" if policy is not None else "absent",
        passed=policy is not None,
        error=PolicyViolationError,
        message=f"{label}: the policy has no 'amd_sev_snp' section, so SEV-SNP evidence cannot be appraised",
    )

    # The endorsement key: from the table, or (VCEK only) from AMD KDS.
    leaf_guid = SnpCertGuid.VCEK if report.signing_key is SnpSigningKey.VCEK else SnpCertGuid.VLEK
    key_name = report.signing_key.name
    leaf: x509.Certificate | None = None
    leaf_source = "certificate table"
    product = report.product_from_cpuid()
    try:
        leaf_bytes = table.get(leaf_guid.value)
        if leaf_bytes is None:
            leaf_bytes = _fetch_vcek(report, product, fetcher, key_name)
            leaf_source = "AMD KDS"
        leaf = _load_amd_certificate(leaf_bytes)
    except CollateralUnavailableError as exc:
        checks.record(
            f"{label} {key_name}",
            expected=f"{key_name} certificate (certificate table or AMD KDS)",
            found="unavailable",
            passed=False,
            error=CollateralUnavailableError,
            message=f"{label}: {exc}",
        )
    except ValueError as exc:
        checks.record(
            f"{label} {key_name}",
            expected=f"{key_name} certificate (X.509)",
            found=f"malformed ({leaf_source})",
            passed=False,
            error=SevSnpCertificateChainError,
            message=(
                f"{label}: the {key_name} from the {leaf_source} is not a certificate: "
                f"{shorten(str(exc), 120)}"
            ),
        )
    else:
        checks.record(
            f"{label} {key_name}",
            expected=f"{key_name} certificate",
            found=f"from the {leaf_source}",
            passed=True,
            error=CollateralUnavailableError,
            message="",
        )

    endorsement_ok = False
    if leaf is not None:
        product, endorsement_ok = _check_endorsement(
            label, report, table, leaf, key_name, product, now, checks, policy.roots if policy else None
        )
    tcb = report.tcb(product) if product is not None else None
    _check_signature(label, report, leaf if endorsement_ok else None, key_name, checks)

    checks.record(
        f"{label} report data",
        expected=expected_report_data.hex(),
        found=report.report_data.hex(),
        passed=hmac.compare_digest(report.report_data, expected_report_data),
        error=CpuReportDataMismatchError,
        message=(
            f"{label} REPORT_DATA is not the report data derived from your challenge, the "
            "bundle's keys and its other evidence (replayed, or made for someone else)"
        ),
    )
    if policy is not None:
        _check_policy(label, report, product, tcb, policy, checks)
    return _Appraisal(report=report, product=product, tcb=tcb)


def _fetch_vcek(
    report: SevSnpReport, product: SevSnpProduct | None, fetcher: CollateralFetcher, key_name: str
) -> bytes:
    if report.signing_key is not SnpSigningKey.VCEK:
        raise CollateralUnavailableError(
            "a VLEK cannot be fetched from AMD KDS by chip ID; it must travel in the certificate table"
        )
    if product is None:
        raise CollateralUnavailableError(
            f"the report (version {report.version}) does not name a known product, so its {key_name} "
            "cannot be fetched from AMD KDS; it must travel in the certificate table"
        )
    if report.chip_id == bytes(len(report.chip_id)):
        raise CollateralUnavailableError(
            "the report's CHIP_ID is masked, so the VCEK cannot be fetched from AMD KDS; "
            "it must travel in the certificate table"
        )
    return fetcher.fetch(CollateralRequest(url=vcek_kds_url(product, report.chip_id, report.tcb(product))))


def _check_endorsement(
    label: str,
    report: SevSnpReport,
    table: dict[uuid.UUID, bytes],
    leaf: x509.Certificate,
    key_name: str,
    product: SevSnpProduct | None,
    now: datetime.datetime,
    checks: CheckRecorder,
    replaced_roots: Mapping[SevSnpProduct, x509.Certificate] | None = None,
) -> tuple[SevSnpProduct | None, bool]:
    """Chain to the pinned ARK, then the certificate's claims against the report.

    Returns the product (from CPUID, else from the certificate) and whether the
    certificate may be used to check the report's signature.
    """
    cert_product_name_raw = _extension_value(leaf, _OID_PRODUCT_NAME)
    try:
        cert_product = _product_from_name(
            decode_der(IA5String, cert_product_name_raw).as_str() if cert_product_name_raw else None
        )
    except ValueError:
        cert_product = None
    chain_name = f"{label} certificate chain"
    if product is None:
        product = cert_product
    if product is None:
        checks.record(
            chain_name,
            expected=f"{key_name} <- ASK <- pinned ARK of a known product",
            found="product unknown",
            passed=False,
            error=SevSnpCertificateChainError,
            message=(
                f"{label}: neither the report's CPUID nor the {key_name} names a product "
                "FedSeal has an ARK for"
            ),
        )
        return None, False
    if cert_product is not None and cert_product is not product:
        checks.record(
            chain_name,
            expected=f"{key_name} for {product.value}",
            found=f"{key_name} for {cert_product.value}",
            passed=False,
            error=SevSnpEndorsementMismatchError,
            message=(
                f"{label}: the report comes from a {product.value} but the {key_name} "
                f"is for {cert_product.value}"
            ),
        )
        return product, False

    replaced = replaced_roots.get(product) if replaced_roots is not None else None
    roots = amd_roots(product)
    ark = replaced if replaced is not None else roots.ark
    ark_name = "the policy's replacement ARK" if replaced is not None else f"pinned ARK-{product.value}"
    intermediate_name = "ASK" if report.signing_key is SnpSigningKey.VCEK else "ASVK"
    chain_expected = f"{key_name} <- {intermediate_name} <- {ark_name}, valid at {now:%Y-%m-%d}"
    table_intermediate = table.get(SnpCertGuid.ASK.value)
    try:
        if table_intermediate is not None:
            intermediate = _load_amd_certificate(table_intermediate)
            source = "certificate table"
        elif replaced is not None:
            # AMD's pinned intermediates belong to AMD's ARK, not to a replacement.
            raise SevSnpCertificateChainError(
                f"the {intermediate_name} must travel in the certificate table under a replaced ARK"
            )
        else:
            intermediate = roots.ask if report.signing_key is SnpSigningKey.VCEK else roots.asvk
            source = "pinned"
        _verify_chain(leaf, key_name, intermediate, f"the {intermediate_name} ({source})", ark, now)
    except (SevSnpCertificateChainError, ValueError) as exc:
        checks.record(
            chain_name,
            expected=chain_expected,
            found="does not verify",
            passed=False,
            error=SevSnpCertificateChainError,
            message=f"{label}: {shorten(str(exc), 200)}",
        )
        return product, False
    checks.record(
        chain_name,
        expected=chain_expected,
        found=f"verifies ({intermediate_name} {source})",
        passed=True,
        error=SevSnpCertificateChainError,
        message="",
    )

    try:
        endorsement = _read_endorsement(leaf, product)
    except ValueError as exc:
        checks.record(
            f"{label} {key_name} TCB",
            expected="TCB extensions",
            found="malformed",
            passed=False,
            error=SevSnpEndorsementMismatchError,
            message=f"{label}: the {key_name} {shorten(str(exc), 120)}",
        )
        return product, False
    report_tcb = report.tcb(product)
    tcb_ok = checks.record(
        f"{label} {key_name} TCB",
        expected=f"REPORTED_TCB {report_tcb}",
        found=str(endorsement.tcb),
        passed=endorsement.tcb == report_tcb,
        error=SevSnpEndorsementMismatchError,
        message=f"{label}: the {key_name} certifies another TCB than the report's REPORTED_TCB",
    )
    hwid_ok = True
    if report.signing_key is SnpSigningKey.VCEK:
        chip = report.chip_id[: _HWID_SIZE[product]]
        if report.chip_id == bytes(len(report.chip_id)):
            # The host masked CHIP_ID. The VCEK still identifies the chip: only that chip
            # holds the key, and the signature check below proves the report came from it.
            found = "CHIP_ID masked by the host (the signature alone binds the VCEK)"
            hwid_ok = True
        else:
            hwid_ok = endorsement.hwid is not None and hmac.compare_digest(endorsement.hwid, chip)
            found = endorsement.hwid.hex() if endorsement.hwid is not None else "no hwID extension"
        checks.record(
            f"{label} VCEK chip id",
            expected=chip.hex(),
            found=found,
            passed=hwid_ok,
            error=SevSnpEndorsementMismatchError,
            message=f"{label}: the VCEK is for another chip than the report's CHIP_ID",
        )
    return product, tcb_ok and hwid_ok


def _check_signature(
    label: str, report: SevSnpReport, leaf: x509.Certificate | None, key_name: str, checks: CheckRecorder
) -> None:
    name = f"{label} signature"
    expected = f"ECDSA P-384/SHA-384 by the {key_name}"
    if leaf is None:
        checks.record(
            name,
            expected=expected,
            found=f"not checked: no verified {key_name}",
            passed=False,
            error=SevSnpSignatureError,
            message=f"{label}: the report's signature cannot be checked without a verified {key_name}",
        )
        return
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):  # refused by the chain check already
        raise SevSnpCertificateChainError(f"{label}: the {key_name} does not hold an EC key")
    try:
        public_key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes(),
            ec.ECDSA(hashes.SHA384()),
        )
        valid = True
    except InvalidSignature:
        valid = False
    checks.record(
        name,
        expected=expected,
        found="valid" if valid else "INVALID",
        passed=valid,
        error=SevSnpSignatureError,
        message=f"{label}: the report's signature does not verify under the {key_name} (report altered)",
    )


def _check_policy(
    label: str,
    report: SevSnpReport,
    product: SevSnpProduct | None,
    tcb: SnpTcb | None,
    policy: SevSnpPolicy,
    checks: CheckRecorder,
) -> None:
    allowed = ", ".join(p.value for p in policy.allowed_products)
    checks.record(
        f"{label} product",
        expected=f"one of {allowed}",
        found=product.value if product is not None else "unknown",
        passed=product is not None and product in policy.allowed_products,
        error=PolicyViolationError,
        message=f"{label}: the policy accepts SEV-SNP on {allowed} only",
    )
    checks.record(
        f"{label} debug",
        expected="debug disallowed (guest policy bit 19 clear)" if not policy.allow_debug else "any",
        found="DEBUG ALLOWED" if report.debug_allowed else "disallowed",
        passed=policy.allow_debug or not report.debug_allowed,
        error=CpuDebugModeError,
        message=f"{label}: the guest was launched with debugging allowed; the host can read its memory",
    )
    if policy.minimum_tcb is not None:
        minimum = policy.minimum_tcb.get(product) if product is not None else None
        if minimum is None or tcb is None:
            checks.record(
                f"{label} TCB minimum",
                expected="a minimum for the report's product",
                found=f"none for {product.value if product is not None else 'an unknown product'}",
                passed=False,
                error=CpuTcbError,
                message=f"{label}: the policy's minimum_tcb has no entry for this product",
            )
        else:
            short = minimum.shortfalls(tcb)
            checks.record(
                f"{label} TCB minimum",
                expected=f">= {minimum}",
                found=str(tcb),
                passed=not short,
                error=CpuTcbError,
                message=f"{label}: REPORTED_TCB is below the policy's minimum ({', '.join(short)})",
            )
    checks.record(
        f"{label} measurement",
        expected=f"one of {len(policy.measurements)} allow-listed",
        found=report.measurement.hex(),
        passed=any(hmac.compare_digest(report.measurement, m) for m in policy.measurements),
        error=CpuMeasurementError,
        message=f"{label}: the launch measurement is not in the policy's amd_sev_snp.measurements",
    )


def verify_sev_snp_evidence(label: str, evidence: Evidence, ctx: VerificationContext) -> None:
    """The ``amd-sev-snp`` verifier of :func:`attestation.verify_bundle`.

    The report data must be :func:`~attestation.cpu.cpu_report_data` of the binding and
    the bundle's other evidence; the policy's ``amd_sev_snp`` section is applied.
    """
    if evidence.kind is not EvidenceKind.AMD_SEV_SNP:
        raise TypeError("verify_sev_snp_evidence needs amd-sev-snp evidence")
    _appraise(
        label,
        evidence.payload,
        expected_report_data=cpu_report_data(ctx.binding, ctx.bundle.evidence),
        policy=ctx.policy.amd_sev_snp,
        now=ctx.now,
        fetcher=ctx.fetcher,
        checks=ctx.checks,
    )


def verify_sev_snp_report(
    payload: bytes,
    *,
    expected_report_data: bytes,
    policy: SevSnpPolicy,
    now: datetime.datetime | None = None,
    fetcher: CollateralFetcher | None = None,
) -> VerifiedSevSnpReport:
    """Verify one ``amd-sev-snp`` payload on its own, outside a bundle.

    Runs exactly the checks :func:`attestation.verify_bundle` runs, with the report data
    compared to ``expected_report_data`` (64 bytes). Returns a
    :class:`VerifiedSevSnpReport` or raises the error of the first failing check, carrying
    every check (``.checks``).
    """
    if not isinstance(expected_report_data, bytes) or len(expected_report_data) != CPU_REPORT_DATA_SIZE:
        raise TypeError(f"expected_report_data must be {CPU_REPORT_DATA_SIZE} bytes")
    if not isinstance(policy, SevSnpPolicy):
        raise TypeError("policy must be a SevSnpPolicy")
    checks = Checklist()
    appraisal = _appraise(
        "amd-sev-snp",
        payload,
        expected_report_data=expected_report_data,
        policy=policy,
        now=resolve_now(now),
        fetcher=fetcher if fetcher is not None else OfflineFetcher(),
        checks=checks,
    )
    checks.raise_if_failed()
    if appraisal is None or appraisal.product is None or appraisal.tcb is None:
        # Unreachable when every check passed; kept so a logic slip cannot return a result.
        raise AttestationError("SEV-SNP verification ended without a verified report")
    return VerifiedSevSnpReport(
        _CONSTRUCTION_TOKEN,
        report=appraisal.report,
        product=appraisal.product,
        signing_key=appraisal.report.signing_key,
        tcb=appraisal.tcb,
    )
