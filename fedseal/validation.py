"""The summary of a site's local data validation: checks, pass or fail, counts; never a record.

A site runs its validation before training (client_sdk/validation.py) and sends the
summary, in RFC 8785 canonical JSON, in its signed update header; the enclave logs it with
the update (`update_accepted.validation`) and refuses the update by name when the round
requires a passing validation (`RoundConfig.require_validation`)::

    {"format": "fedseal-validation-summary/v1",
     "data_kind": "tabular" | "text",
     "records": 1000,
     "passed": true,                       # every check passed
     "checks": [{"name": "duplicates", "passed": true, "counts": {"duplicates": 0}}, ...]}

The format itself keeps record content out: check and count names are short identifiers
(``[a-z][a-z0-9_]*``, at most 64 characters) and every count is a non-negative integer,
so no string the data holds can travel in it; the SDK names its checks and counts from a
fixed list, never from the data.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fedseal.canonical import canonical_json, parse_canonical
from fedseal.errors import FormatError

__all__ = [
    "MAX_VALIDATION_SUMMARY_SIZE",
    "VALIDATION_FORMAT",
    "CheckResult",
    "DataKind",
    "ValidationSummary",
    "ValidationSummaryError",
    "parse_validation_summary",
]

VALIDATION_FORMAT: Final = "fedseal-validation-summary/v1"
MAX_VALIDATION_SUMMARY_SIZE: Final = 8 * 1024
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAX_CHECKS: Final = 32
_MAX_COUNTS: Final = 16
_MAX_INT: Final = 2**53 - 1


class ValidationSummaryError(FormatError):
    """A validation summary that does not follow fedseal-validation-summary/v1."""


class DataKind(enum.Enum):
    TABULAR = "tabular"
    TEXT = "text"


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValidationSummaryError(f"validation summary: {where} must match [a-z][a-z0-9_]{{0,63}}")
    return value


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise ValidationSummaryError(f"validation summary: {where} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    counts: Mapping[str, int]

    def __post_init__(self) -> None:
        _name(self.name, "a check name")
        if not isinstance(self.passed, bool):
            raise ValidationSummaryError(
                f"validation summary: check {self.name!r} 'passed' must be a boolean"
            )
        if not isinstance(self.counts, Mapping) or len(self.counts) > _MAX_COUNTS:
            raise ValidationSummaryError(
                f"validation summary: check {self.name!r} 'counts' must be an object of at most "
                f"{_MAX_COUNTS} counts"
            )
        for key, value in self.counts.items():
            _count(value, f"check {self.name!r} count {_name(key, 'a count name')!r}")

    def to_json_obj(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "counts": dict(self.counts)}


@dataclass(frozen=True)
class ValidationSummary:
    data_kind: DataKind
    records: int
    checks: tuple[CheckResult, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.data_kind, DataKind):
            raise ValidationSummaryError("validation summary: 'data_kind' must be 'tabular' or 'text'")
        _count(self.records, "'records'")
        if not isinstance(self.checks, tuple) or not 1 <= len(self.checks) <= _MAX_CHECKS:
            raise ValidationSummaryError(f"validation summary: 'checks' must list 1 to {_MAX_CHECKS} checks")
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValidationSummaryError("validation summary: two checks have the same name")
        if len(self.canonical_bytes()) > MAX_VALIDATION_SUMMARY_SIZE:
            raise ValidationSummaryError(
                f"validation summary: longer than {MAX_VALIDATION_SUMMARY_SIZE} bytes in canonical JSON"
            )

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return all(c.passed for c in self.checks)

    def failed_checks(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.passed)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": VALIDATION_FORMAT,
            "data_kind": self.data_kind.value,
            "records": self.records,
            "passed": self.passed,
            "checks": [c.to_json_obj() for c in self.checks],
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_json_obj(cls, obj: object) -> ValidationSummary:
        fields = {"format", "data_kind", "records", "passed", "checks"}
        if not isinstance(obj, dict) or set(obj) != fields:
            raise ValidationSummaryError(
                f"validation summary: must be an object with exactly {sorted(fields)}"
            )
        if obj["format"] != VALIDATION_FORMAT:
            raise ValidationSummaryError(f"validation summary: unknown format {str(obj['format'])[:64]!r}")
        try:
            kind = DataKind(obj["data_kind"])
        except (ValueError, TypeError):
            raise ValidationSummaryError(
                "validation summary: 'data_kind' must be 'tabular' or 'text'"
            ) from None
        raw_checks = obj["checks"]
        if not isinstance(raw_checks, list):
            raise ValidationSummaryError("validation summary: 'checks' must be a list")
        checks = []
        for n, check in enumerate(raw_checks):
            if not isinstance(check, dict) or set(check) != {"name", "passed", "counts"}:
                raise ValidationSummaryError(
                    f"validation summary: check {n} must be an object with exactly name, passed, counts"
                )
            if not isinstance(check["counts"], dict):
                raise ValidationSummaryError(f"validation summary: check {n} 'counts' must be an object")
            checks.append(CheckResult(check["name"], check["passed"], dict(check["counts"])))
        summary = cls(kind, obj["records"], tuple(checks))
        if obj["passed"] is not summary.passed:
            # A summary that says "passed" over a failed check is a lie, not a rounding.
            raise ValidationSummaryError("validation summary: 'passed' contradicts its checks")
        return summary


def parse_validation_summary(data: bytes) -> ValidationSummary:
    """A summary from its canonical JSON bytes (as the header carries it); anything else is refused."""
    if len(data) > MAX_VALIDATION_SUMMARY_SIZE:
        raise ValidationSummaryError(f"validation summary: over {MAX_VALIDATION_SUMMARY_SIZE} bytes")
    try:
        obj = parse_canonical(data, what="validation summary")
    except FormatError as exc:
        raise ValidationSummaryError(str(exc)) from None
    return ValidationSummary.from_json_obj(obj)
