"""The audit log writer: durable commits, group commit, resuming after a crash, key handover,
and serving proofs for any earlier size across restarts."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, submit_as

from aggregator import start_aggregator
from aggregator._log import AuditLog, AuditLogError, CommitMode, NotAnAuditLogError
from aggregator._server import _start_enclave
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._roundkey import RoundKeyPair
from attestation import InsecureSimulatedTeeCollector, Policy
from auditor import verify_log
from auditor._endpoint import AuditorConnection
from fedseal.canonical import b64encode
from fedseal.checkpoint import Checkpoint, open_checkpoint, verify_tlog_proof
from fedseal.logformat import (
    ENTRY_RECORD_PREFIX,
    CheckpointExtensions,
    EntryKind,
    LogEntry,
    RejectReason,
    decode_record,
)
from fedseal.logschema import EnclaveStarted, RoundOpened, UpdateRejected
from fedseal.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedseal.note import NoteVerifier

ORIGIN = "fedseal.test/log"


def _collector() -> InsecureSimulatedTeeCollector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsecureSimulatedTeeCollector("log tests")


def _open(path: Path, *, mode: CommitMode = CommitMode.GROUP) -> tuple[AuditLog, EnclaveKeys]:
    """Open (create or resume) a log the way the aggregator does, with real evidence."""
    keys = EnclaveKeys.generate()
    log = AuditLog.open(path, ORIGIN, keys.log_private_key, commit_mode=mode)
    _start_enclave(log, keys, [_collector()])
    return log, keys


def _reject(log: AuditLog, n: int) -> None:
    log.append(UpdateRejected(round_id=1, client_id=f"c{n}", reason=RejectReason.MALFORMED, detail="test"))


def _open_round(log: AuditLog, keys: EnclaveKeys, round_id: int) -> None:
    """A round_opened entry as the round manager writes it, with its round key signed."""
    config = round_config(round_id)
    key = RoundKeyPair.generate(
        log_origin=ORIGIN,
        round_id=round_id,
        config_digest=config.digest(),
        log_private_key=keys.log_private_key,
    )
    log.append(
        RoundOpened(
            round_id=round_id,
            config=config,
            config_digest=config.digest(),
            round_public_key=key.public_key,
            round_key_signature=key.signed.signature,
        )
    )
    key.drop()


def _records(path: Path) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        record = decode_record(line, line_number=number)
        out.append(("entry", record.entry) if record.entry is not None else ("checkpoint", record.checkpoint))
    return out


def _log_with_commits(path: Path, commits: int) -> tuple[AuditLog, EnclaveKeys]:
    log, keys = _open(path)
    for n in range(commits):
        _reject(log, n)
    return log, keys


# ----------------------------------------------------------------------------- committing


def test_each_commit_is_entries_then_a_checkpoint_covering_them(tmp_path: Path, dev_policy: Policy) -> None:
    path = tmp_path / "audit.log"
    log, keys = _log_with_commits(path, 3)
    log.close()
    records = _records(path)
    assert [kind for kind, _ in records] == ["entry", "checkpoint"] * 4
    verifier = NoteVerifier(ORIGIN, keys.bound.log_public_key)
    for size, (_, note) in enumerate(records[1::2], start=1):
        assert isinstance(note, str)
        cp = open_checkpoint(note, [verifier], ORIGIN).checkpoint
        assert cp.size == size
        ext = CheckpointExtensions.of(cp)
        assert ext.key_entry == 0 and abs(ext.time_ms / 1000 - time.time()) < 60
    assert verify_log(path, dev_policy).report.entries == 4


def test_nothing_is_served_before_it_is_durable(tmp_path: Path) -> None:
    log, _ = _log_with_commits(tmp_path / "audit.log", 1)
    pending = log.stage(UpdateRejected(round_id=1, client_id="x", reason=RejectReason.MALFORMED, detail="d"))
    index = pending.entry.index
    assert log.size == index  # staged, not durable
    with pytest.raises(AuditLogError):
        log.inclusion_proof(index, index + 1)
    with pytest.raises(AuditLogError):
        log.checkpoint(index + 1)
    result = pending.wait()
    assert log.size == result.tree_size == index + 1
    assert log.inclusion_proof(index, index + 1) == list(result.receipt(log).proof)
    log.close()


@pytest.mark.parametrize("mode", [CommitMode.GROUP, CommitMode.PER_ENTRY])
def test_concurrent_appends_all_get_valid_receipts(
    tmp_path: Path, mode: CommitMode, dev_policy: Policy
) -> None:
    path = tmp_path / "audit.log"
    log, keys = _open(path, mode=mode)
    verifier = NoteVerifier(ORIGIN, keys.bound.log_public_key)
    results = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for n in range(15):
            r = log.append(
                UpdateRejected(
                    round_id=1, client_id=f"t{t}-{n}", reason=RejectReason.MALFORMED, detail="concurrent"
                )
            )
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(r.entry.index for r in results) == list(range(1, 181))
    for r in results:
        verify_tlog_proof(r.receipt(log), r.leaf_data, [verifier], ORIGIN)
    kinds = [kind for kind, _ in _records(path)]
    commits = kinds.count("checkpoint")
    if mode is CommitMode.PER_ENTRY:
        assert commits == 181
    else:
        # Twelve writers at once: commits carry several entries each (fewer fsyncs).
        assert commits < 181
    assert verify_log(path, dev_policy).report.entries == 181


def test_a_failed_write_stops_the_log_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = _log_with_commits(tmp_path / "audit.log", 1)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(AuditLogError, match="cannot write"):
        _reject(log, 9)
    monkeypatch.undo()
    with pytest.raises(AuditLogError, match="failed"):
        _reject(log, 10)
    log.close()


# ----------------------------------------------------------------------------- resuming


def test_resume_hands_over_to_a_new_key_and_keeps_every_byte(tmp_path: Path, dev_policy: Policy) -> None:
    path = tmp_path / "audit.log"
    first, first_keys = _log_with_commits(path, 2)
    _open_round(first, first_keys, 1)
    first.close()
    before = path.read_bytes()
    second, second_keys = _open(path)
    history = second.history
    assert history is not None and history.size == 4 and history.dropped is None
    assert history.last_round_id == 1 and history.open_round == (1, 0)
    assert path.read_bytes().startswith(before)
    second.close()
    entries = [e for kind, e in _records(path) if kind == "entry"]
    handover = entries[4]
    assert isinstance(handover, LogEntry) and handover.kind is EntryKind.ENCLAVE_STARTED
    assert handover.fields["previous_checkpoint"] == history.last_checkpoint
    abandoned = entries[5]
    assert isinstance(abandoned, LogEntry) and abandoned.fields["cause"] == "enclave_restarted"
    report = verify_log(path, dev_policy).report
    assert [k.entry_index for k in report.keys] == [0, 4]
    assert first_keys.bound.log_public_key != second_keys.bound.log_public_key
    assert report.rounds[0].state == "abandoned"


TAILS: dict[str, Callable[[bytes], bytes]] = {
    "partial entry line": lambda entry: entry[: len(entry) // 2],
    "complete entry without its checkpoint": lambda entry: entry,
    "entry and half a checkpoint": lambda entry: entry + b'{"checkpoint":"fedseal.test/log\\n9',
    "zeroed blocks": lambda entry: b"\x00" * 4096,
    "two complete entries and garbage": lambda entry: entry + entry.replace(b'"c1"', b'"c2"') + b"\xff\xfe",
}


@pytest.mark.parametrize("name", sorted(TAILS))
def test_a_torn_tail_is_cut_kept_aside_and_recorded(tmp_path: Path, name: str, dev_policy: Policy) -> None:
    path = tmp_path / "audit.log"
    log, _ = _log_with_commits(path, 2)
    log.close()
    committed = path.read_bytes()
    entry = LogEntry.of(
        3,
        "2026-01-01T00:00:00.000Z",
        EntryKind.UPDATE_REJECTED,
        {"round_id": 1, "client_id": "c1", "reason": "malformed", "detail": "never committed"},
    )
    tail = TAILS[name](ENTRY_RECORD_PREFIX + entry.leaf_data() + b"}\n")
    path.write_bytes(committed + tail)

    resumed, _ = _open(path)
    resumed.close()
    history = resumed.history
    assert history is not None and history.dropped is not None
    dropped = history.dropped
    assert (dropped.offset, dropped.size) == (len(committed), len(tail))
    assert dropped.digest == hashlib.sha256(tail).digest()
    assert dropped.saved_to.read_bytes() == tail
    assert path.read_bytes().startswith(committed)  # committed records untouched
    report = verify_log(path, dev_policy).report
    (drop,) = report.tail_drops
    assert drop["dropped_bytes"] == len(tail) and drop["dropped_digest"] == b64encode(dropped.digest)


def test_a_crash_in_the_very_first_commit_starts_a_new_log(tmp_path: Path, dev_policy: Policy) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"entry":{"challenge":"')
    log, _ = _open(path)
    log.close()
    assert log.history is not None and log.history.last_checkpoint is None
    report = verify_log(path, dev_policy).report
    assert report.handovers == () and len(report.tail_drops) == 1


def test_damage_before_the_last_checkpoint_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, _ = _log_with_commits(path, 3)
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"c0"', b'"cX"')  # an entry changed under later checkpoints
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    keys = EnclaveKeys.generate()
    with pytest.raises(AuditLogError, match="not a torn tail"):
        AuditLog.open(path, ORIGIN, keys.log_private_key)
    assert path.read_bytes() == damaged
    assert not list(tmp_path.glob("*.torn-*"))


def test_a_signed_checkpoint_after_garbage_is_not_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, _ = _log_with_commits(path, 3)
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    # Garbage in the middle, with signed commits after it: someone wrote into the log.
    lines.insert(4, b"not a record\n")
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogError, match="not a torn tail"):
        AuditLog.open(path, ORIGIN, EnclaveKeys.generate().log_private_key)


def test_resume_refuses_another_origin(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, _ = _log_with_commits(path, 1)
    log.close()
    with pytest.raises(AuditLogError, match=r"--log-origin fedseal\.test/log"):
        AuditLog.open(path, "fedseal.test/other", EnclaveKeys.generate().log_private_key)


def test_a_file_that_is_no_log_is_never_cut(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_bytes(b'{"hello":"world"}\n{"partial')
    with pytest.raises(AuditLogError, match="not a FedSeal audit log"):
        AuditLog.open(path, ORIGIN, EnclaveKeys.generate().log_private_key)
    assert path.read_bytes() == b'{"hello":"world"}\n{"partial'


def test_appends_need_the_enclave_entry_first(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log", ORIGIN, EnclaveKeys.generate().log_private_key)
    with pytest.raises(AuditLogError, match="start_enclave"):
        _reject(log, 0)
    with pytest.raises(AuditLogError, match="start_enclave"):
        log.stage(
            EnclaveStarted(
                log_origin=ORIGIN,
                hpke_public_key=bytes(32),
                log_public_key=bytes(32),
                evidence_bundle=b"",
                evidence_digest=bytes(32),
                challenge=bytes(32),
                insecure_simulated=True,
            )
        )
    log.close()


# ----------------------------------------------------------------------------- serving across restarts


def test_proofs_for_every_earlier_size_across_a_restart(tmp_path: Path, dev_policy: Policy) -> None:
    path = tmp_path / "audit.log"
    receipts = []
    for run in (1, 2):
        running = start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[_collector()], access=access_config()
        )
        try:
            running.rounds.open_round(round_config(run, min_clients=1, max_clients=2))
            receipts.append(
                submit_as(
                    running.endpoint, dev_policy, "site-a", make_adapter(run), round_id=run, num_examples=1
                )
            )
            if run == 1:
                continue
            key = NoteVerifier(ORIGIN, running.keys.bound.log_public_key)
            with AuditorConnection(running.endpoint) as conn:
                current = open_checkpoint(conn.get_checkpoint(), [key], ORIGIN).checkpoint
                assert current.size == running.log.size
                for old in range(1, current.size + 1):
                    reply = conn.get_consistency_proof(old, current.size)
                    old_cp = open_checkpoint(conn.get_checkpoint(old), [key], ORIGIN).checkpoint
                    verify_consistency(old, current.size, reply.hashes, old_cp.root_hash, current.root_hash)
                for r in receipts:
                    reply = conn.get_inclusion_proof(r.index, current.size, with_entry=True)
                    assert reply.entry == r.entry.leaf_data()
                    verify_inclusion(
                        leaf_hash(reply.entry), r.index, current.size, reply.hashes, current.root_hash
                    )
                # The first receipt's checkpoint (old key) is a prefix of today's tree.
                first = receipts[0].checkpoint
                reply = conn.get_consistency_proof(first.size, current.size)
                verify_consistency(first.size, current.size, reply.hashes, first.root_hash, current.root_hash)
                # The key entry of the old key's checkpoints is served with its proof.
                index = CheckpointExtensions.of(first).key_entry
                reply = conn.get_inclusion_proof(index, current.size, with_entry=True)
                assert LogEntry.from_leaf_data(reply.entry).kind is EntryKind.ENCLAVE_STARTED
        finally:
            running.stop(grace=0.5)
    assert len(verify_log(path, dev_policy).report.keys) == 2
    assert isinstance(receipts[0].checkpoint, Checkpoint)


# ----------------------------------------------------------------------------- record parsing

_TRICKY = [
    b'{"a":1}',
    b'{"a":1.0}',
    b'{"a":1e3}',
    b'{"a":NaN}',
    b'{"a":-0}',
    b'{"a":9007199254740991}',
    b'{"a":9007199254740992}',
    b'{"a":-9007199254740992}',
    b'{"a":"\\u00e9"}',
    '{"a":"\u00e9"}'.encode(),
    '{"a":"\U0001f600"}'.encode(),
    b'{"a":"\\ud83d\\ude00"}',
    b'{"a":"\\ud800"}',
    '{"a":"\u2028\u007f"}'.encode(),
    b'{"a":"\\u001f"}',
    b'{"a":"\\u001F"}',
    b'{"a":"\\n\\t\\b\\f\\r\\"\\\\"}',
    b'{"a":"\\/"}',
    b'{"a":"\x01"}',
    b'{"b":1,"a":2}',
    b'{"a":1,"a":2}',
    b'{"a": 1}',
    b'{"a":[1,true,false,null,{"c":"d","b":[]}]}',
    '{"z":1,"\u00e9":2}'.encode(),
    '{"\u00e9":2,"z":1}'.encode(),
    '{"\U0001f600":1,"\uffff":2}'.encode(),
    '{"\uffff":2,"\U0001f600":1}'.encode(),
    b'{"a":1}\n',
    b"\xff",
    b'{"a":"\xc3"}',
    b"[1,2]",
]


@pytest.mark.parametrize("line", _TRICKY, ids=range(len(_TRICKY)))
def test_record_parsing_decides_exactly_as_rfc8785(line: bytes) -> None:
    from fedseal.canonical import parse_canonical
    from fedseal.errors import FormatError
    from fedseal.logformat import _parse_canonical_record

    try:
        expected: object = parse_canonical(line, what="x")
    except FormatError:
        expected = FormatError
    try:
        got: object = _parse_canonical_record(line, "x")
    except FormatError:
        got = FormatError
    assert got == expected


def test_a_resumed_job_continues_with_the_next_unused_round_id(tmp_path: Path, dev_policy: Policy) -> None:
    from aggregator import JobConfig
    from aggregator._rounds import RoundNotFoundError

    template = {k: v for k, v in round_config(1).to_json_obj().items() if k != "round_id"}
    job = JobConfig(rounds=3, round_template=template)
    path = tmp_path / "audit.log"
    for expected in (1, 2, 3, None):
        running = start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[_collector()], job=job, access=access_config()
        )
        try:
            if expected is None:  # the job's round ids are all spent: nothing is opened again
                with pytest.raises(RoundNotFoundError):
                    running.rounds.snapshot(0)
            else:
                assert running.rounds.snapshot(0).config.round_id == expected
        finally:
            running.stop(grace=0.5)
    report = verify_log(path, dev_policy).report
    assert [(r.round_id, r.state) for r in report.rounds] == [
        (1, "abandoned"),
        (2, "abandoned"),
        (3, "abandoned"),
    ]


NOT_LOGS: dict[str, bytes] = {
    "text without a newline": b"hello, this is my notes file",
    "binary": bytes(range(256)) * 4,
    "JSON object without a newline": b'{"rounds": 3}',
    "JSON lines": b'{"hello":"world"}\n{"partial',
    "zeroed block": b"\x00" * 4096,
    "PEM": b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "a first entry that is no enclave_started": ENTRY_RECORD_PREFIX
    + LogEntry.of(
        0,
        "2026-01-01T00:00:00.000Z",
        EntryKind.UPDATE_REJECTED,
        {"round_id": 1, "client_id": "c1", "reason": "malformed", "detail": "d"},
    ).leaf_data()
    + b"}\n",
}


@pytest.mark.parametrize("name", sorted(NOT_LOGS))
def test_a_file_that_is_no_log_is_refused_untouched(tmp_path: Path, name: str) -> None:
    """Issue 18 item 5: never moved aside as a "torn tail", whatever its first line looks like."""
    path = tmp_path / "mine.txt"
    path.write_bytes(NOT_LOGS[name])
    with pytest.raises(NotAnAuditLogError, match="is not a FedSeal audit log"):
        AuditLog.open(path, ORIGIN, EnclaveKeys.generate().log_private_key)
    assert path.read_bytes() == NOT_LOGS[name]
    assert list(tmp_path.iterdir()) == [path]
