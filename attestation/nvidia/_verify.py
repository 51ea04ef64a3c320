"""Client side: verify ``nvidia-gpu`` evidence, recording every check.

:func:`verify_nvidia_gpu` is what ``attestation.verify_bundle`` calls for each NVIDIA GPU
evidence item. For every GPU of the payload, in this order:

1. the report parses (SPDM 1.1 GET_MEASUREMENTS transcript, ``_spdm.py``) and the chain
   parses;
2. **chain**: the device certificate chain, its own root dropped, verifies up to the
   PINNED NVIDIA Device Identity CA at the verification time;
3. **report signature**: ECDSA P-384 / SHA-384 under the chain's leaf (attestation key);
4. **FWID**: the firmware ID in the leaf's TCG DICE extension equals the report's;
5. **nonce**: the report's SPDM request nonce equals the nonce derived from the client's
   binding (:func:`~attestation.nvidia.spdm_nonce_for_binding`) - this is what binds the
   GPU's signature to the client's challenge and the aggregator's keys;
6. the declared driver / VBIOS versions equal the signed ones; **policy**: architecture,
   CC mode, minimum driver and VBIOS versions;
7. **revocation**: OCSP for every CA certificate of the chain (policy ``ocsp``);
8. **RIMs** (policy ``require_rim_match``): the driver and VBIOS RIMs for the report's
   versions (stapled, else fetched) verify to the pinned RIM root, are for those
   versions, are not revoked, and every active golden measurement matches the report.

Then, for the whole item, a stapled NRAS token is verified (``_nras.py``), and required
when the policy says ``nras: "required"``; its key set is the verifier's own fetch or the
aggregator's staple, trusted as ``_policy.py`` says. Every GPU must
pass everything: one bad GPU fails the bundle. A failed check never stops the others, so
a report lists every reason.

No NVIDIA package is imported: their verifier returns bare ``False`` on FWID mismatch,
swallows exceptions in signature checks and keeps module-level state (see ``_spdm.py``).
"""

from __future__ import annotations

import datetime
import hmac
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509 import ocsp

from .._bundle import Evidence
from .._checks import Checklist, CheckRecorder, CheckResult
from .._errors import AttestationError, CollateralUnavailableError, EvidenceFormatError
from .._fetch import CollateralFetcher, CollateralRequest, OfflineFetcher
from ._errors import (
    GpuCertificateChainError,
    GpuCertificateExpiredError,
    GpuCertificateRevokedError,
    GpuFwidMismatchError,
    GpuMeasurementMismatchError,
    GpuNonceMismatchError,
    GpuPolicyViolationError,
    GpuReportSignatureError,
    GpuRootPinError,
    NrasTokenError,
    NrasTokenRequiredError,
    NrasUntrustedKeyError,
    OcspResponseError,
    RimVersionMismatchError,
)
from ._format import CcMode, GpuEvidence, NvidiaGpuEvidence, parse_nvidia_gpu_payload, spdm_nonce_for_binding
from ._nras import NRAS_JWKS_URL, verify_nras_token
from ._ocsp import OcspStatus, check_revocation, load_stapled
from ._pki import ChainFailure, TrustAnchors, common_name, fingerprint, verify_chain
from ._policy import NrasMode, NvidiaGpuPolicy, OcspMode, parse_version, version_at_least
from ._rim import (
    RIM_SERVICE_URL,
    RimKind,
    VerifiedRim,
    driver_rim_id,
    parse_rim_service_answer,
    vbios_rim_id,
    verify_rim,
)
from ._spdm import HOPPER_SIGNATURE_SIZE, SpdmReport, parse_attestation_report

if TYPE_CHECKING:
    from .._verify import VerificationContext

__all__ = ["CheckRecorder", "check_gpu_evidence", "verify_gpu_evidence_against_nonce", "verify_nvidia_gpu"]

# TCG DICE TcbInfo (2.23.133.5.4.1) and its "multi" variant: the attestation key's firmware ID.
_TCG_DICE_FWID_OIDS = frozenset({"2.23.133.5.4.1", "2.23.133.5.4.1.1"})
_FWID_SIZE = 48


def verify_nvidia_gpu(label: str, evidence: Evidence, ctx: VerificationContext) -> None:
    """The ``nvidia-gpu`` verifier registered in ``attestation._verify._verifiers()``."""
    check_gpu_evidence(
        label,
        evidence.payload,
        expected_nonce=spdm_nonce_for_binding(ctx.binding),
        policy=ctx.policy.nvidia_gpu,
        now=ctx.now,
        fetcher=ctx.fetcher,
        checks=ctx.checks,
        max_ocsp_age=ctx.policy.collateral.max_ocsp_age,
    )


def verify_gpu_evidence_against_nonce(
    payload: bytes,
    *,
    expected_nonce: bytes,
    policy: NvidiaGpuPolicy,
    now: datetime.datetime,
    fetcher: CollateralFetcher | None = None,
    anchors: TrustAnchors | None = None,
) -> tuple[CheckResult, ...]:
    """TEST AND AUDIT SEAM: verify an ``nvidia-gpu`` payload against a nonce the caller names.

    ``verify_bundle`` never calls this: it always derives the nonce from the client's own
    challenge. This exists for replaying NVIDIA's published reports (whose nonces no
    FedSeal binding produces) and for auditors re-checking saved evidence; whoever supplies
    ``expected_nonce`` here, rather than deriving it from a fresh challenge, gets no
    freshness guarantee. ``anchors`` replaces the pinned NVIDIA roots (tests with their own
    PKI only).

    Returns every check; raises the first failing check's error (carrying all checks).
    """
    checks = Checklist()
    check_gpu_evidence(
        "nvidia-gpu",
        payload,
        expected_nonce=expected_nonce,
        policy=policy,
        now=now,
        fetcher=fetcher if fetcher is not None else OfflineFetcher(),
        checks=checks,
        anchors=anchors,
    )
    checks.raise_if_failed()
    return tuple(checks.results)


@dataclass
class _Run:
    """State of one verification call (never shared between calls)."""

    label: str
    policy: NvidiaGpuPolicy
    now: datetime.datetime
    fetcher: CollateralFetcher
    checks: CheckRecorder
    anchors: TrustAnchors
    stapled_ocsp: tuple[ocsp.OCSPResponse, ...]
    stapled_rims: dict[str, bytes]
    max_ocsp_age: datetime.timedelta | None = None
    rims: dict[str, VerifiedRim | None] = field(default_factory=dict)
    ocsp_done: set[tuple[int, str]] = field(default_factory=set)


def check_gpu_evidence(
    label: str,
    payload: bytes,
    *,
    expected_nonce: bytes,
    policy: NvidiaGpuPolicy,
    now: datetime.datetime,
    fetcher: CollateralFetcher,
    checks: CheckRecorder,
    anchors: TrustAnchors | None = None,
    max_ocsp_age: datetime.timedelta | None = None,
) -> None:
    """Record every check of an ``nvidia-gpu`` payload against ``expected_nonce`` into ``checks``.

    ``anchors`` (tests only) overrides the policy's roots; ``max_ocsp_age`` bounds OCSP
    answers by their ``thisUpdate`` (the policy's ``collateral.max_ocsp_age_seconds``).
    """
    try:
        evidence = parse_nvidia_gpu_payload(payload, field=f"{label}.payload")
    except EvidenceFormatError as exc:
        checks.record(
            f"{label} payload format",
            expected="fedseal-nvidia-gpu-evidence/v1",
            found="malformed",
            passed=False,
            error=EvidenceFormatError,
            message=str(exc),
        )
        return
    stapled, problems = load_stapled(evidence.ocsp_responses)
    for problem in problems:
        checks.record(
            f"{label} stapled OCSP",
            expected="DER OCSP response",
            found="malformed",
            passed=False,
            error=OcspResponseError,
            message=f"{label}: {problem}",
        )
    run = _Run(
        label=label,
        policy=policy,
        now=now,
        fetcher=fetcher,
        checks=checks,
        anchors=anchors if anchors is not None else policy.trust_anchors(),
        max_ocsp_age=max_ocsp_age,
        stapled_ocsp=stapled,
        stapled_rims={rim.id: rim.xml for rim in evidence.rims},
    )
    for index, gpu in enumerate(evidence.gpus):
        _check_gpu(run, f"{label} GPU-{index}", gpu, expected_nonce)
    _check_nras(run, evidence, expected_nonce)


def _check_gpu(run: _Run, name: str, gpu: GpuEvidence, expected_nonce: bytes) -> None:
    checks = run.checks
    try:
        report = parse_attestation_report(gpu.attestation_report, signature_size=HOPPER_SIGNATURE_SIZE)
        certs = x509.load_pem_x509_certificates(gpu.certificate_chain)
    except (EvidenceFormatError, ValueError) as exc:
        checks.record(
            f"{name} report and chain format",
            expected="SPDM 1.1 measurements report + PEM chain",
            found="malformed",
            passed=False,
            error=EvidenceFormatError,
            message=f"{name}: {exc}",
        )
        return

    root = run.anchors.device_root
    outcome = verify_chain(certs, root, run.now)
    errors: dict[ChainFailure | None, type[AttestationError]] = {
        ChainFailure.ROOT_PIN: GpuRootPinError,
        ChainFailure.VALIDITY: GpuCertificateExpiredError,
        ChainFailure.INVALID: GpuCertificateChainError,
    }
    checks.record(
        f"{name} certificate chain",
        expected=f"to pinned {common_name(root)} (sha256:{fingerprint(root)[:16]}) at {_when(run.now)}",
        found=outcome.detail,
        passed=outcome.path is not None,
        error=errors[outcome.failure] if outcome.failure is not None else GpuCertificateChainError,
        message=f"{name}: device certificate chain does not verify to the pinned NVIDIA root: "
        + outcome.detail,
    )
    leaf = certs[0]
    try:
        _verify_report_signature(report, leaf)
        signature_found = "valid"
    except GpuReportSignatureError as exc:
        signature_found = f"INVALID: {exc}"
    checks.record(
        f"{name} report signature",
        expected="ECDSA P-384/SHA-384 by the attestation key certificate",
        found=signature_found,
        passed=signature_found == "valid",
        error=GpuReportSignatureError,
        message=f"{name}: report signature does not verify under its certificate (altered report)",
    )
    _check_fwid(run, name, report, leaf)
    checks.record(
        f"{name} SPDM nonce",
        expected=expected_nonce.hex(),
        found=report.request_nonce.hex(),
        passed=_equal(report.request_nonce, expected_nonce),
        error=GpuNonceMismatchError,
        message=f"{name}: report nonce is not derived from your challenge and these keys (replayed report)",
    )
    driver, vbios = _check_versions(run, name, gpu, report)
    _check_policy(run, name, gpu, driver, vbios)
    if outcome.path is not None:
        _check_chain_revocation(run, name, outcome.path[1:])
    _check_rims(run, name, report, driver)


def _verify_report_signature(report: SpdmReport, leaf: x509.Certificate) -> None:
    """Check the SPDM report's signature under the attestation key certificate, or raise
    GpuReportSignatureError saying what is wrong."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise GpuReportSignatureError("the attestation key certificate does not hold a P-384 key")
    half = len(report.signature) // 2
    signature = utils.encode_dss_signature(
        int.from_bytes(report.signature[:half], "big"), int.from_bytes(report.signature[half:], "big")
    )
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise GpuReportSignatureError("the signature does not verify over the report") from None


def _certificate_fwid(leaf: x509.Certificate) -> bytes | None:
    for extension in leaf.extensions:
        if extension.oid.dotted_string in _TCG_DICE_FWID_OIDS and isinstance(
            extension.value, x509.UnrecognizedExtension
        ):
            value = extension.value.value
            # Hopper: the TcbInfo's last field is the FWID, an OCTET STRING of 48 bytes
            # (what NVIDIA's verifier reads); insist on seeing that tag and length.
            if len(value) >= _FWID_SIZE + 2 and value[-_FWID_SIZE - 2 : -_FWID_SIZE] == b"\x04\x30":
                return value[-_FWID_SIZE:]
    return None


def _check_fwid(run: _Run, name: str, report: SpdmReport, leaf: x509.Certificate) -> None:
    cert_fwid = _certificate_fwid(leaf)
    report_fwid = report.fwid
    if report_fwid is None:
        # Reports from drivers before R550 carry no FWID. NVIDIA's verifier then skips the
        # comparison, and so does this one, saying so; minimum driver versions in the
        # policy are how to refuse such firmware altogether.
        passed, found = cert_fwid is not None, "not in report (pre-R550 firmware): not compared"
    else:
        passed, found = cert_fwid is not None and _equal(cert_fwid, report_fwid), report_fwid.hex()
    run.checks.record(
        f"{name} FWID",
        expected=cert_fwid.hex() if cert_fwid is not None else "a TCG DICE FWID in the certificate",
        found=found,
        passed=passed,
        error=GpuFwidMismatchError,
        message=f"{name}: firmware ID of the attestation key certificate differs from the report's",
    )


def _check_versions(
    run: _Run, name: str, gpu: GpuEvidence, report: SpdmReport
) -> tuple[str | None, str | None]:
    driver, vbios = report.driver_version, report.vbios_version
    run.checks.record(
        f"{name} driver version (signed)",
        expected=f"declared {gpu.driver_version}",
        found=driver or "absent",
        passed=driver is not None and driver == gpu.driver_version,
        error=EvidenceFormatError,
        message=f"{name}: declared driver version differs from the one in the signed report",
    )
    if gpu.vbios_version is not None or vbios is None:
        run.checks.record(
            f"{name} VBIOS version (signed)",
            expected=f"declared {gpu.vbios_version or '(none)'}",
            found=vbios or "absent",
            passed=vbios is not None and gpu.vbios_version is not None and vbios == gpu.vbios_version.upper(),
            error=EvidenceFormatError,
            message=f"{name}: declared VBIOS version differs from the one in the signed report",
        )
    return driver, vbios


def _check_policy(run: _Run, name: str, gpu: GpuEvidence, driver: str | None, vbios: str | None) -> None:
    policy, checks = run.policy, run.checks
    allowed = [a.value for a in policy.allowed_architectures]
    checks.record(
        f"{name} architecture",
        expected=" or ".join(allowed),
        found=gpu.architecture,
        passed=gpu.architecture in allowed,
        error=GpuPolicyViolationError,
        message=f"{name}: architecture {gpu.architecture!r} is not allowed by the policy",
    )
    checks.record(
        f"{name} CC mode",
        expected="on" if policy.require_cc_mode else "any (policy)",
        found=gpu.cc_mode.value,
        passed=gpu.cc_mode is CcMode.ON or not policy.require_cc_mode,
        error=GpuPolicyViolationError,
        message=f"{name}: confidential-computing mode is {gpu.cc_mode.value!r}, the policy requires 'on'",
    )
    for what, minimum, found, hexadecimal in (
        ("driver", policy.min_driver_version, driver, False),
        ("VBIOS", policy.min_vbios_version, vbios, True),
    ):
        if minimum is None:
            continue
        try:
            ok = found is not None and version_at_least(
                parse_version(found, hexadecimal=hexadecimal), parse_version(minimum, hexadecimal=hexadecimal)
            )
        except ValueError:
            ok = False
        checks.record(
            f"{name} minimum {what} version",
            expected=f">= {minimum}",
            found=found or "absent",
            passed=ok,
            error=GpuPolicyViolationError,
            message=f"{name}: {what} version {found!r} is below the policy's minimum {minimum}",
        )


def _check_chain_revocation(run: _Run, name: str, path: Sequence[x509.Certificate]) -> None:
    """OCSP for each certificate of ``path`` (leaf excluded by the caller) but the root."""
    if run.policy.ocsp is OcspMode.OFF:
        run.checks.record(
            f"{name} revocation",
            expected="OCSP checked",
            found="not checked (policy ocsp=off: development only)",
            passed=True,
            error=GpuCertificateRevokedError,
            message="",
        )
        return
    for cert, issuer in itertools.pairwise(path):
        key = (cert.serial_number, fingerprint(issuer))
        if key in run.ocsp_done:  # one row per certificate, however many GPUs or RIMs share it
            continue
        run.ocsp_done.add(key)
        outcome = check_revocation(
            cert, issuer, stapled=run.stapled_ocsp, fetcher=run.fetcher, now=run.now, max_age=run.max_ocsp_age
        )
        tolerated = outcome.status is OcspStatus.UNAVAILABLE and run.policy.ocsp is OcspMode.ALLOW_UNAVAILABLE
        error: type[AttestationError] = {
            OcspStatus.REVOKED: GpuCertificateRevokedError,
            OcspStatus.UNKNOWN: GpuCertificateRevokedError,
            OcspStatus.INVALID: OcspResponseError,
        }.get(outcome.status, CollateralUnavailableError)
        run.checks.record(
            f"{name} OCSP {common_name(cert)}",
            expected="good",
            found=outcome.detail + (" (tolerated: policy ocsp=allow-unavailable)" if tolerated else ""),
            passed=outcome.status is OcspStatus.GOOD or tolerated,
            error=error,
            message=f"{name}: revocation status of {common_name(cert)!r}: {outcome.detail}",
        )


def _check_rims(run: _Run, name: str, report: SpdmReport, driver: str | None) -> None:
    if not run.policy.require_rim_match:
        run.checks.record(
            f"{name} measurements",
            expected="match signed RIMs",
            found="not checked (policy require_rim_match=false)",
            passed=True,
            error=GpuMeasurementMismatchError,
            message="",
        )
        return
    ids = {
        RimKind.DRIVER: driver_rim_id(driver) if driver is not None else None,
        RimKind.VBIOS: vbios_rim_id(report),
    }
    expected_versions = {RimKind.DRIVER: driver, RimKind.VBIOS: report.vbios_version}
    active: dict[int, RimKind] = {}
    for kind, file_id in ids.items():
        if file_id is None:
            run.checks.record(
                f"{name} {kind.value} RIM",
                expected="report names its version",
                found="report lacks the fields that name the RIM",
                passed=False,
                error=EvidenceFormatError,
                message=f"{name}: cannot tell which {kind.value} RIM applies",
            )
            continue
        rim = _verified_rim(run, name, file_id)
        if rim is None:
            continue
        version = expected_versions[kind] or ""
        run.checks.record(
            f"{name} {kind.value} RIM version",
            expected=version,
            found=rim.version,
            passed=rim.version.lower() == version.lower(),
            error=RimVersionMismatchError,
            message=f"{name}: RIM {file_id} is for version {rim.version}, the report has {version}",
        )
        mismatched = []
        for index, golden in sorted(rim.golden.items()):
            if not golden.active:
                continue
            if index in active:
                mismatched.append(f"{index} (also in {active[index].value} RIM)")
                continue
            active[index] = kind
            runtime = report.measurements.get(index + 1)  # RIM index i is SPDM block i + 1
            if runtime is None or len(runtime) != golden.size or runtime not in golden.values:
                mismatched.append(str(index))
        count = sum(1 for g in rim.golden.values() if g.active)
        run.checks.record(
            f"{name} {kind.value} measurements",
            expected=f"{count} golden values of {file_id}",
            found="all match" if not mismatched else f"mismatch at index {', '.join(mismatched)}",
            passed=not mismatched,
            error=GpuMeasurementMismatchError,
            message=f"{name}: runtime measurements differ from the {kind.value} RIM at index "
            + ", ".join(mismatched),
        )


def _verified_rim(run: _Run, name: str, file_id: str) -> VerifiedRim | None:
    """Take the stapled RIM, else (or if it does not verify) fetch one; verify it once per
    call and record its checks once."""
    if file_id in run.rims:
        return run.rims[file_id]
    run.rims[file_id] = None
    label = f"{run.label} RIM {file_id}"
    expected = f"signed, chain to pinned {common_name(run.anchors.rim_root)} at {_when(run.now)}"
    rim: VerifiedRim | None = None
    failure: AttestationError | None = None
    source = "stapled"
    stapled = run.stapled_rims.get(file_id)
    if stapled is not None:
        try:
            rim = verify_rim(stapled, file_id=file_id, root=run.anchors.rim_root, now=run.now)
        except AttestationError as exc:
            failure = exc  # an unusable staple (an expired signer, say): a fetcher may have a good one
    if rim is None:
        try:
            xml = parse_rim_service_answer(
                run.fetcher.fetch(CollateralRequest(url=RIM_SERVICE_URL + file_id)), file_id
            )
        except (CollateralUnavailableError, EvidenceFormatError) as exc:
            if failure is None:  # nothing stapled: the refusal is that none is available
                run.checks.record(
                    label,
                    expected="stapled or fetched RIM",
                    found="unavailable",
                    passed=False,
                    error=type(exc),
                    message=f"{name}: {exc}",
                )
                return None
        else:
            source = "fetched"
            try:
                rim = verify_rim(xml, file_id=file_id, root=run.anchors.rim_root, now=run.now)
            except AttestationError as exc:
                failure = exc
    if rim is None:
        error = failure if failure is not None else AttestationError(f"RIM {file_id} did not verify")
        run.checks.record(
            label,
            expected=expected,
            found=f"{type(error).__name__} ({source})",
            passed=False,
            error=type(error),
            message=str(error),
        )
        return None
    run.checks.record(
        label,
        expected=expected,
        found=f"verified ({source}, signer {rim.signer})",
        passed=True,
        error=AttestationError,
        message="",
    )
    _check_chain_revocation(run, label, rim.path)
    run.rims[file_id] = rim
    return rim


def _check_nras(run: _Run, evidence: NvidiaGpuEvidence, expected_nonce: bytes) -> None:
    policy, name = run.policy, f"{run.label} NRAS token"
    expected = "ES384 by a trusted NRAS key, nonce and digests match, measres success"
    if evidence.nras_token is None:
        if policy.nras is NrasMode.REQUIRED:
            run.checks.record(
                name,
                expected=expected,
                found="absent",
                passed=False,
                error=NrasTokenRequiredError,
                message=f"{run.label}: the policy requires an NVIDIA NRAS token; the evidence carries none",
            )
        return
    try:
        key_set, fetched = _nras_key_set(run, evidence)
        appraisal = verify_nras_token(
            evidence.nras_token,
            expected_nonce=expected_nonce,
            gpu_count=len(evidence.gpus),
            key_set=key_set,
            now=run.now,
        )
        trust = _nras_trust(policy, appraisal.key_pins, fetched=fetched)
    except AttestationError as exc:
        run.checks.record(
            name, expected=expected, found=type(exc).__name__, passed=False, error=type(exc), message=str(exc)
        )
        return
    run.checks.record(
        name,
        expected=expected,
        found=f"verified ({len(appraisal.gpu_submodules)} GPU submodule(s), key {appraisal.key_id}, {trust})",
        passed=True,
        error=NrasTokenError,
        message="",
    )


def _nras_key_set(run: _Run, evidence: NvidiaGpuEvidence) -> tuple[bytes, bool]:
    """The NRAS key set and whether this verifier fetched it (rather than taking the staple).

    Without pins only a fetched key set is trusted, so the fetcher is asked first (offline it
    has nothing); with pins the source does not matter and the staple saves a fetch.
    """
    stapled = evidence.nras_jwks
    if stapled is not None and run.policy.nras_key_pins:
        return stapled, False
    try:
        return run.fetcher.fetch(CollateralRequest(url=NRAS_JWKS_URL)), True
    except CollateralUnavailableError as exc:
        if stapled is not None:
            return stapled, False
        raise CollateralUnavailableError(f"{run.label}: the NRAS key set is not stapled, and {exc}") from None


def _nras_trust(policy: NvidiaGpuPolicy, key_pins: frozenset[bytes], *, fetched: bool) -> str:
    """How far the verified token's signing keys are trusted; raise NrasUntrustedKeyError
    when the policy does not trust them (see ``_policy.py``)."""
    if policy.nras_key_pins:
        unpinned = sorted(pin.hex() for pin in key_pins - policy.nras_key_pins)
        if unpinned:
            raise NrasUntrustedKeyError(
                f"the NRAS token is signed by a key the policy does not pin (sha256 {unpinned[0]})"
            )
        return "key pinned by the policy"
    if fetched:
        return "key set fetched by this verifier"
    if policy.nras is NrasMode.REQUIRED:
        raise NrasUntrustedKeyError(
            "the NRAS key set comes only from the aggregator's staple, and the policy pins no NRAS "
            "key: pin NVIDIA's NRAS keys (nvidia_gpu.nras_key_pins) or verify online"
        )
    return "key set stapled by the aggregator, not pinned"


def _when(moment: datetime.datetime) -> str:
    return f"{moment.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
