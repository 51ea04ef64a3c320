"""Witnesses: consistency-checked cosigning, key handover via the key entry, state that
survives restarts, the aggregator collecting cosignatures, clients requiring them, and a
rollback that the witnesses refuse to cosign."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import access_config, make_adapter, round_config, site_client

from aggregator import RunningAggregator, start_aggregator
from aggregator._log import AuditLog
from aggregator._server import _start_enclave
from aggregator._witness import WitnessClient, WitnessCosigner, WitnessEndpoint
from aggregator.enclave._keys import EnclaveKeys
from attestation import InsecureSimulatedTeeCollector, Policy, PolicyError, WitnessPolicy
from auditor import Witness, WitnessKey, serve_witness, verify_log
from auditor._cli import main as audit_main
from fedseal.checkpoint import Checkpoint, sign_checkpoint, verify_cosignature
from fedseal.errors import FormatError, ReceiptError
from fedseal.logformat import CheckpointExtensions
from fedseal.logschema import RejectReason, UpdateRejected
from fedseal.merkle import MerkleTree
from fedseal.note import NoteSigner, NoteVerifier, split_note
from fedseal.witness import (
    AddCheckpointRequest,
    KeyEntryNeededError,
    UnknownLogError,
    WitnessConflictError,
    WitnessRefusedError,
    WitnessUnavailableError,
)

ORIGIN = "fedseal.test/witnessed"
ROOT = Path(__file__).resolve().parents[1]


def _collector() -> InsecureSimulatedTeeCollector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsecureSimulatedTeeCollector("witness tests")


def _note(cp_text: str) -> Checkpoint:
    return Checkpoint.parse_body(split_note(cp_text)[0])


class _Log:
    """A real AuditLog with real evidence, and the requests a log would send a witness."""

    def __init__(self, path: Path) -> None:
        self.keys = EnclaveKeys.generate()
        self.log = AuditLog.open(path, ORIGIN, self.keys.log_private_key)
        _start_enclave(self.log, self.keys, [_collector()])

    def grow(self, n: int) -> str:
        for i in range(n):
            self.log.append(
                UpdateRejected(round_id=1, client_id=f"c{i}", reason=RejectReason.MALFORMED, detail="")
            )
        return self.log.checkpoint()[1]

    def request(self, old: int, note: str, *, with_key: bool = True) -> AddCheckpointRequest:
        size = _note(note).size
        proof = self.log.consistency_proof(old, size) if 0 < old < size else []
        index = self.log.key_entry
        assert index is not None
        return AddCheckpointRequest(
            old,
            tuple(proof),
            note,
            self.log.entry_leaf(index) if with_key else None,
            tuple(self.log.inclusion_proof(index, size)) if with_key else (),
        )


@pytest.fixture
def witness_key() -> WitnessKey:
    return WitnessKey.generate("witness.test/w1")


def _witness(key: WitnessKey, state: Path, policy: Policy, **kw: object) -> Witness:
    return Witness(key, state, policy, [ORIGIN], **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the witness itself


def test_witness_cosigns_only_consistent_checkpoints(
    tmp_path: Path, witness_key: WitnessKey, dev_policy: Policy
) -> None:
    log = _Log(tmp_path / "audit.log")
    witness = _witness(witness_key, tmp_path / "state.json", dev_policy)
    verifier = NoteVerifier.from_key_string(witness.verifier_key)

    first = log.grow(2)
    with pytest.raises(KeyEntryNeededError):
        witness.add_checkpoint(log.request(0, first, with_key=False))
    line = witness.add_checkpoint(log.request(0, first))
    assert verify_cosignature(_note(first), line, verifier) == pytest.approx(time.time(), abs=60)

    second = log.grow(3)
    with pytest.raises(WitnessConflictError) as conflict:
        witness.add_checkpoint(log.request(0, second))  # the witness is at 3, not 0
    assert conflict.value.size == 3
    witness.add_checkpoint(log.request(3, second, with_key=False))  # known key now
    assert witness.last_checkpoint(ORIGIN) == second

    # A checkpoint of the same key for another tree: refused as inconsistent (a fork).
    other = MerkleTree()
    for i in range(7):
        other.append(f"not the log {i}".encode())
    forged = sign_checkpoint(
        Checkpoint(ORIGIN, 7, other.root(), CheckpointExtensions(int(time.time() * 1000), 0).lines()),
        NoteSigner(ORIGIN, log.keys.log_private_key),
    )
    with pytest.raises(WitnessRefusedError, match="not consistent"):
        witness.add_checkpoint(AddCheckpointRequest(6, (bytes(32),), forged))
    # Older than what it cosigned: a rollback.
    with pytest.raises(WitnessConflictError):
        witness.add_checkpoint(log.request(6, first))
    log.log.close()


def test_witness_refuses_what_it_cannot_vouch_for(
    tmp_path: Path, witness_key: WitnessKey, dev_policy: Policy
) -> None:
    log = _Log(tmp_path / "audit.log")
    note = log.grow(1)
    witness = _witness(witness_key, tmp_path / "state.json", dev_policy)
    with pytest.raises(UnknownLogError):
        Witness(witness_key, tmp_path / "s2.json", dev_policy, ["another/log"]).add_checkpoint(
            log.request(0, note)
        )
    # Evidence that does not satisfy the witness's policy.
    with pytest.raises(WitnessRefusedError, match="not attested"):
        _witness(
            witness_key,
            tmp_path / "s3.json",
            Policy(
                "strict",
                dev_policy.required_evidence,
                allow_insecure_simulated_evidence=True,
                simulated_measurements=(bytes(32),),
            ),
        ).add_checkpoint(log.request(0, note))
    # A key entry whose inclusion proof does not lead to the checkpoint's root.
    good = log.request(0, note)
    with pytest.raises(WitnessRefusedError):
        witness.add_checkpoint(dataclasses.replace(good, key_entry_proof=(bytes(32),)))
    # A checkpoint dated tomorrow.
    late = _Log(tmp_path / "late.log")
    late.log._clock = lambda: time.time() + 86400
    tomorrow = late.grow(1)
    with pytest.raises(WitnessRefusedError, match="future"):
        _witness(witness_key, tmp_path / "s4.json", dev_policy).add_checkpoint(late.request(0, tomorrow))
    assert not (tmp_path / "s4.json").exists()  # nothing was recorded
    log.log.close()
    late.log.close()


def test_witness_state_survives_restart(tmp_path: Path, witness_key: WitnessKey, dev_policy: Policy) -> None:
    log = _Log(tmp_path / "audit.log")
    state = tmp_path / "state.json"
    note = log.grow(4)
    _witness(witness_key, state, dev_policy).add_checkpoint(log.request(0, note))
    restarted = _witness(witness_key, state, dev_policy)
    assert restarted.last_checkpoint(ORIGIN) == note
    with pytest.raises(WitnessConflictError) as conflict:
        restarted.add_checkpoint(log.request(0, note))
    assert conflict.value.size == 5
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    log.log.close()


def test_witness_key_file(tmp_path: Path, witness_key: WitnessKey) -> None:
    path = tmp_path / "w.key"
    witness_key.write(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert WitnessKey.load(path).verifier_key() == witness_key.verifier_key()
    with pytest.raises(FileExistsError):
        witness_key.write(path)
    os.chmod(path, 0o644)
    with pytest.raises(FormatError, match="readable by others"):
        WitnessKey.load(path)
    assert "PRIVATE" not in repr(witness_key)


def test_policy_witnesses_section(witness_key: WitnessKey) -> None:
    vkey = witness_key.verifier_key()
    doc = (
        '{"schema":"fedseal-policy/v1","name":"w","required_evidence":["simulated-insecure-tee"],'
        '"allow_insecure_simulated_evidence":true,"witnesses":{"keys":["%s"],"min":1}}'
    )
    policy = Policy.from_json(doc % vkey, source="test")
    assert policy.witnesses == WitnessPolicy((vkey,), 1)
    log_key = NoteSigner("w", EnclaveKeys.generate().log_private_key).verifier_key_string()
    for bad, why in [
        (doc % log_key, "type 0x04"),
        (doc.replace('"min":1', '"min":2') % vkey, "witnesses.min"),
        (doc.replace('"min":1', '"min":1,"max":3') % vkey, "exactly 'keys' and 'min'"),
    ]:
        with pytest.raises(PolicyError, match=why):
            Policy.from_json(bad, source="test")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def witnesses(tmp_path: Path, dev_policy: Policy) -> Iterator[list[tuple[WitnessEndpoint, Witness]]]:
    out, servers = [], []
    for i in range(2):
        key = WitnessKey.generate(f"witness.test/w{i}")
        witness = _witness(key, tmp_path / f"w{i}.state", dev_policy)
        server, port = serve_witness(witness, "127.0.0.1:0")
        servers.append(server)
        out.append((WitnessEndpoint.parse(f"{witness.verifier_key}@127.0.0.1:{port}"), witness))
    yield out
    for server in servers:
        server.stop(0.5).wait()


def _aggregator(path: Path, cosigner: WitnessCosigner) -> RunningAggregator:
    return start_aggregator(
        log_path=path, log_origin=ORIGIN, collectors=[_collector()], cosigner=cosigner, access=access_config()
    )


def test_receipts_carry_witness_cosignatures_across_a_restart_and_a_rollback_is_refused(
    tmp_path: Path, witnesses: list[tuple[WitnessEndpoint, Witness]], dev_policy: Policy
) -> None:
    endpoints = [w for w, _ in witnesses]
    strict = dataclasses.replace(
        dev_policy, witnesses=WitnessPolicy(tuple(w.verifier.key_string() for w in endpoints), 2)
    )
    path = tmp_path / "audit.log"
    for run in (1, 2):
        cosigner = WitnessCosigner(endpoints)
        running = _aggregator(path, cosigner)
        try:
            running.rounds.open_round(round_config(run, min_clients=1, max_clients=3))
            with site_client(running.endpoint, strict, "site-a", receipts=tmp_path / "receipts") as client:
                receipt = client.submit_update(make_adapter(run), round_id=run, num_examples=1)
            assert receipt.cosigners == ("witness.test/w0", "witness.test/w1")
        finally:
            running.stop(grace=0.5)
            cosigner.close()
        committed = path.read_bytes()
    assert len(list((tmp_path / "receipts").glob("*/*.tlog-proof"))) == 2
    assert verify_log(path, dev_policy).report.findings == ()

    seen = [w.last_checkpoint(ORIGIN) for _, w in witnesses]
    assert all(seen)
    # The operator rolls the log back to the first run and restarts: the new enclave resumes
    # in good faith, but both witnesses have seen a longer history and refuse to cosign.
    first_run_end = committed.index(b'{"entry":{"challenge"', 10)
    path.write_bytes(committed[:first_run_end])
    cosigner = WitnessCosigner(endpoints)
    running = _aggregator(path, cosigner)
    try:
        running.rounds.open_round(round_config(3, min_clients=1, max_clients=3))
        with (
            site_client(running.endpoint, strict, "site-a") as client,
            pytest.raises(ReceiptError, match="cosigned by 0"),
        ):
            client.submit_update(make_adapter(3), round_id=3, num_examples=1)
        with site_client(
            running.endpoint, dev_policy, "site-b"
        ) as client:  # without witnesses it goes unnoticed
            client.submit_update(make_adapter(4), round_id=3, num_examples=1)
    finally:
        running.stop(grace=0.5)
        cosigner.close()
    # Each witness still holds its last checkpoint of the real history.
    for (_, witness), before in zip(witnesses, seen, strict=True):
        assert witness.last_checkpoint(ORIGIN) == before


def test_witness_client_maps_errors(witnesses: list[tuple[WitnessEndpoint, Witness]], tmp_path: Path) -> None:
    endpoint, _ = witnesses[0]
    client = WitnessClient(endpoint.endpoint)
    log = _Log(tmp_path / "audit.log")
    note = log.grow(1)
    with pytest.raises(KeyEntryNeededError):
        client.add_checkpoint(log.request(0, note, with_key=False))
    client.add_checkpoint(log.request(0, note))
    with pytest.raises(WitnessConflictError) as conflict:
        client.add_checkpoint(log.request(0, note))
    assert conflict.value.size == 2
    client.close()
    log.log.close()


def test_cli_keygen_and_serve(tmp_path: Path, dev_policy: Policy, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "w.key"
    assert audit_main(["witness", "keygen", "--name", "witness.test/cli", "--key-file", str(key_file)]) == 0
    vkey = capsys.readouterr().out.strip()
    assert NoteVerifier.from_key_string(vkey).name == "witness.test/cli"
    assert audit_main(["witness", "keygen", "--name", "x", "--key-file", str(key_file)]) == 2

    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auditor",
            "witness",
            "serve",
            "--key-file",
            str(key_file),
            "--state",
            str(tmp_path / "state.json"),
            "--log-origin",
            ORIGIN,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--builtin-policy",
            "dev-insecure-allow-simulated",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        log = _Log(tmp_path / "audit.log")
        note = log.grow(2)
        client = WitnessClient(f"127.0.0.1:{port}")
        line = client.add_checkpoint(log.request(0, note))
        verify_cosignature(_note(note), line, NoteVerifier.from_key_string(vkey))
        client.close()
        log.log.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


# ----------------------------------------------------------------------------- bad input to serve


def _serve_args(key_file: Path, state: Path, *extra: str) -> list[str]:
    return [
        "witness",
        "serve",
        "--key-file",
        str(key_file),
        "--state",
        str(state),
        "--log-origin",
        ORIGIN,
        "--listen",
        "127.0.0.1:0",
        "--builtin-policy",
        "dev-insecure-allow-simulated",
        *extra,
    ]


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that must be refused before it serves fails the test if it gets that far."""

    def serve(*_: object, **__: object) -> None:
        raise AssertionError("the witness started serving")

    monkeypatch.setattr("auditor._cli.serve_witness", serve)


def test_a_state_that_cannot_be_saved_is_refused_at_start_and_a_failed_save_changes_nothing(
    tmp_path: Path,
    witness_key: WitnessKey,
    dev_policy: Policy,
    capsys: pytest.CaptureFixture[str],
    no_serving: None,
) -> None:
    key_file = tmp_path / "w.key"
    witness_key.write(key_file)
    notes = tmp_path / "notes.txt"
    notes.write_text("a file, not a folder\n")
    assert audit_main(_serve_args(key_file, notes / "wstate")) == 2
    err = capsys.readouterr().err
    assert f"witness state {notes / 'wstate'}" in err and "not a folder" in err and "Traceback" not in err
    # The origins the aggregator refuses, and a key file that is a folder.
    for origin in ("bad origin", "", "/leading-slash"):
        args = _serve_args(key_file, tmp_path / "s.json")
        args[args.index(ORIGIN)] = origin
        with pytest.raises(SystemExit) as refused:
            audit_main(args)
        assert refused.value.code == 2
        assert "argument --log-origin" in capsys.readouterr().err
    (tmp_path / "adir").mkdir()
    assert audit_main(_serve_args(tmp_path / "adir", tmp_path / "s.json")) == 2
    err = capsys.readouterr().err
    assert f"witness key file {tmp_path / 'adir'} is not a file" in err and "chmod" not in err

    # The state's folder becomes a file while serving: AddCheckpoint fails with a clear
    # status, nothing is cosigned, and the witness is where it was (the same request works
    # once the folder is back).
    folder = tmp_path / "wstate"
    folder.mkdir()
    witness = _witness(witness_key, folder / "state.json", dev_policy)
    log = _Log(tmp_path / "audit.log")
    first = log.grow(2)
    witness.add_checkpoint(log.request(0, first))
    second = log.grow(2)
    shutil.rmtree(folder)
    folder.write_text("in the way\n")
    server, port = serve_witness(witness, "127.0.0.1:0")
    client = WitnessClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(WitnessUnavailableError, match="UNAVAILABLE: the witness cannot save its state"):
            client.add_checkpoint(log.request(3, second))
        assert witness.last_checkpoint(ORIGIN) == first
        folder.unlink()
        folder.mkdir()
        client.add_checkpoint(log.request(3, second))  # not a conflict: the size is still 3
        assert witness.last_checkpoint(ORIGIN) == second
    finally:
        client.close()
        server.stop(0.5).wait()
        log.log.close()


def test_a_port_file_that_cannot_be_written_is_refused_before_serving(
    tmp_path: Path, witness_key: WitnessKey, capsys: pytest.CaptureFixture[str], no_serving: None
) -> None:
    key_file = tmp_path / "w.key"
    witness_key.write(key_file)
    notes = tmp_path / "notes.txt"
    notes.write_text("a file, not a folder\n")
    for port_file in (notes / "port", tmp_path):
        assert audit_main(_serve_args(key_file, tmp_path / "s.json", "--port-file", str(port_file))) == 2
        err = capsys.readouterr().err
        assert f"--port-file {port_file}" in err and "Traceback" not in err
    assert not (tmp_path / "s.json").exists()


def test_a_port_in_use_is_refused(
    tmp_path: Path, witness_key: WitnessKey, dev_policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    # gRPC's default SO_REUSEPORT would let a second witness share the port (and its traffic).
    first, port = serve_witness(_witness(witness_key, tmp_path / "a.json", dev_policy), "127.0.0.1:0")
    try:
        with pytest.raises(OSError, match="in use"):
            serve_witness(_witness(witness_key, tmp_path / "b.json", dev_policy), f"127.0.0.1:{port}")
        key_file = tmp_path / "w.key"
        witness_key.write(key_file)
        args = _serve_args(key_file, tmp_path / "c.json")
        args[args.index("127.0.0.1:0")] = f"127.0.0.1:{port}"
        assert audit_main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--listen" in lines[0], lines
    finally:
        first.stop(0.5).wait()
