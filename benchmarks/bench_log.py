"""Audit log benchmarks: durable append throughput, and full verification of a large log.

    python benchmarks/bench_log.py                       # both, 1,000,000-entry log
    python benchmarks/bench_log.py --entries 100000      # a quicker verification run
    python benchmarks/bench_log.py --skip-verify --dir /var/lib/fedseal   # appends on that disk

Appends use the real writer (aggregator.AuditLog: entry lines + signed checkpoint, one
write and one fsync per commit) in --dir, with T threads appending at once:

* per-entry commits (one fsync and one signature per entry), and
* group commit (the default: appends that arrive while a commit is being written share
  the next one),

next to the peer that bounds them: the same bytes written with a bare os.write + os.fsync
per line, with no tree, no signature and no concurrency.

Verification generates a log in the writer's exact format (a real `enclave_started`
entry with simulated evidence, the enrolment of every site, rounds of `update_accepted`
entries each carrying its site's Ed25519 signature, and a signed checkpoint every --batch
entries, the shape group commit gives under load), then times `auditor.audit_log`,
the same code as `fedseal-audit verify`. The peer is the floor for any verifier of this
format: one SHA-256 leaf hash per entry and one Ed25519 verification per checkpoint and
per accepted update (its site signature) with `cryptography` alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator._log import AuditLog, CommitMode  # noqa: E402
from aggregator._server import _start_enclave  # noqa: E402
from aggregator.enclave._keys import EnclaveKeys  # noqa: E402
from attestation import InsecureSimulatedTeeCollector, load_builtin_policy  # noqa: E402
from auditor import audit_log  # noqa: E402
from fedseal.canonical import b64encode, canonical_json  # noqa: E402
from fedseal.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from fedseal.enrolment import EnrolledSite, Enrolment  # noqa: E402
from fedseal.envelope import DEFAULT_SUITE  # noqa: E402
from fedseal.logformat import (  # noqa: E402
    ENTRY_RECORD_PREFIX,
    CheckpointExtensions,
    EntryKind,
    LogEntry,
    encode_checkpoint_record,
)
from fedseal.logschema import decode_body  # noqa: E402
from fedseal.merkle import MerkleTree  # noqa: E402
from fedseal.note import NoteSigner  # noqa: E402
from fedseal.roundkey import RoundKeyStatement  # noqa: E402
from fedseal.signed_request import key_id  # noqa: E402
from fedseal.wire import PROTOCOL_VERSION, update_signature_message  # noqa: E402

ORIGIN = "fedseal.bench/log"
_FIELDS = {
    "round_id": 1,
    "client_id": "hospital-00000",
    "reason": "malformed",
    "detail": "benchmark entry of a realistic size: a refusal names its reason in a sentence",
}
_BODY = decode_body(EntryKind.UPDATE_REJECTED, _FIELDS)


_COLLECTOR: list[InsecureSimulatedTeeCollector] = []


def _collector() -> InsecureSimulatedTeeCollector:
    # One collector for the whole run (it announces itself once, loudly, as it should).
    if not _COLLECTOR:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _COLLECTOR.append(InsecureSimulatedTeeCollector("bench"))
    return _COLLECTOR[0]


# ----------------------------------------------------------------------------- appends


def _append_run(directory: Path, mode: CommitMode, threads: int, per_thread: int) -> tuple[float, int]:
    path = directory / f"append-{mode.value}-{threads}.log"
    path.unlink(missing_ok=True)
    keys = EnclaveKeys.generate()
    log = AuditLog.open(path, ORIGIN, keys.log_private_key, commit_mode=mode)
    _start_enclave(log, keys, [_collector()])
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            log.append(_BODY)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    log.close()
    commits = path.read_bytes().count(b'{"checkpoint":') - 1
    path.unlink()
    return threads * per_thread / elapsed, commits


def _raw_fsync_peer(directory: Path, count: int, line_size: int) -> float:
    path = directory / "raw.log"
    line = b"x" * (line_size - 1) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(count):
        os.write(fd, line)
        os.fsync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    path.unlink()
    return count / elapsed


def bench_appends(directory: Path, per_thread: int) -> None:
    print(f"Durable appends in {directory} (one fsync per commit; entries/s):")
    entry_line = len(ENTRY_RECORD_PREFIX) + len(canonical_json({**_FIELDS, "index": 0})) + 60
    peer = _raw_fsync_peer(directory, per_thread * 4, entry_line + 260)
    print(f"  peer: bare write+fsync per line, 1 writer           {peer:10.0f} lines/s")
    for mode in (CommitMode.PER_ENTRY, CommitMode.GROUP):
        for threads in (1, 8, 32):
            rate, commits = _append_run(directory, mode, threads, max(per_thread // threads, 50))
            total = threads * max(per_thread // threads, 50)
            print(
                f"  {mode.value:<9} commits, {threads:>2} writer(s)                  {rate:10.0f} entries/s"
                f"   ({total} entries in {commits} commits)"
            )


# ----------------------------------------------------------------------------- verification


def generate_log(path: Path, entries: int, batch: int, per_round: int) -> float:
    """Write a log of about `entries` entries in the writer's format; return the seconds taken.

    Rounds of `per_round` accepted updates, each opened and closed, after the real
    `enclave_started` entry; a checkpoint after every `batch` entries and at the end.
    """
    start = time.perf_counter()
    path.unlink(missing_ok=True)
    keys = EnclaveKeys.generate()
    log = AuditLog.open(path, ORIGIN, keys.log_private_key)
    _start_enclave(log, keys, [_collector()])  # the real first entry and checkpoint
    log.close()
    signer = NoteSigner(ORIGIN, keys.log_private_key)
    tree = MerkleTree()
    first = path.read_bytes().split(b"\n", 1)[0]
    tree.append(first[len(ENTRY_RECORD_PREFIX) : -1])
    spec_digest = hashlib.sha256(canonical_json(_ADAPTER_SPEC)).digest()  # the rounds' spec
    spec = base64.b64encode(spec_digest).decode()
    challenge = hashlib.sha256(b"challenge").digest()
    site_keys = [
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench site %d" % n).digest())
        for n in range(per_round)
    ]
    site_key_ids = [key_id(k.public_key().public_bytes_raw()) for k in site_keys]
    enrolment = Enrolment(
        1,
        tuple(
            EnrolledSite(f"hospital-{n:05d}", (k.public_key().public_bytes_raw(),))
            for n, k in enumerate(site_keys)
        ),
    )
    pending = 0

    def emit(leaf: bytes) -> None:
        nonlocal pending
        tree.append(leaf)
        out.write(ENTRY_RECORD_PREFIX + leaf + b"}\n")
        pending += 1
        if pending == batch:
            checkpoint()

    def checkpoint() -> None:
        nonlocal pending
        ext = CheckpointExtensions(int(time.time() * 1000), 0).lines()
        out.write(
            encode_checkpoint_record(sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root(), ext), signer))
        )
        pending = 0

    with path.open("ab", buffering=1 << 20) as out:
        access = (
            (
                EntryKind.PRINCIPALS_RECORDED,
                {"principals": [], "principals_digest": _digest(canonical_json([]))},
            ),
            (
                EntryKind.ENROLMENT_RECORDED,
                {
                    "enrolment": enrolment.to_json_obj(),
                    "enrolment_digest": b64encode(enrolment.digest()),
                    "version": 1,
                    "cause": "start",
                },
            ),
        )
        for kind, fields in access:
            emit(LogEntry.of(tree.size, "2026-11-25T12:00:00.000Z", kind, fields).leaf_data())
        round_id = 0
        while tree.size < entries:
            round_id += 1
            emit(_round_opened(tree.size, round_id, per_round, keys.log_private_key))
            clients = min(per_round, max(1, entries - tree.size - 1))
            for n in range(clients):
                index = tree.size
                raw = hashlib.sha256(index.to_bytes(8, "big")).digest()
                digest = base64.b64encode(raw).decode()
                client = f"hospital-{n:05d}"
                signed = update_signature_message(
                    protocol_version=PROTOCOL_VERSION,
                    round_id=round_id,
                    base_round_id=round_id - 1,
                    client_id=client,
                    key_id=site_key_ids[n],
                    adapter_spec_digest=spec_digest,
                    num_examples=1000 + n,
                    suite_wire_id=DEFAULT_SUITE.wire_id,
                    idempotency_key_digest=raw,
                    challenge=challenge,
                    chunk_size=1048576,
                    ciphertext_size=67125248,
                    ciphertext_digest=raw,
                )
                signature = b64encode(site_keys[n].sign(signed))
                leaf = (
                    _ACCEPTED
                    % (
                        spec,
                        round_id - 1,
                        b64encode(challenge),
                        digest,
                        client,
                        DEFAULT_SUITE.wire_id,
                        digest,
                        index,
                        site_key_ids[n],
                        1000 + n,
                        PROTOCOL_VERSION,
                        round_id,
                        signature,
                    )
                ).encode()
                if n == 0:  # the template must be exactly the canonical encoding
                    assert LogEntry.from_leaf_data(leaf).leaf_data() == leaf
                emit(leaf)
            closed = LogEntry.of(
                tree.size,
                "2026-11-25T12:30:00.000Z",
                EntryKind.ROUND_CLOSED,
                {
                    "round_id": round_id,
                    "strategy": "fedavg",
                    "participants": [f"hospital-{n:05d}" for n in range(clients)],
                    "total_examples": sum(1000 + n for n in range(clients)),
                    "aggregate_digest": spec,
                    "aggregate_size": 4096,
                },
            )
            emit(closed.leaf_data())
        if pending:
            checkpoint()
    return time.perf_counter() - start


# The canonical JSON of an update_accepted entry (keys in RFC 8785 order), with its
# varying fields left open; generate_log checks it against the real encoder.
_ACCEPTED = (
    '{"adapter_spec_digest":"%s","base_round_id":%d,"challenge":"%s","chunk_size":1048576,'
    '"ciphertext_digest":"%s","ciphertext_size":67125248,"client_id":"%s","hpke_suite":%d,'
    '"idempotency_key_digest":"%s","index":%d,"key_id":"%s","kind":"update_accepted",'
    '"num_examples":%d,"protocol_version":%d,"round_id":%d,"signature":"%s","staleness":0,'
    '"time":"2026-11-25T12:00:00.000Z","v":1}'
)


def _digest(data: bytes) -> str:
    return b64encode(hashlib.sha256(data).digest())


_ADAPTER_SPEC = {
    "format": "fedseal-adapter-spec/v1",
    "tensors": [{"dtype": "F32", "name": "a", "shape": [8, 8]}],
}


def _round_opened(index: int, round_id: int, per_round: int, log_key: Ed25519PrivateKey) -> bytes:
    config = {
        "format": "fedseal-round-config/v1",
        "round_id": round_id,
        "adapter_spec": _ADAPTER_SPEC,
        "min_clients": 1,
        "max_clients": per_round,
        "deadline_ms": 600000,
        "strategy": "fedavg",
        "max_chunk_size": 1048576,
    }
    digest = hashlib.sha256(canonical_json(config)).digest()
    # Each round's own HPKE key, signed by the log key as the enclave does (fedseal/roundkey.py).
    round_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    signed = RoundKeyStatement(ORIGIN, round_id, digest, round_key).sign(log_key)
    entry = LogEntry.of(
        index,
        "2026-11-25T12:00:00.000Z",
        EntryKind.ROUND_OPENED,
        {
            "round_id": round_id,
            "config": config,
            "config_digest": base64.b64encode(digest).decode(),
            "round_public_key": b64encode(round_key),
            "round_key_signature": b64encode(signed.signature),
        },
    )
    return entry.leaf_data()


def _verify_peer(path: Path) -> float:
    """SHA-256 of every leaf, Ed25519 verify of every checkpoint and every update's site
    signature, nothing else."""
    key = Ed25519PrivateKey.generate()
    message = b"x" * 200
    signature = key.sign(message)
    public = key.public_key()
    start = time.perf_counter()
    with path.open("rb") as fh:
        for line in fh:
            if line.startswith(ENTRY_RECORD_PREFIX):
                hashlib.sha256(b"\x00" + line[9:-2]).digest()
                if b'"kind":"update_accepted"' in line:
                    public.verify(signature, message)
            else:
                public.verify(signature, message)
    return time.perf_counter() - start


def bench_verify(directory: Path, entries: int, batch: int, per_round: int) -> None:
    path = directory / "big.log"
    print(f"\nFull verification of a {entries:,}-entry log (a checkpoint every {batch} entries):")
    gen = generate_log(path, entries, batch, per_round)
    size_mb = path.stat().st_size / 1e6
    print(f"  generated in {gen:.1f} s ({size_mb:.0f} MB)")
    policy = load_builtin_policy("dev-insecure-allow-simulated")
    start = time.perf_counter()
    report = audit_log(path, policy)
    elapsed = time.perf_counter() - start
    assert report.findings == (), report.findings[:3]
    assert report.entries >= entries
    print(
        f"  fedseal-audit verify (audit_log):   {elapsed:8.1f} s   {entries / elapsed:10.0f} entries/s   "
        f"({report.checkpoints_verified} checkpoints verified, {len(report.rounds)} rounds reported)"
    )
    peer = _verify_peer(path)
    print(f"  peer: leaf hashes + Ed25519 only:   {peer:8.1f} s   {entries / peer:10.0f} entries/s")
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    p.add_argument("--appends", type=int, default=2000, help="entries per append run (default: %(default)s)")
    p.add_argument("--entries", type=int, default=1_000_000, help="entries in the verified log")
    p.add_argument("--batch", type=int, default=8, help="entries per checkpoint in the verified log")
    p.add_argument("--per-round", type=int, default=1000, help="updates per round in the verified log")
    p.add_argument("--skip-appends", action="store_true")
    p.add_argument("--skip-verify", action="store_true")
    args = p.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="fedseal-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_appends:
            bench_appends(directory, args.appends)
        if not args.skip_verify:
            bench_verify(directory, args.entries, args.batch, args.per_round)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
