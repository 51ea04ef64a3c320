"""Data cards: what a site says about the data behind one update (docs/data-card.md).

A data card is a small JSON document (format ``fedseal-data-card/v1``)::

    {"format": "fedseal-data-card/v1",
     "source": "...",                      # where the records come from
     "legal_basis": "...",                 # the licence or the legal basis of processing
     "date_range": {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"},
     "record_count": 12345,                # records the update was trained on
     "filtering": ["...", ...],            # selection and filtering applied
     "deidentification": ["...", ...],     # de-identification applied (may be empty)
     "contact": "...",                     # who answers questions about the data
     "extensions": {...}}                  # anything else (any JSON object, bounded)

Parsing is strict: an unknown or missing field, a value of the wrong type, an empty
string where one is required, a date range that ends before it starts, a document over
:data:`MAX_DATA_CARD_SIZE` bytes or with duplicate keys is a :class:`DataCardError`.

Its **digest** is SHA-256 of its RFC 8785 canonical JSON. The site signs the digest in its
update header, binds it into the envelope's seal context (fedseal/wire.py,
fedseal/envelope.py), and may publish the card itself in the header; the enclave then
checks the card hashes to the signed digest and logs both (`update_accepted.data_card_digest`
and `update_accepted.data_card`). The published schema is docs/data-card.schema.json; the
tests hold it and this parser to the same documents.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedseal import strictjson
from fedseal.canonical import canonical_json
from fedseal.errors import FedSealError, FormatError

__all__ = [
    "DATA_CARD_FORMAT",
    "MAX_DATA_CARD_SIZE",
    "DataCard",
    "DataCardError",
    "DataCardMismatchError",
    "check_published_card",
    "load_data_card",
    "parse_data_card",
]

DATA_CARD_FORMAT: Final = "fedseal-data-card/v1"
MAX_DATA_CARD_SIZE: Final = 16 * 1024  # canonical bytes; a card is a description, not data
_MAX_TEXT: Final = 1024
_MAX_ITEMS: Final = 32
_MAX_DEPTH: Final = 8
_FIELDS: Final = frozenset(
    {
        "format",
        "source",
        "legal_basis",
        "date_range",
        "record_count",
        "filtering",
        "deidentification",
        "contact",
        "extensions",
    }
)


class DataCardError(FormatError):
    """A data card that does not follow fedseal-data-card/v1 (the message names the field)."""


class DataCardMismatchError(FedSealError):
    """A published data card does not hash to the digest its update header signs."""


@dataclass(frozen=True)
class DataCard:
    source: str
    legal_basis: str
    date_start: dt.date
    date_end: dt.date
    record_count: int
    filtering: tuple[str, ...]
    deidentification: tuple[str, ...]
    contact: str
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("source", "legal_basis", "contact"):
            _text(getattr(self, name), name)
        if not isinstance(self.date_start, dt.date) or not isinstance(self.date_end, dt.date):
            raise DataCardError("data card: 'date_range' must hold two dates")
        if self.date_end < self.date_start:
            raise DataCardError(
                f"data card: 'date_range' ends ({self.date_end}) before it starts ({self.date_start})"
            )
        count = self.record_count
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 2**53 - 1:
            raise DataCardError(f"data card: 'record_count' must be a positive integer, got {count!r}")
        for name in ("filtering", "deidentification"):
            _texts(getattr(self, name), name)
        if not isinstance(self.extensions, Mapping):
            raise DataCardError("data card: 'extensions' must be a JSON object")
        _json_value(dict(self.extensions), "extensions", 0)
        if len(self.canonical_bytes()) > MAX_DATA_CARD_SIZE:
            raise DataCardError(f"data card: longer than {MAX_DATA_CARD_SIZE} bytes in canonical JSON")

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": DATA_CARD_FORMAT,
            "source": self.source,
            "legal_basis": self.legal_basis,
            "date_range": {"start": self.date_start.isoformat(), "end": self.date_end.isoformat()},
            "record_count": self.record_count,
            "filtering": list(self.filtering),
            "deidentification": list(self.deidentification),
            "contact": self.contact,
            "extensions": dict(self.extensions),
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON: what the update header signs and the log records."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_json_obj(cls, obj: object) -> DataCard:
        if not isinstance(obj, dict):
            raise DataCardError("data card: must be a JSON object")
        unknown = sorted(set(obj) - _FIELDS)
        if unknown:
            raise DataCardError(
                f"data card: unknown field(s) {unknown} (put anything else under 'extensions')"
            )
        missing = sorted(_FIELDS - set(obj))
        if missing:
            raise DataCardError(f"data card: missing field(s) {missing}")
        if obj["format"] != DATA_CARD_FORMAT:
            raise DataCardError(f"data card: unknown format {str(obj['format'])[:64]!r}")
        dates = obj["date_range"]
        if not isinstance(dates, dict) or set(dates) != {"start", "end"}:
            raise DataCardError("data card: 'date_range' must be an object with exactly 'start' and 'end'")
        return cls(
            source=obj["source"],
            legal_basis=obj["legal_basis"],
            date_start=_date(dates["start"], "date_range.start"),
            date_end=_date(dates["end"], "date_range.end"),
            record_count=obj["record_count"],
            filtering=_texts(obj["filtering"], "filtering"),
            deidentification=_texts(obj["deidentification"], "deidentification"),
            contact=obj["contact"],
            extensions=_object(obj["extensions"], "extensions"),
        )


def parse_data_card(data: bytes | str) -> DataCard:
    """A data card from JSON text (any spacing and key order; duplicate keys refused)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > 4 * MAX_DATA_CARD_SIZE:
        raise DataCardError(f"data card: {len(raw)} bytes, far over the {MAX_DATA_CARD_SIZE}-byte limit")
    try:
        obj = strictjson.loads(
            raw, what="data card", object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataCardError(f"data card: not valid JSON ({exc})") from None
    return DataCard.from_json_obj(obj)


def load_data_card(path: Path | str) -> DataCard:
    """A data card from a file; DataCardError names the file when it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataCardError(f"data card {str(path)!r} cannot be read: {exc.strerror}") from None
    return parse_data_card(raw)


def check_published_card(card: bytes, digest: bytes) -> DataCard:
    """The card an update header publishes, once it parses and hashes to the signed digest.

    `card` must be the card's canonical bytes (what the SDK sends); DataCardError if it
    does not parse or is not canonical, DataCardMismatchError if it hashes to another digest.
    """
    parsed = parse_data_card(card)
    if parsed.canonical_bytes() != card:
        raise DataCardError("data card: the published card is not in RFC 8785 canonical form")
    if hashlib.sha256(card).digest() != digest:
        raise DataCardMismatchError(
            "the published data card does not hash to the data card digest the header signs"
        )
    return parsed


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise DataCardError(
            f"data card: {name!r} must be a non-empty string of at most {_MAX_TEXT} characters"
        )
    return value


def _texts(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > _MAX_ITEMS:
        raise DataCardError(f"data card: {name!r} must be a list of at most {_MAX_ITEMS} strings")
    return tuple(_text(item, f"{name}[{n}]") for n, item in enumerate(value))


def _date(value: object, name: str) -> dt.date:
    if not isinstance(value, str) or len(value) != 10:
        raise DataCardError(f"data card: {name!r} must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise DataCardError(f"data card: {name!r} must be a date YYYY-MM-DD, got {value!r}") from None


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataCardError(f"data card: {name!r} must be a JSON object")
    return value


def _json_value(value: object, where: str, depth: int) -> None:
    # Extensions are free-form, but must be plain JSON that canonicalises (no NaN, no
    # integers beyond 2**53) and shallow enough to read.
    if depth > _MAX_DEPTH:
        raise DataCardError(f"data card: {where!r} nests deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DataCardError(f"data card: {where!r} has a non-string key")
            _json_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _json_value(item, f"{where}[{n}]", depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise DataCardError(f"data card: {where!r} is an integer outside the JSON-safe range")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DataCardError(f"data card: {where!r} is not a finite number")
    else:
        raise DataCardError(f"data card: {where!r} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
