"""One row of a verification report: what was checked, what was expected, what was found.

Kept in its own module because both the errors (which carry the rows that led to a
refusal) and the verifier (which produces them) need it, and neither should import the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the errors import this module; a runtime import would be circular
    from ._errors import AttestationError

__all__ = ["CheckRecorder", "CheckResult"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one verification check, in words fit for a report table.

    ``expected`` and ``found`` are display strings (hex digests, kind names, short
    phrases). They never contain secret material: everything a verifier sees in an
    evidence bundle is public.
    """

    name: str
    expected: str
    found: str
    passed: bool


class CheckRecorder(Protocol):
    """Where a verifier records its checks: ``VerificationContext.checks`` during a bundle
    verification, or a fresh checklist in the standalone report verifiers."""

    def record(
        self,
        name: str,
        *,
        expected: str,
        found: str,
        passed: bool,
        error: type[AttestationError],
        message: str,
    ) -> bool: ...
