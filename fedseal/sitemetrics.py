"""A site's training metrics, sealed inside its update (only the enclave reads them).

Where they travel: in the safetensors header's ``__metadata__`` of the update itself, under
the key :data:`METRICS_METADATA_KEY`, as the RFC 8785 canonical JSON of a flat object of
numbers. Why there: the plaintext is already one safetensors document sealed as a whole
(fedseal/envelope.py), so the metrics are inside the same AEAD ciphertext without a second
framing to get wrong, and a reader that ignores metadata still reads the tensors. The
adapter spec's size bound leaves room for them (:data:`METRICS_METADATA_ALLOWANCE`).

Bounds: at most :data:`MAX_METRICS` metrics, names ``[A-Za-z][A-Za-z0-9_.-]*`` of at most
:data:`MAX_METRIC_NAME` characters, finite numbers of magnitude at most 1e15. Anything else
is a :class:`SiteMetricsError`; the enclave refuses such an update as malformed.

The enclave aggregates them per round as the example-weighted mean (each update's weight
is the `num_examples` its signed header names) and logs the means in the round's
`round_closed.metrics["client"]`; individual sites' values are never logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from fedseal import strictjson
from fedseal.canonical import canonical_json
from fedseal.errors import FormatError

__all__ = [
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "METRICS_METADATA_ALLOWANCE",
    "METRICS_METADATA_KEY",
    "SiteMetricsError",
    "check_site_metrics",
    "decode_site_metrics",
    "encode_site_metrics",
]

METRICS_METADATA_KEY: Final = "fedseal.metrics"
MAX_METRICS: Final = 32
MAX_METRIC_NAME: Final = 64
_MAX_ABS: Final = 1e15
_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
# Bytes the metadata may add to a safetensors header: per metric the quoted name, a colon,
# the longest number (25 characters), a comma, and the backslashes that escape its quotes
# inside the metadata's JSON string; plus the metadata object's own keys and braces.
METRICS_METADATA_ALLOWANCE: Final = MAX_METRICS * (MAX_METRIC_NAME + 4 + 1 + 25 + 1 + 2) + 64


class SiteMetricsError(FormatError):
    """Site metrics that break the bounds (count, name, finite numbers)."""


def check_site_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The metrics as plain floats, or SiteMetricsError naming the first problem."""
    if not isinstance(metrics, Mapping):
        raise SiteMetricsError("site metrics must be a mapping of names to numbers")
    if len(metrics) > MAX_METRICS:
        raise SiteMetricsError(f"at most {MAX_METRICS} site metrics, got {len(metrics)}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SiteMetricsError(
                f"site metric name {str(name)[:80]!r} must match [A-Za-z][A-Za-z0-9_.-]* "
                f"(at most {MAX_METRIC_NAME} characters)"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SiteMetricsError(f"site metric {name!r} must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number) or abs(number) > _MAX_ABS:
            raise SiteMetricsError(f"site metric {name!r} must be finite and at most 1e15 in magnitude")
        out[name] = number
    return out


def encode_site_metrics(metrics: Mapping[str, object]) -> str:
    """The metadata value for `metrics` (canonical JSON text)."""
    return canonical_json(check_site_metrics(metrics)).decode("ascii")


def decode_site_metrics(text: str) -> dict[str, float]:
    """Metrics from a metadata value; SiteMetricsError if it is not a bounded object of numbers."""
    if not isinstance(text, str) or len(text) > METRICS_METADATA_ALLOWANCE:
        raise SiteMetricsError("site metrics metadata is not a string within the size bound")
    try:
        obj = strictjson.loads(text, what="site metrics metadata")
    except ValueError:
        raise SiteMetricsError("site metrics metadata is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SiteMetricsError("site metrics metadata must be a JSON object")
    return check_site_metrics(obj)
