"""The auditor's tool: verify an audit log from the log file and a policy alone (`fedseal-audit`)."""

from fedseal.audit._verify import (
    AuditReport,
    Finding,
    FindingKind,
    LogVerificationError,
    RoundSummary,
    VerifiedLog,
    audit_log,
    verify_log,
)

__all__ = [
    "AuditReport",
    "Finding",
    "FindingKind",
    "LogVerificationError",
    "RoundSummary",
    "VerifiedLog",
    "audit_log",
    "verify_log",
]
