"""Small strict decoders shared by the bundle, the simulated evidence format and policies.

They raise :class:`DecodeError` with a plain description; each caller re-raises it as its
own named error (``BundleFormatError``, ``EvidenceFormatError``, ``PolicyError``) with the
field it was decoding, so the message a user sees always says *which* field is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

from fedseal import strictjson
from fedseal.canonical import b64decode_canonical, b64encode, canonical_json
from fedseal.errors import FormatError
from fedseal.strictjson import json_type

__all__ = [
    "DecodeError",
    "JsonDocument",
    "b64decode_strict",
    "b64encode",
    "canonical_json",
    "hexdecode_strict",
    "json_type",
    "load_json_object",
]


class DecodeError(ValueError):
    """Internal: a value could not be decoded. Always re-raised as a named FedSeal error."""


def b64decode_strict(value: object, *, size: int | None = None) -> bytes:
    """Canonical standard base64 (see fedseal.canonical), raising DecodeError for the caller."""
    if not isinstance(value, str):
        raise DecodeError(f"must be a base64 string, got {json_type(value)}")
    try:
        return b64decode_canonical(value, what="value", size=size)
    except FormatError as exc:
        raise DecodeError(str(exc).removeprefix("value ")) from None


def hexdecode_strict(value: object, *, size: int) -> bytes:
    """Decode lowercase hex of exactly ``size`` bytes (one spelling per value, as for base64)."""
    if not isinstance(value, str):
        raise DecodeError(f"must be a hex string, got {json_type(value)}")
    if len(value) != 2 * size or value != value.lower():
        raise DecodeError(f"must be {2 * size} lowercase hex digits ({size} bytes)")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise DecodeError(f"must be {2 * size} lowercase hex digits ({size} bytes)") from exc


# The shapes our canonical documents take: string fields and lists of string-valued objects.
# Narrower than "any JSON" on purpose, so mypy catches a float (not canonicalisable
# portably) or a bytes value (needs base64 first) before it reaches the encoder.
JsonDocument = Mapping[str, str | Sequence[Mapping[str, str]]]


def load_json_object(data: bytes | str) -> dict[str, object]:
    """Parse one JSON object strictly: UTF-8, no duplicate keys, no NaN/Infinity.

    Duplicate keys are refused because parsers disagree on which copy wins; a document
    that means different things to different readers is exactly what an attacker wants.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("is not valid UTF-8") from exc
    else:
        text = data
    try:
        value = strictjson.loads(
            text, what="document", object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except FormatError as exc:
        raise DecodeError(str(exc).removeprefix("document ")) from None
    if not isinstance(value, dict):
        raise DecodeError(f"must be a JSON object, got {json_type(value)}")
    return value


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise DecodeError(f"has duplicate key {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> NoReturn:
    raise DecodeError(f"contains {name}, which is not JSON")
