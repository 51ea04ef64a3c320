"""RFC 8785 (JSON Canonicalization Scheme) encoding and strict decoding.

Everything FedSeal signs or hashes as JSON goes through `canonical_json`, so that two
honest parties always produce the same bytes. `parse_canonical` refuses input that is
not already canonical: accepting a non-canonical variant would let two different byte
strings stand for one entry.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import rfc8785

from fedseal.errors import CanonicalJSONError, FormatError

__all__ = ["b64decode_field", "b64encode", "canonical_json", "parse_canonical"]


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value in RFC 8785 canonical form."""
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalJSONError(f"value cannot be canonicalised: {exc}") from exc


def parse_canonical(data: bytes, *, what: str) -> Any:
    """Parse JSON and check it is byte-for-byte canonical; `what` names the document in errors."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc
    if canonical_json(value) != data:
        raise CanonicalJSONError(f"{what} is not in RFC 8785 canonical form")
    return value


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_field(value: object, *, field: str, size: int | None = None) -> bytes:
    """Decode a standard-base64 string field, checking its decoded size when given."""
    if not isinstance(value, str):
        raise FormatError(f"field {field!r} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"field {field!r} is not valid base64") from exc
    if size is not None and len(raw) != size:
        raise FormatError(f"field {field!r} must decode to {size} bytes, got {len(raw)}")
    return raw
