"""Small pieces both CPU TEE verifiers share."""

from __future__ import annotations

import datetime

from fedseal.errors import FormatError

from .._checks import CheckRecorder

__all__ = ["CheckRecorder", "resolve_now", "shorten"]


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
