"""One row of a verification report: what was checked, what was expected, what was found.

Kept in its own module because the errors (which carry the rows that led to a refusal), the
bundle verifier and the per-kind verifiers (which produce them) all need it, and the bundle
verifier imports the per-kind ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the errors import this module; a runtime import would be circular
    from ._errors import AttestationError

__all__ = ["CheckRecorder", "CheckResult", "Checklist"]


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


class Checklist:
    """Collects check results and remembers which error the first failure calls for."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self._first_failure: tuple[type[AttestationError], str] | None = None

    def record(
        self,
        name: str,
        *,
        expected: str,
        found: str,
        passed: bool,
        error: type[AttestationError],
        message: str,
    ) -> bool:
        self.results.append(CheckResult(name=name, expected=expected, found=found, passed=passed))
        if not passed and self._first_failure is None:
            self._first_failure = (error, message)
        return passed

    def raise_if_failed(self) -> None:
        if self._first_failure is None:
            return
        error, message = self._first_failure
        failures = sum(1 for result in self.results if not result.passed)
        if failures > 1:
            message += f" (and {failures - 1} more failing check(s))"
        raise error(message, checks=self.results)
