"""Verification time per NVIDIA GPU evidence bundle (network excluded). Prints figures.

    .venv/bin/python benchmarks/bench_attestation.py [--rounds N]

1. NVIDIA's published reports (1 GPU and the 8-GPU PPCIe file): parse, chain to the pinned
   root, ECDSA-P384 report signature, FWID, nonce, policy; against the reports' own nonce.
   Peer, same reports, same run: NVIDIA's nv-local-gpu-verifier 2.7.3 primitives for the
   same checks (AttestationReport + CcAdminUtils.verify_gpu_certificate_chain +
   verify_signature), when that package is installed.
2. The full pipeline with a test PKI (NVIDIA's signers cannot be had offline): the above
   plus stapled OCSP answers for every CA certificate, two signed RIMs (XML signature,
   chain) with every golden measurement compared, and a stapled NRAS token.
3. ``verify_bundle`` end to end on a bundle carrying the real 8-GPU evidence (it is
   refused for its nonce, after doing every check).

Target: under 50 ms per bundle on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from attestation import (  # noqa: E402
    AttestationError,
    Evidence,
    EvidenceBundle,
    EvidenceKind,
    OfflineFetcher,
    load_builtin_policy,
    verify_bundle,
)
from attestation.nvidia import (  # noqa: E402
    CcMode,
    NvidiaGpuPolicy,
    OcspMode,
    evidence_from_nvidia_json,
    verify_gpu_evidence_against_nonce,
)
from fedseal.binding import compute_binding  # noqa: E402

VECTORS = ROOT / "tests" / "vectors" / "nvidia"
PINNED = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
CORE = NvidiaGpuPolicy(ocsp=OcspMode.OFF, require_rim_match=False)


def _time(label: str, rounds: int, run: Callable[[], object]) -> float:
    run()  # warm-up (imports, pinned roots)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    median = statistics.median(samples)
    print(f"  {label:<58} median {median:7.2f} ms   min {min(samples):7.2f} ms")
    return median


def _real(name: str) -> tuple[bytes, bytes, list[dict[str, str]]]:
    entries = json.loads((VECTORS / name).read_text())
    payload = evidence_from_nvidia_json(entries, cc_mode=CcMode.ON).to_payload()
    return payload, bytes.fromhex(entries[0]["nonce"]), entries


def _nvidia_peer(entries: list[dict[str, str]]) -> Callable[[], object] | None:
    try:
        from attestation.nvidia._collect import _import_sdk

        sdk = _import_sdk()  # imported in a scratch directory: it writes log files on import
    except AttestationError:
        return None
    from OpenSSL import crypto
    from verifier.attestation import AttestationReport
    from verifier.cc_admin_utils import CcAdminUtils
    from verifier.config import BaseSettings, HopperSettings

    settings = HopperSettings()
    root_pem = Path(sdk.config.BaseSettings.DEVICE_ROOT_CERT).read_bytes()

    def run() -> object:
        for entry in entries:
            report = AttestationReport(base64.b64decode(entry["evidence"]), settings)
            pems = base64.b64decode(entry["certificate"]).split(b"-----END CERTIFICATE-----")[:-1]
            chain = [
                crypto.load_certificate(crypto.FILETYPE_PEM, p + b"-----END CERTIFICATE-----") for p in pems
            ]
            chain = [*chain[:-1], crypto.load_certificate(crypto.FILETYPE_PEM, root_pem)]
            fwid = report.get_response_message().get_opaque_data().get_data("OPAQUE_FIELD_ID_FWID").hex()
            ok = CcAdminUtils.verify_gpu_certificate_chain(chain, settings, fwid)
            signed = report.verify_signature(
                chain[0].to_cryptography(), settings.signature_length, settings.HashFunction
            )
            if not (ok and ok[0] and signed):  # bool verdicts: the peer's API
                raise SystemExit("NVIDIA's verifier refused a sample it should accept")
        return BaseSettings

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rounds: int = args.rounds
    print(f"NVIDIA GPU evidence verification, {rounds} rounds, {os.cpu_count()} CPU(s), network excluded")

    print("1. NVIDIA's published reports: chain to pinned root, signature, FWID, nonce, policy")
    for name, label in (
        ("serialized_test_evidence/hopper_evidence.json", "1 GPU"),
        ("nvtrust_ppcie_gpu_evidence.json", "8 GPUs"),
    ):
        payload, nonce, entries = _real(name)
        _time(
            f"FedSeal, {label}",
            rounds,
            lambda p=payload, n=nonce: verify_gpu_evidence_against_nonce(  # type: ignore[misc]
                p, expected_nonce=n, policy=CORE, now=PINNED
            ),
        )
        peer = _nvidia_peer(entries)
        if peer is None:
            print(f"  {'peer: nv-local-gpu-verifier not installed':<58} (skipped)")
        else:
            _time(f"peer: NVIDIA nv-local-gpu-verifier 2.7.3, {label}", rounds, peer)

    print("2. Full pipeline, test PKI: + stapled OCSP x6, 2 signed RIMs, measurements, NRAS token")
    from nvidia_pki import NOW, NrasIssuer, make_world

    world, issuer = make_world(), NrasIssuer()
    fetcher = OfflineFetcher(issuer.fetcher_answers())
    for gpus in (1, 8):
        nonce = os.urandom(32)
        evidence = world.evidence(
            nonce, gpus=gpus, ocsp_responses=world.good_ocsp(), nras_token=issuer.token(nonce, gpus=gpus)
        )
        payload = evidence.to_payload()
        _time(
            f"FedSeal, {gpus} GPU(s), everything stapled",
            rounds,
            lambda p=payload, n=nonce: verify_gpu_evidence_against_nonce(  # type: ignore[misc]
                p, expected_nonce=n, policy=NvidiaGpuPolicy(), now=NOW, fetcher=fetcher, anchors=world.anchors
            ),
        )

    print("3. verify_bundle, real 8-GPU evidence in a bundle (refused for its nonce after every check)")
    payload, _, _ = _real("nvtrust_ppcie_gpu_evidence.json")
    challenge, hpke, log = os.urandom(32), os.urandom(32), os.urandom(32)
    bundle = EvidenceBundle(
        hpke_public_key=hpke,
        log_public_key=log,
        challenge=challenge,
        binding=compute_binding(hpke, log, challenge),
        evidence=(Evidence(EvidenceKind.NVIDIA_GPU, payload),),
    ).to_bytes()
    policy = load_builtin_policy("default")

    def through_bundle() -> None:
        try:
            verify_bundle(bundle, policy, challenge, now=PINNED)
        except AttestationError:
            return
        raise SystemExit("a replayed report was accepted")

    _time("verify_bundle(bytes), 8 GPUs, default policy, offline", rounds, through_bundle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
