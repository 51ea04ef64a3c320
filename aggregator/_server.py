"""Assembling a running aggregator: keys, evidence collectors, audit log, rounds, gRPC server."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from aggregator._config import JobConfig
from aggregator._log import AuditLog, CommitMode, Cosigner, LogHistory
from aggregator._rounds import RoundManager
from aggregator._service import AggregatorService
from aggregator.enclave._keys import EnclaveKeys
from attestation import EvidenceCollector, EvidenceKind, build_bundle
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.canonical import b64encode
from fedseal.logformat import EntryKind, FailureCause, handover_challenge
from fedseal.roundconfig import MAX_CHUNK_SIZE

__all__ = ["RunningAggregator", "start_aggregator"]

_log = structlog.get_logger("fedseal.aggregator")

# The largest message the transport accepts: one chunk plus its AEAD tag and framing.
MAX_MESSAGE_BYTES = MAX_CHUNK_SIZE + 64 * 1024


@dataclass
class RunningAggregator:
    server: grpc.Server
    port: int
    rounds: RoundManager
    log: AuditLog
    keys: EnclaveKeys

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        self.rounds.shutdown()
        self.server.stop(grace).wait()
        self.log.close()


def start_aggregator(
    *,
    log_path: Path,
    log_origin: str,
    collectors: Sequence[EvidenceCollector],
    job: JobConfig | None = None,
    listen: str = "127.0.0.1:0",
    max_workers: int = 16,
    commit_mode: CommitMode = CommitMode.GROUP,
    cosigner: Cosigner | None = None,
) -> RunningAggregator:
    """Make fresh keys, record them with their evidence in the log (creating it or resuming
    it with a key handover), and serve."""
    keys = EnclaveKeys.generate()
    log = AuditLog.open(
        log_path, log_origin, keys.log_private_key, commit_mode=commit_mode, cosigner=cosigner
    )
    try:
        _start_enclave(log, keys, collectors)
    except BaseException:
        log.close()
        raise
    history = log.history
    rounds = RoundManager(log, keys, job, last_round_id=history.last_round_id if history else 0)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedseal-rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    pb_grpc.add_AggregatorServicer_to_server(AggregatorService(keys, collectors, rounds, log), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    if port == 0:
        log.close()
        raise OSError(f"cannot listen on {listen}")
    server.start()
    rounds.start_job()
    _log.info(
        "aggregator_started",
        endpoint=listen.rsplit(":", 1)[0] + f":{port}",
        log=str(log_path),
        log_origin=log_origin,
        log_verifier_key=log.verifier_key,
    )
    return RunningAggregator(server, port, rounds, log, keys)


def _start_enclave(log: AuditLog, keys: EnclaveKeys, collectors: Sequence[EvidenceCollector]) -> None:
    """Append this enclave's `enclave_started` entry, then what a resumed log must record."""
    history = log.history
    previous = history.last_checkpoint if history is not None else None
    # A new log: evidence for a challenge of our own. A resumed log (key handover): the
    # challenge is bound to the last checkpoint of the previous enclave, so the new key's
    # evidence commits to the exact log state it continues.
    challenge = handover_challenge(previous) if previous is not None else os.urandom(32)
    bundle = build_bundle(keys.bound, challenge, collectors)
    fields: dict[str, object] = {
        "log_origin": log.origin,
        "hpke_public_key": b64encode(keys.bound.hpke_public_key),
        "log_public_key": b64encode(keys.bound.log_public_key),
        "evidence_bundle": b64encode(bundle.to_bytes()),
        "evidence_digest": b64encode(bundle.digest()),
        "challenge": b64encode(challenge),
        "insecure_simulated": any(e.kind is EvidenceKind.SIMULATED_INSECURE for e in bundle.evidence),
    }
    if previous is not None:
        fields["previous_checkpoint"] = previous
    log.start_enclave(fields)
    if history is not None:
        _record_resume(log, history)


def _record_resume(log: AuditLog, history: LogHistory) -> None:
    dropped = history.dropped
    if dropped is not None:
        log.append(
            EntryKind.TORN_TAIL_DROPPED,
            {
                "offset": dropped.offset,
                "dropped_bytes": dropped.size,
                "dropped_digest": b64encode(dropped.digest),
                "dropped_lines": dropped.complete_lines,
            },
        )
        _log.warning(
            "audit_log_torn_tail_dropped",
            offset=dropped.offset,
            dropped_bytes=dropped.size,
            kept_in=str(dropped.saved_to),
        )
    if history.open_round is not None:
        round_id, accepted = history.open_round
        log.append(
            EntryKind.ROUND_FAILED,
            {
                "round_id": round_id,
                "reason": "the enclave running it stopped, and its updates were held in that "
                "enclave's memory only",
                "accepted": accepted,
                "cause": FailureCause.ENCLAVE_RESTARTED.value,
            },
        )
        _log.warning("round_abandoned", round_id=round_id, accepted=accepted)
    _log.info(
        "audit_log_resumed",
        entries=history.size,
        key_entry=log.key_entry,
        last_round_id=history.last_round_id,
    )
