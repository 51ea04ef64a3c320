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
from aggregator._log import AuditLog
from aggregator._rounds import RoundManager
from aggregator._service import AggregatorService
from aggregator.enclave._keys import EnclaveKeys
from attestation import EvidenceCollector, EvidenceKind, build_bundle
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.canonical import b64encode
from fedseal.logformat import EntryKind
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
) -> RunningAggregator:
    """Make fresh keys, record them with their evidence as the log's first entry, and serve."""
    keys = EnclaveKeys.generate()
    log = AuditLog(log_path, log_origin, keys.log_private_key)
    # The first entry binds the new keys to evidence made for a challenge of our own, so an
    # auditor holding only the log can check which enclave signed every later checkpoint.
    challenge = os.urandom(32)
    bundle = build_bundle(keys.bound, challenge, collectors)
    log.append(
        EntryKind.ENCLAVE_STARTED,
        {
            "log_origin": log_origin,
            "hpke_public_key": b64encode(keys.bound.hpke_public_key),
            "log_public_key": b64encode(keys.bound.log_public_key),
            "evidence_bundle": b64encode(bundle.to_bytes()),
            "evidence_digest": b64encode(bundle.digest()),
            "challenge": b64encode(challenge),
            "insecure_simulated": any(e.kind is EvidenceKind.SIMULATED_INSECURE for e in bundle.evidence),
        },
    )
    rounds = RoundManager(log, keys, job)
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
