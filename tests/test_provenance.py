"""The enclave signs each aggregate's provenance (in-toto in DSSE) with its attested log key.

The envelope in `round_closed` verifies under the log key its `enclave_started` attests, with
FedSeal's verifier and with securesystemslib's DSSE (an independent implementation); one
changed byte anywhere in it fails; a statement signed by the real key that says other than
the log is an `invalid_provenance` finding of the auditor.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from conftest import make_adapter, round_config, site_client
from logfiles import log_entries, resigned_log
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # exported without __all__

from aggregator import RunningAggregator
from attestation import Policy
from auditor import audit_log
from fedseal.canonical import canonical_json
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind
from fedseal.provenance import (
    PREDICATE_TYPE,
    DsseEnvelope,
    ProvenanceSignatureError,
    sign_statement,
    verify_statement,
)


def _one_round(running: RunningAggregator, policy: Policy) -> None:
    running.rounds.open_round(round_config(1))
    for i in range(3):
        with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=1, num_examples=10 * (i + 1))
    running.rounds.wait_closed(1, 10.0)


def test_round_closed_carries_a_statement_signed_by_the_attested_log_key(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    _one_round(live_aggregator, dev_policy)
    entries = log_entries(live_aggregator.log.path)
    (started,) = [e for e in entries if e.kind is EntryKind.ENCLAVE_STARTED]
    (closed,) = [e for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    log_key = base64.b64decode(started.fields["log_public_key"])
    envelope = DsseEnvelope.from_json_obj(closed.fields["provenance"])
    statement = verify_statement(envelope, log_key)
    assert statement["predicateType"] == PREDICATE_TYPE
    digest = base64.b64decode(closed.fields["aggregate_digest"])
    assert statement["subject"] == [
        {"name": "round-1-aggregate.safetensors", "digest": {"sha256": digest.hex()}}
    ]
    predicate = statement["predicate"]
    assert predicate["participants"] == ["site-0", "site-1", "site-2"]
    assert predicate["total_examples"] == 60
    assert [u["num_examples"] for u in predicate["updates"]] == [10, 20, 30]

    # An independent DSSE implementation verifies it under the same key.
    sslib_key = SSlibKey(envelope.keyid, "ed25519", "ed25519", {"public": log_key.hex()})
    verified = Envelope.from_dict(dict(closed.fields["provenance"])).verify([sslib_key], 1)
    assert envelope.keyid in verified

    assert audit_log(live_aggregator.log.path, dev_policy).findings == ()


def test_a_changed_byte_anywhere_in_the_envelope_fails(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    _one_round(live_aggregator, dev_policy)
    entries = log_entries(live_aggregator.log.path)
    log_key = base64.b64decode(
        next(e for e in entries if e.kind is EntryKind.ENCLAVE_STARTED).fields["log_public_key"]
    )
    good = canonical_json(next(e for e in entries if e.kind is EntryKind.ROUND_CLOSED).fields["provenance"])
    verify_statement(DsseEnvelope.from_json_obj(json.loads(good)), log_key)
    for position in range(0, len(good), 7):
        changed = bytearray(good)
        changed[position] ^= 0x01
        with pytest.raises((FedSealError, ValueError)):
            verify_statement(DsseEnvelope.from_json_obj(json.loads(bytes(changed))), log_key)
    other = hashlib.sha256(b"another key").digest()
    with pytest.raises(ProvenanceSignatureError):
        verify_statement(DsseEnvelope.from_json_obj(json.loads(good)), other)


def test_a_statement_the_log_does_not_support_is_an_auditor_finding(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    _one_round(live_aggregator, dev_policy)
    path = live_aggregator.log.path
    closed = next(e for e in log_entries(path) if e.kind is EntryKind.ROUND_CLOSED)
    envelope = DsseEnvelope.from_json_obj(closed.fields["provenance"])
    statement = verify_statement(envelope, live_aggregator.keys.bound.log_public_key)
    statement["predicate"]["participants"] = ["site-0", "site-1"]
    forged = sign_statement(statement, live_aggregator.keys.log_private_key).to_json_obj()
    fields = {k: v for k, v in closed.fields.items()}
    fields["provenance"] = forged
    out = resigned_log(
        path,
        tmp_path / "forged.log",
        "fedseal.test/log",
        live_aggregator.keys.log_private_key,
        closed.index,
        fields,
    )
    report = audit_log(out, dev_policy)
    assert [(f.kind.value, f.index) for f in report.findings] == [("invalid_provenance", closed.index)]
    assert "participants" in report.findings[0].message
