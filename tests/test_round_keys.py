"""Issue 14: per-round keys.

Each round gets a fresh X25519 key pair in the enclave when it opens; the log key the
attestation binds signs its public key (fedseal/roundkey.py), `round_opened` records it,
GetRound serves it, and clients seal to it only once that signature verifies. When the
round ends the private key is dropped. Shown here on a real aggregator: an upload captured
during round 1 (the sealed bytes the SDK sends) cannot be opened once round 1 closed, not
by replaying it into round 1, not re-addressed to round 2, not with the exact context it
was sealed under and anything the enclave still holds; a round key not signed by the
attested log key is refused by the client before anything is sent; the auditor reports
each round's key and checks its signature chain with its own code, also under checkpoints
validly re-signed by the enclave's key (tests/logfiles.py).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from identities import site_identity
from logfiles import log_entries, resigned_log

from aggregator import RunningAggregator, start_aggregator
from aggregator._roundbook import RoundSnapshot
from aggregator.enclave._roundkey import RoundKeyDroppedError, RoundKeyPair
from attestation import load_builtin_policy
from auditor import audit_log
from auditor._cli import main as audit_main
from client_sdk import ForeignRoundKeyError, MissingRoundKeyError
from fedseal.canonical import b64encode, canonical_json
from fedseal.envelope import StreamOpener
from fedseal.errors import EnvelopeUnwrapError, FormatError
from fedseal.logformat import LogEntry, RejectReason, decode_record
from fedseal.logschema import EnclaveStarted, RoundOpened
from fedseal.note import NoteSigner, unverified_signatures
from fedseal.roundkey import (
    ROUND_KEY_DOMAIN,
    RoundKeyMismatchError,
    RoundKeyStatement,
    SignedRoundKey,
    VerifiedRoundKey,
    round_key_message,
)
from fedseal.wire import UpdateRejectedError

ORIGIN = "fedseal.test/round-keys"
DEV = "dev-insecure-allow-simulated"
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class TwoRounds:
    path: Path
    log_key: Ed25519PrivateKey
    served: tuple[bytes, bytes]  # the round keys GetRound served for rounds 1 and 2


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningAggregator]:
    agg = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin=ORIGIN,
        collectors=[simulated_collector()],
        access=access_config(),
    )
    try:
        yield agg
    finally:
        agg.stop(grace=0.5)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory) -> TwoRounds:
    policy = load_builtin_policy(DEV)
    path = tmp_path_factory.mktemp("roundkeys") / "audit.log"
    agg = start_aggregator(
        log_path=path, log_origin=ORIGIN, collectors=[simulated_collector()], access=access_config()
    )
    served = []
    try:
        for round_id in (1, 2):
            agg.rounds.open_round(round_config(round_id, min_clients=2, max_clients=2))
            for i in range(2):
                with site_client(agg.endpoint, policy, f"site-{i}", timeout=20) as client:
                    if i == 0:
                        info = client.round_info(round_id)
                        assert info.round_key is not None
                        served.append(info.round_key.statement.hpke_public_key)
                    client.submit_update(make_adapter(i), round_id=round_id, num_examples=10)
            agg.rounds.wait_closed(round_id, 10.0)
        log_key = agg.keys.log_private_key
    finally:
        agg.stop(grace=0.5)
    return TwoRounds(path, log_key, (served[0], served[1]))


# ------------------------------------------------------------------ capture, then close


def test_an_upload_captured_in_round_r_cannot_be_opened_once_round_r_closed(
    running: RunningAggregator,
) -> None:
    policy = load_builtin_policy(DEV)
    running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
        # The sealed bytes exactly as they go on the wire: what a relay would record.
        captured = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
        client.send(captured)
        running.rounds.wait_closed(1, 10.0)

        round1 = running.rounds._book.rounds[1].key
        assert round1.dropped
        with pytest.raises(RoundKeyDroppedError):
            round1.private_key()
        assert "dropped" in repr(round1) and round1.public_key.hex() not in repr(round1)

        # Replayed into round 1: the round is closed and refuses it by name.
        with pytest.raises(UpdateRejectedError) as replay:
            client.send(captured)
        assert replay.value.reason is RejectReason.ROUND_NOT_OPEN

        # Round 2 is open with a key of its own. The captured upload, re-addressed to it and
        # re-signed by the site (the header is the only part anyone could change), does not
        # unwrap: it was sealed to round 1's key.
        running.rounds.open_round(round_config(2, min_clients=1, max_clients=1))
        round2 = running.rounds._book.rounds[2].key
        assert round2.public_key != round1.public_key
        moved = dataclasses.replace(captured.header, round_id=2, base_round_id=1).sign(
            site_identity("site-0").signing_key
        )
        with pytest.raises(UpdateRejectedError) as readdressed:
            client.send(dataclasses.replace(captured, header=moved))
        assert readdressed.value.reason is RejectReason.UNWRAP_FAILED

    # Nothing the enclave still holds opens it, even under the exact context it was sealed
    # for: the enclave keeps no lifetime X25519 private key, and round 2's is another key.
    assert not any(
        isinstance(getattr(running.keys, f.name), X25519PrivateKey) for f in dataclasses.fields(running.keys)
    )
    context = captured.header.seal_context(
        running.keys.bound.binding_for(captured.header.challenge), round1.public_key
    )
    with pytest.raises(EnvelopeUnwrapError):
        StreamOpener.open(captured.header.wrapped_key, round2.private_key(), context, 1 << 20)


def test_a_failed_round_and_a_shutdown_drop_the_round_key(running: RunningAggregator) -> None:
    running.rounds.open_round(round_config(1, min_clients=1, max_clients=1, deadline_seconds=0.2))
    failed = running.rounds.wait_closed(1, 10.0)
    assert failed.state.value == "failed"
    assert running.rounds._book.rounds[1].key.dropped
    running.rounds.open_round(round_config(2, min_clients=1, max_clients=1))
    assert not running.rounds._book.rounds[2].key.dropped
    running.rounds.shutdown()
    assert running.rounds._book.rounds[2].key.dropped


# ------------------------------------------------------------------ the client's check


def _serving(running: RunningAggregator, change: Callable[[RoundSnapshot], RoundSnapshot]) -> None:
    """Make GetRound serve `change(snapshot)`: what the host could put on the wire."""
    honest = running.rounds.snapshot
    running.rounds.snapshot = lambda round_id: change(honest(round_id))  # type: ignore[method-assign]


def _sends(client: Any) -> list[object]:
    calls: list[object] = []
    submit = client._connection.submit

    def spy(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        return str(submit(*args, **kwargs))

    client._connection.submit = spy
    return calls


def test_a_round_key_not_signed_by_the_attested_log_key_is_refused_and_nothing_is_sent(
    running: RunningAggregator,
) -> None:
    policy = load_builtin_policy(DEV)
    config = round_config(1, min_clients=1, max_clients=1)
    running.rounds.open_round(config)
    impostor = Ed25519PrivateKey.generate()  # e.g. the host's own key, not the enclave's
    foreign_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    forged = RoundKeyStatement(ORIGIN, 1, config.digest(), foreign_key).sign(impostor)
    _serving(running, lambda snap: dataclasses.replace(snap, round_key=forged))
    size = running.log.size
    with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
        sent = _sends(client)
        with pytest.raises(ForeignRoundKeyError, match="not signed by the attested enclave's log key"):
            client.submit_update(make_adapter(0), round_id=1, num_examples=10)
        assert sent == []
    assert running.log.size == size  # the enclave saw nothing: no entry at all

    # The enclave's genuine key with a signature moved onto another key: refused alike.
    genuine = running.rounds._book.rounds[1].key.signed
    swapped = SignedRoundKey(
        dataclasses.replace(genuine.statement, hpke_public_key=foreign_key), genuine.signature
    )
    _serving(running, lambda snap: dataclasses.replace(snap, round_key=swapped))
    with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
        sent = _sends(client)
        with pytest.raises(ForeignRoundKeyError):
            client.submit_update(make_adapter(0), round_id=1, num_examples=10)
        assert sent == []


def test_a_round_without_a_served_key_is_refused(running: RunningAggregator) -> None:
    policy = load_builtin_policy(DEV)
    running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    _serving(running, lambda snap: dataclasses.replace(snap, round_key=None))
    with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
        sent = _sends(client)
        with pytest.raises(MissingRoundKeyError, match="nothing was sent"):
            client.submit_update(make_adapter(0), round_id=1, num_examples=10)
        assert sent == []


def test_the_round_key_statement() -> None:
    log_key = Ed25519PrivateKey.generate()
    log_public = log_key.public_key().public_bytes_raw()
    digest = hashlib.sha256(b"config").digest()
    pair = RoundKeyPair.generate(log_origin=ORIGIN, round_id=3, config_digest=digest, log_private_key=log_key)
    message = pair.signed.statement.message()
    assert message.startswith(ROUND_KEY_DOMAIN)
    body = message[len(ROUND_KEY_DOMAIN) :]
    assert body == canonical_json(
        {
            "config_digest": b64encode(digest),
            "hpke_public_key": b64encode(pair.public_key),
            "log_origin": ORIGIN,
            "round_id": 3,
        }
    )
    verified = pair.signed.verify(log_public, round_id=3, config_digest=digest)
    assert isinstance(verified, VerifiedRoundKey)
    assert verified.public_key_obj().public_bytes_raw() == pair.public_key == verified.hpke_public_key
    with pytest.raises(RoundKeyMismatchError, match="round 3's, not round 4's"):
        pair.signed.verify(log_public, round_id=4, config_digest=digest)
    with pytest.raises(RoundKeyMismatchError, match="another config"):
        pair.signed.verify(log_public, round_id=3, config_digest=bytes(32))
    with pytest.raises(ForeignRoundKeyError):
        pair.signed.verify(
            Ed25519PrivateKey.generate().public_key().public_bytes_raw(), round_id=3, config_digest=digest
        )
    with pytest.raises(TypeError):
        VerifiedRoundKey(object(), pair.signed.statement, log_public)
    for bad in (
        {"log_origin": ""},
        {"round_id": 0},
        {"round_id": True},
        {"config_digest": bytes(31)},
        {"hpke_public_key": bytes(33)},
    ):
        with pytest.raises(FormatError):
            dataclasses.replace(pair.signed.statement, **bad)
    with pytest.raises(FormatError):
        SignedRoundKey(pair.signed.statement, bytes(63))
    assert round_key_message(ORIGIN, 3, digest, pair.public_key) == message
    pair.drop()
    pair.drop()
    with pytest.raises(RoundKeyDroppedError):
        pair.private_key()


def test_the_enclave_never_serializes_an_x25519_private_key() -> None:
    """No private_bytes / private_bytes_raw anywhere in the aggregator: its HPKE private keys
    are cryptography key objects only, never a Python bytes object. (The one exception is the
    enclave's TLS key, not an HPKE key: gRPC's server credentials take it only as PEM.)"""
    offenders = []
    for path in sorted((ROOT / "aggregator").rglob("*.py")):
        if path == ROOT / "aggregator" / "_tls.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("private_bytes", "private_bytes_raw"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------------------ the auditor


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code = audit_main(["verify", str(path), "--builtin-policy", DEV, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if report["findings"] else 0)
    findings: list[dict[str, Any]] = report["findings"]
    return findings


def _opened(path: Path) -> list[LogEntry]:
    return [e for e in log_entries(path) if isinstance(e.body, RoundOpened)]


def _forge(rounds: TwoRounds, tmp_path: Path, entry: LogEntry, fields: dict[str, Any]) -> Path:
    return resigned_log(rounds.path, tmp_path / "forged.log", ORIGIN, rounds.log_key, entry.index, fields)


def test_the_log_shows_each_rounds_key_and_the_auditor_verifies_its_chain(
    two_rounds: TwoRounds, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _verify(two_rounds.path, capsys) == []
    entries = log_entries(two_rounds.path)
    (started,) = [e.body for e in entries if isinstance(e.body, EnclaveStarted)]
    assert isinstance(started, EnclaveStarted)
    bodies = [e.body for e in _opened(two_rounds.path)]
    keys = []
    for body, served in zip(bodies, two_rounds.served, strict=True):
        assert isinstance(body, RoundOpened)
        assert body.round_public_key == served  # what clients sealed to is what the log shows
        assert body.round_public_key != started.hpke_public_key
        assert body.round_key_signature is not None
        statement = RoundKeyStatement(ORIGIN, body.round_id, body.config_digest, body.round_public_key)
        SignedRoundKey(statement, body.round_key_signature).verify(
            started.log_public_key, round_id=body.round_id, config_digest=body.config_digest
        )
        keys.append(body.round_public_key)
    assert len(set(keys)) == 2
    report = audit_log(two_rounds.path, load_builtin_policy(DEV))
    assert [r.to_json_obj()["round_public_key"] for r in report.rounds] == [b64encode(k) for k in keys]


def test_a_round_key_signed_by_another_key_is_a_finding(
    two_rounds: TwoRounds, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _opened(two_rounds.path)
    body = first.body
    assert isinstance(body, RoundOpened)
    foreign = X25519PrivateKey.generate().public_key().public_bytes_raw()
    forged = RoundKeyStatement(ORIGIN, 1, body.config_digest, foreign).sign(Ed25519PrivateKey.generate())
    fields = dataclasses.replace(
        body, round_public_key=foreign, round_key_signature=forged.signature
    ).to_fields()
    findings = _verify(_forge(two_rounds, tmp_path, first, fields), capsys)
    assert [(f["kind"], f["index"], f["field"]) for f in findings] == [
        ("invalid_round_key", first.index, "round_key_signature")
    ]
    assert "does not verify under the log key of the enclave that opened the round" in findings[0]["message"]


def test_a_round_key_signed_for_another_round_is_a_finding(
    two_rounds: TwoRounds, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Round 1's genuine key and signature copied into round 2's entry: reused, and the
    # signature names round 1.
    first, second = _opened(two_rounds.path)
    one, two = first.body, second.body
    assert isinstance(one, RoundOpened) and isinstance(two, RoundOpened)
    fields = dataclasses.replace(
        two, round_public_key=one.round_public_key, round_key_signature=one.round_key_signature
    ).to_fields()
    findings = _verify(_forge(two_rounds, tmp_path, second, fields), capsys)
    assert {(f["kind"], f["index"], f["field"]) for f in findings} == {
        ("invalid_round_key", second.index, "round_public_key"),
        ("invalid_round_key", second.index, "round_key_signature"),
    }
    assert any("reuses round 1's key" in f["message"] for f in findings)


def test_a_missing_round_key_is_a_finding(
    two_rounds: TwoRounds, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _opened(two_rounds.path)
    assert isinstance(first.body, RoundOpened)
    fields = dataclasses.replace(first.body, round_public_key=None, round_key_signature=None).to_fields()
    findings = _verify(_forge(two_rounds, tmp_path, first, fields), capsys)
    assert [(f["kind"], f["index"], f["field"]) for f in findings] == [
        ("invalid_round_key", first.index, "round_public_key")
    ]
    assert "records no round key" in findings[0]["message"]


# ------------------------------------------------------------------ two enclaves, one log


def _resigned_by_each_enclave(
    source: Path, out: Path, log_keys: list[Ed25519PrivateKey], index: int, fields: dict[str, Any]
) -> Path:
    """resigned_log over a log several enclaves wrote: entry `index` replaced, and every
    checkpoint re-signed over the changed tree by the key of the enclave that signed it
    (the enclave's key, the forgery's only tool, for each enclave's own checkpoints)."""
    by_id = {NoteSigner(ORIGIN, key).key_id: n for n, key in enumerate(log_keys)}
    versions = [
        resigned_log(source, out.with_suffix(f".{n}"), ORIGIN, key, index, fields).read_bytes().splitlines()
        for n, key in enumerate(log_keys)
    ]
    lines = []
    for number, line in enumerate(source.read_bytes().splitlines(), 1):
        note = decode_record(line, line_number=number).checkpoint
        if note is None:
            lines.append(versions[0][number - 1])  # an entry: the same in every version
        else:
            (signature,) = unverified_signatures(note)
            lines.append(versions[by_id[signature.key_id]][number - 1])
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    return out


def test_a_round_key_signed_by_an_earlier_enclaves_log_key_is_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The aggregator restarted on its log: round 2 is opened by the second enclave, so
    only the second enclave's log key may vouch for its key. A round key signed by the
    first enclave's log key (attested too, but no longer the one writing) is a finding,
    even with every checkpoint validly re-signed by its own enclave's key."""
    path = tmp_path / "audit.log"
    log_keys = []
    for round_id in (1, 2):  # one enclave per round; round 1 is left open at the restart
        agg = start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[simulated_collector()], access=access_config()
        )
        try:
            agg.rounds.open_round(round_config(round_id, min_clients=1, max_clients=1))
            log_keys.append(agg.keys.log_private_key)
        finally:
            agg.stop(grace=0.5)
    entries = log_entries(path)
    started = [e for e in entries if isinstance(e.body, EnclaveStarted)]
    second = _opened(path)[-1]
    body = second.body
    assert isinstance(body, RoundOpened) and body.round_id == 2
    assert len(started) == 2 and started[0].index < second.index and started[1].index < second.index
    # Each checkpoint is signed by one of the two enclaves' keys, and both signed some.
    signers = {
        unverified_signatures(note)[0].key_id
        for n, line in enumerate(path.read_bytes().splitlines(), 1)
        if (note := decode_record(line, line_number=n).checkpoint) is not None
    }
    assert signers == {NoteSigner(ORIGIN, key).key_id for key in log_keys}
    capsys.readouterr()  # the aggregators' own log lines
    assert _verify(path, capsys) == []

    foreign = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def forged_by(log_key: Ed25519PrivateKey) -> Path:
        signed = RoundKeyStatement(ORIGIN, 2, body.config_digest, foreign).sign(log_key)
        fields = dataclasses.replace(
            body, round_public_key=foreign, round_key_signature=signed.signature
        ).to_fields()
        return _resigned_by_each_enclave(path, tmp_path / "forged.log", log_keys, second.index, fields)

    # The same new key signed by the enclave that opened round 2: the forgery machinery
    # alone leaves a log that verifies.
    assert _verify(forged_by(log_keys[1]), capsys) == []
    # Signed by the first enclave's key instead: refused, on the signature.
    findings = _verify(forged_by(log_keys[0]), capsys)
    assert [(f["kind"], f["index"], f["field"]) for f in findings] == [
        ("invalid_round_key", second.index, "round_key_signature")
    ]
    assert "does not verify under the log key of the enclave that opened the round" in findings[0]["message"]
