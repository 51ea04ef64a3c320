"""CPU TEE attestation: AMD SEV-SNP and Intel TDX confidential VMs.

Aggregator side: :class:`ConfigfsTsmCollector` asks the kernel (Linux configfs-tsm) for an
SEV-SNP report or a TDX quote over the 64-byte :func:`cpu_report_data`, which
:func:`attestation.build_bundle` derives from the binding and the bundle's other (GPU)
evidence, so that one client challenge covers both.

Inside a Confidential Containers (Kata) pod, :class:`CocoEvidenceCollector` asks the
attestation agent's API server on the pod's loopback for the same evidence.

Client side: :func:`attestation.verify_bundle` verifies ``amd-sev-snp`` and ``intel-tdx``
evidence with :func:`verify_sev_snp_evidence` and :func:`verify_tdx_evidence` under the
policy's ``amd_sev_snp`` / ``intel_tdx`` sections (:class:`SevSnpPolicy`,
:class:`TdxPolicy`). :func:`verify_sev_snp_report` and :func:`verify_tdx_quote` run the same
checks on a single report against an explicit expected report data.

Trust anchors: the AMD ARKs (Milan, Genoa, Turin) and the Intel SGX Root CA, pinned as
package data in ``attestation/cpu/roots/``. Network material (AMD KDS VCEKs, Intel PCS
collateral) comes only through the verification context's
:class:`~attestation.CollateralFetcher`.
"""

from ._coco import DEFAULT_COCO_AGENT_URL, CocoEvidenceCollector
from ._configfs_tsm import DEFAULT_CONFIGFS_TSM_ROOT, ConfigfsTsmCollector
from ._errors import (
    CocoAgentError,
    CocoAgentUnavailableError,
    CocoEvidenceFormatError,
    CocoSampleEvidenceError,
    CocoTeeMismatchError,
    ConfigfsTsmConflictError,
    ConfigfsTsmError,
    CpuDebugModeError,
    CpuMeasurementError,
    CpuReportDataMismatchError,
    CpuTcbError,
    SevSnpCertificateChainError,
    SevSnpEndorsementMismatchError,
    SevSnpSignatureError,
    TdxCertificateChainError,
    TdxCollateralError,
    TdxQuoteSignatureError,
)
from ._policy import SevSnpPolicy, SevSnpProduct, SnpTcb, TdxPolicy, TdxTcbStatus
from ._report_data import CPU_REPORT_DATA_SIZE, CPU_TEE_KINDS, cpu_report_data
from ._roots import AmdRoots, amd_roots, intel_sgx_root_ca_der
from ._snp import (
    AMD_KDS_BASE_URL,
    SNP_REPORT_SIZE,
    SUPPORTED_SNP_REPORT_VERSIONS,
    SevSnpReport,
    SnpCertGuid,
    SnpSigningKey,
    VerifiedSevSnpReport,
    encode_snp_cert_table,
    parse_sev_snp_payload,
    parse_sev_snp_report,
    parse_snp_cert_table,
    vcek_kds_url,
    verify_sev_snp_evidence,
    verify_sev_snp_report,
)
from ._staple import SevSnpCollateralStapler, amd_cert_chain_url
from ._tdx import (
    INTEL_PCS_BASE_URL,
    TdxCollateralItem,
    TdxCollateralRequests,
    TdxQuote,
    VerifiedTdxQuote,
    parse_tdx_quote,
    tdx_collateral_requests,
    tdx_collateral_staples,
    verify_tdx_evidence,
    verify_tdx_quote,
)
from ._tdx_staple import TdxCollateralStapler

__all__ = [
    "AMD_KDS_BASE_URL",
    "CPU_REPORT_DATA_SIZE",
    "CPU_TEE_KINDS",
    "DEFAULT_COCO_AGENT_URL",
    "DEFAULT_CONFIGFS_TSM_ROOT",
    "INTEL_PCS_BASE_URL",
    "SNP_REPORT_SIZE",
    "SUPPORTED_SNP_REPORT_VERSIONS",
    "AmdRoots",
    "CocoAgentError",
    "CocoAgentUnavailableError",
    "CocoEvidenceCollector",
    "CocoEvidenceFormatError",
    "CocoSampleEvidenceError",
    "CocoTeeMismatchError",
    "ConfigfsTsmCollector",
    "ConfigfsTsmConflictError",
    "ConfigfsTsmError",
    "CpuDebugModeError",
    "CpuMeasurementError",
    "CpuReportDataMismatchError",
    "CpuTcbError",
    "SevSnpCertificateChainError",
    "SevSnpCollateralStapler",
    "SevSnpEndorsementMismatchError",
    "SevSnpPolicy",
    "SevSnpProduct",
    "SevSnpReport",
    "SevSnpSignatureError",
    "SnpCertGuid",
    "SnpSigningKey",
    "SnpTcb",
    "TdxCertificateChainError",
    "TdxCollateralError",
    "TdxCollateralItem",
    "TdxCollateralRequests",
    "TdxCollateralStapler",
    "TdxPolicy",
    "TdxQuote",
    "TdxQuoteSignatureError",
    "TdxTcbStatus",
    "VerifiedSevSnpReport",
    "VerifiedTdxQuote",
    "amd_cert_chain_url",
    "amd_roots",
    "cpu_report_data",
    "encode_snp_cert_table",
    "intel_sgx_root_ca_der",
    "parse_sev_snp_payload",
    "parse_sev_snp_report",
    "parse_snp_cert_table",
    "parse_tdx_quote",
    "tdx_collateral_requests",
    "tdx_collateral_staples",
    "vcek_kds_url",
    "verify_sev_snp_evidence",
    "verify_sev_snp_report",
    "verify_tdx_evidence",
    "verify_tdx_quote",
]
