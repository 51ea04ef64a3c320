"""Named errors for CPU TEE evidence (AMD SEV-SNP, Intel TDX) and its collection.

Each verification check names the class it raises on failure, so a caller or a test can
tell a bad report signature from a chain that misses the pinned root, or an out-of-date
TCB from a debug-enabled guest, without reading messages. They all descend from the
generic attestation errors, so ``except EvidenceSignatureError`` or
``except PolicyViolationError`` keeps working.
"""

from __future__ import annotations

from .._errors import (
    AttestationError,
    BindingMismatchError,
    CollateralUnavailableError,
    EvidenceCollectionError,
    EvidenceSignatureError,
    PolicyViolationError,
)

__all__ = [
    "CocoAgentError",
    "CocoAgentUnavailableError",
    "CocoEvidenceFormatError",
    "CocoSampleEvidenceError",
    "CocoTeeMismatchError",
    "ConfigfsTsmConflictError",
    "ConfigfsTsmError",
    "CpuDebugModeError",
    "CpuMeasurementError",
    "CpuReportDataMismatchError",
    "CpuTcbError",
    "SevSnpCertificateChainError",
    "SevSnpEndorsementMismatchError",
    "SevSnpSignatureError",
    "TdxCertificateChainError",
    "TdxCollateralError",
    "TdxQuoteSignatureError",
]


class SevSnpCertificateChainError(AttestationError):
    """The VCEK (or VLEK) does not chain up to the pinned AMD ARK of the report's product
    through an ASK (or ASVK), a certificate is outside its validity window at the
    verification time, or there is no pinned ARK for the product."""


class SevSnpEndorsementMismatchError(SevSnpCertificateChainError):
    """The VCEK is for another chip or another TCB than the report says (its hardware ID
    differs from CHIP_ID, or its TCB extensions from REPORTED_TCB), or the report names a
    signing key (VCEK or VLEK) other than the certificate's kind or product."""


class SevSnpSignatureError(EvidenceSignatureError):
    """The SEV-SNP report's ECDSA P-384 signature does not verify under the VCEK or VLEK:
    the signed bytes were altered, or another key signed them."""


class TdxQuoteSignatureError(EvidenceSignatureError):
    """The TDX quote does not verify (dcap-qvl): the quote signature, the QE report
    signature or the QE report hash is wrong, or the quote is malformed past its header."""


class TdxCertificateChainError(AttestationError):
    """A certificate chain of a TDX quote or of its collateral (PCK chain, TCB signing
    chain, CRLs) does not verify up to the pinned Intel SGX Root CA, or is revoked."""


class TdxCollateralError(CollateralUnavailableError):
    """The Intel collateral cannot be used for this quote: expired or not yet valid at the
    verification time, malformed, or for another platform (FMSPC, TEE type)."""


class CpuReportDataMismatchError(BindingMismatchError):
    """The CPU report's report data is not the one derived from this client's binding and the
    bundle's other evidence (see ``attestation.cpu.cpu_report_data``): a replay, or a report
    made for other keys or for other GPU evidence."""


class CpuDebugModeError(PolicyViolationError):
    """The confidential VM allows debugging (SEV-SNP guest policy DEBUG bit, TDX TD attribute
    DEBUG): the host can read its memory, and the policy does not allow that."""


class CpuTcbError(PolicyViolationError):
    """The platform's trusted computing base is not acceptable: an SEV-SNP TCB component is
    below the policy's minimum, or Intel rates the TDX platform's TCB with a status the
    policy does not allow (or with no TCB level at all, i.e. older than any Intel lists)."""


class CpuMeasurementError(PolicyViolationError):
    """The launch measurement (SEV-SNP MEASUREMENT, TDX MRTD or an RTMR) is not in the
    policy's allow-list: the confidential VM runs other code than the policy accepts."""


class ConfigfsTsmError(EvidenceCollectionError):
    """A CPU TEE report could not be obtained through Linux configfs-tsm: no such interface,
    another provider than expected, no permission, or a malformed answer."""


class ConfigfsTsmConflictError(ConfigfsTsmError):
    """Another writer changed the configfs-tsm report entry while we used it (the generation
    counter moved, or the report does not carry our report data), on every attempt."""


class CocoAgentError(EvidenceCollectionError):
    """The Confidential Containers attestation agent (its API server inside the pod) could
    not give evidence: unreachable, an HTTP error, or evidence over other report data."""


class CocoAgentUnavailableError(CocoAgentError):
    """No attestation agent answers at the configured address, or it answers an HTTP error."""


class CocoEvidenceFormatError(CocoAgentError):
    """The attestation agent's answer is not the evidence document this collector knows
    (the message names the field)."""


class CocoTeeMismatchError(CocoEvidenceFormatError):
    """The attestation agent answered evidence (or names a TEE) of another kind than the
    collector was configured for; ``found`` is what the agent gave."""

    def __init__(self, message: str, *, found: str) -> None:
        super().__init__(message)
        self.found = found


class CocoSampleEvidenceError(CocoTeeMismatchError):
    """The attestation agent answered with its insecure sample attester: the pod VM has no
    TEE it can use (the agent falls back to "sample" when it detects none)."""
