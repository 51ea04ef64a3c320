"""`fedseal-audit check-receipt`: a stored receipt still holds against the log file and
against the running aggregator, across a key handover; a rollback or a rewritten history
makes it fail with the right finding."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, submit_as

from aggregator import RunningAggregator, start_aggregator
from attestation import InsecureSimulatedTeeCollector, Policy
from auditor import (
    FindingKind,
    ReceiptCheckError,
    check_receipt_at_endpoint,
    check_receipt_in_log,
)
from auditor._cli import main as audit_main
from client_sdk import ReceiptStore
from fedseal.receipt import verify_receipt

ORIGIN = "fedseal.test/receipts"
DEV = "dev-insecure-allow-simulated"


def _aggregator(path: Path) -> RunningAggregator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = InsecureSimulatedTeeCollector("receipt tests")
    return start_aggregator(log_path=path, log_origin=ORIGIN, collectors=[collector], access=access_config())


def _submit(running: RunningAggregator, policy: Policy, store: Path, round_id: int, n: int) -> None:
    running.rounds.open_round(round_config(round_id, min_clients=1, max_clients=n))
    for i in range(n):  # one store for every site: as an auditor collecting their receipts
        submit_as(
            running.endpoint,
            policy,
            f"site-{i}",
            make_adapter(i),
            receipts=store,
            round_id=round_id,
            num_examples=1,
        )


def test_receipts_hold_in_the_log_and_at_the_endpoint_after_a_restart(
    tmp_path: Path, dev_policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    log, store = tmp_path / "audit.log", tmp_path / "receipts"
    first = _aggregator(log)
    _submit(first, dev_policy, store, 1, 2)
    first.stop(grace=0.5)
    second = _aggregator(log)
    try:
        _submit(second, dev_policy, store, 2, 1)
        paths = list(ReceiptStore(store).paths())
        assert len(paths) == 3
        for path in paths:
            text = path.read_text()
            in_log = check_receipt_in_log(text, log, dev_policy)
            # The first enclave's receipts are signed by a key that handed over: the endpoint
            # check fetches that key's enclave_started entry (with its inclusion proof).
            at_endpoint = check_receipt_at_endpoint(text, second.endpoint, dev_policy)
            assert in_log.entry == at_endpoint.entry
            assert at_endpoint.current_size == second.log.size
        assert audit_main(["check-receipt", str(paths[0]), "--log", str(log), "--builtin-policy", DEV]) == 0
        assert "RECEIPT HOLDS" in capsys.readouterr().out
        args = ["check-receipt", str(paths[0]), "--endpoint", second.endpoint, "--builtin-policy", DEV]
        assert audit_main([*args, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["verdict"] == "holds" and out["entry"]["kind"] == "update_accepted"
        # The production policy refuses the simulated enclave: the receipt is not vouched for.
        assert audit_main(["check-receipt", str(paths[0]), "--log", str(log)]) == 1
        assert "attestation_failed" in capsys.readouterr().out
    finally:
        second.stop(grace=0.5)
    assert audit_main(["check-receipt", str(paths[0]), "--endpoint", second.endpoint, "--timeout", "2"]) == 3
    assert "failed" in capsys.readouterr().err


def test_a_rolled_back_log_fails_every_later_receipt(tmp_path: Path, dev_policy: Policy) -> None:
    log, store = tmp_path / "audit.log", tmp_path / "receipts"
    running = _aggregator(log)
    _submit(running, dev_policy, store, 1, 1)
    committed = log.read_bytes()
    _submit(running, dev_policy, store, 2, 4)
    first_key = running.keys.bound.log_public_key
    running.stop(grace=0.5)
    late = [p.read_text() for p in ReceiptStore(store).paths() if "round-2-" in p.name]
    assert len(late) == 4

    log.write_bytes(committed)  # the operator cuts the log back and restarts
    running = _aggregator(log)
    try:
        # The restarted enclave's own start entries already fill some of the cut positions:
        # receipts of those sizes show another history there (a fork), later ones a rollback.
        seen = set()
        for text in late:
            size = verify_receipt(text, first_key).checkpoint.size
            with pytest.raises(ReceiptCheckError) as info:
                check_receipt_in_log(text, log, dev_policy)
            expected = FindingKind.ROLLBACK if size > running.log.size else FindingKind.FORK
            assert info.value.finding is expected
            seen.add(expected)
            with pytest.raises(ReceiptCheckError) as at_endpoint:
                check_receipt_at_endpoint(text, running.endpoint, dev_policy)
            assert at_endpoint.value.finding in (FindingKind.ROLLBACK, FindingKind.FORK)
        assert FindingKind.ROLLBACK in seen
        # New entries after the rollback: the same sizes now hold another history (a fork).
        _submit(running, dev_policy, store, 3, 3)
        for text in late:
            with pytest.raises(ReceiptCheckError) as info:
                check_receipt_in_log(text, log, dev_policy)
            assert info.value.finding is FindingKind.FORK
            assert len(info.value.evidence) >= 2
            with pytest.raises(ReceiptCheckError) as at_endpoint:
                check_receipt_at_endpoint(text, running.endpoint, dev_policy)
            assert at_endpoint.value.finding is FindingKind.FORK
    finally:
        running.stop(grace=0.5)


def test_a_receipt_of_another_log_does_not_hold(tmp_path: Path, dev_policy: Policy) -> None:
    here, there = tmp_path / "here.log", tmp_path / "there.log"
    for path in (here, there):
        running = _aggregator(path)
        _submit(running, dev_policy, tmp_path / path.stem, 1, 1)
        running.stop(grace=0.5)
    (foreign,) = ReceiptStore(tmp_path / "there").paths()
    with pytest.raises(ReceiptCheckError):
        check_receipt_in_log(foreign.read_text(), here, dev_policy)
    bad = tmp_path / "bad.tlog-proof"
    bad.write_text("not a receipt")
    assert audit_main(["check-receipt", str(bad), "--log", str(here), "--builtin-policy", DEV]) == 1
