"""Assembling a running aggregator: keys, evidence collectors, audit log, rounds, gRPC server.

The server speaks TLS only, with a key made here in memory whose certificate the evidence
binds (attested TLS, fedseal/tls.py). `listen` serves TLS without client certificates
(public calls, and callers that prove an enrolled key per call); `listen_mtls` (with the
consortium CA in the access config) requires a client certificate from that CA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from aggregator._admission import AdmissionInterceptor
from aggregator._config import JobConfig
from aggregator._deadlines import Deadlines
from aggregator._health import HealthEndpoint
from aggregator._identity import AccessConfig, AccessControl
from aggregator._log import AuditLog, CommitMode, Cosigner, LogHistory
from aggregator._metrics import ListenAddress, Metrics, MetricsServer
from aggregator._rounds import DEFAULT_UPLOAD_LINE, RoundManager
from aggregator._selfattest import SelfAttestationGate
from aggregator._service import AggregatorService, add_service_to_server
from aggregator._tls import EnclaveTlsIdentity
from aggregator.enclave._keys import EnclaveKeys
from attestation import EvidenceCollector, EvidenceKind, build_bundle
from fedseal.logformat import handover_challenge
from fedseal.logschema import EnclaveStarted, FailureCause, RoundFailed, TornTailDropped
from fedseal.roundconfig import MAX_CHUNK_SIZE, ConfigError

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
    tls: EnclaveTlsIdentity
    access: AccessControl
    service: AggregatorService
    mtls_port: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    health: HealthEndpoint = field(default_factory=HealthEndpoint)
    metrics_server: MetricsServer | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)

    @property
    def endpoint(self) -> str:
        """The TLS port (no client certificate) on loopback."""
        return f"127.0.0.1:{self.port}"

    @property
    def mtls_endpoint(self) -> str:
        """The mutual-TLS port on loopback; ValueError if there is none."""
        if self.mtls_port is None:
            raise ValueError("this aggregator has no mutual-TLS port (listen_mtls)")
        return f"127.0.0.1:{self.mtls_port}"

    def stop(self, grace: float = 1.0) -> None:
        self.health.not_serving()  # first: probes and balancers stop sending work
        self.rounds.shutdown()
        self.server.stop(grace).wait()
        self.deadlines.stop()
        self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.log.close()


def start_aggregator(
    *,
    log_path: Path,
    log_origin: str,
    collectors: Sequence[EvidenceCollector],
    access: AccessConfig,
    job: JobConfig | None = None,
    listen: str = "127.0.0.1:0",
    listen_mtls: str | None = None,
    tls_names: Sequence[str] = (),
    max_workers: int = 16,
    upload_line: int = DEFAULT_UPLOAD_LINE,
    commit_mode: CommitMode = CommitMode.GROUP,
    cosigner: Cosigner | None = None,
    spool_dir: Path | None = None,
    initial_adapter: bytes | None = None,
    metrics: Metrics | None = None,
    metrics_listen: ListenAddress | None = None,
    health_listen: ListenAddress | None = None,
    self_attestation: SelfAttestationGate | None = None,
    accumulator_device: str = "cpu",
) -> RunningAggregator:
    """Make fresh keys (TLS included), record them with their evidence in the log (creating
    it or resuming it with a key handover), record who may call, and serve.

    Raises ConfigError when the access config cannot work with the listeners (a client CA
    without a mutual-TLS listener, or sites enrolled by certificate with no way to present it).

    With ``self_attestation`` (hardware mode), the evidence of the new keys must pass the
    operator's policy and the GPU ready state must be set before anything is logged or
    served; otherwise a PreflightError subclass is raised. Without it no GPU is released.

    ``accumulator_device`` ("cpu" or "cuda") places the FedAvg/FedProx accumulator.

    ``max_workers`` threads serve calls (a quarter of them at most for anonymous callers);
    ``upload_line`` more are there for uploads waiting, header only, for a decryption
    buffer, so a full line never takes the threads other calls need.
    """
    _check_listeners(access, listen_mtls)
    metrics = metrics if metrics is not None else Metrics()
    tls = EnclaveTlsIdentity.generate(tls_names)
    keys = EnclaveKeys.generate(tls.certificate_sha256)
    log = AuditLog.open(
        log_path, log_origin, keys.log_private_key, commit_mode=commit_mode, cosigner=cosigner
    )
    try:
        _start_enclave(log, keys, collectors, self_attestation)
        metrics.evidence_made()
        history = log.history
        rounds = RoundManager(
            log,
            keys,
            job,
            last_round_id=history.last_round_id if history else 0,
            spool_dir=spool_dir,
            initial_adapter=initial_adapter,
            metrics=metrics,
            accumulator_device=accumulator_device,
            dp_history=history.dp if history else None,
            upload_line=upload_line,
        )
        gate = AccessControl(
            access,
            audience=keys.bound.log_public_key,
            attestation_audience=tls.certificate_sha256,
            log=log,
            current_round=rounds.current_round_id,
        )
        gate.record_start()
    except BaseException:
        log.close()
        raise
    deadlines = Deadlines()  # one thread cancels every stalled call
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers + upload_line, thread_name_prefix="fedseal-rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default on Linux: a second aggregator (or any process)
            # could then bind the same port and take half the connections, and --listen and
            # --listen-mtls could share one. A port in use is refused instead.
            ("grpc.so_reuseport", 0),
            # BDP probing stays on (gRPC's default): windows grow to the link's bandwidth-
            # delay product, which uploads across a WAN need (64 KiB windows measured 80 vs
            # 500 MB/s at 20 ms RTT). Memory stays flat in the number of clients because an
            # upload sends no chunk before it is admitted (SubmitUpdate's send_chunks).
        ],
        maximum_concurrent_rpcs=(max_workers + upload_line) * 4,
        interceptors=[
            AdmissionInterceptor(gate, anonymous_slots=max(1, max_workers // 4), deadlines=deadlines)
        ],
    )
    service = AggregatorService(keys, collectors, rounds, log, gate, deadlines=deadlines, metrics=metrics)
    add_service_to_server(service, server)
    health = HealthEndpoint()  # NOT_SERVING until the job's first round is open
    health.add_to(server)
    port = _bind(server, listen, tls.server_credentials())
    mtls_port = (
        _bind(server, listen_mtls, tls.server_credentials(access.client_ca_pem))
        if listen_mtls is not None
        else None
    )
    if port == 0 or mtls_port == 0:
        log.close()
        raise OSError(f"cannot listen on {listen if port == 0 else listen_mtls}")
    metrics_server: MetricsServer | None = None
    try:
        if health_listen is not None:
            health.listen_plaintext(health_listen)
        if metrics_listen is not None:
            metrics_server = MetricsServer(metrics, metrics_listen)
    except OSError:
        health.stop()
        log.close()
        raise
    server.start()
    try:
        rounds.start_job()
    except BaseException:
        # Opening the first round failed (e.g. the log cannot be written): stop serving
        # rather than leave a listening aggregator with no round and a broken state.
        health.stop()
        if metrics_server is not None:
            metrics_server.stop()
        rounds.shutdown()
        server.stop(None).wait()
        log.close()
        raise
    health.serving()
    _log.info(
        "aggregator_started",
        endpoint=listen.rsplit(":", 1)[0] + f":{port}",
        log=str(log_path),
        log_origin=log_origin,
        log_verifier_key=log.verifier_key,
        tls_certificate_sha256=tls.certificate_sha256.hex(),
        mtls_port=mtls_port,
        enrolled_sites=len(access.enrolment.sites),
        max_workers=max_workers,
        upload_line=upload_line,
        health_port=health.port,
        metrics_port=metrics_server.port if metrics_server is not None else None,
    )
    return RunningAggregator(
        server,
        port,
        rounds,
        log,
        keys,
        tls,
        gate,
        service,
        mtls_port,
        metrics,
        health,
        metrics_server,
        deadlines,
    )


def _check_listeners(access: AccessConfig, listen_mtls: str | None) -> None:
    if listen_mtls is not None and access.client_ca_pem is None:
        raise ConfigError("a mutual-TLS listener needs the CA that issues site certificates (--client-ca)")
    if listen_mtls is None and access.client_ca_pem is not None:
        raise ConfigError(
            "a client CA (--client-ca) is given but there is no mutual-TLS listener (--listen-mtls)"
        )
    needs = [s.site_id for s in access.enrolment.sites if s.requires_certificate]
    if needs and listen_mtls is None:
        raise ConfigError(
            f"sites {needs[:5]} are enrolled with client certificates, but there is no mutual-TLS "
            "listener (--listen-mtls with --client-ca) to present them on"
        )


def _start_enclave(
    log: AuditLog,
    keys: EnclaveKeys,
    collectors: Sequence[EvidenceCollector],
    self_attestation: SelfAttestationGate | None = None,
) -> None:
    """Append this enclave's `enclave_started` entry, then what a resumed log must record."""
    history = log.history
    previous = history.last_checkpoint if history is not None else None
    # A new log: evidence for a challenge of our own. A resumed log (key handover): the
    # challenge is bound to the last checkpoint of the previous enclave, so the new key's
    # evidence commits to the exact log state it continues.
    challenge = handover_challenge(previous) if previous is not None else os.urandom(32)
    bundle = build_bundle(keys.bound, challenge, collectors)
    if self_attestation is not None:
        # The same bundle, verified as a client would, before it is logged or served.
        gate = self_attestation.open(bundle, challenge, keys.bound)
        _log.info(
            "self_attestation_passed",
            policy=gate.verified.policy_name,
            evidence_digest=gate.verified.bundle_digest.hex(),
            gpus_released=list(gate.release.gpu_uuids),
            gpus_already_ready=gate.release.already_ready,
        )
    log.start_enclave(
        EnclaveStarted(
            log_origin=log.origin,
            hpke_public_key=keys.bound.hpke_public_key,
            log_public_key=keys.bound.log_public_key,
            evidence_bundle=bundle.to_bytes(),
            evidence_digest=bundle.digest(),
            challenge=challenge,
            insecure_simulated=any(e.kind is EvidenceKind.SIMULATED_INSECURE for e in bundle.evidence),
            previous_checkpoint=previous,
        )
    )
    if history is not None:
        _record_resume(log, history)


def _record_resume(log: AuditLog, history: LogHistory) -> None:
    dropped = history.dropped
    if dropped is not None:
        log.append(
            TornTailDropped(
                offset=dropped.offset,
                dropped_bytes=dropped.size,
                dropped_digest=dropped.digest,
                dropped_lines=dropped.complete_lines,
            )
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
            RoundFailed(
                round_id=round_id,
                reason="the enclave running it stopped, and its updates were held in that "
                "enclave's memory only",
                accepted=accepted,
                cause=FailureCause.ENCLAVE_RESTARTED,
            )
        )
        _log.warning("round_abandoned", round_id=round_id, accepted=accepted)
    _log.info(
        "audit_log_resumed",
        entries=history.size,
        key_entry=log.key_entry,
        last_round_id=history.last_round_id,
    )


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials) -> int:
    # gRPC raises RuntimeError when it cannot resolve or bind; 0 (the caller's check) is the
    # same failure, so both end as the OSError the CLI reports.
    try:
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        return 0
