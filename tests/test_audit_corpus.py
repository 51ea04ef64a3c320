"""Issue 13: the auditor fails closed on entries it cannot decode.

A generated corpus over one real log holding one entry of every kind (written by the
aggregator's own log writer, aggregator/_log.py): for each kind, each required field
dropped, each field given a value of the wrong JSON type, `"v": true`, and each envelope
field (`v`, `index`, `time`, `kind`) dropped. Every checkpoint is re-signed with the
enclave's key over the changed tree, so the only thing wrong is the entry itself. Each
copy must be a `malformed_entry` finding of `fedseal-audit verify --json` naming the entry
index and the field, with exit code 1: never a pass, never a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from log_samples import sample_bodies
from logfiles import log_entries, resigned_log

from aggregator._log import AuditLog
from auditor._cli import main as audit_main
from fedseal.canonical import canonical_json
from fedseal.logschema import BODY_TYPES, EnclaveStarted, EntryKind

ORIGIN = "fedseal.test/corpus"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"corpus log key").digest())
DEV = "dev-insecure-allow-simulated"
BODIES = sample_bodies()
ENVELOPE = ("v", "index", "time", "kind")


def _required(kind: EntryKind) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(BODY_TYPES[kind])  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _wrong_type(value: object) -> object:
    """A JSON value of another type than `value`'s (a boolean is never a number, and back)."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return "1"
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return {"item": 1}
    return ["item"]


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "audit.log"
    log = AuditLog.open(path, ORIGIN, LOG_KEY)
    try:
        started = BODIES[EntryKind.ENCLAVE_STARTED]
        assert isinstance(started, EnclaveStarted)
        log.start_enclave(started)
        for kind, body in BODIES.items():
            if kind is not EntryKind.ENCLAVE_STARTED:
                log.append(body)
    finally:
        log.close()
    return path


def _index_of(base: Path, kind: EntryKind) -> tuple[int, dict[str, Any]]:
    (entry,) = [e for e in log_entries(base) if e.kind is kind]
    return entry.index, entry.to_json_obj()


def _cases() -> list[tuple[EntryKind, str, str]]:
    cases = []
    for kind, body in BODIES.items():
        for name in _required(kind):
            cases.append((kind, "drop", name))
        for name in body.to_fields():
            cases.append((kind, "wrong type", name))
        cases.append((kind, "v true", "v"))
        for name in ENVELOPE:
            cases.append((kind, "drop", name))
    return cases


def _verify_json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = audit_main(["verify", str(path), "--builtin-policy", DEV, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_base_log_has_every_kind_and_decodes(base_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {e.kind for e in log_entries(base_log)} == set(EntryKind)
    _, report = _verify_json(base_log, capsys)
    # The sample bodies tell no consistent story (other findings), but every entry decodes.
    assert report["entries"] == len(EntryKind)
    assert not [f for f in report["findings"] if f["kind"] == "malformed_entry"]


@pytest.mark.parametrize(
    ("kind", "mutation", "field"),
    _cases(),
    ids=[f"{k.value}-{m.replace(' ', '_')}-{f}" for k, m, f in _cases()],
)
def test_an_entry_that_does_not_decode_is_a_named_finding(
    base_log: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: EntryKind,
    mutation: str,
    field: str,
) -> None:
    index, obj = _index_of(base_log, kind)
    if mutation == "drop":
        del obj[field]
    elif mutation == "v true":
        obj["v"] = True
    else:
        obj[field] = _wrong_type(obj[field])
    forged = resigned_log(base_log, tmp_path / "forged.log", ORIGIN, LOG_KEY, index, raw=canonical_json(obj))
    code, report = _verify_json(forged, capsys)
    assert code == 1 and report["verdict"] == "FAILED"
    malformed = [f for f in report["findings"] if f["kind"] == "malformed_entry"]
    assert [(f["index"], f["field"]) for f in malformed] == [(index, field)], report["findings"]
    assert f"entry {index}" in malformed[0]["message"] and repr(field) in malformed[0]["message"]


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"v":1}', b"[]", b'{"index":"3","kind":"round_opened","time":"x","v":1}', b'{"v":1,'],
)
def test_an_entry_line_that_is_not_an_entry_object_is_a_named_finding(
    base_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    index, _ = _index_of(base_log, EntryKind.ROUND_OPENED)
    forged = resigned_log(base_log, tmp_path / "forged.log", ORIGIN, LOG_KEY, index, raw=raw)
    code, report = _verify_json(forged, capsys)
    assert code == 1
    malformed = [f for f in report["findings"] if f["kind"] == "malformed_entry"]
    # The index cannot be read from such a line: its place in the tree names it.
    assert [f["index"] for f in malformed] == [index], report["findings"]
    # It keeps its place: no entry after it is reported removed, reordered or modified.
    assert not {f["kind"] for f in report["findings"]} & {
        "removed_entry",
        "reordered_entries",
        "duplicated_entry",
        "modified_entry",
    }
