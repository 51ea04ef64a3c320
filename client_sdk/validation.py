"""Local data validation a site runs over its dataset before training (docs/data-card.md).

`validate_tabular` (a list of dicts, or a pandas DataFrame) and `validate_text` (a list of
strings) return a `fedseal.validation.ValidationSummary`: the checks run, whether each
passed, and counts. Pass it to `FedSealClient.submit_update(..., validation=summary)`: it
travels signed in the update header and is logged with the update, and a round with
`require_validation` refuses an update whose summary failed.

No record ever enters a summary: check and count names come from the fixed lists below,
never from the data, and every value is an integer count (the summary's format refuses
anything else). Error messages of the schema validator, which quote record values, are
counted and dropped.

Schema checks use `jsonschema` (the reference implementation of JSON Schema, install the
`validation` extra): the site states its record schema in a portable standard its data
stewards can read and version, and one record's errors never stop the count. Heavier
frameworks (pandera, Great Expectations) would pull a DataFrame stack into every site for
checks that fit in a page; duplicates, missing values, lengths and outliers are counted
here directly (outliers by the robust modified z-score of Iglewicz and Hoaglin: values
more than `outlier_z` median absolute deviations, scaled by 0.6745, from the median).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from client_sdk._errors import ClientError
from fedseal.validation import CheckResult, DataKind, ValidationSummary

__all__ = ["validate_tabular", "validate_text"]

_MODIFIED_Z = 0.6745


def validate_tabular(
    records: Sequence[Mapping[str, Any]] | Any,
    *,
    schema: Mapping[str, Any] | None = None,
    min_records: int = 1,
    max_duplicate_fraction: float = 0.0,
    max_missing_fraction: float = 0.0,
    max_outlier_fraction: float = 0.01,
    outlier_z: float = 3.5,
) -> ValidationSummary:
    """Validate tabular records: count, JSON Schema (per record, when `schema` is given),
    exact duplicates, missing values (None, NaN or an absent column), numeric outliers.

    `records` is a sequence of mappings, or a pandas DataFrame (anything with
    ``to_dict(orient="records")``). Each `max_*_fraction` is the share of records (of
    values, for missing ones) a check tolerates before it fails.
    """
    rows = _rows(records)
    checks = [_count_check(len(rows), min_records)]
    if schema is not None:
        checks.append(_schema_check(rows, schema))
    checks.append(_duplicates_check([_row_key(row) for row in rows], max_duplicate_fraction))
    columns = sorted({key for row in rows for key in row})
    missing = sum(1 for row in rows for column in columns if _is_missing(row.get(column)))
    cells = len(rows) * len(columns)
    checks.append(
        CheckResult(
            "missing",
            missing <= max_missing_fraction * cells,
            {"missing_values": missing, "values": cells},
        )
    )
    outliers = 0
    numeric = 0
    for column in columns:
        values = [
            float(v)
            for row in rows
            if isinstance(v := row.get(column), int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if len(values) >= 3:
            numeric += 1
            outliers += _outliers(values, outlier_z)
    checks.append(
        CheckResult(
            "outliers",
            outliers <= max_outlier_fraction * max(1, len(rows)),
            {"outliers": outliers, "numeric_columns": numeric},
        )
    )
    return ValidationSummary(DataKind.TABULAR, len(rows), tuple(checks))


def validate_text(
    texts: Sequence[str],
    *,
    min_records: int = 1,
    min_length: int = 1,
    max_length: int | None = None,
    max_duplicate_fraction: float = 0.0,
    max_outlier_fraction: float = 0.01,
    outlier_z: float = 3.5,
) -> ValidationSummary:
    """Validate text records: count, type (every record a string), empty records, exact
    duplicates, lengths in characters (within `min_length`..`max_length`), length outliers."""
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise ClientError("validate_text takes a sequence of strings (one per record)")
    strings = [t for t in texts if isinstance(t, str)]
    checks = [
        _count_check(len(texts), min_records),
        CheckResult("types", len(strings) == len(texts), {"not_strings": len(texts) - len(strings)}),
    ]
    empty = sum(1 for t in strings if not t.strip())
    checks.append(CheckResult("empty", empty == 0, {"empty_records": empty}))
    checks.append(
        _duplicates_check(
            [hashlib.sha256(t.encode("utf-8")).digest() for t in strings], max_duplicate_fraction
        )
    )
    lengths = sorted(len(t) for t in strings)
    short = sum(1 for n in lengths if n < min_length)
    long = sum(1 for n in lengths if max_length is not None and n > max_length)
    counts = {"too_short": short, "too_long": long}
    if lengths:
        counts |= {
            "min_length": lengths[0],
            "median_length": int(statistics.median_low(lengths)),
            "max_length": lengths[-1],
        }
    checks.append(CheckResult("length", short == 0 and long == 0, counts))
    outliers = _outliers([float(n) for n in lengths], outlier_z) if len(lengths) >= 3 else 0
    checks.append(
        CheckResult(
            "length_outliers", outliers <= max_outlier_fraction * max(1, len(strings)), {"outliers": outliers}
        )
    )
    return ValidationSummary(DataKind.TEXT, len(texts), tuple(checks))


def _rows(records: Any) -> list[Mapping[str, Any]]:
    if hasattr(records, "to_dict") and not isinstance(records, Mapping):
        records = records.to_dict(orient="records")  # a pandas DataFrame
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise ClientError("validate_tabular takes a sequence of records (mappings) or a pandas DataFrame")
    rows = list(records)
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping) or not all(isinstance(k, str) for k in row):
            raise ClientError(f"record {n} is not a mapping of column names to values")
    return rows


def _count_check(records: int, min_records: int) -> CheckResult:
    return CheckResult("records", records >= min_records, {"records": records, "min_records": min_records})


def _schema_check(rows: list[Mapping[str, Any]], schema: Mapping[str, Any]) -> CheckResult:
    try:
        import jsonschema
    except ImportError:
        raise ClientError("schema checks need jsonschema: install fedseal[validation]") from None
    schema = dict(schema)
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        # The schema is the site's own document, not data: its message may be shown.
        raise ClientError(f"the record schema is not a valid JSON Schema: {exc.message}") from None
    validator = validator_class(schema)
    invalid = errors = 0
    for row in rows:
        found = sum(1 for _ in validator.iter_errors(_plain(row)))  # messages quote values: counted only
        errors += found
        invalid += found > 0
    return CheckResult("schema", invalid == 0, {"invalid_records": invalid, "errors": errors})


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    # NaN (pandas' missing value) is no JSON value: a schema sees it as null.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _row_key(row: Mapping[str, Any]) -> bytes:
    text = json.dumps(_plain(row), sort_keys=True, default=repr, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _duplicates_check(keys: list[bytes], max_fraction: float) -> CheckResult:
    duplicates = len(keys) - len(set(keys))
    return CheckResult("duplicates", duplicates <= max_fraction * len(keys), {"duplicates": duplicates})


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _outliers(values: list[float], z: float) -> int:
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    if mad == 0:
        return 0  # at least half the values equal the median: the score is undefined
    return sum(1 for v in values if _MODIFIED_Z * abs(v - median) / mad > z)
