"""Aggregator side: staple what an offline verifier needs to NVIDIA GPU evidence.

:class:`NvidiaCollateralStapler` wraps a GPU collector (``NvidiaGpuCollector``,
``NvattestCollector``). After each collection it adds, for every GPU:

* the driver and VBIOS RIMs named by the report (NVIDIA's RIM service, cached by RIM id);
* an OCSP answer for every certificate of the GPU's chain (its root excepted) and of each
  RIM's signing chain, cached until shortly before its ``nextUpdate``.

Everything is fetched on the host side through a :class:`~attestation.CollateralCache`
(so a failed refresh serves the last valid copy until it expires, then fails with
:class:`~attestation.StapledCollateralExpiredError`). Stapled material is verified by the
client exactly like fetched material, so stapling can make verification fail, never pass;
the stapler itself only checks that an answer is usable (parses, is about the right
certificate, has not expired).
"""

from __future__ import annotations

import datetime
import itertools
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .._bundle import Evidence, EvidenceKind
from .._collateral import CollateralCache, CollateralValidity, refresh_before
from .._errors import EvidenceCollectionError, EvidenceFormatError
from .._fetch import CollateralRequest
from ._format import NvidiaGpuEvidence, StapledRim, parse_nvidia_gpu_payload
from ._ocsp import NVIDIA_OCSP_URL, _single_for
from ._pki import TrustAnchors, common_name, pinned_trust_anchors
from ._rim import RIM_SERVICE_URL, driver_rim_id, parse_rim_service_answer, rim_signing_chain, vbios_rim_id
from ._spdm import parse_attestation_report

if TYPE_CHECKING:  # a runtime import would be circular (_collect imports this package)
    from .._collect import EvidenceCollector

__all__ = ["NvidiaCollateralStapler"]

# An OCSP answer is refreshed this long before its nextUpdate (NVIDIA's are valid for days).
OCSP_REFRESH_MARGIN = datetime.timedelta(hours=6)
# Without nextUpdate a verifier accepts an answer for one day (see _ocsp.py).
_OCSP_WITHOUT_NEXT_UPDATE = datetime.timedelta(days=1)
# RIMs do not change under their id; look again daily in case NVIDIA re-signs one.
RIM_REFRESH = datetime.timedelta(days=1)


class NvidiaCollateralStapler:
    """An ``nvidia-gpu`` collector that returns ``inner``'s evidence with RIMs and OCSP
    answers stapled (see the module docstring)."""

    def __init__(
        self, inner: EvidenceCollector, cache: CollateralCache, *, anchors: TrustAnchors | None = None
    ) -> None:
        if inner.kind is not EvidenceKind.NVIDIA_GPU:
            raise EvidenceCollectionError("the NVIDIA stapler wraps an nvidia-gpu collector")
        self._inner = inner
        self._cache = cache
        # The top link's issuer is the root a verifier pins (NVIDIA's), whatever root the
        # chain carries: NVIDIA's SDK swaps its own in, other collectors may omit it.
        self._anchors = anchors if anchors is not None else pinned_trust_anchors()

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.NVIDIA_GPU

    def collect(self, binding: bytes) -> Evidence:
        item = self._inner.collect(binding)
        try:
            evidence = parse_nvidia_gpu_payload(item.payload)
        except EvidenceFormatError as exc:
            raise EvidenceCollectionError(f"the GPU collector's evidence does not parse: {exc}") from None
        return Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=self.staple(evidence).to_payload())

    def staple(self, evidence: NvidiaGpuEvidence) -> NvidiaGpuEvidence:
        """``evidence`` with every RIM and OCSP answer it needs (kept ones first)."""
        rims = {rim.id: rim.xml for rim in evidence.rims}
        pairs: list[tuple[x509.Certificate, x509.Certificate]] = []
        for index, gpu in enumerate(evidence.gpus):
            try:
                report = parse_attestation_report(gpu.attestation_report)
                chain = x509.load_pem_x509_certificates(gpu.certificate_chain)
            except (EvidenceFormatError, ValueError) as exc:
                raise EvidenceCollectionError(f"GPU {index}: evidence does not parse: {exc}") from None
            # The verifier checks every CA certificate below the root (the leaf is the
            # attestation key, checked through its FWID and signature instead).
            pairs.extend(itertools.pairwise(_to_root(chain[1:], self._anchors.device_root)))
            names = [
                driver_rim_id(report.driver_version) if report.driver_version else None,
                vbios_rim_id(report),
            ]
            for file_id in names:
                if file_id is None:
                    raise EvidenceCollectionError(f"GPU {index}: the report does not name its RIMs")
                if file_id not in rims:
                    rims[file_id] = self._rim(file_id)
                rim_chain = rim_signing_chain(rims[file_id], file_id)
                pairs.extend(itertools.pairwise(_to_root(rim_chain, self._anchors.rim_root)))
        answers: dict[tuple[int, bytes], bytes] = {}
        for cert, issuer in pairs:
            key = (cert.serial_number, issuer.fingerprint(hashes.SHA256()))
            if key not in answers:
                answers[key] = self._ocsp(cert, issuer)
        kept = [r for r in evidence.ocsp_responses if r not in answers.values()]
        return NvidiaGpuEvidence(
            gpus=evidence.gpus,
            rims=tuple(StapledRim(file_id, xml) for file_id, xml in sorted(rims.items())),
            ocsp_responses=(*kept, *answers.values()),
            nras_token=evidence.nras_token,
            nras_jwks=evidence.nras_jwks,
        )

    def _rim(self, file_id: str) -> bytes:
        def appraise(body: bytes, now: datetime.datetime) -> CollateralValidity:
            chain = rim_signing_chain(parse_rim_service_answer(body, file_id), file_id)
            expires = min(c.not_valid_after_utc for c in chain)
            return refresh_before(expires, now, margin=RIM_REFRESH, at_most=RIM_REFRESH)

        body = self._cache.get(
            CollateralRequest(url=RIM_SERVICE_URL + file_id), appraise, what=f"NVIDIA RIM {file_id}"
        )
        return parse_rim_service_answer(body, file_id)

    def _ocsp(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()

        def appraise(body: bytes, now: datetime.datetime) -> CollateralValidity:
            response = ocsp.load_der_ocsp_response(body)  # ValueError: unusable answer
            single = _single_for(response, cert, issuer)
            if single is None:
                raise ValueError("the OCSP answer is not about this certificate")
            next_update = single.next_update_utc
            if next_update is None:
                return refresh_before(
                    single.this_update_utc + _OCSP_WITHOUT_NEXT_UPDATE, now, margin=OCSP_REFRESH_MARGIN
                )
            margin = min(OCSP_REFRESH_MARGIN, (next_update - single.this_update_utc) / 2)
            return refresh_before(next_update, now, margin=margin)

        return self._cache.get(
            CollateralRequest(
                url=NVIDIA_OCSP_URL,
                body=request.public_bytes(serialization.Encoding.DER),
                content_type="application/ocsp-request",
            ),
            appraise,
            what=f"OCSP answer for {common_name(cert)!r}",
        )


def _to_root(chain: list[x509.Certificate], root: x509.Certificate) -> list[x509.Certificate]:
    """``chain`` without any self-signed certificate it ends in, then ``root``."""
    while chain and chain[-1].subject == chain[-1].issuer:
        chain = chain[:-1]
    return [*chain, root]
