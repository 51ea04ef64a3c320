"""Issue 13: the auditor re-verifies the release gate with its own rules.

One real log (the aggregator's own code paths): round 1 gated and released with two of
three approvals, round 2 gated and withheld by a refusal. Then forgeries of it, each with
every checkpoint validly re-signed by the enclave's key (tests/logfiles.py), so only the
auditor's own approval rules can catch them: each must be a named finding of
`fedseal-audit verify --json` at the right entry, with exit code 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logfiles import log_entries, resigned_log

from aggregator import start_aggregator
from auditor import audit_log
from auditor._cli import main as audit_main
from fedseal.approval import Approval, Decision, sign_approval
from fedseal.canonical import b64encode, canonical_json
from fedseal.logformat import LogEntry
from fedseal.logschema import (
    AggregateReleased,
    AggregateWithheld,
    ApprovalRecorded,
    RoundClosed,
    RoundOpened,
)
from fedseal.roundconfig import ApprovalParams
from fedseal.roundkey import RoundKeyStatement
from fedseal.signed_request import key_id

ORIGIN = "fedseal.test/approvals"
DEV = "dev-insecure-allow-simulated"
APPROVERS = [
    Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"approver %d" % i).digest()) for i in range(3)
]
OUTSIDER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"not an approver").digest())
GATE = ApprovalParams(tuple(k.public_key().public_bytes_raw() for k in APPROVERS), min_approvals=2)


@dataclasses.dataclass(frozen=True)
class GatedLog:
    path: Path
    log_key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> GatedLog:
    from attestation import load_builtin_policy

    policy = load_builtin_policy(DEV)
    path = tmp_path_factory.mktemp("approvals") / "audit.log"
    running = start_aggregator(
        log_path=path, log_origin=ORIGIN, collectors=[simulated_collector()], access=access_config()
    )
    try:
        for round_id, deciders in (
            (1, [(0, Decision.APPROVE), (2, Decision.APPROVE)]),
            (2, [(1, Decision.REFUSE)]),
        ):
            running.rounds.open_round(round_config(round_id, approval=GATE))
            for i in range(3):
                with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
                    client.submit_update(make_adapter(i), round_id=round_id, num_examples=10)
            running.rounds.wait_closed(round_id, 10.0)
            digest = _closed(path, round_id).aggregate_digest
            with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
                for who, decision in deciders:
                    client.submit_approval(
                        sign_approval(
                            APPROVERS[who],
                            log_origin=ORIGIN,
                            round_id=round_id,
                            aggregate_digest=digest,
                            decision=decision,
                        )
                    )
        log_key = running.keys.log_private_key
    finally:
        running.stop(grace=0.5)
    return GatedLog(path, log_key)


def _entries(path: Path, cls: type[Any], round_id: int) -> list[LogEntry]:
    return [e for e in log_entries(path) if isinstance(e.body, cls) and e.body.round_id == round_id]


def _closed(path: Path, round_id: int) -> RoundClosed:
    (entry,) = _entries(path, RoundClosed, round_id)
    assert isinstance(entry.body, RoundClosed)
    return entry.body


def _approval_fields(
    key: Ed25519PrivateKey,
    aggregate_digest: bytes,
    *,
    round_id: int = 1,
    decision: Decision = Decision.APPROVE,
    signature: bytes | None = None,
) -> dict[str, Any]:
    """An approval_recorded body as the enclave would log it, for any signer and signature."""
    signed = sign_approval(
        key, log_origin=ORIGIN, round_id=round_id, aggregate_digest=aggregate_digest, decision=decision
    )
    if signature is not None:
        signed = Approval(signed.log_origin, round_id, aggregate_digest, decision, signed.approver, signature)
    return ApprovalRecorded(
        round_id=round_id,
        approver=signed.approver,
        approver_key_id=key_id(signed.approver),
        decision=decision,
        aggregate_digest=aggregate_digest,
        signature=signed.signature,
        approval_digest=hashlib.sha256(signed.to_bytes()).digest(),
    ).to_fields()


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code = audit_main(["verify", str(path), "--builtin-policy", DEV, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if report["findings"] else 0)
    findings: list[dict[str, Any]] = report["findings"]
    return findings


def _found(findings: list[dict[str, Any]], kind: str, index: int, text: str) -> bool:
    return any(f["kind"] == kind and f["index"] == index and text in f["message"] for f in findings)


def test_the_honest_gated_log_verifies_and_every_decision_is_valid(
    gated: GatedLog, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestation import load_builtin_policy

    assert _verify(gated.path, capsys) == []
    report = audit_log(gated.path, load_builtin_policy(DEV))
    r1, r2 = (r.approval for r in report.rounds)
    assert r1 is not None and r1["state"] == "released"
    assert r2 is not None and r2["state"] == "withheld"
    assert [d["valid"] for d in r1["decisions"] + r2["decisions"]] == [True, True, True]


def _forge(gated: GatedLog, tmp_path: Path, entry: LogEntry, fields: dict[str, Any]) -> Path:
    return resigned_log(gated.path, tmp_path / "forged.log", ORIGIN, gated.log_key, entry.index, fields)


def test_an_approval_signed_by_an_unlisted_key(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _entries(gated.path, ApprovalRecorded, 1)
    digest = _closed(gated.path, 1).aggregate_digest
    findings = _verify(_forge(gated, tmp_path, first, _approval_fields(OUTSIDER, digest)), capsys)
    assert _found(findings, "invalid_approval", first.index, "[unknown_approver]")
    (release,) = _entries(gated.path, AggregateReleased, 1)
    assert _found(findings, "invalid_release", release.index, "1 valid approval(s)")


def test_an_approval_with_a_bad_signature(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _entries(gated.path, ApprovalRecorded, 1)
    digest = _closed(gated.path, 1).aggregate_digest
    other = sign_approval(APPROVERS[1], log_origin=ORIGIN, round_id=1, aggregate_digest=digest).signature
    fields = _approval_fields(APPROVERS[0], digest, signature=other)
    findings = _verify(_forge(gated, tmp_path, first, fields), capsys)
    assert _found(findings, "invalid_approval", first.index, "[forged_approval]")
    # ... and it does not count towards min_approvals.
    (release,) = _entries(gated.path, AggregateReleased, 1)
    assert _found(findings, "invalid_release", release.index, "1 valid approval(s)")


def test_an_approval_of_another_aggregate(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _entries(gated.path, ApprovalRecorded, 1)
    fields = _approval_fields(APPROVERS[0], hashlib.sha256(b"another aggregate").digest())
    findings = _verify(_forge(gated, tmp_path, first, fields), capsys)
    assert _found(findings, "invalid_approval", first.index, "[wrong_aggregate]")
    # ... and it does not count towards min_approvals.
    (release,) = _entries(gated.path, AggregateReleased, 1)
    assert _found(findings, "invalid_release", release.index, "1 valid approval(s)")


def test_a_second_decision_by_one_approver(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, second = _entries(gated.path, ApprovalRecorded, 1)
    digest = _closed(gated.path, 1).aggregate_digest
    findings = _verify(_forge(gated, tmp_path, second, _approval_fields(APPROVERS[0], digest)), capsys)
    assert _found(findings, "invalid_approval", second.index, "[replayed_approval]")
    (release,) = _entries(gated.path, AggregateReleased, 1)
    assert _found(findings, "invalid_release", release.index, "1 valid approval(s)")


def test_a_release_with_fewer_than_min_approvals(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The round config asks for all three approvers; the enclave released after two.
    (opened,) = _entries(gated.path, RoundOpened, 1)
    assert isinstance(opened.body, RoundOpened)
    config = dataclasses.replace(opened.body.config, approval=dataclasses.replace(GATE, min_approvals=3))
    key = opened.body.round_public_key
    assert key is not None
    # The round key re-signed over the forged config too, as only the enclave's key could.
    signed = RoundKeyStatement(ORIGIN, 1, config.digest(), key).sign(gated.log_key)
    fields = RoundOpened(
        round_id=1,
        config=config,
        config_digest=config.digest(),
        round_public_key=key,
        round_key_signature=signed.signature,
    ).to_fields()
    findings = _verify(_forge(gated, tmp_path, opened, fields), capsys)
    (release,) = _entries(gated.path, AggregateReleased, 1)
    (closed,) = _entries(gated.path, RoundClosed, 1)
    # The forged config is also not the one the enclave's signed provenance names.
    assert sorted((f["kind"], f["index"]) for f in findings) == [
        ("invalid_provenance", closed.index),
        ("invalid_release", release.index),
    ]
    (gate,) = [f for f in findings if f["kind"] == "invalid_release"]
    assert "2 valid approval(s); its config's min_approvals is 3" in gate["message"]
    (provenance,) = [f for f in findings if f["kind"] == "invalid_provenance"]
    assert "round_config_digest" in provenance["message"]


def test_a_release_whose_round_config_lacks_min_approvals(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (opened,) = _entries(gated.path, RoundOpened, 1)
    assert isinstance(opened.body, RoundOpened)
    config = opened.body.config.to_json_obj()
    del config["approval"]["min_approvals"]
    # Its digest made over exactly this config: only the missing field is wrong.
    digest = b64encode(hashlib.sha256(canonical_json(config)).digest())
    fields = {"round_id": 1, "config": config, "config_digest": digest}
    findings = _verify(_forge(gated, tmp_path, opened, fields), capsys)
    malformed = [f for f in findings if f["kind"] == "malformed_entry"]
    assert [(f["index"], f["field"]) for f in malformed] == [(opened.index, "config")]
    assert "min_approvals" in malformed[0]["message"]
    # Nothing of that round can be checked, so its release is not justified by anything.
    (release,) = _entries(gated.path, AggregateReleased, 1)
    assert _found(findings, "invalid_release", release.index, "has no approval gate")


def test_a_withholding_without_a_valid_refusal(
    gated: GatedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (refusal,) = _entries(gated.path, ApprovalRecorded, 2)
    digest = _closed(gated.path, 2).aggregate_digest
    fields = _approval_fields(APPROVERS[1], digest, round_id=2, decision=Decision.REFUSE, signature=bytes(64))
    findings = _verify(_forge(gated, tmp_path, refusal, fields), capsys)
    (withheld,) = _entries(gated.path, AggregateWithheld, 2)
    assert _found(findings, "invalid_approval", refusal.index, "[forged_approval]")
    assert _found(findings, "invalid_release", withheld.index, "without a valid refusal")
