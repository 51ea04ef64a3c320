"""gRPC edge of the aggregator: protobuf in, FedSeal types to the core, protobuf out.

Every handler bounds what it reads and maps FedSeal errors onto gRPC status codes with a
message a client can act on. Refusals of an update also carry their one-word reason in
trailing metadata (`fedseal-reject-reason`), so the client SDK can raise a typed error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import grpc
import structlog

from aggregator._log import AuditLog, AuditLogError
from aggregator._rounds import (
    RoundError,
    RoundFailedError,
    RoundManager,
    RoundNotFoundError,
    RoundNotReadyError,
)
from aggregator.enclave._keys import EnclaveKeys
from attestation import EvidenceCollector, build_bundle
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.binding import CHALLENGE_SIZE
from fedseal.canonical import parse_canonical
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import RejectReason
from fedseal.roundconfig import ConfigError, RoundConfig
from fedseal.wire import (
    REJECT_REASON_METADATA_KEY,
    STATUS_FOR_REASON,
    UpdateRejectedError,
    header_from_proto,
)

__all__ = ["AGGREGATE_CHUNK_SIZE", "MAX_WAIT_SECONDS", "AggregatorService"]

AGGREGATE_CHUNK_SIZE = 1024 * 1024
HEADER_TIMEOUT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0
_log = structlog.get_logger("fedseal.aggregator.service")


class AggregatorService(pb_grpc.AggregatorServicer):
    def __init__(
        self,
        keys: EnclaveKeys,
        collectors: Sequence[EvidenceCollector],
        rounds: RoundManager,
        log: AuditLog,
    ) -> None:
        self._keys = keys
        self._collectors = tuple(collectors)
        self._rounds = rounds
        self._log = log

    def GetAttestation(
        self, request: pb.AttestationRequest, context: grpc.ServicerContext
    ) -> pb.AttestationResponse:
        if len(request.challenge) != CHALLENGE_SIZE:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"challenge must be exactly {CHALLENGE_SIZE} random bytes, got {len(request.challenge)}",
            )
        try:
            bundle = build_bundle(self._keys.bound, bytes(request.challenge), self._collectors)
        except FedSealError as exc:
            _log.error("attestation_failed", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot produce evidence: {exc}")
        return pb.AttestationResponse(evidence_bundle=bundle.to_bytes())

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        try:
            snap = self._rounds.snapshot(request.round_id)
        except RoundNotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.RoundInfo(
            round_config=snap.config.canonical_bytes(),
            state=snap.state.value,
            accepted=snap.accepted,
        )

    def SubmitUpdate(
        self, request_iterator: Iterator[pb.SubmitUpdateRequest], context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        # A client that stops sending must not hold a worker thread forever: the watchdog
        # cancels the call (the request iterator then raises) after the header timeout and,
        # once the header is known, when the round's deadline has passed.
        watchdog = _Watchdog(HEADER_TIMEOUT_SECONDS, context)
        try:
            try:
                first = next(request_iterator)
            except (StopIteration, grpc.RpcError):
                self._abort_rejected(
                    context, self._rounds.reject_malformed(0, "", "the stream ended before its header")
                )
            if first.WhichOneof("part") != "header":
                self._abort_rejected(
                    context,
                    self._rounds.reject_malformed(0, "", "the first message must be the header"),
                )
            try:
                header = header_from_proto(first.header)
                header.seal_context(bytes(32))  # validates client id, sizes, suite eagerly
            except FormatError as exc:
                self._abort_rejected(
                    context,
                    self._rounds.reject_malformed(
                        first.header.round_id, first.header.client_id[:128], f"bad header: {exc}"
                    ),
                )
            watchdog.restart(self._rounds.upload_time_limit(header.round_id))
            try:
                receipt = self._rounds.submit(header, _chunks(request_iterator))
            except UpdateRejectedError as exc:
                self._abort_rejected(context, exc)
            except AuditLogError as exc:
                _log.error("audit_log_failed", error=str(exc))
                context.abort(grpc.StatusCode.UNAVAILABLE, "the audit log cannot be written; try later")
        finally:
            watchdog.cancel()
        return pb.SubmitUpdateResponse(receipt=receipt.encode("utf-8"))

    def GetAggregate(
        self, request: pb.GetAggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateChunk]:
        wait = min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - 0.5))
        try:
            published = self._rounds.wait_aggregate(request.round_id, wait)
        except RoundNotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except RoundFailedError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except RoundNotReadyError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; ask again later")
        yield pb.AggregateChunk(manifest=published.signed_manifest.to_bytes())
        data = memoryview(published.data)
        for start in range(0, len(data), AGGREGATE_CHUNK_SIZE):
            yield pb.AggregateChunk(data=bytes(data[start : start + AGGREGATE_CHUNK_SIZE]))

    def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        try:
            _, note = self._log.checkpoint(request.tree_size or None)
        except AuditLogError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        return pb.CheckpointResponse(checkpoint=note)

    def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.ProofResponse:
        try:
            size = request.tree_size or self._log.size
            hashes = self._log.inclusion_proof(request.index, size)
            _, note = self._log.checkpoint(size)
            entry = self._log.entry_leaf(request.index) if request.with_entry else b""
        except AuditLogError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        return pb.ProofResponse(hashes=hashes, checkpoint=note, entry=entry)

    def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.ProofResponse:
        try:
            new_size = request.new_size or self._log.size
            hashes = self._log.consistency_proof(request.old_size, new_size)
            _, note = self._log.checkpoint(new_size)
        except AuditLogError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        return pb.ProofResponse(hashes=hashes, checkpoint=note)

    def OpenRound(self, request: pb.OpenRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        try:
            config = RoundConfig.from_json_obj(
                parse_canonical(bytes(request.round_config), what="round config")
            )
            snap = self._rounds.open_round(config)
        except (ConfigError, FormatError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RoundError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.RoundInfo(
            round_config=snap.config.canonical_bytes(),
            state=snap.state.value,
            accepted=snap.accepted,
        )

    @staticmethod
    def _abort_rejected(context: grpc.ServicerContext, exc: UpdateRejectedError) -> None:
        context.set_trailing_metadata(((REJECT_REASON_METADATA_KEY, exc.reason.value),))
        context.abort(STATUS_FOR_REASON[exc.reason], str(exc))


class _Watchdog:
    """Cancels an RPC when its time runs out (restartable with a new limit)."""

    def __init__(self, seconds: float, context: grpc.ServicerContext) -> None:
        self._context = context
        self._timer = self._start(seconds)

    def _start(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self._context.cancel)
        timer.daemon = True
        timer.start()
        return timer

    def restart(self, seconds: float) -> None:
        self._timer.cancel()
        self._timer = self._start(seconds)

    def cancel(self) -> None:
        self._timer.cancel()


def _chunks(requests: Iterator[pb.SubmitUpdateRequest]) -> Iterator[bytes]:
    index = 0
    while True:
        try:
            message = next(requests)
        except StopIteration:
            return
        except grpc.RpcError:
            # The client cancelled or its deadline passed mid-stream.
            raise UpdateRejectedError(
                RejectReason.CANCELLED, f"the stream was cancelled after {index} chunk(s)"
            ) from None
        index += 1
        if message.WhichOneof("part") != "chunk":
            raise UpdateRejectedError(
                RejectReason.MALFORMED,
                f"message {index + 1} of the stream is not a chunk (only the first may be a header)",
            )
        yield message.chunk
