"""The typed log schema (fedseal/logschema.py): round trips, and a named refusal for every
missing field, wrong type, out-of-range value and unknown field of every entry kind."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from log_samples import sample_bodies

from fedseal.canonical import b64encode, canonical_json
from fedseal.logformat import LogEntry, decode_record, encode_entry_record
from fedseal.logschema import BODY_TYPES, EntryFieldError, EntryKind, decode_body

SAMPLES = sample_bodies()
TIME = "2026-12-06T10:00:00.000Z"


def _optional(kind: EntryKind) -> set[str]:
    return {f.name for f in dataclasses.fields(BODY_TYPES[kind]) if f.default is None}  # type: ignore[arg-type]


def _wrong_types(value: object) -> list[object]:
    """JSON values of another type than `value`'s (a bool is never an integer)."""
    candidates: list[object] = [True, 7, "text", [], {}, None, 1.5]
    out = []
    for c in candidates:
        same = type(c) is type(value) or (
            isinstance(value, int | float)
            and type(c) in (int, float)
            and not isinstance(value, bool)
            and not isinstance(c, bool)
        )
        if not same:
            out.append(c)
    return out


def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(EntryKind)


@pytest.mark.parametrize("kind", list(EntryKind), ids=lambda k: k.value)
def test_round_trip(kind: EntryKind) -> None:
    body = SAMPLES[kind]
    assert decode_body(kind, body.to_fields()) == body
    entry = LogEntry(5, TIME, body)
    record = decode_record(encode_entry_record(entry)[:-1], line_number=1)
    assert record.entry == entry
    assert record.leaf_data == entry.leaf_data()


def _corpus() -> list[tuple[str, EntryKind, dict[str, Any], str]]:
    cases = []
    for kind, body in SAMPLES.items():
        fields = body.to_fields()
        for name, value in fields.items():
            if name not in _optional(kind):
                dropped = {k: v for k, v in fields.items() if k != name}
                cases.append((f"{kind.value}-drop-{name}", kind, dropped, name))
            for n, wrong in enumerate(_wrong_types(value)):
                cases.append((f"{kind.value}-type{n}-{name}", kind, {**fields, name: wrong}, name))
        cases.append((f"{kind.value}-unknown", kind, {**fields, "surprise": 1}, "surprise"))
    return cases


CORPUS = _corpus()


@pytest.mark.parametrize(("kind", "fields", "field"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_malformed_fields_are_refused_by_name(kind: EntryKind, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(EntryFieldError) as info:
        decode_body(kind, fields)
    assert info.value.field == field
    assert info.value.kind == kind.value
    assert repr(field) in str(info.value)


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("version true", {"v": True}, "v"),
        ("version 2", {"v": 2}, "v"),
        ("no version", {"v": None}, "v"),
        ("index bool", {"index": True}, "index"),
        ("negative index", {"index": -1}, "index"),
        ("time not utc", {"time": "2026-12-06T10:00:00.000+01:00"}, "time"),
        ("time a number", {"time": 1}, "time"),
        ("unknown kind", {"kind": "round_reopened"}, "kind"),
    ],
)
def test_envelope_fields_are_refused_by_name(name: str, change: dict[str, object], field: str) -> None:
    obj = LogEntry(5, TIME, SAMPLES[EntryKind.ROUND_FAILED]).to_json_obj()
    obj.update(change)
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(EntryFieldError) as info:
        decode_record(b'{"entry":' + canonical_json(obj) + b"}", line_number=9)
    assert info.value.field == field
    assert "line 9" in str(info.value)
    if field not in ("index",):
        assert info.value.index == 5


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        (EntryKind.UPDATE_ACCEPTED, "num_examples", 0),
        (EntryKind.UPDATE_ACCEPTED, "ciphertext_digest", b64encode(bytes(31))),
        (EntryKind.UPDATE_ACCEPTED, "signature", "not base64!"),
        (EntryKind.UPDATE_ACCEPTED, "round_id", 2**53),
        (EntryKind.UPDATE_REJECTED, "reason", "because"),
        (EntryKind.ROUND_FAILED, "cause", "gremlins"),
        (EntryKind.APPROVAL_RECORDED, "decision", "maybe"),
        (
            EntryKind.ROUND_CLOSED,
            "lora_residuals",
            [{"module": "m", "rank": 8, "stacked_rank": 8, "residual": 1.5}],
        ),
        (EntryKind.ROUND_CLOSED, "participants", ["a", 3]),
    ],
)
def test_out_of_range_values_are_refused(kind: EntryKind, field: str, value: object) -> None:
    fields = {**SAMPLES[kind].to_fields(), field: value}
    with pytest.raises(EntryFieldError) as info:
        decode_body(kind, fields)
    assert info.value.field == field


def test_a_logged_round_config_must_record_every_value() -> None:
    """A round config without min_approvals would otherwise read as a default."""
    fields = SAMPLES[EntryKind.ROUND_OPENED].to_fields()
    config = dict(fields["config"])
    config["approval"] = {k: v for k, v in config["approval"].items() if k != "min_approvals"}
    with pytest.raises(EntryFieldError, match="min_approvals") as info:
        decode_body(EntryKind.ROUND_OPENED, {**fields, "config": config})
    assert info.value.field == "config"
    no_chunk = {k: v for k, v in fields["config"].items() if k != "max_chunk_size"}
    with pytest.raises(EntryFieldError, match="max_chunk_size"):
        decode_body(EntryKind.ROUND_OPENED, {**fields, "config": no_chunk})


def test_no_package_reads_or_builds_entry_dicts() -> None:
    """Only fedseal/logschema.py knows entry fields: the writer, scanner, auditor and SDK
    read typed bodies (LogEntry.fields and LogEntry.of exist for tests and tools)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("fedseal", "aggregator", "auditor", "client_sdk", "attestation"):
        for path in (root / package).rglob("*.py"):
            if "_proto" in path.parts or path.name in ("logschema.py", "logformat.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in ("fields", "of"):
                    base = node.value
                    if isinstance(base, ast.Name) and base.id in ("dataclasses",):
                        continue
                    if node.attr == "of" and not (isinstance(base, ast.Name) and base.id == "LogEntry"):
                        continue
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == [], offenders


def test_a_round_key_comes_with_its_signature() -> None:
    """round_opened's round key and the log key's signature over it: both, or neither (a
    log from before per-round keys, which the auditor reports as invalid_round_key)."""
    fields = SAMPLES[EntryKind.ROUND_OPENED].to_fields()
    assert {"round_public_key", "round_key_signature"} <= set(fields)
    for name in ("round_public_key", "round_key_signature"):
        with pytest.raises(EntryFieldError, match="or neither"):
            decode_body(EntryKind.ROUND_OPENED, {k: v for k, v in fields.items() if k != name})
    legacy = {k: v for k, v in fields.items() if k not in ("round_public_key", "round_key_signature")}
    body = decode_body(EntryKind.ROUND_OPENED, legacy)
    assert body.to_fields() == legacy
    with pytest.raises(EntryFieldError) as info:
        decode_body(EntryKind.ROUND_OPENED, {**fields, "round_public_key": b64encode(bytes(31))})
    assert info.value.field == "round_public_key"
