"""Verification time of CPU TEE evidence (AMD SEV-SNP, Intel TDX), network excluded (not a test).

On the real published samples of tests/vectors/cpu-tee (collateral stapled, so no fetch),
at their pinned verification times. Best and median of several runs, per item:

  SEV-SNP report      attestation.cpu.verify_sev_snp_report: parse, VCEK <- ASK <- pinned
                      ARK (two RSA-PSS 4096 verifications), VCEK extensions, ECDSA P-384
                      report signature, policy checks
  SEV-SNP in bundle   attestation.verify_bundle on a bundle holding that report (it fails
                      on the report data, as a real report cannot carry our binding; every
                      check still runs)
  peer: primitives    the same two verify_directly_issued_by calls and the ECDSA verify with
                      cryptography alone: the floor any SEV-SNP verifier pays
  TDX quote           attestation.cpu.verify_tdx_quote: collateral assembled from stapled
                      Intel PCS answers, dcap-qvl verification, policy checks
  TDX in bundle       attestation.verify_bundle on a bundle holding that quote
  peer: dcap-qvl      dcap_qvl.verify_with_root_ca alone, on collateral built once

The issue's target is under 50 ms per bundle here. Run: python benchmarks/bench_cpu_attestation.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cryptography
import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from attestation import (
    AttestationError,
    Evidence,
    EvidenceBundle,
    EvidenceKind,
    OfflineFetcher,
    Policy,
    verify_bundle,
)
from attestation.cpu import (
    SevSnpPolicy,
    SevSnpProduct,
    SnpCertGuid,
    TdxPolicy,
    amd_roots,
    encode_snp_cert_table,
    intel_sgx_root_ca_der,
    parse_sev_snp_report,
    parse_tdx_quote,
    tdx_collateral_staples,
    verify_sev_snp_report,
    verify_tdx_quote,
)
from fedseal.binding import compute_binding

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "cpu-tee"
SNP_REPORT = VECTORS / "sev-snp/ms-tee-attestation-verification/genoa_attestation_report.bin"
SNP_VCEK = VECTORS / "sev-snp/ms-tee-attestation-verification/genoa_vcek.pem"
SNP_NOW = 1780272000  # 2026-06-01, inside the VCEK's validity
TDX_QUOTE = VECTORS / "tdx/dcap-qvl/tdx_quote"
TDX_COLLATERAL = VECTORS / "tdx/dcap-qvl/tdx_quote_collateral.json"
TDX_NOW = 1752919234  # 2025-07-19, inside the collateral's validity


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) seconds over ``repeats`` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def report(label: str, seconds: tuple[float, float]) -> None:
    best, median = seconds
    print(f"  {label:<22} {best * 1e3:8.2f} ms best  {median * 1e3:8.2f} ms median")


def expecting(error: type[Exception], fn: Callable[[], object]) -> Callable[[], None]:
    """Run ``fn``, which must raise ``error`` (a verification that is meant to refuse)."""

    def run() -> None:
        try:
            fn()
        except error:
            return
        raise AssertionError(f"expected {error.__name__}")

    return run


def bundle_with(evidence: Evidence) -> tuple[EvidenceBundle, bytes]:
    hpke = X25519PrivateKey.generate().public_key().public_bytes_raw()
    log = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    challenge = os.urandom(32)
    bundle = EvidenceBundle(
        hpke_public_key=hpke,
        log_public_key=log,
        challenge=challenge,
        binding=compute_binding(hpke, log, challenge),
        evidence=(evidence,),
    )
    return bundle, challenge


def bench_snp(repeats: int) -> None:
    print("AMD SEV-SNP (Genoa, report version 3, VCEK in the certificate table)")
    report_bytes = SNP_REPORT.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD VCEKs have serial number 0
        vcek = x509.load_pem_x509_certificate(SNP_VCEK.read_bytes())
    vcek_der = vcek.public_bytes(Encoding.DER)
    payload = report_bytes + encode_snp_cert_table([(SnpCertGuid.VCEK.value, vcek_der)])
    parsed = parse_sev_snp_report(report_bytes)
    policy = SevSnpPolicy(measurements=(parsed.measurement,))
    now = _utc(SNP_NOW)

    def standalone() -> None:
        verify_sev_snp_report(payload, expected_report_data=parsed.report_data, policy=policy, now=now)

    bundle, challenge = bundle_with(Evidence(EvidenceKind.AMD_SEV_SNP, payload))
    bundle_policy = Policy(name="bench", required_evidence=(EvidenceKind.AMD_SEV_SNP,), amd_sev_snp=policy)
    encoded = bundle.to_bytes()

    roots = amd_roots(SevSnpProduct.GENOA)
    signature = encode_dss_signature(parsed.signature_r, parsed.signature_s)
    public_key = vcek.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)

    def primitives() -> None:
        roots.ask.verify_directly_issued_by(roots.ark)
        vcek.verify_directly_issued_by(roots.ask)
        public_key.verify(signature, parsed.signed_bytes(), ec.ECDSA(hashes.SHA384()))

    report("SEV-SNP report", timed(standalone, repeats))

    def in_bundle() -> None:
        verify_bundle(encoded, bundle_policy, challenge, now=now)

    report("SEV-SNP in bundle", timed(expecting(AttestationError, in_bundle), repeats))
    report("peer: primitives", timed(primitives, repeats))


def bench_tdx(repeats: int) -> None:
    print("Intel TDX (quote version 4, collateral stapled)")
    raw = TDX_QUOTE.read_bytes()
    quote = parse_tdx_quote(raw)
    staples = tdx_collateral_staples(quote, TDX_COLLATERAL.read_text())
    policy = TdxPolicy(mrtd=(quote.mr_td,))
    now = _utc(TDX_NOW)

    def standalone() -> None:
        verify_tdx_quote(
            raw,
            expected_report_data=quote.report_data,
            policy=policy,
            now=now,
            fetcher=OfflineFetcher(staples),
        )

    bundle, challenge = bundle_with(Evidence(EvidenceKind.INTEL_TDX, raw))
    bundle_policy = Policy(name="bench", required_evidence=(EvidenceKind.INTEL_TDX,), intel_tdx=policy)
    encoded = bundle.to_bytes()

    def in_bundle() -> None:
        verify_bundle(encoded, bundle_policy, challenge, now=now, fetcher=OfflineFetcher(staples))

    collateral = dcap_qvl.QuoteCollateralV3.from_json(TDX_COLLATERAL.read_text())
    root = intel_sgx_root_ca_der()

    def peer() -> None:
        dcap_qvl.verify_with_root_ca(raw, collateral, root, TDX_NOW)

    report("TDX quote", timed(standalone, repeats))
    report("TDX in bundle", timed(expecting(AttestationError, in_bundle), repeats))
    report("peer: dcap-qvl", timed(peer, repeats))


def _utc(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(
        f"best/median of {args.repeats}; cryptography {cryptography.__version__}, "
        f"dcap-qvl {dcap_qvl.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    bench_snp(args.repeats)
    bench_tdx(args.repeats)


if __name__ == "__main__":
    main()
