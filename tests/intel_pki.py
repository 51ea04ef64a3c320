"""A test PKI that imitates Intel's for TDX (DCAP): Root CA, PCK Platform CA, PCK
certificate, TCB signing certificate, CRLs, signed TCB info and QE identity, and quotes.

Nothing here can sign as Intel, so tests that need a *positive* TDX path build evidence
with this PKI. Its layout follows Intel's (Intel SGX PCK Certificate and CRL Profile; Intel
TDX DCAP Quoting Library API, appendix "Quote Format"; Intel PCS API v4), checked against
what dcap-qvl verifies and against the real sample quote's layout
(test_hardware_path_tdx.py::test_the_test_quote_is_laid_out_like_the_real_sample):

* the PCK certificate carries Intel's SGX extension (OID 1.2.840.113741.1.13.1): PPID,
  TCB (16 component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, platform instance id
  and configuration, DER-encoded as Intel encodes them;
* a TDX v4 quote: 48-byte header, the 584-byte TD report body, then the ECDSA-P256
  signature data: the attestation key's signature over header and body, the attestation
  key, and certification data type 6 (the QE report, its signature by the PCK key, the QE
  authentication data, and type 5: the PCK chain as PEM). The QE report's report data is
  SHA-256(attestation key || QE authentication data), zero-padded;
* TCB info (``id`` "TDX", version 3, with ``tdxtcbcomponents`` and the TDX module
  identities) and QE identity (``id`` "TD_QE", version 2) are signed by the TCB signing
  key over their exact JSON text, the signature raw ``r || s`` in hex, as PCS serves them;
* the CRLs (root CA's and the Platform CA's) are DER, as PCS and Intel's CRL endpoint serve
  them.

The test root names Intel's root CRL distribution point, so the verifier's request for the
root CA CRL goes to the same URL as for Intel's root; the test PCS answers it. A policy
points the verifier at this root through ``intel_tdx.roots.sgx_root_ca``; under the pinned
Intel SGX Root CA the same evidence fails.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import asn1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from attestation.cpu import INTEL_PCS_BASE_URL, TdxTcbStatus, parse_tdx_quote, tdx_collateral_staples
from attestation.cpu._roots import intel_sgx_root_ca_der

__all__ = [
    "CPUSVN",
    "FMSPC",
    "MRTD",
    "PCESVN",
    "RTMRS",
    "SGX_EXTENSION_OID",
    "TEE_TCB_SVN",
    "IntelPki",
    "pcs_time",
]

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
FAR = datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
FMSPC = bytes.fromhex("90C06F000000")
PCE_ID = bytes(2)
#: The platform's CPUSVN (the 16 SGX TCB component SVNs) and PCESVN, as in its PCK certificate.
CPUSVN = bytes([3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0])
PCESVN = 13
#: TEE_TCB_SVN of the TD report: TDX module ISVSVN 6, major version 1 (identity "TDX_01").
TEE_TCB_SVN = bytes([6, 1, 3]) + bytes(13)
MRTD = hashlib.sha384(b"fedseal test TD image").digest()
RTMRS = tuple(hashlib.sha384(f"fedseal test RTMR{i}".encode()).digest() for i in range(4))
#: SEPT_VE_DISABLE (bit 28) set, DEBUG clear: what a production TD has.
TD_ATTRIBUTES = bytes([0, 0, 0, 0x10, 0, 0, 0, 0])
XFAM = bytes.fromhex("e702060000000000")
MR_SEAM = hashlib.sha384(b"fedseal test TDX module").digest()
QE_MRSIGNER = hashlib.sha256(b"fedseal test quoting enclave signer").digest()
QE_ISVSVN = 8
QE_ISVPRODID = 2
QE_ATTRIBUTES = bytes([0x15]) + bytes(7) + bytes([0xE7]) + bytes(7)
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_TEE_TYPE_TDX = 0x81
_ECDSA_P256 = 2


def pcs_time(moment: datetime.datetime) -> str:
    """A time as PCS writes it in TCB info and QE identity."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _root_ca_crl_url() -> str:
    """Intel's root CRL distribution point, which the test root names too."""
    root = x509.load_der_x509_certificate(intel_sgx_root_ca_der())
    points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    name = points[0].full_name[0] if points[0].full_name else None
    assert isinstance(name, x509.UniformResourceIdentifier)
    return name.value


ROOT_CA_CRL_URL = _root_ca_crl_url()
PCK_CRL_URL = f"{INTEL_PCS_BASE_URL}/sgx/certification/v4/pckcrl?ca=platform&encoding=der"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedSeal Test (not Intel)"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Ca | None,
    *,
    ca: bool,
    path_length: int | None = None,
    crl_url: str,
    extra: Sequence[x509.ExtensionType] = (),
    not_before: datetime.datetime = T0,
    not_after: datetime.datetime = FAR,
) -> x509.Certificate:
    name = _name(cn)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def sgx_extension(
    *,
    ppid: bytes,
    cpusvn: bytes = CPUSVN,
    pcesvn: int = PCESVN,
    fmspc: bytes = FMSPC,
    platform_instance_id: bytes,
) -> x509.UnrecognizedExtension:
    """Intel's SGX extension of a PCK certificate (Platform CA flavour), DER as Intel writes it."""
    oid = asn1.Numbers.ObjectIdentifier
    encoder = asn1.Encoder()
    encoder.start()
    encoder.enter(asn1.Numbers.Sequence)

    def entry(suffix: str, value: object, kind: asn1.Numbers) -> None:
        encoder.enter(asn1.Numbers.Sequence)
        encoder.write(f"{SGX_EXTENSION_OID}.{suffix}", oid)
        encoder.write(value, kind)
        encoder.leave()

    entry("1", ppid, asn1.Numbers.OctetString)
    encoder.enter(asn1.Numbers.Sequence)  # TCB
    encoder.write(f"{SGX_EXTENSION_OID}.2", oid)
    encoder.enter(asn1.Numbers.Sequence)
    for index, svn in enumerate(cpusvn, start=1):
        entry(f"2.{index}", svn, asn1.Numbers.Integer)
    entry("2.17", pcesvn, asn1.Numbers.Integer)
    entry("2.18", cpusvn, asn1.Numbers.OctetString)
    encoder.leave()
    encoder.leave()
    entry("3", PCE_ID, asn1.Numbers.OctetString)
    entry("4", fmspc, asn1.Numbers.OctetString)
    entry("5", 1, asn1.Numbers.Enumerated)  # SGX type: Scalable
    entry("6", platform_instance_id, asn1.Numbers.OctetString)
    encoder.enter(asn1.Numbers.Sequence)  # configuration
    encoder.write(f"{SGX_EXTENSION_OID}.7", oid)
    encoder.enter(asn1.Numbers.Sequence)
    for index in (1, 2, 3):  # dynamicPlatform, cachedKeys, SMTEnabled
        entry(f"7.{index}", True, asn1.Numbers.Boolean)
    encoder.leave()
    encoder.leave()
    encoder.leave()
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), encoder.output())


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256/SHA-256 as DCAP carries it: ``r || s``, 32 bytes each, big-endian."""
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # x || y, without the 0x04 prefix


def _components(svns: bytes) -> list[dict[str, int]]:
    return [{"svn": svn} for svn in svns]


def _tcb_level(
    cpusvn: bytes, pcesvn: int, tee_tcb_svn: bytes, status: TdxTcbStatus, advisories: Sequence[str] = ()
) -> dict[str, object]:
    level: dict[str, object] = {
        "tcb": {
            "sgxtcbcomponents": _components(cpusvn),
            "pcesvn": pcesvn,
            "tdxtcbcomponents": _components(tee_tcb_svn),
        },
        "tcbDate": "2025-03-12T00:00:00Z",
        "tcbStatus": status.value,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


@dataclass
class IntelPki:
    """One TDX platform (its PCK key and certificate, its quoting enclave's attestation key)
    under a test Intel PKI, and the collateral PCS would serve for it, issued ``now``."""

    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    ppid: bytes = field(default_factory=lambda: os.urandom(16))
    qe_auth_data: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_cert = _cert("Test SGX Root CA", root_key, None, ca=True, path_length=1, crl_url=ROOT_CA_CRL_URL)
        self.root = Ca(root_cert, root_key)
        self.platform_ca = self.make_platform_ca()
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.pck = self.make_pck()
        self.tcb_signing = self.make_tcb_signing()
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        self._pcs: dict[str, bytes] | None = None

    # ------------------------------------------------------------------ certificates

    def make_platform_ca(self) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(
            "Test SGX PCK Platform CA", key, self.root, ca=True, path_length=0, crl_url=ROOT_CA_CRL_URL
        )
        return Ca(cert, key)

    def make_pck(self, *, not_after: datetime.datetime = FAR) -> x509.Certificate:
        extension = sgx_extension(
            ppid=self.ppid, platform_instance_id=hashlib.sha256(self.ppid).digest()[:16]
        )
        return _cert(
            "Test SGX PCK Certificate",
            self.pck_key,
            self.platform_ca,
            ca=False,
            crl_url=PCK_CRL_URL,
            extra=(extension,),
            not_after=not_after,
        )

    def make_tcb_signing(self, *, not_after: datetime.datetime = FAR) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(
            "Test SGX TCB Signing", key, self.root, ca=False, crl_url=ROOT_CA_CRL_URL, not_after=not_after
        )
        return Ca(cert, key)

    def root_pem(self) -> str:
        return self.root.pem().decode()

    def pck_chain_pem(self) -> bytes:
        return self.pck.public_bytes(serialization.Encoding.PEM) + self.platform_ca.pem() + self.root.pem()

    # ------------------------------------------------------------------ the quote

    def td_report(
        self,
        report_data: bytes,
        *,
        mrtd: bytes = MRTD,
        rtmrs: Sequence[bytes] = RTMRS,
        td_attributes: bytes = TD_ATTRIBUTES,
    ) -> bytes:
        """The 584-byte TD report body (TDREPORT 1.0) of a TDX v4 quote."""
        if len(report_data) != 64:
            raise ValueError("REPORTDATA is 64 bytes")
        body = b"".join(
            (
                TEE_TCB_SVN,
                MR_SEAM,
                bytes(48),  # MRSIGNERSEAM: zero for Intel's TDX module
                bytes(8),  # SEAMATTRIBUTES
                td_attributes,
                XFAM,
                mrtd,
                bytes(48),  # MRCONFIGID
                bytes(48),  # MROWNER
                bytes(48),  # MROWNERCONFIG
                *rtmrs,
                report_data,
            )
        )
        assert len(body) == 584
        return body

    def qe_report(self) -> bytes:
        """The quoting enclave's 384-byte SGX report; its report data binds the attestation key."""
        qe_hash = hashlib.sha256(_raw_public_key(self.attestation_key) + self.qe_auth_data).digest()
        report = b"".join(
            (
                CPUSVN,
                struct.pack("<I", 0),  # MISCSELECT
                bytes(28),
                QE_ATTRIBUTES,
                hashlib.sha256(b"fedseal test quoting enclave").digest(),  # MRENCLAVE
                bytes(32),
                QE_MRSIGNER,
                bytes(96),
                struct.pack("<HH", QE_ISVPRODID, QE_ISVSVN),
                bytes(60),
                qe_hash + bytes(32),
            )
        )
        assert len(report) == 384
        return report

    def quote(self, report_data: bytes, **report: bytes | Sequence[bytes]) -> bytes:
        """A TDX v4 quote over ``report_data`` (see the module docstring for the layout)."""
        header = struct.pack("<HHIHH", 4, _ECDSA_P256, _TEE_TYPE_TDX, 0, 0) + QE_VENDOR_ID + bytes(20)
        body = self.td_report(report_data, **report)  # type: ignore[arg-type]
        qe_report = self.qe_report()
        chain = self.pck_chain_pem()
        qe_certification = b"".join(
            (
                qe_report,
                _raw_signature(self.pck_key, qe_report),
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                struct.pack("<HI", 5, len(chain)),
                chain,
            )
        )
        signature_data = b"".join(
            (
                _raw_signature(self.attestation_key, header + body),
                _raw_public_key(self.attestation_key),
                struct.pack("<HI", 6, len(qe_certification)),
                qe_certification,
            )
        )
        return header + body + struct.pack("<I", len(signature_data)) + signature_data

    # ------------------------------------------------------------------ collateral

    def tcb_info(
        self,
        *,
        platform_status: TdxTcbStatus = TdxTcbStatus.UP_TO_DATE,
        issued: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> str:
        """TCB info JSON text (``tcbInfo``) for the platform's FMSPC, rating it ``platform_status``."""
        issued = issued if issued is not None else self.now - HOUR
        next_update = next_update if next_update is not None else issued + 30 * DAY
        if platform_status is TdxTcbStatus.UP_TO_DATE:
            levels = [
                _tcb_level(CPUSVN, PCESVN, TEE_TCB_SVN, TdxTcbStatus.UP_TO_DATE),
                _tcb_level(bytes(16), 5, bytes(16), TdxTcbStatus.OUT_OF_DATE, ["INTEL-SA-00837"]),
            ]
        else:
            newer = bytes(svn + 1 for svn in CPUSVN)
            levels = [
                _tcb_level(newer, PCESVN, TEE_TCB_SVN, TdxTcbStatus.UP_TO_DATE),
                _tcb_level(CPUSVN, PCESVN, TEE_TCB_SVN, platform_status, ["INTEL-SA-00837"]),
            ]
        module = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}
        document = {
            "id": "TDX",
            "version": 3,
            "issueDate": pcs_time(issued),
            "nextUpdate": pcs_time(next_update),
            "fmspc": FMSPC.hex().upper(),
            "pceId": PCE_ID.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": module,
            "tdxModuleIdentities": [
                {
                    "id": "TDX_01",
                    **module,
                    "tcbLevels": [
                        {"tcb": {"isvsvn": 4}, "tcbDate": "2025-03-12T00:00:00Z", "tcbStatus": "UpToDate"},
                        {"tcb": {"isvsvn": 2}, "tcbDate": "2023-08-09T00:00:00Z", "tcbStatus": "OutOfDate"},
                    ],
                }
            ],
            "tcbLevels": levels,
        }
        return json.dumps(document, separators=(",", ":"))

    def qe_identity(
        self, *, issued: datetime.datetime | None = None, next_update: datetime.datetime | None = None
    ) -> str:
        """QE identity JSON text (``enclaveIdentity``) of the TD quoting enclave."""
        issued = issued if issued is not None else self.now - HOUR
        next_update = next_update if next_update is not None else issued + 30 * DAY
        document = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": pcs_time(issued),
            "nextUpdate": pcs_time(next_update),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": QE_ISVPRODID,
            "tcbLevels": [
                {"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": "2025-03-12T00:00:00Z", "tcbStatus": "UpToDate"}
            ],
        }
        return json.dumps(document, separators=(",", ":"))

    def crl(
        self,
        issuer: Ca,
        *,
        revoked: Sequence[int] = (),
        this_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> bytes:
        """A DER CRL of ``issuer`` listing ``revoked`` serial numbers."""
        this_update = this_update if this_update is not None else self.now - HOUR
        next_update = next_update if next_update is not None else this_update + 30 * DAY
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
            )
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(this_update - HOUR)
                .build()
            )
        return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def collateral_json(
        self,
        *,
        tcb_info: str | None = None,
        qe_identity: str | None = None,
        pck_crl: bytes | None = None,
        root_ca_crl: bytes | None = None,
        tcb_signing: Ca | None = None,
    ) -> str:
        """The platform's collateral as a dcap-qvl ``QuoteCollateralV3`` JSON document."""
        signer = tcb_signing if tcb_signing is not None else self.tcb_signing
        tcb_text = tcb_info if tcb_info is not None else self.tcb_info()
        qe_text = qe_identity if qe_identity is not None else self.qe_identity()
        signing_chain = (signer.pem() + self.root.pem()).decode()
        return json.dumps(
            {
                "pck_crl_issuer_chain": (self.platform_ca.pem() + self.root.pem()).decode(),
                "root_ca_crl": (root_ca_crl if root_ca_crl is not None else self.crl(self.root)).hex(),
                "pck_crl": (pck_crl if pck_crl is not None else self.crl(self.platform_ca)).hex(),
                "tcb_info_issuer_chain": signing_chain,
                "tcb_info": tcb_text,
                "tcb_info_signature": _raw_signature(signer.key, tcb_text.encode()).hex(),
                "qe_identity_issuer_chain": signing_chain,
                "qe_identity": qe_text,
                "qe_identity_signature": _raw_signature(signer.key, qe_text.encode()).hex(),
            }
        )

    def pcs_answers(self, collateral_json: str | None = None) -> dict[str, bytes]:
        """What Intel PCS (and Intel's root CRL endpoint) serve for this platform's quotes,
        keyed by ``CollateralRequest.staple_key()``: bodies exactly as served, chains as the
        URL-encoded response headers. By default the collateral issued ``now``."""
        if collateral_json is None and self._pcs is not None:
            return dict(self._pcs)
        document = collateral_json if collateral_json is not None else self.collateral_json()
        answers = tdx_collateral_staples(parse_tdx_quote(self.quote(bytes(64))), document)
        if collateral_json is None:
            self._pcs = answers
        return dict(answers)
