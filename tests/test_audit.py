"""fedseal-audit: an honest log verifies; every kind of tampering is caught and located.

The honest log's entries: 0 enclave_started, 1 principals_recorded, 2 enrolment_recorded,
3 round_opened, 4-6 the updates of site-0, site-1, site-2, 7 round_closed, then round 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, site_client

from aggregator import RunningAggregator
from attestation import Policy
from attestation._cli import main as attest_main
from auditor import FindingKind, LogVerificationError, audit_log, verify_log
from auditor._cli import main as audit_main
from client_sdk import UpdateRejectedError

DEV = "dev-insecure-allow-simulated"


@pytest.fixture(scope="module")
def honest_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with two rounds (one closed, one failed), a rejection and ten-odd entries."""
    import warnings

    from aggregator import start_aggregator
    from attestation import InsecureSimulatedTeeCollector, load_builtin_policy

    tmp = tmp_path_factory.mktemp("audit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = InsecureSimulatedTeeCollector("audit tests")
    running: RunningAggregator = start_aggregator(
        log_path=tmp / "audit.log",
        log_origin="fedseal.test/audit",
        collectors=[collector],
        access=access_config(),
    )
    policy = load_builtin_policy(DEV)
    try:
        running.rounds.open_round(round_config(1))
        for i in range(3):
            with site_client(running.endpoint, policy, f"site-{i}") as site:
                site.submit_update(make_adapter(i), round_id=1, num_examples=i + 1)
        with site_client(running.endpoint, policy, "site-0") as client:
            client.fetch_aggregate(1, wait_seconds=10)
            running.rounds.open_round(round_config(2, min_clients=2, deadline_seconds=0.8))
            sub = client.seal_update(make_adapter(5), round_id=2, num_examples=1)
            with pytest.raises(UpdateRejectedError):
                client._connection.submit(sub.header, sub.chunks[:-1], timeout=10)
            client.send(sub)
            with pytest.raises(Exception, match="failed"):
                client.fetch_aggregate(2, wait_seconds=10)
    finally:
        running.stop()
    return tmp / "audit.log"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _entry_line_numbers(lines: list[bytes]) -> list[int]:
    """0-based line numbers of entry records, in file order."""
    return [i for i, line in enumerate(lines) if line.startswith(b'{"entry":')]


def _write(tmp_path: Path, lines: list[bytes]) -> Path:
    out = tmp_path / "tampered.log"
    out.write_bytes(b"".join(lines))
    return out


def test_honest_log_verifies_with_per_round_summary(honest_log: Path, dev_policy: Policy) -> None:
    verified = verify_log(honest_log, dev_policy)
    report = verified.report
    assert report.findings == ()
    assert report.entries == len(_entry_line_numbers(_lines(honest_log)))
    # Group commit: an entry and the round's closing entry may share one checkpoint.
    assert 1 <= report.checkpoints_verified <= report.entries
    assert report.insecure_simulated
    r1, r2 = report.rounds
    assert (r1.state, [a["client_id"] for a in r1.accepted]) == ("closed", ["site-0", "site-1", "site-2"])
    assert r1.total_examples == 6 and r1.aggregate_digest
    assert r2.state == "failed" and "min_clients" in r2.failure_reason
    assert [x["reason"] for x in r2.rejected] == ["truncated"]


def test_default_policy_refuses_a_log_from_a_simulated_enclave(
    honest_log: Path, default_policy: Policy
) -> None:
    report = audit_log(honest_log, default_policy)
    assert FindingKind.ATTESTATION_FAILED in {f.kind for f in report.findings}


def test_modified_entry_is_named(honest_log: Path, dev_policy: Policy, tmp_path: Path) -> None:
    lines = _lines(honest_log)
    target = _entry_line_numbers(lines)[5]  # site-1's update_accepted entry
    assert b"site-1" in lines[target]
    lines[target] = lines[target].replace(b"site-1", b"site-9")  # still valid, canonical JSON
    with pytest.raises(LogVerificationError) as info:
        verify_log(_write(tmp_path, lines), dev_policy)
    findings = info.value.report.findings
    modified = [f for f in findings if f.kind is FindingKind.MODIFIED_ENTRY]
    assert modified and modified[0].index == 5 and modified[0].line == target + 1
    # Its site signature no longer holds either (site-1 signed it, not site-9): listed after.
    assert (FindingKind.BAD_UPDATE_SIGNATURE, 5) in [(f.kind, f.index) for f in findings[1:]]


@pytest.mark.parametrize("offset", [10, 40, -30])
def test_flipped_byte_anywhere_in_an_entry_is_caught(
    honest_log: Path, dev_policy: Policy, tmp_path: Path, offset: int
) -> None:
    lines = _lines(honest_log)
    target = _entry_line_numbers(lines)[5]
    flipped = bytearray(lines[target])
    flipped[offset] ^= 0x01
    lines[target] = bytes(flipped)
    report = audit_log(_write(tmp_path, lines), dev_policy)
    assert report.findings
    first = report.findings[0]
    assert first.kind in (FindingKind.MODIFIED_ENTRY, FindingKind.MALFORMED_ENTRY)
    assert first.index == 5 and first.line == target + 1
    # Whether or not the bytes still decode, the checkpoints show they are not the ones signed.
    modified = [f for f in report.findings if f.kind is FindingKind.MODIFIED_ENTRY]
    assert modified and modified[0].index is not None
    assert modified[0].index <= 5 <= (modified[0].last_index or modified[0].index)


def test_flipped_byte_in_a_checkpoint_signature_is_caught(
    honest_log: Path, dev_policy: Policy, tmp_path: Path
) -> None:
    lines = _lines(honest_log)
    target = _entry_line_numbers(lines)[4] + 1
    record = json.loads(lines[target])
    note = record["checkpoint"]
    sig_at = note.rindex("\u2014 ") + 30
    tampered = note[:sig_at] + ("A" if note[sig_at] != "A" else "B") + note[sig_at + 1 :]
    lines[target] = (
        json.dumps({"checkpoint": tampered}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )
    report = audit_log(_write(tmp_path, lines), dev_policy)
    kinds = [(f.kind, f.line) for f in report.findings]
    assert (FindingKind.BAD_CHECKPOINT_SIGNATURE, target + 1) in kinds


def test_removed_entry_is_named(honest_log: Path, dev_policy: Policy, tmp_path: Path) -> None:
    lines = _lines(honest_log)
    target = _entry_line_numbers(lines)[7]
    del lines[target]
    report = audit_log(_write(tmp_path, lines), dev_policy)
    kinds = [(f.kind, f.index) for f in report.findings]
    # The entries' own indices skip 7, and the checkpoint written after it runs past the
    # entries: one finding names the gap.
    assert kinds[0] == (FindingKind.REMOVED_ENTRY, 7)
    # What follows from it (round 1 never closed, so round 2's update was trained from an
    # aggregate this log never released) is listed after it.
    assert {k for k, _ in kinds[1:]} <= {FindingKind.INCONSISTENT_ROUND, FindingKind.WRONG_STALENESS}


def test_swapped_pair_of_entries_is_named(honest_log: Path, dev_policy: Policy, tmp_path: Path) -> None:
    lines = _lines(honest_log)
    a, b = _entry_line_numbers(lines)[5:7]
    lines[a], lines[b] = lines[b], lines[a]
    report = audit_log(_write(tmp_path, lines), dev_policy)
    # Entry 5 now comes after entry 6; the checkpoints that no longer match are explained by
    # the reordering rather than reported as modifications.
    assert [(f.kind, f.index, f.line) for f in report.findings] == [(FindingKind.REORDERED_ENTRIES, 5, b + 1)]


def test_torn_last_line_is_reported(honest_log: Path, dev_policy: Policy, tmp_path: Path) -> None:
    data = honest_log.read_bytes()
    report = audit_log(_write(tmp_path, [data[:-25]]), dev_policy)
    assert report.findings[-1].kind is FindingKind.TORN_TAIL or any(
        f.kind is FindingKind.TORN_TAIL for f in report.findings
    )


def test_dropped_tail_is_not_covered_by_a_checkpoint(
    honest_log: Path, dev_policy: Policy, tmp_path: Path
) -> None:
    # Removing the last checkpoint leaves the last entry unsigned: reported, not ignored.
    lines = _lines(honest_log)
    assert lines[-1].startswith(b'{"checkpoint":')
    report = audit_log(_write(tmp_path, lines[:-1]), dev_policy)
    assert [f.kind for f in report.findings] == [FindingKind.UNCHECKPOINTED_ENTRIES]


def test_cli_exit_codes_and_output(
    honest_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_main(["verify", str(honest_log), "--builtin-policy", DEV]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and "Round 1: CLOSED" in out and "Round 2: FAILED" in out

    lines = _lines(honest_log)
    del lines[_entry_line_numbers(lines)[7]]
    tampered = _write(tmp_path, lines)
    assert audit_main(["verify", str(tampered), "--builtin-policy", DEV, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "FAILED"
    assert report["findings"][0]["kind"] == "removed_entry"

    assert audit_main(["verify", str(tmp_path / "missing.log")]) == 2
    assert "not a readable file" in capsys.readouterr().err
    assert audit_main(["verify", str(honest_log), "--builtin-policy", "no-such-policy"]) == 2


def _help(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What `argv + --help` prints; argparse's exit (status 0) or a returned 0 alike."""
    try:
        status = main([*argv, "--help"])
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    assert status == 0, argv
    return capsys.readouterr().out


def test_verify_and_check_receipt_offer_json_and_both_tools_give_their_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # README: `fedseal-attest verify`, `fedseal-audit verify` and `check-receipt` have
    # --json; both tools' --help give the exit codes 0-3.
    for main, command in (
        (attest_main, ["verify"]),
        (audit_main, ["verify"]),
        (audit_main, ["check-receipt"]),
    ):
        assert "--json" in _help(main, command, capsys), command
    codes = " ".join(_help(audit_main, [], capsys).split("exit codes:")[1].split())
    for needle in ("0 verified", "1 findings", "2 usage error", "3 endpoint unreachable"):
        assert needle in codes, needle
    codes = _help(attest_main, [], capsys).split("exit status:")[1]
    for needle in ("0  verified", "1  verification failed", "2  usage", "3  cannot reach the endpoint"):
        assert needle in codes, needle
