"""AMD SEV-SNP and Intel TDX: collection through configfs-tsm, verification, policy sections.

Every report and quote here is real, vendor-signed evidence published by open-source
projects (tests/vectors/cpu-tee/, see SOURCE.txt), verified against AMD's and Intel's real
roots (pinned in attestation/cpu/roots/) at a pinned time inside its certificates' and
collateral's validity. Only two things are stand-ins: the fetcher (stapled answers instead
of AMD KDS / Intel PCS), and, for the collector, a directory tree shaped like the kernel's
configfs-tsm, whose "kernel" threads answer reads of ``generation`` and ``outblob``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

import attestation.cpu
from attestation import (
    AttestationError,
    BindingMismatchError,
    CachingFetcher,
    CollateralRequest,
    CollateralUnavailableError,
    Evidence,
    EvidenceBundle,
    EvidenceFormatError,
    EvidenceKind,
    EvidenceSignatureError,
    InsecureSimulatedTeeCollector,
    OfflineFetcher,
    Policy,
    PolicyError,
    PolicyViolationError,
    build_bundle,
    load_builtin_policy,
    verify_bundle,
)
from attestation.cpu import (
    ConfigfsTsmCollector,
    ConfigfsTsmConflictError,
    ConfigfsTsmError,
    CpuDebugModeError,
    CpuMeasurementError,
    CpuReportDataMismatchError,
    CpuTcbError,
    SevSnpCertificateChainError,
    SevSnpEndorsementMismatchError,
    SevSnpPolicy,
    SevSnpProduct,
    SevSnpSignatureError,
    SnpCertGuid,
    SnpSigningKey,
    SnpTcb,
    TdxCertificateChainError,
    TdxCollateralError,
    TdxPolicy,
    TdxQuoteSignatureError,
    TdxTcbStatus,
    amd_roots,
    cpu_report_data,
    encode_snp_cert_table,
    intel_sgx_root_ca_der,
    parse_sev_snp_payload,
    parse_sev_snp_report,
    parse_snp_cert_table,
    parse_tdx_quote,
    tdx_collateral_requests,
    tdx_collateral_staples,
    vcek_kds_url,
    verify_sev_snp_report,
    verify_tdx_quote,
)
from attestation.cpu._snp import _read_endorsement, _verify_chain, decode_tcb
from attestation.cpu._tdx import _classify_dcap_failure, _raw_members
from fedseal.binding import BoundKeys, compute_binding, length_prefixed
from fedseal.errors import FedSealError

VECTORS = Path(__file__).parent / "vectors" / "cpu-tee"
SNP = VECTORS / "sev-snp"
TDX = VECTORS / "tdx"


def utc(year: int, month: int = 6, day: int = 1) -> datetime.datetime:
    return datetime.datetime(year, month, day, tzinfo=datetime.UTC)


def at(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


# --------------------------------------------------------------------------- vectors


def test_vectors_match_their_source_listing() -> None:
    """Every copied file is byte-identical to what SOURCE.txt says was published."""
    listed = 0
    for line in (VECTORS / "SOURCE.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, size, sha256, *_ = (field.strip() for field in line.split("|"))
        data = (VECTORS / path).read_bytes()
        assert len(data) == int(size), path
        assert hashlib.sha256(data).hexdigest() == sha256, path
        listed += 1
    copied = [p for p in VECTORS.rglob("*") if p.is_file() and p.parent.name != "LICENSES"]
    assert listed == len(copied) - 2  # all but SOURCE.txt and README.md


def test_pinned_roots_are_amds_and_intels() -> None:
    """The package's pinned roots are the certificates AMD's KDS and Intel publish."""
    bundles = {
        SevSnpProduct.MILAN: ("ask_ark_milan.pem", "ask_ark_milan_vlek.pem"),
        SevSnpProduct.GENOA: ("ask_ark_genoa.pem", "ask_ark_genoa_vlek.pem"),
        SevSnpProduct.TURIN: ("ask_ark_turin_vcek.pem", "ask_ark_turin_vlek.pem"),
    }
    for product, (vcek_chain, vlek_chain) in bundles.items():
        ask, ark = x509.load_pem_x509_certificates(
            (VECTORS / "amd-roots/go-sev-guest" / vcek_chain).read_bytes()
        )
        asvk, ark2 = x509.load_pem_x509_certificates(
            (VECTORS / "amd-roots/go-sev-guest" / vlek_chain).read_bytes()
        )
        roots = amd_roots(product)
        assert (roots.ark, roots.ask, roots.asvk) == (ark, ask, asvk)
        assert ark == ark2
        assert roots.ark.subject == roots.ark.issuer
        roots.ark.verify_directly_issued_by(roots.ark)
        assert roots.ark.subject.rfc4514_string().startswith(f"CN=ARK-{product.value},")
    intel = intel_sgx_root_ca_der()
    assert intel == (TDX / "dcap-qvl/TrustedRootCA.der").read_bytes()
    other_copy = x509.load_pem_x509_certificate((TDX / "go-tdx-guest/trusted_root.pem").read_bytes())
    assert x509.load_der_x509_certificate(intel).public_key() == other_copy.public_key()
    assert hashlib.sha256(intel).hexdigest().startswith("44a0196b2b99f889")


def test_derived_azure_reports_are_the_published_bytes() -> None:
    hcl = (SNP / "trustee/az-snp-vtpm_hcl-report.bin").read_bytes()
    assert (SNP / "trustee/DERIVED_az-milan_snp_report.bin").read_bytes() == hcl[0x20:0x4C0]
    evidence = json.loads((SNP / "trustee/az-snp-vtpm_evidence-genoa.json").read_text())
    assert (SNP / "trustee/DERIVED_az-genoa_snp_report.bin").read_bytes() == bytes(evidence["report"])[
        0x20:0x4C0
    ]


# --------------------------------------------------------------------------- SEV-SNP samples


@dataclasses.dataclass(frozen=True)
class SnpSample:
    name: str
    report: str
    certificate: str
    #: Inside the validity of every certificate of the sample's chain.
    now: datetime.datetime
    product: SevSnpProduct
    signing_key: SnpSigningKey
    version: int
    debug: bool = False

    def report_bytes(self) -> bytes:
        data = (SNP / self.report).read_bytes()
        return bytes.fromhex(data.decode().replace("\n", "")) if self.report.endswith(".hex") else data

    def certificates(self) -> list[bytes]:
        """The sample's endorsement certificate first (then any chain it came with), DER."""
        data = (SNP / self.certificate).read_bytes()
        if not data.startswith(b"-----BEGIN"):
            return [data]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AMD VCEKs have serial number 0
            certs = x509.load_pem_x509_certificates(data)
        return [cert.public_bytes(Encoding.DER) for cert in certs]

    def guid(self) -> uuid.UUID:
        guid: uuid.UUID = (
            SnpCertGuid.VLEK if self.signing_key is SnpSigningKey.VLEK else SnpCertGuid.VCEK
        ).value
        return guid

    def payload(self, *, with_chain: bool = False) -> bytes:
        certs = self.certificates()
        table = [(self.guid(), certs[0])]
        if with_chain and len(certs) == 3:
            table += [(SnpCertGuid.ASK.value, certs[1]), (SnpCertGuid.ARK.value, certs[2])]
        return self.report_bytes() + encode_snp_cert_table(table)


VCEK, VLEK = SnpSigningKey.VCEK, SnpSigningKey.VLEK
MILAN, GENOA = SevSnpProduct.MILAN, SevSnpProduct.GENOA
SNP_SAMPLES = [
    SnpSample(
        "virtee-milan", "virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der", utc(2024), MILAN, VCEK, 2
    ),
    SnpSample(
        "go-sev-guest",
        "go-sev-guest/attestation.bin",
        "go-sev-guest/vcek.testcer",
        utc(2024),
        MILAN,
        VCEK,
        2,
        True,
    ),
    SnpSample(
        "trustee", "trustee/snp_test-report.bin", "trustee/snp_test-vcek.der", utc(2024), MILAN, VCEK, 2
    ),
    SnpSample(
        "trustee-vlek",
        "trustee/snp_test-vlek-report.bin",
        "trustee/snp_test-vlek.der",
        utc(2025),
        MILAN,
        VLEK,
        3,
    ),
    SnpSample(
        "azure-milan",
        "trustee/DERIVED_az-milan_snp_report.bin",
        "trustee/az-snp-vtpm_vcek.pem",
        utc(2024),
        MILAN,
        VCEK,
        2,
    ),
    SnpSample(
        "azure-genoa",
        "trustee/DERIVED_az-genoa_snp_report.bin",
        "trustee/az-snp-vtpm_vcek-genoa.pem",
        utc(2025),
        GENOA,
        VCEK,
        3,
    ),
    SnpSample(
        "microsoft-milan",
        "ms-tee-attestation-verification/milan_attestation_report.bin",
        "ms-tee-attestation-verification/milan_vcek.pem",
        utc(2026),
        MILAN,
        VCEK,
        3,
    ),
    SnpSample(
        "microsoft-genoa",
        "ms-tee-attestation-verification/genoa_attestation_report.bin",
        "ms-tee-attestation-verification/genoa_vcek.pem",
        utc(2026),
        GENOA,
        VCEK,
        3,
    ),
]
SAMPLE = {sample.name: sample for sample in SNP_SAMPLES}


def snp_policy(sample: SnpSample, **overrides: object) -> SevSnpPolicy:
    fields: dict[str, object] = {
        "measurements": (parse_sev_snp_report(sample.report_bytes()).measurement,),
        "allow_debug": sample.debug,
    }
    fields.update(overrides)
    return SevSnpPolicy(**fields)  # type: ignore[arg-type]


def verify_sample(
    sample: SnpSample, payload: bytes | None = None, **kwargs: object
) -> attestation.cpu.VerifiedSevSnpReport:
    report = parse_sev_snp_report(sample.report_bytes())
    options: dict[str, object] = {
        "expected_report_data": report.report_data,
        "policy": snp_policy(sample),
        "now": sample.now,
    }
    options.update(kwargs)
    return verify_sev_snp_report(sample.payload() if payload is None else payload, **options)  # type: ignore[arg-type]


def failing(exc: AttestationError) -> list[str]:
    return [check.name for check in exc.failures]


@pytest.mark.parametrize("sample", SNP_SAMPLES, ids=lambda s: s.name)
def test_every_snp_sample_verifies_to_the_pinned_ark(sample: SnpSample) -> None:
    verified = verify_sample(sample)
    assert verified.product is sample.product
    assert verified.signing_key is sample.signing_key
    assert verified.report.version == sample.version
    assert verified.tcb == verified.report.tcb(sample.product)


@pytest.mark.parametrize("sample", SNP_SAMPLES, ids=lambda s: s.name)
def test_every_snp_sample_fails_only_the_binding_under_a_real_binding(
    sample: SnpSample, keys: BoundKeys, challenge: bytes
) -> None:
    """A real report cannot carry our binding: under a real one, only REPORT_DATA fails."""
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.AMD_SEV_SNP, sample.payload()))
    policy = Policy(name="snp", required_evidence=(EvidenceKind.AMD_SEV_SNP,), amd_sev_snp=snp_policy(sample))
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(bundle.to_bytes(), policy, challenge, now=sample.now)
    assert isinstance(info.value, BindingMismatchError)
    assert failing(info.value) == ["evidence[0] amd-sev-snp report data"]
    names = [check.name for check in info.value.checks]
    for passed in ("certificate chain", "signature", "measurement", "debug", "product"):
        assert f"evidence[0] amd-sev-snp {passed}" in names
    report_data = next(c for c in info.value.checks if c.name.endswith("report data"))
    assert report_data.expected == cpu_report_data(bundle.binding, bundle.evidence).hex()


def test_table_may_carry_the_ask_which_must_still_chain_to_the_pinned_ark() -> None:
    sample = SAMPLE["azure-milan"]
    payload = sample.payload(with_chain=True)
    assert set(parse_sev_snp_payload(payload)[1]) == {
        SnpCertGuid.VCEK.value,
        SnpCertGuid.ASK.value,
        SnpCertGuid.ARK.value,
    }
    verify_sample(sample, payload)


def test_vcek_is_fetched_from_amd_kds_through_the_fetcher() -> None:
    sample = SAMPLE["microsoft-genoa"]
    report = parse_sev_snp_report(sample.report_bytes())
    url = vcek_kds_url(GENOA, report.chip_id, report.tcb(GENOA))
    assert url == (
        f"https://kdsintf.amd.com/vcek/v1/Genoa/{report.chip_id.hex()}?blSPL=10&teeSPL=00&snpSPL=23&ucodeSPL=84"
    )
    bare = sample.report_bytes()  # no certificate table at all
    fetches: list[CollateralRequest] = []

    class Recording(OfflineFetcher):
        def fetch(self, request: CollateralRequest) -> bytes:
            fetches.append(request)
            return super().fetch(request)

    verify_sample(sample, bare, fetcher=Recording({url: sample.certificates()[0]}))
    assert [r.url for r in fetches] == [url]
    with pytest.raises(CollateralUnavailableError, match="no stapled collateral") as info:
        verify_sample(sample, bare)
    assert failing(info.value) == ["amd-sev-snp VCEK", "amd-sev-snp signature"]


def test_vcek_of_a_version_2_report_must_travel_with_it() -> None:
    sample = SAMPLE["virtee-milan"]
    with pytest.raises(CollateralUnavailableError, match="does not name a known product"):
        verify_sample(sample, sample.report_bytes(), fetcher=OfflineFetcher())


@pytest.mark.parametrize("offset", [0x140, 0x2A0, 0x2E8 + 5], ids=["report_id", "signature_r", "signature_s"])
@pytest.mark.parametrize("name", ["microsoft-milan", "trustee-vlek", "virtee-milan"])
def test_one_flipped_byte_fails_the_signature(name: str, offset: int) -> None:
    sample = SAMPLE[name]
    payload = bytearray(sample.payload())
    payload[offset] ^= 0x01
    with pytest.raises(SevSnpSignatureError) as info:
        verify_sample(sample, bytes(payload))
    assert isinstance(info.value, EvidenceSignatureError)
    assert failing(info.value) == ["amd-sev-snp signature"]


def test_wrong_products_chain_fails() -> None:
    milan, genoa = SAMPLE["microsoft-milan"], SAMPLE["microsoft-genoa"]
    genoa_ask = amd_roots(GENOA).ask.public_bytes(Encoding.DER)
    payload = milan.report_bytes() + encode_snp_cert_table(
        [(SnpCertGuid.VCEK.value, milan.certificates()[0]), (SnpCertGuid.ASK.value, genoa_ask)]
    )
    with pytest.raises(SevSnpCertificateChainError, match="not issued by the pinned ARK") as info:
        verify_sample(milan, payload)
    assert failing(info.value) == ["amd-sev-snp certificate chain", "amd-sev-snp signature"]
    # A Genoa VCEK offered for a Milan report: refused before any signature is trusted.
    swapped = milan.report_bytes() + encode_snp_cert_table(
        [(SnpCertGuid.VCEK.value, genoa.certificates()[0])]
    )
    with pytest.raises(SevSnpEndorsementMismatchError, match="is for Genoa"):
        verify_sample(milan, swapped)
    # And a VCEK checked against another product's pinned roots does not chain.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # serial number 0
        vcek = x509.load_der_x509_certificate(milan.certificates()[0])
    roots = amd_roots(GENOA)
    with pytest.raises(SevSnpCertificateChainError):
        _verify_chain(vcek, "VCEK", roots.ask, "ASK", roots.ark, milan.now)


def test_turin_vcek_chains_to_the_pinned_turin_ark() -> None:
    """No Turin report is published; its VCEK still checks the Turin chain and layout."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vcek = x509.load_der_x509_certificate((SNP / "virtee-sev/vcek_turin.der").read_bytes())
    turin = amd_roots(SevSnpProduct.TURIN)
    _verify_chain(vcek, "VCEK", turin.ask, "ASK", turin.ark, utc(2026))
    milan = amd_roots(MILAN)
    with pytest.raises(SevSnpCertificateChainError):
        _verify_chain(vcek, "VCEK", milan.ask, "ASK", milan.ark, utc(2026))
    endorsement = _read_endorsement(vcek, SevSnpProduct.TURIN)
    assert endorsement.product_name == "Turin"
    assert endorsement.tcb == SnpTcb(fmc=0, bootloader=0, tee=0, snp=0, microcode=9)
    assert endorsement.hwid is not None and len(endorsement.hwid) == 8  # Turin: 8-byte hardware ID
    tcb = decode_tcb(bytes([1, 2, 3, 4, 0, 0, 0, 9]), SevSnpProduct.TURIN)
    assert tcb == SnpTcb(fmc=1, bootloader=2, tee=3, snp=4, microcode=9)
    assert vcek_kds_url(SevSnpProduct.TURIN, bytes(range(64)), tcb) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=09"
    )
    assert decode_tcb(bytes([1, 2, 0, 0, 0, 0, 3, 4]), MILAN) == SnpTcb(
        bootloader=1, tee=2, snp=3, microcode=4
    )


def test_vlek_outside_its_validity_window_fails_the_chain() -> None:
    sample = SAMPLE["trustee-vlek"]  # the VLEK is valid 2024-12-10 .. 2025-12-10 only
    with pytest.raises(SevSnpCertificateChainError, match="2025-12-10") as info:
        verify_sample(sample, now=utc(2026))
    assert failing(info.value) == ["amd-sev-snp certificate chain", "amd-sev-snp signature"]
    with pytest.raises(CollateralUnavailableError, match="VLEK cannot be fetched"):
        verify_sample(sample, sample.report_bytes())


def test_debug_enabled_guest_is_refused() -> None:
    sample = SAMPLE["go-sev-guest"]  # launched with guest policy 0xb0000: DEBUG (bit 19) set
    assert parse_sev_snp_report(sample.report_bytes()).debug_allowed
    with pytest.raises(CpuDebugModeError) as info:
        verify_sample(sample, policy=snp_policy(sample, allow_debug=False))
    assert failing(info.value) == ["amd-sev-snp debug"]


def test_tcb_minimum_per_product() -> None:
    sample = SAMPLE["virtee-milan"]  # REPORTED_TCB bootloader=3 tee=0 snp=8 microcode=115
    newer = {MILAN: SnpTcb(bootloader=4, tee=0, snp=24, microcode=219)}
    with pytest.raises(CpuTcbError, match="bootloader, snp, microcode") as info:
        verify_sample(sample, policy=snp_policy(sample, minimum_tcb=newer))
    assert failing(info.value) == ["amd-sev-snp TCB minimum"]
    verify_sample(sample, policy=snp_policy(sample, minimum_tcb={MILAN: SnpTcb(3, 0, 8, 115)}))
    with pytest.raises(CpuTcbError, match="no entry for this product"):
        verify_sample(sample, policy=snp_policy(sample, minimum_tcb={GENOA: SnpTcb(0, 0, 0, 0)}))


def test_measurement_and_product_allow_lists() -> None:
    sample = SAMPLE["microsoft-genoa"]
    with pytest.raises(CpuMeasurementError) as info:
        verify_sample(sample, policy=snp_policy(sample, measurements=(bytes(48),)))
    assert failing(info.value) == ["amd-sev-snp measurement"]
    with pytest.raises(PolicyViolationError, match="Milan only") as info2:
        verify_sample(sample, policy=snp_policy(sample, allowed_products=(MILAN,)))
    assert type(info2.value) is PolicyViolationError


def test_example_sev_snp_policy_on_real_reports(keys: BoundKeys, challenge: bytes) -> None:
    policy = load_builtin_policy("example-sev-snp")
    sample = SAMPLE["microsoft-genoa"]
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.AMD_SEV_SNP, sample.payload()))
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(bundle, policy, challenge, now=sample.now)
    assert failing(info.value) == ["evidence[0] amd-sev-snp report data", "required evidence nvidia-gpu"]
    old = SAMPLE["trustee"]  # same kind of guest, older firmware and another image
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.AMD_SEV_SNP, old.payload()))
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(bundle, policy, challenge, now=old.now)
    assert failing(info.value) == [
        "evidence[0] amd-sev-snp report data",
        "evidence[0] amd-sev-snp TCB minimum",
        "evidence[0] amd-sev-snp measurement",
        "required evidence nvidia-gpu",
    ]


def test_snp_evidence_without_a_policy_section_is_refused(
    keys: BoundKeys, challenge: bytes, dev_policy: Policy
) -> None:
    sample = SAMPLE["microsoft-milan"]
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.AMD_SEV_SNP, sample.payload()))
    with pytest.raises(PolicyViolationError, match="no 'amd_sev_snp' section") as info:
        verify_bundle(bundle, dev_policy, challenge, now=sample.now)
    assert "evidence[0] amd-sev-snp policy section" in failing(info.value)


# --------------------------------------------------------------------------- SEV-SNP formats


def test_snp_report_format_is_checked() -> None:
    report = SAMPLE["microsoft-genoa"].report_bytes()
    parsed = parse_sev_snp_report(report)
    assert parsed.cpuid == (0x19, 0x11, 0x01)
    assert parsed.product_from_cpuid() is GENOA
    assert parsed.launch_mit_vector is None
    with pytest.raises(EvidenceFormatError, match="1184 bytes"):
        parse_sev_snp_report(report[:-1])
    for version in (1, 4, 6):
        with pytest.raises(EvidenceFormatError, match=f"version {version}"):
            parse_sev_snp_report(version.to_bytes(4, "little") + report[4:])
    v5 = bytearray(report)
    v5[0] = 5
    v5[0x1F8:0x208] = (7).to_bytes(8, "little") + (9).to_bytes(8, "little")
    parsed5 = parse_sev_snp_report(bytes(v5))
    assert (parsed5.launch_mit_vector, parsed5.current_mit_vector) == (7, 9)
    unsigned = bytearray(report)
    unsigned[0x48] = 7 << 2
    with pytest.raises(EvidenceFormatError, match="not signed"):
        parse_sev_snp_report(bytes(unsigned))
    other_algorithm = bytearray(report)
    other_algorithm[0x34] = 2
    with pytest.raises(EvidenceFormatError, match="signature algorithm"):
        parse_sev_snp_report(bytes(other_algorithm))
    with pytest.raises(EvidenceFormatError, match="1184-byte SEV-SNP report"):
        parse_sev_snp_payload(b"short")


def test_snp_certificate_table_format() -> None:
    a, b, c = uuid.uuid4(), SnpCertGuid.VCEK.value, SnpCertGuid.ASK.value
    table = encode_snp_cert_table([(a, b"unknown kind"), (b, b"vcek"), (c, b"ask")])
    assert parse_snp_cert_table(table) == {a: b"unknown kind", b: b"vcek", c: b"ask"}
    assert parse_snp_cert_table(b"") == {}
    assert parse_snp_cert_table(encode_snp_cert_table([])) == {}
    # GUIDs are stored in RFC 4122 byte order (as go-sev-guest and virtee/sev write them).
    assert table[24:40] == uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
    with pytest.raises(EvidenceFormatError, match="terminating"):
        parse_snp_cert_table(table[:24])
    with pytest.raises(EvidenceFormatError, match="twice"):
        parse_snp_cert_table(encode_snp_cert_table([(b, b"x"), (b, b"y")]))
    overlong = bytearray(encode_snp_cert_table([(b, b"vcek")]))
    overlong[20:24] = (99).to_bytes(4, "little")
    with pytest.raises(EvidenceFormatError, match="outside"):
        parse_snp_cert_table(bytes(overlong))
    into_header = bytearray(encode_snp_cert_table([(b, b"vcek")]))
    into_header[16:20] = (0).to_bytes(4, "little")
    with pytest.raises(EvidenceFormatError, match="outside"):
        parse_snp_cert_table(bytes(into_header))


def test_garbage_in_the_table_is_a_chain_error_not_a_crash() -> None:
    sample = SAMPLE["microsoft-milan"]
    payload = sample.report_bytes() + encode_snp_cert_table([(SnpCertGuid.VCEK.value, b"not a certificate")])
    with pytest.raises(SevSnpCertificateChainError, match="not a certificate"):
        verify_sample(sample, payload)


def test_loading_a_vcek_raises_no_warning() -> None:
    """AMD VCEKs have serial number 0; the verifier silences exactly that warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_sample(SAMPLE["microsoft-milan"])


# --------------------------------------------------------------------------- TDX samples


@dataclasses.dataclass(frozen=True)
class TdxSample:
    name: str
    quote: str
    collateral: str
    now: datetime.datetime

    def quote_bytes(self) -> bytes:
        return (TDX / self.quote).read_bytes()

    def fetcher(self) -> OfflineFetcher:
        return OfflineFetcher(
            tdx_collateral_staples(parse_tdx_quote(self.quote_bytes()), (TDX / self.collateral).read_text())
        )


UP_TO_DATE = TdxSample("tdx-v4", "dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", at(1752919234))
OUTDATED = TdxSample(
    "tdx-v5-outdated",
    "dcap-qvl/tdx_quote_outdated",
    "dcap-qvl/tdx_quote_outdated_collateral.json",
    at(1774003274),
)
SPR_E4 = TdxSample(
    "tdx-v4-spr",
    "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "go-tdx-guest/derived_collateral_spr_e4.json",
    at(1688801098),
)


def tdx_policy(sample: TdxSample, **overrides: object) -> TdxPolicy:
    fields: dict[str, object] = {"mrtd": (parse_tdx_quote(sample.quote_bytes()).mr_td,)}
    fields.update(overrides)
    return TdxPolicy(**fields)  # type: ignore[arg-type]


def verify_tdx_sample(
    sample: TdxSample, quote: bytes | None = None, **kwargs: object
) -> attestation.cpu.VerifiedTdxQuote:
    raw = sample.quote_bytes() if quote is None else quote
    options: dict[str, object] = {
        "expected_report_data": parse_tdx_quote(sample.quote_bytes()).report_data,
        "policy": tdx_policy(sample),
        "now": sample.now,
        "fetcher": sample.fetcher(),
    }
    options.update(kwargs)
    return verify_tdx_quote(raw, **options)  # type: ignore[arg-type]


def test_tdx_sample_verifies_up_to_date() -> None:
    verified = verify_tdx_sample(UP_TO_DATE)
    assert verified.tcb_status is TdxTcbStatus.UP_TO_DATE
    assert verified.advisory_ids == ()
    assert verified.quote.version == 4 and not verified.quote.debug


def test_tdx_sample_fails_only_the_binding_under_a_real_binding(keys: BoundKeys, challenge: bytes) -> None:
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.INTEL_TDX, UP_TO_DATE.quote_bytes()))
    policy = Policy(name="tdx", required_evidence=(EvidenceKind.INTEL_TDX,), intel_tdx=tdx_policy(UP_TO_DATE))
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(bundle, policy, challenge, now=UP_TO_DATE.now, fetcher=UP_TO_DATE.fetcher())
    assert failing(info.value) == ["evidence[0] intel-tdx report data"]


def test_example_tdx_policy_on_the_real_quote(keys: BoundKeys, challenge: bytes) -> None:
    bundle = _bundle(keys, challenge, Evidence(EvidenceKind.INTEL_TDX, UP_TO_DATE.quote_bytes()))
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(
            bundle,
            load_builtin_policy("example-tdx"),
            challenge,
            now=UP_TO_DATE.now,
            fetcher=UP_TO_DATE.fetcher(),
        )
    assert failing(info.value) == ["evidence[0] intel-tdx report data", "required evidence nvidia-gpu"]


@pytest.mark.parametrize("offset", [100, 700, 1000], ids=["td-report", "qe-report", "qe-signature"])
def test_tdx_one_flipped_byte_fails(offset: int) -> None:
    quote = bytearray(UP_TO_DATE.quote_bytes())
    quote[offset] ^= 0x01
    with pytest.raises(TdxQuoteSignatureError) as info:
        verify_tdx_sample(UP_TO_DATE, bytes(quote))
    assert failing(info.value) == ["intel-tdx quote signature and chain"]


def test_sgx_quote_is_refused_as_not_tdx() -> None:
    sgx = (TDX / "dcap-qvl/sgx_quote").read_bytes()
    with pytest.raises(EvidenceFormatError, match="SGX quote"):
        parse_tdx_quote(sgx)
    with pytest.raises(EvidenceFormatError, match="not a TDX quote") as info:
        verify_tdx_quote(
            sgx, expected_report_data=bytes(64), policy=tdx_policy(UP_TO_DATE), now=UP_TO_DATE.now
        )
    assert failing(info.value) == ["intel-tdx quote format"]


@pytest.mark.parametrize("sample", [OUTDATED, SPR_E4], ids=lambda s: s.name)
def test_outdated_tdx_platform_fails_with_the_tcb_error(sample: TdxSample) -> None:
    with pytest.raises(CpuTcbError, match="No matching TCB level") as info:
        verify_tdx_sample(sample)
    assert failing(info.value) == ["intel-tdx quote signature and chain"]


def test_tdx_tcb_status_must_be_one_the_policy_allows() -> None:
    policy = tdx_policy(UP_TO_DATE, allowed_tcb_statuses=(TdxTcbStatus.SW_HARDENING_NEEDED,))
    with pytest.raises(CpuTcbError, match="UpToDate") as info:
        verify_tdx_sample(UP_TO_DATE, policy=policy)
    assert failing(info.value) == ["intel-tdx TCB status"]


def test_tdx_collateral_must_be_available_fresh_and_for_this_platform() -> None:
    with pytest.raises(CollateralUnavailableError, match="no stapled collateral") as info:
        verify_tdx_sample(UP_TO_DATE, fetcher=OfflineFetcher())
    assert failing(info.value) == ["intel-tdx collateral", "intel-tdx quote signature and chain"]
    with pytest.raises(TdxCollateralError, match="expired"):
        verify_tdx_sample(UP_TO_DATE, now=UP_TO_DATE.now + datetime.timedelta(days=60))
    quote = parse_tdx_quote(UP_TO_DATE.quote_bytes())
    other = tdx_collateral_staples(quote, (TDX / OUTDATED.collateral).read_text())
    with pytest.raises(TdxCollateralError, match="Fmspc mismatch"):
        verify_tdx_sample(UP_TO_DATE, fetcher=OfflineFetcher(other), now=OUTDATED.now)


def test_tampered_collateral_is_refused() -> None:
    document = json.loads((TDX / UP_TO_DATE.collateral).read_text())
    document["tcb_info"] = document["tcb_info"].replace(
        '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
    )
    quote = parse_tdx_quote(UP_TO_DATE.quote_bytes())
    staples = tdx_collateral_staples(quote, json.dumps(document))
    with pytest.raises(TdxCollateralError, match="Signature is invalid for tcb_info"):
        verify_tdx_sample(UP_TO_DATE, fetcher=OfflineFetcher(staples))


def test_tdx_pinned_root_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    """With another trust anchor pinned, Intel's real chain no longer verifies."""
    amd_ark_der = amd_roots(MILAN).ark.public_bytes(Encoding.DER)
    monkeypatch.setattr("attestation.cpu._tdx.intel_sgx_root_ca_der", lambda: amd_ark_der)
    with pytest.raises(TdxCertificateChainError):
        verify_tdx_sample(UP_TO_DATE)


def test_tdx_measurement_allow_lists() -> None:
    quote = parse_tdx_quote(UP_TO_DATE.quote_bytes())
    with pytest.raises(CpuMeasurementError) as info:
        verify_tdx_sample(UP_TO_DATE, policy=tdx_policy(UP_TO_DATE, mrtd=(bytes(48),)))
    assert failing(info.value) == ["intel-tdx MRTD"]
    pinned = {0: (quote.rtmrs[0],), 1: (quote.rtmrs[1],), 2: (quote.rtmrs[2],)}
    verify_tdx_sample(UP_TO_DATE, policy=tdx_policy(UP_TO_DATE, rtmrs=pinned))
    with pytest.raises(CpuMeasurementError) as info:
        verify_tdx_sample(UP_TO_DATE, policy=tdx_policy(UP_TO_DATE, rtmrs={**pinned, 3: (b"\x01" * 48,)}))
    assert failing(info.value) == ["intel-tdx RTMR3"]


def test_tdx_collateral_is_fetched_in_intel_pcs_form() -> None:
    quote = parse_tdx_quote(UP_TO_DATE.quote_bytes())
    requests = tdx_collateral_requests(quote)
    assert (
        requests.tcb_info.url
        == "https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=B0C06F000000"
    )
    assert requests.pck_crl.url.endswith("/sgx/certification/v4/pckcrl?ca=platform&encoding=der")
    assert requests.root_ca_crl.url == "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    assert requests.tcb_info_chain.staple_key() == requests.tcb_info.url + "#header=tcb-info-issuer-chain"
    staples = UP_TO_DATE.fetcher()
    chain = staples.fetch(requests.tcb_info_chain)
    assert chain.startswith(b"-----BEGIN%20CERTIFICATE-----")  # URL-encoded, as PCS sends it
    body = staples.fetch(requests.tcb_info)
    document = json.loads((TDX / UP_TO_DATE.collateral).read_text())
    assert _raw_members(body, "TCB info")["tcbInfo"] == document["tcb_info"]
    spaced = b' {\n "a" : [1, {"b": 2}] ,"c":"x"\t}\n'
    assert _raw_members(spaced, "t") == {"a": '[1, {"b": 2}]', "c": '"x"'}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("No matching TCB level found", CpuTcbError),
        ("TCB status is invalid: Revoked", CpuTcbError),
        ("Debug mode is enabled", CpuDebugModeError),
        ("TCBInfo expired", TdxCollateralError),
        ("CrlExpired { time: UnixTime(1), next_update: UnixTime(0) }", TdxCollateralError),
        ("TCBInfo issue date is in the future", TdxCollateralError),
        ("Fmspc mismatch", TdxCollateralError),
        ("Signature is invalid for tcb_info in quote_collateral", TdxCollateralError),
        ("Failed to parse root CA CRL Caused by: InvalidCrlSignatureForPublicKey", TdxCertificateChainError),
        ("certificate expired: verification time 5", TdxCertificateChainError),
        ("ISV enclave report signature is invalid", TdxQuoteSignatureError),
        ("QE report hash mismatch", TdxQuoteSignatureError),
        ("something new", TdxQuoteSignatureError),
    ],
)
def test_dcap_failures_map_to_named_errors(message: str, error: type[AttestationError]) -> None:
    assert _classify_dcap_failure(message) is error


# --------------------------------------------------------------------------- fetcher


def test_header_answers_are_stapled_and_cached_apart_from_bodies() -> None:
    body = CollateralRequest(url="https://pcs.example/tcb")
    header = CollateralRequest(url="https://pcs.example/tcb", response_header="TCB-Info-Issuer-Chain")
    assert body.cache_key() != header.cache_key()
    assert body.staple_key() == "https://pcs.example/tcb"
    offline = OfflineFetcher({body.staple_key(): b"body", header.staple_key(): b"chain"})
    cached = CachingFetcher(offline)
    assert (cached.fetch(body), cached.fetch(header)) == (b"body", b"chain")
    with pytest.raises(CollateralUnavailableError, match="#header=sgx-pck-crl-issuer-chain"):
        offline.fetch(dataclasses.replace(header, response_header="SGX-PCK-CRL-Issuer-Chain"))


# --------------------------------------------------------------------------- report data


def test_cpu_report_data_follows_its_specification() -> None:
    binding = bytes(range(32))
    domain = b"fedseal/cpu-report-data/v1"
    assert cpu_report_data(binding, []) == hashlib.sha512(domain + binding + bytes(32)).digest()
    gpu = Evidence(EvidenceKind.NVIDIA_GPU, b"gpu evidence")
    sim = Evidence(EvidenceKind.SIMULATED_INSECURE, b"simulated")
    cpu = Evidence(EvidenceKind.AMD_SEV_SNP, b"cpu report")
    others = hashlib.sha256(
        length_prefixed(b"nvidia-gpu", b"gpu evidence")
        + length_prefixed(b"simulated-insecure-tee", b"simulated")
    ).digest()
    expected = hashlib.sha512(domain + binding + others).digest()
    assert cpu_report_data(binding, [gpu, sim]) == expected
    assert cpu_report_data(binding, [gpu, cpu, sim]) == expected  # CPU items are skipped
    assert cpu_report_data(binding, [sim, gpu]) != expected  # order matters
    assert cpu_report_data(bytes(32), [gpu, sim]) != expected
    assert cpu_report_data(binding, [Evidence(EvidenceKind.NVIDIA_GPU, b"gpu evidencf"), sim]) != expected
    assert len(expected) == 64
    with pytest.raises(FedSealError):
        cpu_report_data(b"short", [])


# --------------------------------------------------------------------------- configfs-tsm


class FakeTsmEntry:
    """A configfs-tsm report entry in a plain directory, answering like the kernel.

    ``provider``, ``inblob`` and ``auxblob`` are files. ``generation`` and ``outblob`` are
    FIFOs served by threads, so each read gets the answer of that moment: the next value
    of ``generations`` (the last one repeats), and ``template`` with whatever ``inblob``
    holds put at ``report_data_offset`` (``echo_inblob=False``: the template as is).
    """

    def __init__(
        self,
        path: Path,
        *,
        provider: str,
        template: bytes,
        report_data_offset: int,
        auxblob: bytes | None = None,
        generations: tuple[int, ...] = (0, 1, 1),
        echo_inblob: bool = True,
    ) -> None:
        self.path = path
        path.mkdir(parents=True)
        (path / "provider").write_text(provider + "\n")
        (path / "inblob").write_bytes(b"")
        if auxblob is not None:
            (path / "auxblob").write_bytes(auxblob)
        self._template = template
        self._offset = report_data_offset
        self._echo = echo_inblob
        self._generations = generations
        self._served_generations = 0
        self._closing = threading.Event()
        self._threads = {
            path / "generation": threading.Thread(
                target=self._serve, args=(path / "generation", self._generation)
            ),
            path / "outblob": threading.Thread(target=self._serve, args=(path / "outblob", self._outblob)),
        }
        for fifo, thread in self._threads.items():
            os.mkfifo(fifo)
            thread.daemon = True
            thread.start()

    @property
    def inblob(self) -> bytes:
        return (self.path / "inblob").read_bytes()

    def _generation(self) -> bytes:
        value = self._generations[min(self._served_generations, len(self._generations) - 1)]
        self._served_generations += 1
        return f"{value}\n".encode()

    def _outblob(self) -> bytes:
        inblob = self.inblob
        if not self._echo or len(inblob) != 64:
            return self._template
        return self._template[: self._offset] + inblob + self._template[self._offset + 64 :]

    def _serve(self, fifo: Path, answer: Callable[[], bytes]) -> None:
        spare = fifo.with_name(fifo.name + ".next")
        while not self._closing.is_set():
            try:
                with open(fifo, "wb") as handle:  # blocks until a reader opens the FIFO
                    if self._closing.is_set():
                        return
                    # Put a fresh FIFO in place before answering, so that the next read
                    # waits for the next answer instead of joining this one.
                    os.mkfifo(spare)
                    os.replace(spare, fifo)
                    handle.write(answer())
            except OSError:  # the reader went away (closing)
                return

    def close(self) -> None:
        self._closing.set()
        for fifo, thread in self._threads.items():
            while thread.is_alive():
                # Opening the read end releases a writer blocked in open().
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
                thread.join(0.05)


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    return tmp_path / "tsm" / "report"


@pytest.fixture
def fake_entries() -> Iterator[list[FakeTsmEntry]]:
    entries: list[FakeTsmEntry] = []
    yield entries
    for entry in entries:
        entry.close()


def snp_entry(root: Path, entries: list[FakeTsmEntry], **kwargs: object) -> FakeTsmEntry:
    sample = SAMPLE["microsoft-genoa"]
    options: dict[str, object] = {
        "provider": "sev_guest",
        "template": sample.report_bytes(),
        "report_data_offset": 0x50,
        "auxblob": encode_snp_cert_table([(SnpCertGuid.VCEK.value, sample.certificates()[0])]),
    }
    options.update(kwargs)
    entry = FakeTsmEntry(root / "fedseal", **options)  # type: ignore[arg-type]
    entries.append(entry)
    return entry


def test_configfs_snp_binding_end_to_end(
    tsm_root: Path, fake_entries: list[FakeTsmEntry], keys: BoundKeys, challenge: bytes
) -> None:
    """The binding path on the real code: the collector writes the derived report data, the
    verifier finds it in REPORT_DATA, and refuses the report for its signature only (a
    report we made cannot carry AMD's signature)."""
    entry = snp_entry(tsm_root, fake_entries)
    simulated = _quiet_simulated_collector()
    snp = ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal")
    # The CPU collector comes first in the list; its report still covers the simulated
    # evidence, which build_bundle collects before it.
    bundle = build_bundle(keys, challenge, [snp, simulated])
    assert [item.kind for item in bundle.evidence] == [
        EvidenceKind.AMD_SEV_SNP,
        EvidenceKind.SIMULATED_INSECURE,
    ]
    expected = cpu_report_data(bundle.binding, bundle.evidence)
    assert entry.inblob == expected
    report, table = parse_sev_snp_payload(bundle.evidence[0].payload)
    assert report.report_data == expected
    assert SnpCertGuid.VCEK.value in table

    sample = SAMPLE["microsoft-genoa"]
    policy = Policy(
        name="dev-snp",
        required_evidence=(EvidenceKind.SIMULATED_INSECURE, EvidenceKind.AMD_SEV_SNP),
        allow_insecure_simulated_evidence=True,
        amd_sev_snp=snp_policy(sample),
    )
    with pytest.raises(SevSnpSignatureError) as info:
        verify_bundle(bundle.to_bytes(), policy, challenge, now=sample.now)
    assert failing(info.value) == ["evidence[0] amd-sev-snp signature"]
    report_data = next(c for c in info.value.checks if c.name == "evidence[0] amd-sev-snp report data")
    assert report_data.passed and report_data.found == expected.hex()
    # Replaying the bundle to another client (another challenge) breaks the binding too.
    with pytest.raises(BindingMismatchError):
        verify_bundle(bundle, policy, os.urandom(32), now=sample.now)


def test_configfs_tdx_binding_end_to_end(
    tsm_root: Path, fake_entries: list[FakeTsmEntry], keys: BoundKeys, challenge: bytes
) -> None:
    for version, template, offset in ((4, UP_TO_DATE.quote_bytes(), 568), (5, OUTDATED.quote_bytes(), 574)):
        entry = FakeTsmEntry(
            tsm_root / f"fedseal-v{version}",
            provider="tdx_guest",
            template=template,
            report_data_offset=offset,
        )
        fake_entries.append(entry)
        tdx = ConfigfsTsmCollector(EvidenceKind.INTEL_TDX, root=tsm_root, entry=f"fedseal-v{version}")
        bundle = build_bundle(keys, challenge, [tdx])
        expected = cpu_report_data(bundle.binding, [])
        assert parse_tdx_quote(bundle.evidence[0].payload).report_data == expected == entry.inblob

    fake_entries.append(
        FakeTsmEntry(
            tsm_root / "v4", provider="tdx_guest", template=UP_TO_DATE.quote_bytes(), report_data_offset=568
        )
    )
    bundle = build_bundle(
        keys, challenge, [ConfigfsTsmCollector(EvidenceKind.INTEL_TDX, root=tsm_root, entry="v4")]
    )
    policy = Policy(name="tdx", required_evidence=(EvidenceKind.INTEL_TDX,), intel_tdx=tdx_policy(UP_TO_DATE))
    with pytest.raises(TdxQuoteSignatureError) as info:
        verify_bundle(bundle, policy, challenge, now=UP_TO_DATE.now, fetcher=UP_TO_DATE.fetcher())
    assert failing(info.value) == ["evidence[0] intel-tdx quote signature and chain"]


@pytest.mark.parametrize(
    "generations",
    [(5, 7, 7), (0, 1, 2), (3, 3, 3)],
    ids=["another-write-before-ours", "a-write-while-we-read", "our-write-not-counted"],
)
def test_configfs_detects_a_concurrent_writer(
    tsm_root: Path, fake_entries: list[FakeTsmEntry], generations: tuple[int, ...]
) -> None:
    snp_entry(tsm_root, fake_entries, generations=generations)
    collector = ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal", attempts=2)
    with pytest.raises(ConfigfsTsmConflictError, match="on all 2 attempt"):
        collector.collect(bytes(64))


def test_configfs_retries_after_a_conflict(tsm_root: Path, fake_entries: list[FakeTsmEntry]) -> None:
    entry = snp_entry(tsm_root, fake_entries, generations=(0, 2, 2, 2, 3, 3))
    evidence = ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal").collect(
        b"\x07" * 64
    )
    assert parse_sev_snp_payload(evidence.payload)[0].report_data == b"\x07" * 64 == entry.inblob


def test_configfs_refuses_a_report_without_our_data(tsm_root: Path, fake_entries: list[FakeTsmEntry]) -> None:
    snp_entry(tsm_root, fake_entries, echo_inblob=False)
    collector = ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal", attempts=1)
    with pytest.raises(ConfigfsTsmConflictError, match="does not carry the report data"):
        collector.collect(b"\x01" * 64)


def test_configfs_checks_the_provider_and_the_report_size(
    tsm_root: Path, fake_entries: list[FakeTsmEntry]
) -> None:
    snp_entry(tsm_root, fake_entries, provider="tdx_guest")
    with pytest.raises(ConfigfsTsmError, match="provider is 'tdx_guest', expected 'sev_guest'"):
        ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal").collect(bytes(64))
    fake_entries.append(
        FakeTsmEntry(tsm_root / "short", provider="sev_guest", template=bytes(100), report_data_offset=0x50)
    )
    with pytest.raises(ConfigfsTsmError, match="not a 1184-byte report"):
        ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="short").collect(bytes(64))


def test_configfs_refuses_a_malformed_certificate_table(
    tsm_root: Path, fake_entries: list[FakeTsmEntry]
) -> None:
    snp_entry(tsm_root, fake_entries, auxblob=b"\x01" * 30)
    with pytest.raises(ConfigfsTsmError, match="certificate table is malformed"):
        ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal").collect(bytes(64))


def test_configfs_creates_and_removes_its_own_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigfsTsmError, match="no configfs-tsm report interface"):
        ConfigfsTsmCollector(EvidenceKind.INTEL_TDX, root=tmp_path / "missing").collect(bytes(64))
    root = tmp_path / "report"
    root.mkdir()
    # A plain directory does not grow attributes on mkdir as configfs does: the collector
    # finds no provider, says so, and removes the entry it made.
    with pytest.raises(ConfigfsTsmError, match="cannot read configfs-tsm attribute provider"):
        ConfigfsTsmCollector(EvidenceKind.INTEL_TDX, root=root).collect(bytes(64))
    assert list(root.iterdir()) == []


def test_configfs_collector_arguments() -> None:
    with pytest.raises(ConfigfsTsmError, match="CPU TEE reports only"):
        ConfigfsTsmCollector(EvidenceKind.NVIDIA_GPU)
    for bad in ("", "a/b", ".."):
        with pytest.raises(ConfigfsTsmError, match="plain directory name"):
            ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, entry=bad)
    with pytest.raises(ConfigfsTsmError, match="64 bytes"):
        ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP).collect(bytes(32))
    collector = ConfigfsTsmCollector(EvidenceKind.INTEL_TDX)
    assert collector.kind is EvidenceKind.INTEL_TDX
    assert isinstance(collector, attestation.EvidenceCollector)


# --------------------------------------------------------------------------- policy sections


def test_policy_sections_parse_and_refuse_mistakes() -> None:
    m = "ab" * 48

    def load(**sections: object) -> Policy:
        document = {
            "schema": "fedseal-policy/v1",
            "name": "p",
            "required_evidence": ["amd-sev-snp"],
            **sections,
        }
        return Policy.from_json(json.dumps(document), source="test")

    policy = load(
        amd_sev_snp={
            "measurements": [m],
            "allowed_products": ["Turin"],
            "minimum_tcb": {"Turin": {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}},
        },
        intel_tdx={"mrtd": [m], "rtmr2": [m], "allowed_tcb_statuses": ["UpToDate", "SWHardeningNeeded"]},
    )
    assert policy.amd_sev_snp is not None and policy.intel_tdx is not None
    assert policy.amd_sev_snp.measurements == (bytes.fromhex(m),)
    assert policy.amd_sev_snp.minimum_tcb == {SevSnpProduct.TURIN: SnpTcb(2, 3, 4, 5, fmc=1)}
    assert policy.intel_tdx.rtmrs == {2: (bytes.fromhex(m),)}
    assert not policy.amd_sev_snp.allow_debug and not policy.intel_tdx.allow_debug
    cases: list[tuple[dict[str, object], str]] = [
        ({}, "requires 'amd-sev-snp' but there is no 'amd_sev_snp' section"),
        ({"amd_sev_snp": {}}, "missing required key 'amd_sev_snp.measurements'"),
        ({"amd_sev_snp": {"measurements": []}}, "non-empty array"),
        ({"amd_sev_snp": {"measurements": ["ab" * 32]}}, r"amd_sev_snp.measurements\[0\]"),
        ({"amd_sev_snp": {"measurements": [m, m]}}, "repeats"),
        ({"amd_sev_snp": {"measurements": [m], "debug": True}}, "unknown key 'amd_sev_snp.debug'"),
        ({"amd_sev_snp": {"measurements": [m], "allow_debug": 1}}, "true or false"),
        (
            {"amd_sev_snp": {"measurements": [m], "allowed_products": ["Naples"]}},
            "not one of Milan, Genoa, Turin",
        ),
        (
            {
                "amd_sev_snp": {
                    "measurements": [m],
                    "minimum_tcb": {"Milan": {"bootloader": 1, "tee": 1, "snp": 1}},
                }
            },
            "minimum_tcb.Milan.microcode",
        ),
        (
            {
                "amd_sev_snp": {
                    "measurements": [m],
                    "minimum_tcb": {"Milan": {"fmc": 0, "bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}},
                }
            },
            "'fmc' is required for Turin",
        ),
        (
            {
                "amd_sev_snp": {
                    "measurements": [m],
                    "minimum_tcb": {"Turin": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}},
                }
            },
            "minimum_tcb.Turin.fmc",
        ),
        (
            {
                "amd_sev_snp": {
                    "measurements": [m],
                    "minimum_tcb": {"Milan": {"bootloader": 256, "tee": 1, "snp": 1, "microcode": 1}},
                }
            },
            "0..255",
        ),
        ({"amd_sev_snp": {"measurements": [m]}, "intel_tdx": {"rtmr0": [m]}}, "intel_tdx.mrtd"),
        (
            {"amd_sev_snp": {"measurements": [m]}, "intel_tdx": {"mrtd": [m], "rtmr4": [m]}},
            "unknown key 'intel_tdx.rtmr4'",
        ),
        (
            {
                "amd_sev_snp": {"measurements": [m]},
                "intel_tdx": {"mrtd": [m], "allowed_tcb_statuses": ["Revoked"]},
            },
            "must not allow 'Revoked'",
        ),
        (
            {
                "amd_sev_snp": {"measurements": [m]},
                "intel_tdx": {"mrtd": [m], "allowed_tcb_statuses": ["Fine"]},
            },
            "not one of UpToDate",
        ),
        (
            {"amd_sev_snp": {"measurements": [m]}, "intel_tdx": {"mrtd": [m], "roots": {"Milan": "x"}}},
            "'intel_tdx.roots' must be an object with exactly 'sgx_root_ca'",
        ),
        (
            {"amd_sev_snp": {"measurements": [m]}, "intel_tdx": {"mrtd": [m], "roots": {"sgx_root_ca": "x"}}},
            "'intel_tdx.roots.sgx_root_ca' is not a PEM certificate",
        ),
    ]
    for sections, message in cases:
        with pytest.raises(PolicyError, match=message):
            load(**sections)


def test_example_policies_load() -> None:
    snp = load_builtin_policy("example-sev-snp")
    tdx = load_builtin_policy("example-tdx")
    assert snp.required_evidence == (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP)
    assert tdx.required_evidence == (EvidenceKind.NVIDIA_GPU, EvidenceKind.INTEL_TDX)
    assert snp.amd_sev_snp is not None and not snp.amd_sev_snp.allow_debug
    assert tdx.intel_tdx is not None and tdx.intel_tdx.allowed_tcb_statuses == (TdxTcbStatus.UP_TO_DATE,)
    assert not snp.allow_insecure_simulated_evidence and not tdx.allow_insecure_simulated_evidence
    # Policies stay hashable and compare by content, sections included.
    assert hash(snp) == hash(load_builtin_policy("example-sev-snp")) and snp == load_builtin_policy(
        "example-sev-snp"
    )
    assert len({snp, tdx, load_builtin_policy("example-tdx")}) == 2


# --------------------------------------------------------------------------- API


def test_cpu_errors_are_attestation_errors_and_the_api_is_complete() -> None:
    for name in attestation.cpu.__all__:
        value = getattr(attestation.cpu, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, AttestationError), name
            assert issubclass(value, FedSealError), name


def test_verified_results_cannot_be_made_directly() -> None:
    verified = verify_sample(SAMPLE["microsoft-milan"])
    with pytest.raises(TypeError, match="verify_sev_snp_report"):
        attestation.cpu.VerifiedSevSnpReport(
            object(),
            report=verified.report,
            product=verified.product,
            signing_key=verified.signing_key,
            tcb=verified.tcb,
        )
    quote = verify_tdx_sample(UP_TO_DATE)
    with pytest.raises(TypeError, match="verify_tdx_quote"):
        attestation.cpu.VerifiedTdxQuote(
            object(), quote=quote.quote, tcb_status=quote.tcb_status, advisory_ids=()
        )


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def keys() -> BoundKeys:
    return BoundKeys(
        hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )


@pytest.fixture
def challenge() -> bytes:
    return os.urandom(32)


def _bundle(keys: BoundKeys, challenge: bytes, *evidence: Evidence) -> EvidenceBundle:
    return EvidenceBundle(
        hpke_public_key=keys.hpke_public_key,
        log_public_key=keys.log_public_key,
        challenge=challenge,
        binding=compute_binding(keys.hpke_public_key, keys.log_public_key, challenge),
        evidence=evidence,
    )


def _quiet_simulated_collector() -> InsecureSimulatedTeeCollector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsecureSimulatedTeeCollector("fedseal tests")
