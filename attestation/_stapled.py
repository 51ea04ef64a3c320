"""Stapled collateral beside an evidence item: the ``collateral`` field of the bundle.

Format (``fedseal-stapled-collateral/v1``), RFC 8785 canonical JSON::

    {"format": "fedseal-stapled-collateral/v1",
     "items": [{"data": "<base64>", "key": "<CollateralRequest.staple_key()>"}, ...]}

Each item is one fetcher answer, keyed as an :class:`~attestation.OfflineFetcher` keys
stapled material (the URL, or ``URL#header=<name>`` for an answer that is a response
header), in the exact bytes the vendor served. Items are sorted by key, keys are unique,
and there are at most 32 of them. A verifier serves these answers first and asks its own
fetcher (offline or online, as the policy says) only for what is not stapled, or stapled
but not valid at the verification time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ._encoding import DecodeError, b64decode_strict, b64encode, canonical_json, load_json_object
from ._errors import CollateralUnavailableError, EvidenceFormatError
from ._fetch import CollateralFetcher, CollateralRequest

__all__ = ["STAPLED_COLLATERAL_FORMAT", "StapledFirstFetcher", "decode_stapled", "encode_stapled"]

STAPLED_COLLATERAL_FORMAT = "fedseal-stapled-collateral/v1"
_MAX_ITEMS = 32
_MAX_KEY = 2048


def encode_stapled(answers: Mapping[str, bytes]) -> bytes:
    """The canonical ``collateral`` document of ``{staple key: answer bytes}``."""
    if not answers or len(answers) > _MAX_ITEMS:
        raise ValueError(f"stapled collateral holds 1 to {_MAX_ITEMS} items")
    items = [{"data": b64encode(answers[key]), "key": key} for key in sorted(answers)]
    return canonical_json({"format": STAPLED_COLLATERAL_FORMAT, "items": items})


def decode_stapled(data: bytes, *, field: str = "collateral") -> dict[str, bytes]:
    """Parse a ``collateral`` document strictly; :class:`EvidenceFormatError` names what is wrong."""
    try:
        document = load_json_object(data)
        if set(document) != {"format", "items"}:
            raise DecodeError("must have exactly the fields 'format' and 'items'")
        if document["format"] != STAPLED_COLLATERAL_FORMAT:
            raise DecodeError(f"format must be {STAPLED_COLLATERAL_FORMAT!r}")
        items = document["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= _MAX_ITEMS:
            raise DecodeError(f"items must be an array of 1 to {_MAX_ITEMS} entries")
        answers: dict[str, bytes] = {}
        for index, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"data", "key"}:
                raise DecodeError(f"items[{index}] must be an object with exactly 'data' and 'key'")
            key = item["key"]
            if not isinstance(key, str) or not key.startswith("https://") or len(key) > _MAX_KEY:
                raise DecodeError(f"items[{index}].key must be an https URL of at most {_MAX_KEY} characters")
            if key in answers:
                raise DecodeError(f"items[{index}].key repeats {key!r}")
            try:
                answers[key] = b64decode_strict(item["data"])
            except DecodeError as exc:
                raise DecodeError(f"items[{index}].data {exc}") from None
        if encode_stapled(answers) != data:  # one collateral, one encoding (sorted, canonical)
            raise DecodeError("is not in canonical form (RFC 8785, items sorted by key)")
    except DecodeError as exc:
        raise EvidenceFormatError(f"{field} {exc}", field=field) from None
    return answers


class StapledFirstFetcher:
    """Serves the stapled answers; asks ``fallback`` for what is not stapled.

    ``refetch`` names stapled answers the verifier found unusable (expired, say): for those
    ``fallback`` is asked first, and the stapled answer is served only when it has none, so
    that the verification's refusal then names what is wrong with the stapled one.
    """

    def __init__(
        self, stapled: Mapping[str, bytes], fallback: CollateralFetcher, *, refetch: Collection[str] = ()
    ) -> None:
        self._stapled = dict(stapled)
        self._fallback = fallback
        self._refetch = frozenset(refetch)

    def fetch(self, request: CollateralRequest) -> bytes:
        key = request.staple_key()
        answer = self._stapled.get(key)
        if answer is not None and key not in self._refetch:
            return answer
        try:
            return self._fallback.fetch(request)
        except CollateralUnavailableError as exc:
            if answer is not None:
                return answer
            raise CollateralUnavailableError(f"not stapled, and {exc}") from None
