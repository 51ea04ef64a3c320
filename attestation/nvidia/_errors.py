"""Named errors for NVIDIA GPU evidence: one class per way a GPU attestation can fail.

Each verification check names the class it raises on failure, so a caller (or a test) can
tell an invalid report signature from an expired certificate from a tampered RIM without
reading messages. They all descend from the generic attestation errors, so code that
catches ``EvidenceSignatureError`` or ``PolicyViolationError`` keeps working.
"""

from __future__ import annotations

from .._errors import (
    AttestationError,
    BindingMismatchError,
    EvidenceCollectionError,
    EvidenceSignatureError,
    PolicyViolationError,
    UnsupportedEvidenceError,
)

__all__ = [
    "GpuCertificateChainError",
    "GpuCertificateExpiredError",
    "GpuCertificateRevokedError",
    "GpuCollectorUnavailableError",
    "GpuConfidentialComputeOffError",
    "GpuFwidMismatchError",
    "GpuMeasurementMismatchError",
    "GpuNonceMismatchError",
    "GpuPolicyViolationError",
    "GpuReportSignatureError",
    "GpuRootPinError",
    "NrasNonceMismatchError",
    "NrasTokenError",
    "NrasTokenRequiredError",
    "NrasUntrustedKeyError",
    "NrasUntrustedTokenError",
    "NvidiaVerifierUnavailableError",
    "OcspResponseError",
    "RimCertificateChainError",
    "RimCertificateExpiredError",
    "RimDigestMismatchError",
    "RimSignatureError",
    "RimVersionMismatchError",
]


class GpuCertificateChainError(AttestationError):
    """The GPU's device certificate chain does not verify up to the pinned NVIDIA root."""


class GpuRootPinError(GpuCertificateChainError):
    """The chain is not rooted in the pinned NVIDIA Device Identity CA.

    What a chain made by anyone but NVIDIA (a test CA, simulated evidence dressed up as GPU
    evidence) fails with. The device-supplied root certificate is never trusted.
    """


class GpuCertificateExpiredError(GpuCertificateChainError):
    """A certificate of the GPU chain is outside its validity window (expired or not yet
    valid) at the verification time."""


class GpuCertificateRevokedError(AttestationError):
    """OCSP says a certificate (GPU chain or RIM chain) is revoked, on hold, or unknown."""


class OcspResponseError(AttestationError):
    """An OCSP response is malformed, stale, not for this certificate, or not signed by an
    authorised responder. Never treated as "unavailable": a bad answer is a failure."""


class GpuReportSignatureError(EvidenceSignatureError):
    """The SPDM attestation report's ECDSA-P384 signature does not verify under the GPU's
    attestation-key certificate (the report was altered, or signed by another key)."""


class GpuFwidMismatchError(AttestationError):
    """The firmware ID in the attestation-key certificate differs from the one in the report."""


class GpuNonceMismatchError(BindingMismatchError):
    """The report's SPDM nonce is not the one derived from this client's binding.

    The report was made for another challenge or other keys: a replay.
    """


class GpuPolicyViolationError(PolicyViolationError):
    """The GPU evidence verified, but its architecture, CC mode, driver or VBIOS version is
    not what the policy's ``nvidia_gpu`` section requires."""


class GpuMeasurementMismatchError(PolicyViolationError):
    """The report's runtime measurements differ from the golden values of the signed RIMs."""


class RimCertificateChainError(AttestationError):
    """A RIM's signing certificate chain does not verify up to the pinned NVIDIA RIM root."""


class RimCertificateExpiredError(RimCertificateChainError):
    """A certificate of a RIM's chain is outside its validity window at the verification time."""


class RimSignatureError(EvidenceSignatureError):
    """A RIM's XML signature value does not verify under its (chain-verified) signing certificate."""


class RimDigestMismatchError(EvidenceSignatureError):
    """A RIM's signed content digest does not match its content: the golden measurements
    (or any other signed part) were edited after NVIDIA signed it."""


class RimVersionMismatchError(AttestationError):
    """A signed RIM is for another driver or VBIOS version than the report's."""


class NvidiaVerifierUnavailableError(UnsupportedEvidenceError):
    """A library the NVIDIA verifier needs (``signxml``, ``lxml``, ``PyJWT``) is not installed.

    Install ``fedseal[nvidia]``. Verification fails closed meanwhile.
    """


class NrasTokenError(EvidenceSignatureError):
    """An NVIDIA NRAS attestation token is malformed, not validly signed by a key of the NRAS
    key set, expired, from another issuer, or reports a failed appraisal."""


class NrasUntrustedTokenError(NrasTokenError):
    """The token is not an NRAS token at all: issued by ``LOCAL_GPU_VERIFIER`` (self-made by
    the attested host) or signed with a shared-secret algorithm such as HS256."""


class NrasNonceMismatchError(BindingMismatchError):
    """An NRAS token's ``eat_nonce`` is not the nonce derived from this client's binding."""


class NrasUntrustedKeyError(NrasTokenError):
    """The NRAS token verifies, but under a key the policy does not trust: one outside the
    policy's ``nras_key_pins``, or (where the policy pins none and requires a token) one
    known only from the key set the aggregator stapled rather than fetched by the verifier."""


class NrasTokenRequiredError(PolicyViolationError):
    """The policy requires an NRAS token (``nvidia_gpu.nras: "required"``) and the GPU
    evidence carries none."""


class GpuCollectorUnavailableError(EvidenceCollectionError):
    """No GPU evidence collector can run here: no NVML / driver, no GPU, or the NVIDIA
    packages (or the ``nvattest`` CLI) are not installed."""


class GpuConfidentialComputeOffError(EvidenceCollectionError):
    """The GPU's confidential-computing mode is off (or in an insecure developer mode)."""
