"""NVIDIA GPU confidential-computing evidence: payload format, verifier, collectors, policy.

Client side (no NVIDIA package, no NVML): ``attestation.verify_bundle`` verifies
``nvidia-gpu`` evidence with :func:`verify_nvidia_gpu` (see ``_verify.py`` for the checks,
in order). RIM and NRAS checks need ``signxml``, ``lxml`` and ``PyJWT``:
``pip install 'fedseal[nvidia]'``.

Aggregator side (inside the confidential VM): :class:`NvidiaGpuCollector` collects every
GPU's report through NVIDIA's ``nv-local-gpu-verifier`` (NVML underneath), and
:class:`NvattestCollector` through NVIDIA's successor CLI ``nvattest``. Both put
:func:`spdm_nonce_for_binding` into the reports. :class:`NvidiaCollateralStapler` staples
RIMs and OCSP answers; :class:`NrasTokenStapler` (opt-in) an NRAS token and its key set.
Installing the NVIDIA packages is a separate step (see ``deploy/README.md`` and the
Makefile's ``nvidia-collector`` target).

Payload format: ``_format.py``'s docstring. Policy section ``nvidia_gpu``: ``_policy.py``.
"""

from ._collect import NvattestCollector, NvidiaGpuCollector
from ._errors import (
    GpuCertificateChainError,
    GpuCertificateExpiredError,
    GpuCertificateRevokedError,
    GpuCollectorUnavailableError,
    GpuConfidentialComputeOffError,
    GpuFwidMismatchError,
    GpuMeasurementMismatchError,
    GpuNonceMismatchError,
    GpuPolicyViolationError,
    GpuReportSignatureError,
    GpuRootPinError,
    NrasNonceMismatchError,
    NrasTokenError,
    NrasTokenRequiredError,
    NrasUntrustedKeyError,
    NrasUntrustedTokenError,
    NvidiaVerifierUnavailableError,
    OcspResponseError,
    RimCertificateChainError,
    RimCertificateExpiredError,
    RimDigestMismatchError,
    RimSignatureError,
    RimVersionMismatchError,
)
from ._format import (
    NVIDIA_GPU_EVIDENCE_FORMAT,
    SPDM_NONCE_DOMAIN,
    CcMode,
    GpuEvidence,
    NvidiaGpuEvidence,
    StapledRim,
    evidence_from_nvidia_json,
    parse_nvidia_gpu_payload,
    spdm_nonce_for_binding,
)
from ._nras import (
    NRAS_GPU_ATTEST_URL,
    NRAS_ISSUER,
    NRAS_JWKS_URL,
    nras_key_set_certificates,
    nras_key_set_pins,
    nras_token_validity,
)
from ._nras_staple import NrasStapleOutcome, NrasTokenStapler, nras_attest_request
from ._ocsp import NVIDIA_OCSP_URL
from ._pki import TrustAnchors, pinned_trust_anchors
from ._policy import GpuArchitecture, NrasMode, NvidiaGpuPolicy, OcspMode
from ._rim import RIM_SERVICE_URL
from ._spdm import SpdmReport, parse_attestation_report
from ._staple import NvidiaCollateralStapler
from ._verify import verify_gpu_evidence_against_nonce, verify_nvidia_gpu

__all__ = [
    "NRAS_GPU_ATTEST_URL",
    "NRAS_ISSUER",
    "NRAS_JWKS_URL",
    "NVIDIA_GPU_EVIDENCE_FORMAT",
    "NVIDIA_OCSP_URL",
    "RIM_SERVICE_URL",
    "SPDM_NONCE_DOMAIN",
    "CcMode",
    "GpuArchitecture",
    "GpuCertificateChainError",
    "GpuCertificateExpiredError",
    "GpuCertificateRevokedError",
    "GpuCollectorUnavailableError",
    "GpuConfidentialComputeOffError",
    "GpuEvidence",
    "GpuFwidMismatchError",
    "GpuMeasurementMismatchError",
    "GpuNonceMismatchError",
    "GpuPolicyViolationError",
    "GpuReportSignatureError",
    "GpuRootPinError",
    "NrasMode",
    "NrasNonceMismatchError",
    "NrasStapleOutcome",
    "NrasTokenError",
    "NrasTokenRequiredError",
    "NrasTokenStapler",
    "NrasUntrustedKeyError",
    "NrasUntrustedTokenError",
    "NvattestCollector",
    "NvidiaCollateralStapler",
    "NvidiaGpuCollector",
    "NvidiaGpuEvidence",
    "NvidiaGpuPolicy",
    "NvidiaVerifierUnavailableError",
    "OcspMode",
    "OcspResponseError",
    "RimCertificateChainError",
    "RimCertificateExpiredError",
    "RimDigestMismatchError",
    "RimSignatureError",
    "RimVersionMismatchError",
    "SpdmReport",
    "StapledRim",
    "TrustAnchors",
    "evidence_from_nvidia_json",
    "nras_attest_request",
    "nras_key_set_certificates",
    "nras_key_set_pins",
    "nras_token_validity",
    "parse_attestation_report",
    "parse_nvidia_gpu_payload",
    "pinned_trust_anchors",
    "spdm_nonce_for_binding",
    "verify_gpu_evidence_against_nonce",
    "verify_nvidia_gpu",
]
