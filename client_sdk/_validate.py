"""Argument checks for the SDK's public calls: a wrong value is a ClientArgumentError that
names the argument and what it must be, raised before anything is sent.

Python would otherwise accept `round_id="1"` or `retries=-1` and fail far away (a
protobuf TypeError, an AssertionError, a gRPC error about a field the caller never named).
"""

from __future__ import annotations

import math

from client_sdk._errors import ClientArgumentError

__all__ = ["check_bytes", "check_int", "check_seconds", "check_text"]

U64_MAX = 2**64 - 1


def check_int(value: object, name: str, *, minimum: int, maximum: int = U64_MAX) -> int:
    """An int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClientArgumentError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not minimum <= value <= maximum:
        upper = "" if maximum == U64_MAX else f" and at most {maximum}"
        raise ClientArgumentError(f"{name} must be at least {minimum}{upper}, got {value}")
    return value


def check_seconds(value: object, name: str, *, allow_zero: bool) -> float:
    """A finite number of seconds, positive (or non-negative with `allow_zero`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClientArgumentError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ClientArgumentError(f"{name} must be a finite, {bound} number of seconds, got {value!r}")
    return seconds


def check_bytes(value: object, name: str, *, min_size: int, max_size: int) -> bytes:
    if not isinstance(value, bytes):
        raise ClientArgumentError(f"{name} must be bytes, got {type(value).__name__}")
    if not min_size <= len(value) <= max_size:
        raise ClientArgumentError(f"{name} must be {min_size}..{max_size} bytes long, got {len(value)}")
    return value


def check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ClientArgumentError(
            f"{name} must be a non-empty string, got {type(value).__name__} {value!r:.40}"
        )
    return value
