"""NVIDIA GPU evidence verification, on NVIDIA's published reports, chains and RIMs.

Real data (tests/vectors/nvidia, see its SOURCE.txt) shows the parsing, chain-to-pinned-root,
signature, FWID and RIM checks. Those reports carry nonces no FedSeal binding produces, so
they go through ``verify_gpu_evidence_against_nonce`` (the test seam) with their own nonce
as the expected one, and through ``verify_bundle`` to show that a real report replayed
under a binding is refused. Positive end-to-end paths and revocation answers need a signer
nobody here has (a GPU, NVIDIA's OCSP responder), so they use the test PKI of
``nvidia_pki.py``, which ``verify_bundle`` itself refuses at the root pin.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from nvidia_pki import (
    DRIVER_RIM_ID,
    NOW,
    VBIOS_RIM_ID,
    FakeFetcher,
    NrasIssuer,
    World,
    delegated_responder,
    make_device_chain,
    make_report,
    make_rim,
    make_world,
    ocsp_responder_for,
    ocsp_response,
    rim_urls,
)

from attestation import (
    AttestationError,
    BindingMismatchError,
    CheckResult,
    CollateralUnavailableError,
    Evidence,
    EvidenceBundle,
    EvidenceFormatError,
    EvidenceKind,
    InsecureSimulatedTeeCollector,
    Policy,
    PolicyError,
    load_builtin_policy,
    verify_bundle,
)
from attestation.nvidia import (
    SPDM_NONCE_DOMAIN,
    CcMode,
    GpuArchitecture,
    GpuCertificateChainError,
    GpuCertificateExpiredError,
    GpuCertificateRevokedError,
    GpuEvidence,
    GpuMeasurementMismatchError,
    GpuNonceMismatchError,
    GpuPolicyViolationError,
    GpuReportSignatureError,
    GpuRootPinError,
    NrasNonceMismatchError,
    NrasTokenError,
    NrasUntrustedTokenError,
    NvidiaGpuEvidence,
    NvidiaGpuPolicy,
    OcspMode,
    OcspResponseError,
    RimCertificateChainError,
    RimCertificateExpiredError,
    RimDigestMismatchError,
    RimSignatureError,
    RimVersionMismatchError,
    StapledRim,
    evidence_from_nvidia_json,
    parse_attestation_report,
    parse_nvidia_gpu_payload,
    pinned_trust_anchors,
    spdm_nonce_for_binding,
    verify_gpu_evidence_against_nonce,
)
from attestation.nvidia._rim import verify_rim
from fedseal.binding import compute_binding

VECTORS = Path(__file__).parent / "vectors" / "nvidia"
TESTDATA = VECTORS / "unit-tests" / "testdata"
GPU_SAMPLES = TESTDATA / "sample_attestation_data" / "gpu"
RIM_ROOT = pinned_trust_anchors().rim_root
# The 2026 reference time every real-data test pins: NVIDIA's device chains are valid until
# 9999, the valid driver RIM's signer until 2026-12-30.
PINNED = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
# Chain, signature and FWID only: what NVIDIA's public samples can show (no public RIM
# matches a public report, and OCSP needs the network).
CORE = NvidiaGpuPolicy(ocsp=OcspMode.OFF, require_rim_match=False)

REAL_FILES = [
    ("nvtrust_ppcie_gpu_evidence.json", 8),
    ("serialized_test_evidence/hopper_evidence.json", 1),
    ("serialized_test_evidence/hopper_evidence_cert_hold.json", 1),
    ("serialized_test_evidence/multi_gpu_hopper.json", 4),
    ("unit-tests/testdata/evidence_hopper_590_12.json", 1),
]


def _entries(name: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads((VECTORS / name).read_text())
    return entries


def _real(name: str) -> tuple[NvidiaGpuEvidence, bytes]:
    entries = _entries(name)
    nonces = {entry["nonce"] for entry in entries}
    assert len(nonces) == 1  # one collection, one nonce for every GPU
    return evidence_from_nvidia_json(entries, cc_mode=CcMode.ON), bytes.fromhex(nonces.pop())


def _txt_sample(report: str, chain: str) -> tuple[NvidiaGpuEvidence, bytes]:
    raw = bytes.fromhex((GPU_SAMPLES / report).read_text().strip())
    parsed = parse_attestation_report(raw)
    gpu = GpuEvidence(
        architecture="HOPPER",
        attestation_report=raw,
        certificate_chain=(GPU_SAMPLES / chain).read_bytes(),
        driver_version=str(parsed.driver_version),
        cc_mode=CcMode.ON,
    )
    return NvidiaGpuEvidence(gpus=(gpu,)), parsed.request_nonce


def _raises(error: type[AttestationError], payload: bytes, **kwargs: object) -> AttestationError:
    kwargs.setdefault("policy", CORE)
    kwargs.setdefault("now", PINNED)
    with pytest.raises(AttestationError) as info:
        verify_gpu_evidence_against_nonce(payload, **kwargs)  # type: ignore[arg-type]
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return info.value


def _row(checks: tuple[object, ...] | list[object], suffix: str) -> list[object]:
    return [c for c in checks if getattr(c, "name", "").endswith(suffix)]


# --- real reports: the positive core checks ---------------------------------------------


@pytest.mark.parametrize(("name", "gpus"), REAL_FILES)
def test_real_reports_pass_chain_signature_and_fwid(name: str, gpus: int) -> None:
    evidence, nonce = _real(name)
    assert len(evidence.gpus) == gpus
    checks = verify_gpu_evidence_against_nonce(
        evidence.to_payload(), expected_nonce=nonce, policy=CORE, now=PINNED
    )
    for what in ("certificate chain", "report signature", "FWID", "SPDM nonce"):
        rows = [c for c in checks if c.name.endswith(what)]
        assert len(rows) == gpus and all(r.passed for r in rows), what
    chain = next(c for c in checks if c.name.endswith("certificate chain"))
    assert "NVIDIA Device Identity CA" in chain.expected and "5 certificates" in chain.found


@pytest.mark.parametrize(
    ("report", "chain"),
    [
        ("hopperAttestationReport.txt", "hopperCertChain.txt"),
        # Named "Expired", but every certificate is valid until 9999: it pairs with the
        # 570.124.03 report, whose driver RIM sample is the expired one.
        ("hopperAttestationReportExpired.txt", "hopperCertChainExpired.txt"),
    ],
)
def test_real_single_gpu_samples_pass(report: str, chain: str) -> None:
    evidence, nonce = _txt_sample(report, chain)
    checks = verify_gpu_evidence_against_nonce(
        evidence.to_payload(), expected_nonce=nonce, policy=CORE, now=PINNED
    )
    assert all(c.passed for c in checks)
    fwid = _row(checks, "FWID")[0]
    if report == "hopperAttestationReport.txt":  # driver 535: no FWID in the report
        assert "not in report" in getattr(fwid, "found", "")


def test_real_report_parses_as_nvidia_says() -> None:
    entry = _entries("nvtrust_ppcie_gpu_evidence.json")[0]
    report = parse_attestation_report(base64.b64decode(entry["evidence"]))
    assert report.request_nonce.hex() == entry["nonce"]
    assert report.driver_version == entry["driver_version"] == "590.12"
    assert report.vbios_version == entry["vbios_version"] == "96.00.A5.00.01"
    assert len(report.measurements) == 64 and all(len(v) == 48 for v in report.measurements.values())
    assert len(report.signature) == 96 and report.fwid is not None and len(report.fwid) == 48


# --- real reports: negative cases ---------------------------------------------------------


@pytest.mark.parametrize("offset", [40, 300, 2000, -200, -1])
def test_flipped_byte_in_real_report_fails_signature(offset: int) -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    gpu = evidence.gpus[0]
    raw = bytearray(gpu.attestation_report)
    raw[offset] ^= 0x01
    bad = dataclasses.replace(evidence, gpus=(dataclasses.replace(gpu, attestation_report=bytes(raw)),))
    error = _raises(GpuReportSignatureError, bad.to_payload(), expected_nonce=nonce)
    assert _row(error.checks, "certificate chain")[0].passed  # type: ignore[attr-defined]


def test_flipped_byte_in_real_chain_fails_chain() -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    gpu = evidence.gpus[0]
    certs = x509.load_pem_x509_certificates(gpu.certificate_chain)
    der = bytearray(certs[2].public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01  # inside the issuer's signature over this intermediate
    certs[2] = x509.load_der_x509_certificate(bytes(der))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    bad = dataclasses.replace(evidence, gpus=(dataclasses.replace(gpu, certificate_chain=pem),))
    error = _raises(GpuCertificateChainError, bad.to_payload(), expected_nonce=nonce)
    assert _row(error.checks, "report signature")[0].passed  # type: ignore[attr-defined]


def test_wrong_nonce_fails_with_nonce_error_only() -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    wrong = bytes(b ^ 0xFF for b in nonce)
    error = _raises(GpuNonceMismatchError, evidence.to_payload(), expected_nonce=wrong)
    assert [c.name for c in error.failures] == ["nvidia-gpu GPU-0 SPDM nonce"]


def test_real_invalid_signature_sample() -> None:
    evidence, nonce = _txt_sample("hopperAttestationReportInvalidSignature.txt", "hopperCertChainExpired.txt")
    error = _raises(GpuReportSignatureError, evidence.to_payload(), expected_nonce=nonce)
    assert _row(error.checks, "certificate chain")[0].passed  # type: ignore[attr-defined]


def test_real_chain_outside_its_validity_is_expired() -> None:
    # NVIDIA's device certificates never expire (9999); before the provisioning CA's
    # notBefore (2022-03-01) the same chain is outside its validity window.
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    error = _raises(
        GpuCertificateExpiredError,
        evidence.to_payload(),
        expected_nonce=nonce,
        now=datetime.datetime(2021, 6, 1, tzinfo=datetime.UTC),
    )
    assert "2022" in error.failures[0].found


def test_expired_intermediate_is_expired_error() -> None:
    world = World(device=make_device_chain(expired_intermediate=True), rims=make_world().rims)
    nonce = os.urandom(32)
    payload = world.evidence(nonce, staple=False).to_payload()
    _raises(GpuCertificateExpiredError, payload, expected_nonce=nonce, now=NOW, anchors=world.anchors)


def test_one_bad_gpu_of_eight_fails_the_item() -> None:
    evidence, nonce = _real("nvtrust_ppcie_gpu_evidence.json")
    gpus = list(evidence.gpus)
    raw = bytearray(gpus[3].attestation_report)
    raw[500] ^= 0x80
    gpus[3] = dataclasses.replace(gpus[3], attestation_report=bytes(raw))
    error = _raises(
        GpuReportSignatureError,
        dataclasses.replace(evidence, gpus=tuple(gpus)).to_payload(),
        expected_nonce=nonce,
    )
    assert [c.name for c in error.failures] == ["nvidia-gpu GPU-3 report signature"]


def test_report_of_one_gpu_with_chain_of_another_fails() -> None:
    a, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    b, _ = _real("serialized_test_evidence/hopper_evidence_cert_hold.json")
    swapped = dataclasses.replace(a.gpus[0], certificate_chain=b.gpus[0].certificate_chain)
    error = _raises(
        GpuReportSignatureError, NvidiaGpuEvidence(gpus=(swapped,)).to_payload(), expected_nonce=nonce
    )
    assert not _row(error.checks, "FWID")[0].passed  # type: ignore[attr-defined]


# --- RIMs: NVIDIA's samples, each failing with its own error, at explicit pinned times -----


def test_real_driver_rim_verifies_at_pinned_time() -> None:
    xml = (TESTDATA / "NV_GPU_DRIVER_GH100_550.144.03.xml").read_bytes()
    rim = verify_rim(xml, file_id="NV_GPU_DRIVER_GH100_550.144.03", root=RIM_ROOT, now=PINNED)
    assert rim.version == "550.144.03"
    active = {i: len(g.values) for i, g in rim.golden.items() if g.active}
    assert sorted(active) == [7, *range(21, 41)]
    assert active[35] == 4  # alternatives: any of four values is golden
    assert rim.signer == "HCC RIM L4 Signer" and rim.path[-1] == RIM_ROOT
    # Its L4 signing certificate expires 2026-12-30.
    with pytest.raises(RimCertificateExpiredError):
        verify_rim(xml, file_id="x", root=RIM_ROOT, now=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC))


@pytest.mark.parametrize(
    ("path", "when", "error"),
    [
        ("incorrect_signature_driver_rim.xml", PINNED, RimSignatureError),
        ("incorrect_cert_chain_driver_rim.xml", PINNED, RimCertificateChainError),
        # Measurements edited under the signature: the signed digest no longer matches.
        (
            "sample_rims/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml",
            PINNED,
            RimDigestMismatchError,
        ),
        # Signer valid 2025-01-01 .. 2025-01-02 only.
        ("sample_rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml", PINNED, RimCertificateExpiredError),
        # Inside its window the chain passes, and the content turns out altered too.
        (
            "sample_rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml",
            datetime.datetime(2025, 1, 1, 12, tzinfo=datetime.UTC),
            RimDigestMismatchError,
        ),
        # Signer expired 2025-12-12.
        (
            "sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml",
            PINNED,
            RimCertificateExpiredError,
        ),
    ],
)
def test_real_rim_negative_cases(path: str, when: datetime.datetime, error: type[AttestationError]) -> None:
    with pytest.raises(AttestationError) as info:
        verify_rim((TESTDATA / path).read_bytes(), file_id=path, root=RIM_ROOT, now=when)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"


def test_wrong_root_rim_is_rooted_in_the_debug_root() -> None:
    # The sample's chain ends in "NVIDIA CoRIM L1 Root CA Debug"; it verifies against that
    # root (so only the pin refuses it), and the pinned root refuses it.
    xml = (TESTDATA / "incorrect_cert_chain_driver_rim.xml").read_bytes()
    debug_root = x509.load_pem_x509_certificate((TESTDATA / "incorrect_rim_root.crt").read_bytes())
    with pytest.raises(AttestationError):
        verify_rim(xml, file_id="x", root=debug_root, now=PINNED)
    with pytest.raises(RimCertificateChainError, match="pinned NVIDIA RIM root"):
        verify_rim(xml, file_id="x", root=RIM_ROOT, now=PINNED)


def test_real_vbios_rim_verifies_inside_its_validity() -> None:
    xml = (
        TESTDATA / "sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
    ).read_bytes()
    rim = verify_rim(
        xml, file_id="vbios", root=RIM_ROOT, now=datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    )
    assert rim.version == "96.00.5E.00.01"


def test_real_report_with_its_tampered_driver_rim() -> None:
    evidence, nonce = _txt_sample("hopperAttestationReport.txt", "hopperCertChain.txt")  # driver 535.86.09
    xml = (TESTDATA / "sample_rims/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml").read_bytes()
    stapled = dataclasses.replace(evidence, rims=(StapledRim("NV_GPU_DRIVER_GH100_535.86.09", xml),))
    policy = NvidiaGpuPolicy(ocsp=OcspMode.OFF)
    _raises(RimDigestMismatchError, stapled.to_payload(), expected_nonce=nonce, policy=policy)


def test_real_report_against_a_real_rim_of_another_version() -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence_cert_hold.json")  # driver 570.86.10
    xml = (TESTDATA / "NV_GPU_DRIVER_GH100_550.144.03.xml").read_bytes()
    stapled = dataclasses.replace(evidence, rims=(StapledRim("NV_GPU_DRIVER_GH100_570.86.10", xml),))
    error = _raises(
        RimVersionMismatchError,
        stapled.to_payload(),
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(ocsp=OcspMode.OFF),
    )
    # The comparison still ran on the real golden values and lists where they differ.
    measured = _row(error.failures, "driver measurements")[0]
    assert "mismatch at index" in measured.found  # type: ignore[attr-defined]


# --- the binding: replay refused, dressed-up evidence refused, the positive path ----------


def _bundle(evidence: Evidence, challenge: bytes) -> EvidenceBundle:
    hpke, log = os.urandom(32), os.urandom(32)
    return EvidenceBundle(
        hpke_public_key=hpke,
        log_public_key=log,
        challenge=challenge,
        binding=compute_binding(hpke, log, challenge),
        evidence=(evidence,),
    )


def test_real_report_replayed_under_a_binding_is_refused() -> None:
    evidence, _ = _real("serialized_test_evidence/hopper_evidence.json")
    challenge = os.urandom(32)
    bundle = _bundle(Evidence(EvidenceKind.NVIDIA_GPU, evidence.to_payload()), challenge)
    with pytest.raises(GpuNonceMismatchError) as info:
        verify_bundle(bundle, load_builtin_policy("default"), challenge, now=PINNED)
    assert isinstance(info.value, BindingMismatchError)
    passed = {c.name.removeprefix("evidence[0] nvidia-gpu GPU-0 ") for c in info.value.checks if c.passed}
    assert {"certificate chain", "report signature", "FWID"} <= passed


def test_test_pki_evidence_with_the_right_nonce_fails_the_root_pin() -> None:
    world = make_world()
    challenge = os.urandom(32)
    hpke, log = os.urandom(32), os.urandom(32)
    binding = compute_binding(hpke, log, challenge)
    evidence = world.evidence(spdm_nonce_for_binding(binding), ocsp_responses=world.good_ocsp())
    bundle = EvidenceBundle(
        hpke_public_key=hpke,
        log_public_key=log,
        challenge=challenge,
        binding=binding,
        evidence=(Evidence(EvidenceKind.NVIDIA_GPU, evidence.to_payload()),),
    )
    with pytest.raises(GpuRootPinError) as info:
        verify_bundle(bundle, load_builtin_policy("default"), challenge, now=NOW)
    nonce_row = next(c for c in info.value.checks if c.name.endswith("SPDM nonce"))
    assert nonce_row.passed  # the binding path derived the nonce the evidence carries
    # The same evidence, against the PKI that made it, passes every check: the binding path
    # end to end, with measurements, RIMs and revocation.
    checks = verify_gpu_evidence_against_nonce(
        evidence.to_payload(),
        expected_nonce=spdm_nonce_for_binding(binding),
        policy=load_builtin_policy("default").nvidia_gpu,
        now=NOW,
        anchors=world.anchors,
    )
    assert all(c.passed for c in checks) and len(checks) >= 15


def test_simulated_payload_dressed_as_nvidia_evidence_is_refused() -> None:
    challenge = os.urandom(32)
    simulated = InsecureSimulatedTeeCollector("dressed up").collect(os.urandom(32))
    bundle = _bundle(Evidence(EvidenceKind.NVIDIA_GPU, simulated.payload), challenge)
    with pytest.raises(EvidenceFormatError):
        verify_bundle(bundle, load_builtin_policy("default"), challenge, now=PINNED)


def test_spdm_nonce_is_domain_separated_sha256() -> None:
    binding = bytes(range(32))
    assert SPDM_NONCE_DOMAIN == b"fedseal/nvidia-spdm-nonce/v1"
    assert (
        spdm_nonce_for_binding(binding) == hashlib.sha256(b"fedseal/nvidia-spdm-nonce/v1" + binding).digest()
    )
    with pytest.raises(ValueError):
        spdm_nonce_for_binding(b"short")


# --- the full pipeline with the test PKI ----------------------------------------------------


@pytest.fixture
def world() -> World:
    return make_world()


def test_rims_and_ocsp_fetched_through_the_fetcher(world: World) -> None:
    nonce = os.urandom(32)
    fetcher = FakeFetcher(rim_urls(world), ocsp=ocsp_responder_for(world, lambda c: ocsp.OCSPCertStatus.GOOD))
    payload = world.evidence(nonce, staple=False).to_payload()
    checks = verify_gpu_evidence_against_nonce(
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        fetcher=fetcher,
        anchors=world.anchors,
    )
    assert all(c.passed for c in checks)
    ocsp_requests = [r for r in fetcher.requests if r.content_type == "application/ocsp-request"]
    assert len(ocsp_requests) == 6  # 3 device CA certificates + 3 RIM chain certificates (shared)
    assert sum(1 for r in fetcher.requests if "rim" in r.url) == 2


def test_eight_gpus_share_their_rims(world: World) -> None:
    nonce = os.urandom(32)
    payload = world.evidence(nonce, gpus=8, ocsp_responses=world.good_ocsp()).to_payload()
    checks = verify_gpu_evidence_against_nonce(
        payload, expected_nonce=nonce, policy=NvidiaGpuPolicy(), now=NOW, anchors=world.anchors
    )
    assert len([c for c in checks if c.name.endswith("driver measurements")]) == 8
    assert len([c for c in checks if c.name.startswith("nvidia-gpu RIM ") and "OCSP" not in c.name]) == 2


def test_measurement_mismatch(world: World) -> None:
    nonce = os.urandom(32)
    golden = world.golden(0, 9)
    golden[4] = hashlib.sha384(b"other firmware").digest()
    rims = (
        StapledRim(DRIVER_RIM_ID, make_rim(world.rims, "570.86.10", golden)),
        StapledRim(VBIOS_RIM_ID, world.vbios_rim()),
    )
    payload = dataclasses.replace(
        world.evidence(nonce, ocsp_responses=world.good_ocsp()), rims=rims
    ).to_payload()
    error = _raises(
        GpuMeasurementMismatchError,
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        anchors=world.anchors,
    )
    assert error.failures[0].found == "mismatch at index 4"


def test_driver_and_vbios_rims_claiming_one_index_conflict(world: World) -> None:
    nonce = os.urandom(32)
    vbios = make_rim(world.rims, "96.00.AF.00.01", world.golden(9, 19))  # index 9 is the driver's too
    rims = (StapledRim(DRIVER_RIM_ID, world.driver_rim()), StapledRim(VBIOS_RIM_ID, vbios))
    payload = dataclasses.replace(
        world.evidence(nonce, ocsp_responses=world.good_ocsp()), rims=rims
    ).to_payload()
    error = _raises(
        GpuMeasurementMismatchError,
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        anchors=world.anchors,
    )
    assert "also in driver RIM" in error.failures[0].found


def test_missing_rim_is_unavailable(world: World) -> None:
    nonce = os.urandom(32)
    payload = world.evidence(nonce, staple=False, ocsp_responses=world.good_ocsp()).to_payload()
    error = _raises(
        CollateralUnavailableError,
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        anchors=world.anchors,
    )
    assert "NV_GPU_DRIVER_GH100_570.86.10" in error.failures[0].name


def _ocsp_outcome(world: World, fetcher: FakeFetcher, mode: OcspMode) -> tuple[CheckResult, ...]:
    nonce = os.urandom(32)
    payload = world.evidence(nonce).to_payload()
    return verify_gpu_evidence_against_nonce(
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(ocsp=mode, require_rim_match=False),
        now=NOW,
        fetcher=fetcher,
        anchors=world.anchors,
    )


def test_ocsp_good(world: World) -> None:
    fetcher = FakeFetcher(ocsp=ocsp_responder_for(world, lambda c: ocsp.OCSPCertStatus.GOOD))
    checks = _ocsp_outcome(world, fetcher, OcspMode.REQUIRE)
    rows = [c for c in checks if " OCSP " in getattr(c, "name", "")]
    assert len(rows) == 3 and all(getattr(r, "found", "").startswith("good (fetched") for r in rows)


def test_ocsp_revoked(world: World) -> None:
    revoked = world.device.intermediates[1].cert
    responder = ocsp_responder_for(
        world, lambda c: ocsp.OCSPCertStatus.REVOKED if c == revoked else ocsp.OCSPCertStatus.GOOD
    )
    with pytest.raises(GpuCertificateRevokedError) as info:
        _ocsp_outcome(world, FakeFetcher(ocsp=responder), OcspMode.REQUIRE)
    assert "Provisioner" in info.value.failures[0].name and "revoked" in info.value.failures[0].found


def test_ocsp_revoked_even_when_unavailable_is_allowed(world: World) -> None:
    responder = ocsp_responder_for(world, lambda c: ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(GpuCertificateRevokedError):
        _ocsp_outcome(world, FakeFetcher(ocsp=responder), OcspMode.ALLOW_UNAVAILABLE)


def test_ocsp_unavailable_with_policy_require(world: World) -> None:
    with pytest.raises(CollateralUnavailableError) as info:
        _ocsp_outcome(world, FakeFetcher(), OcspMode.REQUIRE)
    assert len(info.value.failures) == 3


def test_ocsp_unavailable_with_policy_allow(world: World) -> None:
    checks = _ocsp_outcome(world, FakeFetcher(), OcspMode.ALLOW_UNAVAILABLE)
    rows = [c for c in checks if " OCSP " in getattr(c, "name", "")]
    assert len(rows) == 3 and all("tolerated" in getattr(r, "found", "") for r in rows)


def test_ocsp_off_records_that_nothing_was_checked(world: World) -> None:
    checks = _ocsp_outcome(world, FakeFetcher(), OcspMode.OFF)
    assert [getattr(c, "found", "") for c in checks if getattr(c, "name", "").endswith("revocation")] == [
        "not checked (policy ocsp=off: development only)"
    ]


def test_stapled_ocsp_needs_no_network(world: World) -> None:
    nonce = os.urandom(32)
    fetcher = FakeFetcher()
    payload = world.evidence(nonce, ocsp_responses=world.good_ocsp()).to_payload()
    verify_gpu_evidence_against_nonce(
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        fetcher=fetcher,
        anchors=world.anchors,
    )
    assert fetcher.requests == []


def _flip_last_byte(der: bytes) -> bytes:
    # The signature is the response's last field: this breaks it and nothing else.
    return der[:-1] + bytes([der[-1] ^ 0x01])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda w, c, i: ocsp_response(c, i, next_update=NOW - datetime.timedelta(days=2)), id="stale"
        ),
        pytest.param(
            lambda w, c, i: ocsp_response(c, i, this_update=NOW + datetime.timedelta(days=1)), id="future"
        ),
        pytest.param(lambda w, c, i: _flip_last_byte(ocsp_response(c, i)), id="bad-signature"),
        pytest.param(
            lambda w, c, i: ocsp_response(c, i, responder=delegated_responder(i, eku=False)), id="no-eku"
        ),
        pytest.param(
            lambda w, c, i: ocsp_response(c, i, responder=delegated_responder(w.device.root)),
            id="foreign-responder",
        ),
    ],
)
def test_bad_ocsp_answers_are_invalid_not_unavailable(world: World, make: object) -> None:
    def answer(request: ocsp.OCSPRequest) -> bytes | None:
        for cert, issuer in world.all_chain_certs():
            if cert.serial_number == request.serial_number:
                return make(world, cert, issuer)  # type: ignore[operator,no-any-return]
        return None

    with pytest.raises(OcspResponseError):
        _ocsp_outcome(world, FakeFetcher(ocsp=answer), OcspMode.ALLOW_UNAVAILABLE)


def test_delegated_ocsp_responder_is_accepted(world: World) -> None:
    def answer(request: ocsp.OCSPRequest) -> bytes | None:
        for cert, issuer in world.all_chain_certs():
            if cert.serial_number == request.serial_number:
                return ocsp_response(cert, issuer, responder=delegated_responder(issuer))
        return None

    checks = _ocsp_outcome(world, FakeFetcher(ocsp=answer), OcspMode.REQUIRE)
    assert all(getattr(c, "passed", False) for c in checks)


def test_ocsp_answer_for_a_real_chain_from_a_non_nvidia_responder_is_refused() -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    certs = x509.load_pem_x509_certificates(evidence.gpus[0].certificate_chain)
    key = ec.generate_private_key(ec.SECP384R1())

    def answer(request: ocsp.OCSPRequest) -> bytes | None:
        for cert, issuer in itertools.pairwise(certs):
            if cert.serial_number != request.serial_number:
                continue
            # Signed in the issuer's NAME with another key: what a forger can do.
            impostor = (
                x509.CertificateBuilder()
                .subject_name(issuer.subject)
                .issuer_name(issuer.subject)
                .public_key(key.public_key())
                .serial_number(1)
                .not_valid_before(PINNED - datetime.timedelta(days=1))
                .not_valid_after(PINNED + datetime.timedelta(days=1))
                .sign(key, hashes.SHA384())
            )
            builder = ocsp.OCSPResponseBuilder().add_response(
                cert=cert,
                issuer=issuer,
                algorithm=hashes.SHA384(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=PINNED - datetime.timedelta(hours=1),
                next_update=PINNED + datetime.timedelta(days=1),
                revocation_time=None,
                revocation_reason=None,
            )
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, impostor)
            return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
        return None

    fetcher = FakeFetcher(ocsp=answer)
    error = _raises(
        OcspResponseError,
        evidence.to_payload(),
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(require_rim_match=False),
        fetcher=fetcher,
    )
    assert len(error.failures) == 3 and "signature does not verify" in error.failures[0].found
    assert len(fetcher.requests) == 3  # the three NVIDIA CA certificates of the real chain


# --- NRAS tokens ----------------------------------------------------------------------------


def _nras(world: World, token: str, issuer: NrasIssuer, nonce: bytes, gpus: int = 1) -> tuple[object, ...]:
    payload = world.evidence(
        nonce, gpus=gpus, ocsp_responses=world.good_ocsp(), nras_token=token
    ).to_payload()
    return verify_gpu_evidence_against_nonce(
        payload,
        expected_nonce=nonce,
        policy=NvidiaGpuPolicy(),
        now=NOW,
        fetcher=FakeFetcher(issuer.fetcher_answers()),
        anchors=world.anchors,
    )


def test_nras_token_verifies(world: World) -> None:
    issuer, nonce = NrasIssuer(), os.urandom(32)
    checks = _nras(world, issuer.token(nonce, gpus=2), issuer, nonce, gpus=2)
    row = next(c for c in checks if getattr(c, "name", "").endswith("NRAS token"))
    assert getattr(row, "passed", False) and "2 GPU submodule" in getattr(row, "found", "")


@pytest.mark.parametrize(
    ("make", "error"),
    [
        pytest.param(
            lambda i, n: i.token(n, algorithm="HS256", key=b"notasecret" * 4),
            NrasUntrustedTokenError,
            id="hs256",
        ),
        pytest.param(
            lambda i, n: i.token(n, overall_claims={"iss": "LOCAL_GPU_VERIFIER"}),
            NrasUntrustedTokenError,
            id="local",
        ),
        pytest.param(
            lambda i, n: i.token(n, gpu_claims={"eat_nonce": "00" * 32}),
            NrasNonceMismatchError,
            id="gpu-nonce",
        ),
        pytest.param(lambda i, n: i.token(os.urandom(32)), NrasNonceMismatchError, id="all-nonces"),
        pytest.param(lambda i, n: i.token(n, gpu_claims={"measres": "fail"}), NrasTokenError, id="measres"),
        pytest.param(
            lambda i, n: i.token(n, overall_claims={"x-nvidia-overall-att-result": False}),
            NrasTokenError,
            id="overall",
        ),
        pytest.param(
            lambda i, n: i.token(n, now=NOW - datetime.timedelta(days=1)), NrasTokenError, id="expired"
        ),
        pytest.param(
            lambda i, n: i.token(n, key=ec.generate_private_key(ec.SECP384R1())),
            NrasTokenError,
            id="other-key",
        ),
        pytest.param(lambda i, n: i.token(n, gpus=2), NrasTokenError, id="gpu-count"),
        pytest.param(
            lambda i, n: i.token(
                n, overall_claims={"submods": {"GPU-0": ["DIGEST", ["SHA-256", "00" * 32]]}}
            ),
            NrasTokenError,
            id="digest",
        ),
    ],
)
def test_nras_token_refusals(world: World, make: object, error: type[AttestationError]) -> None:
    issuer, nonce = NrasIssuer(), os.urandom(32)
    token = make(issuer, nonce)  # type: ignore[operator]
    with pytest.raises(AttestationError) as info:
        _nras(world, token, issuer, nonce)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"


def test_real_nras_token_needs_nvidias_key_set(world: World) -> None:
    # NVIDIA's published token is real, but its key is not in a test key set: refused.
    token = (TESTDATA / "sample_attestation_data" / "hopperClaimsv3_detached_eat.json").read_text()
    nonce = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
    with pytest.raises(NrasTokenError, match="not in the NRAS key set"):
        _nras(world, json.dumps(json.loads(token)), NrasIssuer(), nonce)


# --- policy and format ------------------------------------------------------------------------


def test_policy_minimums_architecture_and_cc_mode(world: World) -> None:
    evidence, nonce = _real("nvtrust_ppcie_gpu_evidence.json")  # driver 590.12, VBIOS 96.00.A5.00.01
    payload = evidence.to_payload()
    verify_gpu_evidence_against_nonce(
        payload,
        expected_nonce=nonce,
        policy=dataclasses.replace(CORE, min_driver_version="590.12", min_vbios_version="96.00.A5"),
        now=PINNED,
    )
    for policy in (
        dataclasses.replace(CORE, min_driver_version="595"),
        dataclasses.replace(CORE, min_vbios_version="96.00.B0.00.00"),
    ):
        error = _raises(GpuPolicyViolationError, payload, expected_nonce=nonce, policy=policy)
        assert len(error.failures) == 8  # every GPU named
    devtools = evidence_from_nvidia_json(_entries("nvtrust_ppcie_gpu_evidence.json"), cc_mode=CcMode.DEVTOOLS)
    _raises(GpuPolicyViolationError, devtools.to_payload(), expected_nonce=nonce)
    assert verify_gpu_evidence_against_nonce(
        devtools.to_payload(),
        expected_nonce=nonce,
        policy=dataclasses.replace(CORE, require_cc_mode=False),
        now=PINNED,
    )
    other_arch = dataclasses.replace(
        evidence, gpus=tuple(dataclasses.replace(g, architecture="BLACKWELL") for g in evidence.gpus)
    )
    _raises(GpuPolicyViolationError, other_arch.to_payload(), expected_nonce=nonce)


def test_declared_version_must_match_signed_one() -> None:
    evidence, nonce = _real("serialized_test_evidence/hopper_evidence.json")
    lying = dataclasses.replace(
        evidence, gpus=(dataclasses.replace(evidence.gpus[0], driver_version="999.1"),)
    )
    error = _raises(EvidenceFormatError, lying.to_payload(), expected_nonce=nonce)
    assert error.failures[0].found == "590.12"


def test_default_policy_requires_verified_hardware() -> None:
    policy = load_builtin_policy("default")
    gpu = policy.nvidia_gpu
    assert policy.required_evidence == (EvidenceKind.NVIDIA_GPU,)
    assert gpu.ocsp is OcspMode.REQUIRE and gpu.require_rim_match and gpu.require_cc_mode
    assert gpu.allowed_architectures == (GpuArchitecture.HOPPER,) and gpu.min_driver_version is not None


def test_policy_section_parsing() -> None:
    text = {
        "schema": "fedseal-policy/v1",
        "name": "p",
        "required_evidence": ["nvidia-gpu"],
        "nvidia_gpu": {
            "allowed_architectures": ["HOPPER"],
            "min_driver_version": "550.90.07",
            "min_vbios_version": "96.00.9F.00.01",
            "ocsp": "allow-unavailable",
            "require_cc_mode": False,
            "require_rim_match": False,
        },
    }
    policy = Policy.from_json(json.dumps(text), source="test")
    assert policy.nvidia_gpu == NvidiaGpuPolicy(
        min_driver_version="550.90.07",
        min_vbios_version="96.00.9F.00.01",
        ocsp=OcspMode.ALLOW_UNAVAILABLE,
        require_cc_mode=False,
        require_rim_match=False,
    )
    absent = Policy.from_json(json.dumps({k: v for k, v in text.items() if k != "nvidia_gpu"}), source="t")
    assert absent.nvidia_gpu == NvidiaGpuPolicy()  # strict defaults


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"ocsp": "sometimes"}, "nvidia_gpu.ocsp"),
        ({"min_driver_version": "latest"}, "min_driver_version"),
        ({"min_vbios_version": "96.0G"}, "min_vbios_version"),
        ({"allowed_architectures": ["AMPERE"]}, "allowed_architectures"),
        ({"allowed_architectures": []}, "allowed_architectures"),
        ({"require_rim_match": "yes"}, "require_rim_match"),
        ({"max_age": 5}, "unknown key 'nvidia_gpu.max_age'"),
        ([], "must be an object"),
    ],
)
def test_policy_section_refusals(section: object, message: str) -> None:
    text = {
        "schema": "fedseal-policy/v1",
        "name": "p",
        "required_evidence": ["nvidia-gpu"],
        "nvidia_gpu": section,
    }
    with pytest.raises(PolicyError, match=message):
        Policy.from_json(json.dumps(text), source="test")


def test_payload_round_trip_and_strictness() -> None:
    evidence, _ = _real("serialized_test_evidence/multi_gpu_hopper.json")
    evidence = dataclasses.replace(
        evidence, rims=(StapledRim("id", b"<x/>"),), ocsp_responses=(b"\x30\x03\x0a\x01\x01",)
    )
    payload = evidence.to_payload()
    assert parse_nvidia_gpu_payload(payload) == evidence
    document = json.loads(payload)
    cases: list[tuple[Callable[[dict[str, Any]], object], str]] = [
        (lambda d: d.update(format="fedseal-nvidia-gpu-evidence/v2"), "format"),
        (lambda d: d.update(extra="x"), "unknown field"),
        (lambda d: d.pop("gpus"), "missing field"),
        (lambda d: d.update(rims=[]), "canonical"),
        (lambda d: d["gpus"][0].update(cc_mode="maybe"), "cc_mode"),
        (lambda d: d["gpus"][0].update(attestation_report="not base64!"), "attestation_report"),
    ]
    for mutate, what in cases:
        changed = json.loads(payload)
        mutate(changed)
        with pytest.raises(EvidenceFormatError, match=what):
            parse_nvidia_gpu_payload(json.dumps(changed, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(EvidenceFormatError, match="canonical"):
        parse_nvidia_gpu_payload(json.dumps(document, indent=1).encode())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[:-1], "Signature"),
        (lambda r: r + b"\0", "after its signature"),
        (lambda r: r[:30], "Nonce"),
        (lambda r: bytes([0x10]) + r[1:], "SPDM version"),
        (lambda r: r[:1] + b"\x00" + r[2:], "GET_MEASUREMENTS"),
    ],
)
def test_spdm_parser_refuses_damaged_reports(mutate: object, message: str) -> None:
    raw = base64.b64decode(_entries("serialized_test_evidence/hopper_evidence.json")[0]["evidence"])
    with pytest.raises(EvidenceFormatError, match=message):
        parse_attestation_report(mutate(raw))  # type: ignore[operator]


def test_spdm_parser_refuses_duplicate_opaque_field(world: World) -> None:
    nonce = os.urandom(32)
    assert parse_attestation_report(make_report(world.device.leaf.key, nonce)).driver_version == "570.86.10"
    twice = make_report(world.device.leaf.key, nonce, extra_opaque=[(3, b"999.1\0")])
    with pytest.raises(EvidenceFormatError, match="opaque field 3 twice"):
        parse_attestation_report(twice)
