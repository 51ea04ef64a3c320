"""Small pieces both CPU TEE verifiers share."""

from __future__ import annotations

import datetime
from typing import Protocol

from fedseal.errors import FormatError

from .._checks import CheckRecorder

__all__ = ["CheckRecorder", "new_checklist", "resolve_now", "shorten"]


class _RaisingChecklist(CheckRecorder, Protocol):
    def raise_if_failed(self) -> None: ...


def new_checklist() -> _RaisingChecklist:
    """A checklist with verify_bundle's semantics (every check kept, first failure raised)."""
    # Imported here, not at module level: attestation._verify imports this package to
    # register the CPU verifiers, so a top-level import would be circular.
    from .._verify import _Checklist

    return _Checklist()


def resolve_now(now: datetime.datetime | None) -> datetime.datetime:
    """``now`` if given (it must be timezone-aware), else the current UTC time."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        raise FormatError("verification time must be timezone-aware (e.g. datetime.UTC)")
    return now


def shorten(text: str, limit: int = 200) -> str:
    """Cut a library's error text short for a report line (it may quote long input)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
