"""Aggregator side, opt-in: staple an NVIDIA NRAS token (and its key set) to GPU evidence.

:class:`NrasTokenStapler` wraps an ``nvidia-gpu`` collector (normally the
:class:`~attestation.nvidia.NvidiaCollateralStapler`). For every fresh evidence item it

1. POSTs the GPUs' reports and certificate chains to NRAS's GPU attestation API
   (``NRAS_GPU_ATTEST_URL``, the body nv-attestation-sdk sends: ``nonce`` (hex),
   ``evidence_list`` of ``{"evidence": base64 report, "certificate": base64 PEM chain}``,
   ``arch``, ``claims_version``), with the SPDM nonce derived from the binding, through
   the fetcher it was given; the answer is the detached EAT text;
2. gets NRAS's key set through the collateral cache (refreshed hourly, kept a day at most
   or until a certificate of its ``x5c`` chains expires);
3. verifies the token against that key set with the verifier's own
   :func:`~attestation.nvidia._nras.verify_nras_token` (nonce, GPU count, signatures,
   validity, NRAS's verdict): a token that does not verify is never stapled;
4. staples the token and the key set into the payload (``nras_token``, ``nras_jwks``).

A failed step never fails the collection: the evidence is served as the inner collector
made it (without a token), ``on_outcome`` is told (the aggregator counts it), one log line
says why, and NRAS is not asked again for ``retry_after``, so an outage neither slows
every GetAttestation down nor hammers NRAS. A client whose policy requires a token then
refuses by name (``NrasTokenRequiredError``).

The token is a per-challenge answer (its ``eat_nonce`` is the challenge's), so it is never
cached; the request goes to the fetcher directly, not through the cache.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._bundle import Evidence, EvidenceKind
from .._collateral import CollateralCache, CollateralValidity, refresh_before
from .._encoding import b64encode
from .._errors import AttestationError, EvidenceCollectionError, EvidenceFormatError
from .._fetch import CollateralFetcher, CollateralRequest
from ._format import NvidiaGpuEvidence, parse_nvidia_gpu_payload, spdm_nonce_for_binding
from ._nras import (
    NRAS_CLAIMS_VERSION,
    NRAS_GPU_ATTEST_URL,
    NRAS_JWKS_URL,
    nras_key_set_certificates,
    nras_key_set_pins,
    verify_nras_token,
)
from ._pki import TrustAnchors, pinned_trust_anchors

if TYPE_CHECKING:  # a runtime import would be circular (_collect imports this package)
    from .._collect import EvidenceCollector

__all__ = ["NrasStapleOutcome", "NrasTokenStapler", "nras_attest_request"]

_LOG = logging.getLogger(__name__)

# The key set is looked at again hourly (NVIDIA rotates keys) and never served older than a day.
NRAS_JWKS_REFRESH = datetime.timedelta(hours=1)
NRAS_JWKS_LIFETIME = datetime.timedelta(days=1)
DEFAULT_RETRY_AFTER = datetime.timedelta(minutes=1)
_JWKS_MARGIN = datetime.timedelta(minutes=10)


class NrasStapleOutcome(enum.Enum):
    """What :meth:`NrasTokenStapler.collect` did about the token (the aggregator's metric label)."""

    STAPLED = "stapled"
    #: NRAS or its key set could not be had, or the token did not verify: served without one.
    FAILED = "failed"
    #: A recent failure: NRAS was not asked this time; served without a token.
    SKIPPED = "skipped"


def nras_attest_request(
    evidence: NvidiaGpuEvidence, nonce: bytes, *, anchors: TrustAnchors | None = None
) -> CollateralRequest:
    """The POST NRAS's GPU attestation API expects for ``evidence`` and the SPDM ``nonce``.

    Each chain is sent as nv-local-gpu-verifier sends it: the device's certificates with any
    self-signed root they end in replaced by the pinned NVIDIA Device Identity CA.
    """
    anchors = anchors if anchors is not None else pinned_trust_anchors()
    architectures = {gpu.architecture for gpu in evidence.gpus}
    if len(architectures) != 1:
        raise EvidenceCollectionError("NRAS attests GPUs of one architecture at a time")
    entries = []
    for index, gpu in enumerate(evidence.gpus):
        try:
            chain = x509.load_pem_x509_certificates(gpu.certificate_chain)
        except ValueError as exc:
            raise EvidenceCollectionError(f"GPU {index}: certificate chain does not parse: {exc}") from None
        while chain and chain[-1].subject == chain[-1].issuer:
            chain = chain[:-1]
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (*chain, anchors.device_root))
        entries.append({"certificate": b64encode(pem), "evidence": b64encode(gpu.attestation_report)})
    body = {
        "arch": architectures.pop(),
        "claims_version": NRAS_CLAIMS_VERSION,
        "evidence_list": entries,
        "nonce": nonce.hex(),
    }
    return CollateralRequest(
        url=NRAS_GPU_ATTEST_URL,
        body=json.dumps(body, sort_keys=True).encode(),
        content_type="application/json",
    )


class NrasTokenStapler:
    """An ``nvidia-gpu`` collector that returns ``inner``'s evidence with a verified NRAS
    token and its key set stapled, or unchanged when that fails (see the module docstring).

    ``fetcher`` reaches NRAS (uncached: each token answers one challenge); ``cache`` holds
    the key set; ``on_outcome(outcome, reason)`` is called once per collection.
    """

    def __init__(
        self,
        inner: EvidenceCollector,
        cache: CollateralCache,
        fetcher: CollateralFetcher,
        *,
        anchors: TrustAnchors | None = None,
        on_outcome: Callable[[NrasStapleOutcome, str], None] | None = None,
        retry_after: datetime.timedelta = DEFAULT_RETRY_AFTER,
    ) -> None:
        if inner.kind is not EvidenceKind.NVIDIA_GPU:
            raise EvidenceCollectionError("the NRAS stapler wraps an nvidia-gpu collector")
        self._inner = inner
        self._cache = cache
        self._fetcher = fetcher
        self._anchors = anchors
        self._on_outcome = on_outcome
        self._retry_after = retry_after
        self._next_try: datetime.datetime | None = None
        self._lock = threading.Lock()

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.NVIDIA_GPU

    def collect(self, binding: bytes) -> Evidence:
        item = self._inner.collect(binding)
        try:
            evidence = parse_nvidia_gpu_payload(item.payload)
        except EvidenceFormatError as exc:
            raise EvidenceCollectionError(f"the GPU collector's evidence does not parse: {exc}") from None
        now = self._cache.now()
        with self._lock:
            next_try = self._next_try
        if next_try is not None and now < next_try:
            self._report(
                NrasStapleOutcome.SKIPPED, f"NRAS failed recently; next try after {next_try:%H:%M:%SZ}"
            )
            return item
        try:
            token, key_set = self._token(evidence, spdm_nonce_for_binding(binding), now)
        except (AttestationError, ValueError) as exc:
            with self._lock:
                self._next_try = now + self._retry_after
            self._report(NrasStapleOutcome.FAILED, f"{type(exc).__name__}: {exc}")
            return item
        with self._lock:
            self._next_try = None
        self._report(NrasStapleOutcome.STAPLED, "")
        stapled = NvidiaGpuEvidence(
            gpus=evidence.gpus,
            rims=evidence.rims,
            ocsp_responses=evidence.ocsp_responses,
            nras_token=token,
            nras_jwks=key_set,
        )
        return Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=stapled.to_payload())

    def _token(self, evidence: NvidiaGpuEvidence, nonce: bytes, now: datetime.datetime) -> tuple[str, bytes]:
        """A token for ``evidence`` that verifies against NRAS's key set, and that key set."""
        answer = self._fetcher.fetch(nras_attest_request(evidence, nonce, anchors=self._anchors))
        token = answer.decode("utf-8")  # UnicodeDecodeError is a ValueError: counted as a failure
        key_set = self._cache.get(
            CollateralRequest(url=NRAS_JWKS_URL), _appraise_key_set, what="NRAS key set"
        )
        verify_nras_token(token, expected_nonce=nonce, gpu_count=len(evidence.gpus), key_set=key_set, now=now)
        return token, key_set

    def _report(self, outcome: NrasStapleOutcome, reason: str) -> None:
        if outcome is not NrasStapleOutcome.STAPLED:
            _LOG.warning("NRAS token not stapled (%s): %s", outcome.value, reason)
        if self._on_outcome is not None:
            self._on_outcome(outcome, reason)


def _appraise_key_set(body: bytes, now: datetime.datetime) -> CollateralValidity:
    """A usable key set is kept a day at most, less if a certificate of a key's ``x5c``
    expires sooner, and looked at again hourly."""
    nras_key_set_pins(body)  # raises NrasTokenError (an AttestationError) when unusable
    expires = min(
        (cert.not_valid_after_utc for cert in nras_key_set_certificates(body)),
        default=now + NRAS_JWKS_LIFETIME,
    )
    expires = min(expires, now + NRAS_JWKS_LIFETIME)
    return refresh_before(expires, now, margin=_JWKS_MARGIN, at_most=NRAS_JWKS_REFRESH)
