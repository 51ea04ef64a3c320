"""An honest log written by the real aggregator across two restarts verifies; a corpus of
tampered copies of it (every class fedseal-audit names) is each caught with the right
finding at the right entry index.

The base log: enclave 1 runs round 1 (closed) and leaves round 2 open; enclave 2 takes
over (key handover), records round 2 as abandoned, runs round 3 (closed, with one refused
upload); a crash then leaves half a commit on disk; enclave 3 takes over, cuts and records
the torn tail, and leaves round 4 open.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, site_client, submit_as
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator import start_aggregator
from attestation import InsecureSimulatedTeeCollector, Policy, load_builtin_policy, simulated_measurement
from auditor import (
    AuditReport,
    FindingKind,
    TrustedCheckpoint,
    audit_log,
    check_receipt_in_log,
    verify_log,
)
from auditor._cli import main as audit_main
from client_sdk import FedSealClient, Receipt, UpdateRejectedError
from fedseal.canonical import canonical_json
from fedseal.checkpoint import Checkpoint, sign_checkpoint
from fedseal.logformat import (
    ENTRY_RECORD_PREFIX,
    CheckpointExtensions,
    EntryKind,
    LogEntry,
    decode_record,
    encode_checkpoint_record,
)
from fedseal.merkle import MerkleTree, verify_consistency
from fedseal.note import NoteSigner, split_note

DEV = "dev-insecure-allow-simulated"
ORIGIN = "fedseal.test/tamper"
TORN = b'{"entry":{"adapter_spec_digest":"F612+Y1Ek'  # half a commit, as a crash leaves it


@dataclass(frozen=True)
class History:
    path: Path
    keys: tuple[Ed25519PrivateKey, ...]  # each enclave's log key, in order
    receipts: tuple[Receipt, ...]


def _collector() -> InsecureSimulatedTeeCollector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsecureSimulatedTeeCollector("tamper tests")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    path = tmp_path_factory.mktemp("tamper") / "audit.log"
    policy = load_builtin_policy(DEV)
    keys, receipts = [], []

    def run(body: Callable[[FedSealClient, object], None]) -> None:
        running = start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[_collector()], access=access_config()
        )
        keys.append(running.keys.log_private_key)
        try:
            with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
                body(client, running)
        finally:
            running.stop(grace=0.5)

    def first(client: FedSealClient, running: object) -> None:
        rounds = running.rounds  # type: ignore[attr-defined]
        rounds.open_round(round_config(1, min_clients=2, max_clients=3))
        endpoint = running.endpoint  # type: ignore[attr-defined]
        for i in range(3):
            receipts.append(
                submit_as(endpoint, policy, f"site-{i}", make_adapter(i), round_id=1, num_examples=i + 1)
            )
        client.fetch_aggregate(1, wait_seconds=10)
        rounds.open_round(round_config(2))
        receipts.append(client.submit_update(make_adapter(7), round_id=2, num_examples=5))

    def second(client: FedSealClient, running: object) -> None:
        rounds = running.rounds  # type: ignore[attr-defined]
        rounds.open_round(round_config(3))
        endpoint = running.endpoint  # type: ignore[attr-defined]
        with site_client(endpoint, policy, "site-1") as site1:
            sub = site1.seal_update(make_adapter(4), round_id=3, num_examples=2)
            with pytest.raises(UpdateRejectedError):
                site1._connection.submit(sub.header, sub.chunks[:-1], timeout=10)
        for i in range(3):
            receipts.append(
                submit_as(endpoint, policy, f"site-{i}", make_adapter(i), round_id=3, num_examples=3)
            )
        client.fetch_aggregate(3, wait_seconds=10)

    def third(client: FedSealClient, running: object) -> None:
        running.rounds.open_round(round_config(4))  # type: ignore[attr-defined]
        endpoint = running.endpoint  # type: ignore[attr-defined]
        receipts.append(submit_as(endpoint, policy, "site-2", make_adapter(9), round_id=4, num_examples=1))

    run(first)
    run(second)
    with path.open("ab") as fh:
        fh.write(TORN)
    run(third)
    return History(path, tuple(keys), tuple(receipts))


@pytest.fixture(scope="module")
def honest(history: History, dev: Policy) -> AuditReport:
    return audit_log(history.path, dev)


@pytest.fixture(scope="module")
def dev() -> Policy:
    return load_builtin_policy(DEV)


# ----------------------------------------------------------------------------- the honest log


def test_honest_log_across_two_restarts_verifies(history: History, dev: Policy) -> None:
    report = verify_log(history.path, dev).report
    assert report.findings == ()
    assert [k.attested for k in report.keys] == [True, True, True]
    assert len(report.handovers) == 2
    for h in report.handovers:
        # The handover's proof is real: it links the old key's last root to the new key's first.
        old = Checkpoint.parse_body(split_note(h.old_checkpoint)[0])
        new = Checkpoint.parse_body(split_note(h.new_checkpoint)[0])
        assert (old.size, new.size) == (h.old_size, h.new_size) and h.new_size > h.old_size
        verify_consistency(old.size, new.size, h.consistency_proof, old.root_hash, new.root_hash)
    states = {r.round_id: r.state for r in report.rounds}
    assert states == {1: "closed", 2: "abandoned", 3: "closed", 4: "open"}
    r3 = report.rounds[2]
    assert [x["reason"] for x in r3.rejected] == ["truncated"]
    assert r3.participants == ("site-0", "site-1", "site-2") and r3.total_examples == 9
    assert r3.strategy == "fedavg" and r3.parameters["min_clients"] == 3 and r3.dp is None
    (drop,) = report.tail_drops
    assert drop["dropped_bytes"] == len(TORN)
    # The torn bytes were kept aside, not lost.
    (aside,) = history.path.parent.glob("audit.log.torn-*")
    assert aside.read_bytes() == TORN


def test_every_receipt_still_holds_after_the_restarts(history: History, dev: Policy) -> None:
    for receipt in history.receipts:
        check = check_receipt_in_log(receipt.text, history.path, dev)
        assert check.entry == receipt.entry
        assert check.current_size == audit_log(history.path, dev).entries


def test_default_policy_refuses_every_simulated_key(history: History) -> None:
    report = audit_log(history.path, load_builtin_policy("default"))
    kinds = [f.kind for f in report.findings]
    assert kinds.count(FindingKind.ATTESTATION_FAILED) == 3
    assert FindingKind.UNATTESTED_KEY in kinds


# ----------------------------------------------------------------------------- helpers


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _entries(lines: list[bytes]) -> list[tuple[int, LogEntry]]:
    """(0-based line number, entry) for every entry line."""
    out = []
    for i, line in enumerate(lines):
        if line.startswith(ENTRY_RECORD_PREFIX):
            record = decode_record(line.rstrip(b"\n"), line_number=i + 1)
            assert record.entry is not None
            out.append((i, record.entry))
    return out


def _find(lines: list[bytes], kind: EntryKind, **fields: object) -> tuple[int, LogEntry]:
    for i, entry in _entries(lines):
        if entry.kind is kind and all(entry.fields.get(k) == v for k, v in fields.items()):
            return i, entry
    raise AssertionError(f"no {kind} entry with {fields}")


def _tree(lines: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for _, entry in _entries(lines):
        tree.append(entry.leaf_data())
    return tree


def _checkpoint_line(
    key: Ed25519PrivateKey, size: int, root: bytes, key_entry: int, *, time_ms: int | None = None
) -> bytes:
    ms = time_ms if time_ms is not None else int(time.time() * 1000)
    cp = Checkpoint(ORIGIN, size, root, CheckpointExtensions(ms, key_entry).lines())
    return encode_checkpoint_record(sign_checkpoint(cp, NoteSigner(ORIGIN, key)))


def _key_entries(report: AuditReport) -> list[int]:
    return [k.entry_index for k in report.keys]


@dataclass(frozen=True)
class Tampered:
    lines: list[bytes]
    kind: FindingKind
    index: int | None
    trusted: tuple[str, ...] = ()
    policy: Policy | None = None


Mutation = Callable[[History, list[bytes], AuditReport], Tampered]


def modified_field(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=3, client_id="site-1")
    lines[i] = lines[i].replace(b'"site-1"', b'"site-9"')  # still canonical JSON
    return Tampered(lines, FindingKind.MODIFIED_ENTRY, entry.index)


def modified_byte(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _find(lines, EntryKind.ROUND_CLOSED, round_id=1)
    flipped = bytearray(lines[i])
    flipped[len(flipped) // 2] ^= 0x01
    lines[i] = bytes(flipped)
    return Tampered(lines, FindingKind.MODIFIED_ENTRY, entry.index)


def modified_number(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # The aggregate's example count inflated: parses fine, canonical, only the root tells.
    i, entry = _find(lines, EntryKind.ROUND_CLOSED, round_id=3)
    lines[i] = lines[i].replace(b'"total_examples":9', b'"total_examples":90')
    return Tampered(lines, FindingKind.MODIFIED_ENTRY, entry.index)


def removed_entry(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _find(lines, EntryKind.UPDATE_REJECTED, round_id=3)
    del lines[i]
    return Tampered(lines, FindingKind.REMOVED_ENTRY, entry.index)


def removed_entry_and_checkpoint(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=1, client_id="site-0")
    assert lines[i + 1].startswith(b'{"checkpoint":')
    del lines[i : i + 2]
    return Tampered(lines, FindingKind.REMOVED_ENTRY, entry.index)


def removed_last_entry(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _entries(lines)[-1]
    del lines[i]  # its checkpoint stays and now covers one entry too many
    return Tampered(lines, FindingKind.REMOVED_ENTRY, entry.index)


def reordered(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    (a, first), (b, _) = (
        _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=1, client_id="site-1"),
        _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=1, client_id="site-2"),
    )
    lines[a], lines[b] = lines[b], lines[a]
    return Tampered(lines, FindingKind.REORDERED_ENTRIES, first.index)


def duplicated(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=3, client_id="site-0")
    lines.insert(i + 2, lines[i])  # replayed after its checkpoint
    return Tampered(lines, FindingKind.DUPLICATED_ENTRY, entry.index)


def truncated_below_receipt(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    receipt = h.receipts[-1]  # round 4's, from the third enclave
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=4)
    del lines[i:]
    return Tampered(lines, FindingKind.ROLLBACK, entry.index, (receipt.text,))


def rolled_back_before_handover(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # Cut back to the end of the first enclave: the receipt from round 3 (second enclave's
    # key) cannot even be checked against the keys left, and shows more entries.
    receipt = h.receipts[4]
    second_key_entry = _key_entries(r)[1]
    i = next(i for i, e in _entries(lines) if e.index == second_key_entry)
    del lines[i:]
    return Tampered(lines, FindingKind.ROLLBACK, second_key_entry, (receipt.text,))


def forked_checkpoint_in_file(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # The second enclave also signed a different tree of the same size (an equivocation):
    # put that checkpoint in the log next to its honest one.
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=3, client_id="site-2")
    size = entry.index + 1
    other = MerkleTree()
    for _, e in _entries(lines)[: size - 1]:
        other.append(e.leaf_data())
    other.append(canonical_json({"forged": "a different update from site-2"}))
    lines.insert(i + 1, _checkpoint_line(h.keys[1], size, other.root(), _key_entries(r)[1]))
    return Tampered(lines, FindingKind.FORK, size - 1)


def forked_trusted_checkpoint(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # A client holds a checkpoint the enclave signed for another tree of a size this log covers.
    tree = _tree(lines)
    size = tree.size - 3
    other = MerkleTree()
    for _, e in _entries(lines)[: size - 1]:
        other.append(e.leaf_data())
    other.append(canonical_json({"forged": True}))
    line = _checkpoint_line(h.keys[2], size, other.root(), _key_entries(r)[2])
    note = json.loads(line)["checkpoint"]
    return Tampered(lines, FindingKind.FORK, size - 1, (note,))


def unattested_key(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    tree = _tree(lines)
    operator_key = Ed25519PrivateKey.generate()
    lines.append(_checkpoint_line(operator_key, tree.size, tree.root(), _key_entries(r)[2]))
    return Tampered(lines, FindingKind.UNATTESTED_KEY, None)


def unattested_by_policy(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # A policy that pins another simulated measurement: no enclave of this log passes.
    policy = dataclasses.replace(
        load_builtin_policy(DEV), simulated_measurements=(simulated_measurement("another build"),)
    )
    return Tampered(lines, FindingKind.UNATTESTED_KEY, 0, policy=policy)


def retired_key(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    tree = _tree(lines)
    lines.append(_checkpoint_line(h.keys[0], tree.size, tree.root(), _key_entries(r)[0]))
    return Tampered(lines, FindingKind.RETIRED_KEY, tree.size - 1)


def future_timestamp(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    tree = _tree(lines)
    tomorrow = int((time.time() + 86400) * 1000)
    lines.append(_checkpoint_line(h.keys[2], tree.size, tree.root(), _key_entries(r)[2], time_ms=tomorrow))
    return Tampered(lines, FindingKind.FUTURE_TIMESTAMP, tree.size - 1)


def handover_without_previous(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    i, entry = next((i, e) for i, e in _entries(lines) if e.index == _key_entries(r)[1])
    fields = {k: v for k, v in entry.fields.items() if k != "previous_checkpoint"}
    stripped = LogEntry.of(entry.index, entry.time, entry.kind, fields)
    lines[i] = ENTRY_RECORD_PREFIX + stripped.leaf_data() + b"}\n"
    return Tampered(lines, FindingKind.BROKEN_HANDOVER, entry.index)


def torn_tail(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    return Tampered(lines, FindingKind.TORN_TAIL, None)


def unsigned_tail(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    assert lines[-1].startswith(b'{"checkpoint":')
    del lines[-1]
    return Tampered(lines, FindingKind.UNCHECKPOINTED_ENTRIES, _entries(lines)[-1][1].index)


def round_story_rewritten(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # The operator re-signs nothing, but adds an acceptance for an abandoned round: caught
    # both as an unsigned entry and as a round that cannot have accepted it.
    i, entry = _find(lines, EntryKind.ROUND_FAILED, round_id=2)
    _, accepted = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=2)
    fake = LogEntry.of(entry.index + 1, entry.time, accepted.kind, {**accepted.fields, "client_id": "ghost"})
    lines.insert(i + 1, ENTRY_RECORD_PREFIX + fake.leaf_data() + b"}\n")
    return Tampered(lines, FindingKind.INCONSISTENT_ROUND, entry.index + 1)


def edited_staleness(h: History, lines: list[bytes], r: AuditReport) -> Tampered:
    # Round 3 ran after a restart, on round 1's aggregate (staleness 0): an update recorded
    # as one release older than the releases before it say (in an async round, a lower weight).
    i, entry = _find(lines, EntryKind.UPDATE_ACCEPTED, round_id=3, client_id="site-0")
    assert (entry.fields["base_round_id"], entry.fields["staleness"]) == (1, 0)
    lines[i] = lines[i].replace(b'"staleness":0', b'"staleness":1')
    return Tampered(lines, FindingKind.WRONG_STALENESS, entry.index)


CORPUS: dict[str, Mutation] = {
    "modified entry (field)": modified_field,
    "modified entry (flipped byte)": modified_byte,
    "modified entry (number)": modified_number,
    "removed entry": removed_entry,
    "removed entry and its checkpoint": removed_entry_and_checkpoint,
    "removed last entry": removed_last_entry,
    "reordered entries": reordered,
    "duplicated entry": duplicated,
    "truncation below a receipt": truncated_below_receipt,
    "rollback before a key handover": rolled_back_before_handover,
    "fork inside the file": forked_checkpoint_in_file,
    "fork against a trusted checkpoint": forked_trusted_checkpoint,
    "checkpoint by an unattested key": unattested_key,
    "keys not attested under the policy": unattested_by_policy,
    "checkpoint by a retired key": retired_key,
    "checkpoint dated in the future": future_timestamp,
    "handover without previous checkpoint": handover_without_previous,
    "torn last line": torn_tail,
    "unsigned tail": unsigned_tail,
    "entry for an abandoned round": round_story_rewritten,
    "edited staleness": edited_staleness,
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_tampered_log_is_caught_with_the_right_finding(
    name: str, history: History, honest: AuditReport, dev: Policy, tmp_path: Path
) -> None:
    assert honest.findings == ()
    t = CORPUS[name](history, _lines(history.path), honest)
    path = tmp_path / "tampered.log"
    path.write_bytes(b"".join(t.lines))
    trusted = [TrustedCheckpoint.from_text(text, source=f"trusted-{i}") for i, text in enumerate(t.trusted)]
    report = audit_log(path, t.policy or dev, trusted=trusted)
    of_kind = [f for f in report.findings if f.kind is t.kind]
    assert of_kind, (
        f"{name}: expected {t.kind.value}, got {[(f.kind.value, f.index) for f in report.findings]}"
    )
    found = of_kind[0]
    if found.last_index is None:
        assert found.index == t.index, f"{name}: {found}"
    else:  # entries committed together under one checkpoint: the range must hold it
        assert t.index is not None and found.index is not None
        assert found.index <= t.index <= found.last_index, f"{name}: {found}"
    if t.kind is FindingKind.FORK:
        # Transferable proof: both signed checkpoints, each verifying on its own.
        assert len(of_kind[0].evidence) >= 2
        assert all("\u2014 " + ORIGIN in note for note in of_kind[0].evidence[:2])
    if t.kind is not FindingKind.FORK:
        assert FindingKind.FORK not in {f.kind for f in report.findings}, name


def test_honest_trusted_checkpoints_are_consistent(history: History, dev: Policy) -> None:
    trusted = [TrustedCheckpoint.from_text(r.text, source=f"receipt {r.index}") for r in history.receipts]
    report = audit_log(history.path, dev, trusted=trusted)
    assert report.findings == ()
    assert {t.status for t in report.trusted} == {"consistent"}


def test_audit_time_before_the_log_flags_every_checkpoint(history: History, dev: Policy) -> None:
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    report = audit_log(history.path, dev, now=yesterday)
    assert report.findings and {f.kind for f in report.findings} == {FindingKind.FUTURE_TIMESTAMP}


def test_cli_verify_reports_fork_evidence_and_exit_codes(
    history: History, honest: AuditReport, dev: Policy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_main(["verify", str(history.path), "--builtin-policy", DEV, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("VERIFIED: ")

    t = forked_trusted_checkpoint(history, _lines(history.path), honest)
    trusted = tmp_path / "trusted.note"
    trusted.write_text(t.trusted[0])
    args = ["verify", str(history.path), "--builtin-policy", DEV, "--trusted-checkpoint", str(trusted)]
    assert audit_main(args) == 1
    out = capsys.readouterr().out
    assert "[fork]" in out and out.count("    | " + ORIGIN) == 2  # both notes printed
    assert audit_main([*args, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "FAILED" and report["findings"][0]["kind"] == "fork"
    assert report["rounds"][0]["dp"] is None and report["rounds"][0]["approval"] is None

    receipt = tmp_path / "receipt.tlog-proof"
    receipt.write_text(history.receipts[0].text)
    good = ["verify", str(history.path), "--builtin-policy", DEV, "--trusted-checkpoint", str(receipt)]
    assert audit_main([*good, "--progress"]) == 0
    captured = capsys.readouterr()
    assert "lines checked (100%)" in captured.err and "consistent" in captured.out
    assert audit_main(["verify", str(tmp_path / "missing.log")]) == 2
    bad = tmp_path / "bad.note"
    bad.write_bytes(b"\xff\xfe")
    assert audit_main([*good[:-1], str(bad)]) == 2


def test_report_root_matches_the_latest_checkpoint(history: History, honest: AuditReport) -> None:
    assert honest.latest_checkpoint is not None
    latest = Checkpoint.parse_body(split_note(honest.latest_checkpoint)[0])
    assert latest.size == honest.entries and latest.root_hash == honest.root_hash
    assert base64.b64encode(honest.root_hash).decode() in json.dumps(honest.to_json_obj())
