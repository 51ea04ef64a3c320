"""RFC 8785 (JSON Canonicalization Scheme) encoding and strict decoding.

Everything FedSeal signs or hashes as JSON goes through `canonical_json`, so that two
honest parties always produce the same bytes. `parse_canonical` refuses input that is
not already canonical: accepting a non-canonical variant would let two different byte
strings stand for one entry.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import rfc8785

from fedseal import strictjson
from fedseal.errors import CanonicalJSONError, FormatError

__all__ = ["b64decode_canonical", "b64decode_field", "b64encode", "canonical_json", "parse_canonical"]


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value in RFC 8785 canonical form."""
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalJSONError(f"value cannot be canonicalised: {exc}") from exc


def parse_canonical(data: bytes, *, what: str) -> Any:
    """Parse JSON and check it is byte-for-byte canonical; `what` names the document in errors."""
    value = strictjson.loads(data, what=what)
    if canonical_json(value) != data:
        raise CanonicalJSONError(f"{what} is not in RFC 8785 canonical form")
    return value


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_canonical(value: object, *, what: str, size: int | None = None) -> bytes:
    """Decode standard padded base64 (RFC 4648 §4), refusing every spelling but the canonical one.

    Non-alphabet characters, missing padding and non-zero trailing bits are refused:
    accepting several spellings of the same bytes would let two different documents carry
    one value, which breaks digest-based identities. Errors name `what`.
    """
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise FormatError(f"{what} is not canonical base64 (padding or trailing bits)")
    if size is not None and len(raw) != size:
        raise FormatError(f"{what} must decode to {size} bytes, got {len(raw)}")
    return raw


def b64decode_field(value: object, *, field: str, size: int | None = None) -> bytes:
    """`b64decode_canonical` for a named JSON field."""
    return b64decode_canonical(value, what=f"field {field!r}", size=size)
