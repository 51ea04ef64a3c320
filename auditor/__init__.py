"""The auditor's tool: verify an audit log from the log file and a policy alone (`fedseal-audit`).

`audit_log` / `verify_log` check a whole log (auditor/_verify.py);
`check_receipt_in_log` / `check_receipt_at_endpoint` prove that a receipt still holds;
`attest_enclave_entry` is the key-chain check both use (and the witness too);
`Witness` / `serve_witness` are the witness (`fedseal-audit witness serve`).
"""

from auditor._enclave import AttestedKey, KeyAttestationError, attest_enclave_entry
from auditor._endpoint import AuditEndpointError
from auditor._receipt import (
    ReceiptCheck,
    ReceiptCheckError,
    check_receipt_at_endpoint,
    check_receipt_in_log,
    check_receipts_in_log,
)
from auditor._verify import (
    DEFAULT_MAX_CLOCK_SKEW,
    AuditReport,
    Finding,
    FindingKind,
    Handover,
    KeySummary,
    LogVerificationError,
    RoundSummary,
    TrustedCheckpoint,
    TrustedCheckpointResult,
    VerifiedLog,
    audit_log,
    verify_log,
)
from auditor._witness import Witness, WitnessKey
from auditor._witness_server import serve_witness

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW",
    "AttestedKey",
    "AuditEndpointError",
    "AuditReport",
    "Finding",
    "FindingKind",
    "Handover",
    "KeyAttestationError",
    "KeySummary",
    "LogVerificationError",
    "ReceiptCheck",
    "ReceiptCheckError",
    "RoundSummary",
    "TrustedCheckpoint",
    "TrustedCheckpointResult",
    "VerifiedLog",
    "Witness",
    "WitnessKey",
    "attest_enclave_entry",
    "audit_log",
    "check_receipt_at_endpoint",
    "check_receipt_in_log",
    "check_receipts_in_log",
    "serve_witness",
    "verify_log",
]
