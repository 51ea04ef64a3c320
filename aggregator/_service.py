"""gRPC edge of the aggregator: protobuf in, FedSeal types to the core, protobuf out.

Every handler first passes the access gate (aggregator/_identity.py): public calls are
rate-limited, every other call needs an authenticated caller within its limits. Every
handler bounds what it reads and maps FedSeal errors onto gRPC status codes with a message
a client can act on. Refusals carry their one-word reason in trailing metadata
(`fedseal-reject-reason` for an update the log records as rejected, `fedseal-access-denied`
for a call refused at the gate), so the client SDK can raise a typed error.

An update's header must name the authenticated site as its client id and be signed by one
of that site's enrolled keys; otherwise it is refused (and logged) as `identity_mismatch`
or `bad_signature` under the authenticated site's id.

The operator surface is one call, `Operate`, carrying a signed request. Each action has the
roles that may perform it and a handler; `register_action` adds one. A verified request is
logged (`operator_action`, with its signer) before its action runs, so the log holds every
authorized request; its effect is the entries that follow it (`round_opened`,
`enrolment_recorded`), and a request whose action failed (a bad config, a version not
above the current one) has none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import structlog

from aggregator._admission import admitted_caller
from aggregator._config import JobConfig
from aggregator._deadlines import Deadlines
from aggregator._identity import AccessControl, Caller
from aggregator._intake import UploadAbandonedError, UploadDeferredError
from aggregator._log import AuditLog, AuditLogError
from aggregator._metrics import Metrics
from aggregator._rounds import (
    RoundError,
    RoundFailedError,
    RoundManager,
    RoundNotFoundError,
    RoundNotReadyError,
    RoundSnapshot,
)
from aggregator.enclave._keys import EnclaveKeys
from attestation import EvidenceCollector, build_bundle
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.approval import APPROVAL_REFUSED_METADATA_KEY, ApprovalError
from fedseal.binding import CHALLENGE_SIZE
from fedseal.canonical import b64encode, canonical_json, parse_canonical
from fedseal.enrolment import Enrolment
from fedseal.errors import FedSealError, FormatError, SignatureError
from fedseal.logformat import RejectReason
from fedseal.logschema import OperatorAction
from fedseal.roundconfig import ConfigError, RoundConfig
from fedseal.signed_request import ACTION_ROLES, Role, VerifiedRequest
from fedseal.wire import (
    ACCESS_DENIED_METADATA_KEY,
    REJECT_REASON_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    STATUS_FOR_ACCESS,
    STATUS_FOR_REASON,
    AccessDeniedError,
    AccessDeniedReason,
    UpdateHeader,
    UpdateRejectedError,
    header_from_proto,
)

__all__ = [
    "AGGREGATE_CHUNK_SIZE",
    "MAX_WAIT_SECONDS",
    "OPERATOR_ACTIONS",
    "ActionHandler",
    "AggregatorService",
]

AGGREGATE_CHUNK_SIZE = 1024 * 1024
HEADER_TIMEOUT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0

# ------------------------------------------------------------------ SubmitUpdate's decoder
# A SubmitUpdate stream is one header and then up to thousands of 1 MiB chunks. Parsing a
# chunk message with protobuf copies its payload out of the received bytes; so the common
# message, exactly one `bytes chunk = 2` field and nothing else, is read here as a view
# into the received bytes instead. Anything else goes to protobuf's parser unchanged, so
# what is accepted, and how, is what protobuf would do.
SubmitUpdatePart = pb.SubmitUpdateRequest | memoryview
_CHUNK_FIELD_KEY = (2 << 3) | 2  # field 2, wire type 2 (length-delimited)


_log = structlog.get_logger("fedseal.aggregator.service")

_METHOD = "/fedseal.v1.Aggregator/"
# An operator-surface action: takes the verified request, returns its result (JSON object).
ActionHandler = Callable[[VerifiedRequest], dict[str, Any]]
# The built-in actions and who may perform them (shared with the auditor).
OPERATOR_ACTIONS: Mapping[str, frozenset[Role]] = ACTION_ROLES


class AggregatorService(pb_grpc.AggregatorServicer):
    def __init__(
        self,
        keys: EnclaveKeys,
        collectors: Sequence[EvidenceCollector],
        rounds: RoundManager,
        log: AuditLog,
        access: AccessControl,
        *,
        deadlines: Deadlines,
        metrics: Metrics | None = None,
    ) -> None:
        """`deadlines` cancels uploads that stall or outlive their round (the server's own)."""
        self._keys = keys
        self._deadlines = deadlines
        self._metrics = metrics if metrics is not None else rounds.metrics
        self._collectors = tuple(collectors)
        self._rounds = rounds
        self._log = log
        self._access = access
        self._actions: dict[str, tuple[frozenset[Role], ActionHandler]] = {
            "open_round": (OPERATOR_ACTIONS["open_round"], self._open_round),
            "close_round": (OPERATOR_ACTIONS["close_round"], self._close_round),
            "update_job": (OPERATOR_ACTIONS["update_job"], self._update_job),
            "rotate_enrolment": (OPERATOR_ACTIONS["rotate_enrolment"], self._rotate_enrolment),
        }

    def register_action(self, action: str, roles: frozenset[Role], handler: ActionHandler) -> None:
        """Add an operator-surface action (e.g. approving a release, role approver)."""
        if action in self._actions:
            raise ValueError(f"action {action!r} is already registered")
        self._actions[action] = (roles, handler)

    # ------------------------------------------------------------------ the gate
    def _caller(self, context: grpc.ServicerContext, method: str) -> Caller:
        admitted = admitted_caller()  # authenticated before the request was read
        if admitted is not None:
            return admitted
        try:
            return self._access.authenticate(context, _METHOD + method)
        except AccessDeniedError as exc:
            self._deny(context, method, exc)
        raise AssertionError("unreachable")  # context.abort raised

    def _public(self, context: grpc.ServicerContext, method: str) -> None:
        if admitted_caller() is not None:
            return  # an enrolled caller: charged to its own call budget, not the public one
        try:
            self._access.public_call(context)
        except AccessDeniedError as exc:
            self._deny(context, method, exc)

    @staticmethod
    def _deny(context: grpc.ServicerContext, method: str, exc: AccessDeniedError) -> None:
        _log.warning(
            "access_denied", method=method, reason=exc.reason.value, peer=context.peer(), detail=exc.detail
        )
        context.set_trailing_metadata(((ACCESS_DENIED_METADATA_KEY, exc.reason.value),))
        context.abort(STATUS_FOR_ACCESS[exc.reason], str(exc))

    # ------------------------------------------------------------------ public calls
    def GetAttestation(
        self, request: pb.AttestationRequest, context: grpc.ServicerContext
    ) -> pb.AttestationResponse:
        self._public(context, "GetAttestation")
        if len(request.challenge) != CHALLENGE_SIZE:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"challenge must be exactly {CHALLENGE_SIZE} random bytes, got {len(request.challenge)}",
            )
        try:
            bundle = build_bundle(self._keys.bound, bytes(request.challenge), self._collectors)
        except FedSealError as exc:
            self._metrics.attestation_request(ok=False)
            _log.error("attestation_failed", error=str(exc))
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot produce evidence: {type(exc).__name__}: {exc}"
            )
        self._metrics.attestation_request(ok=True)
        return pb.AttestationResponse(evidence_bundle=bundle.to_bytes())

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        self._caller(context, "GetRound")
        try:
            snap = self._rounds.snapshot(request.round_id)
        except RoundNotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        key = snap.round_key
        return pb.RoundInfo(
            round_config=snap.config.canonical_bytes(),
            state=snap.state.value,
            accepted=snap.accepted,
            released_round_ids=snap.released_round_ids,
            # The round's key and the log key's signature: clients verify before sealing.
            round_public_key=key.statement.hpke_public_key if key is not None else b"",
            round_key_signature=key.signature if key is not None else b"",
            log_origin=key.statement.log_origin if key is not None else "",
        )

    def SubmitUpdate(
        self, request_iterator: Iterator[SubmitUpdatePart], context: grpc.ServicerContext
    ) -> Iterator[pb.SubmitUpdateResponse]:
        caller = self._caller(context, "SubmitUpdate")
        if caller.role is not Role.SITE:
            self._deny(
                context,
                "SubmitUpdate",
                AccessDeniedError(AccessDeniedReason.NOT_ALLOWED, "only enrolled sites submit updates"),
            )
        started = time.monotonic()
        self._metrics.submit_started()
        try:
            with self._access.stream(caller):
                receipt = yield from self._submit(caller, request_iterator, context)
        except AccessDeniedError as exc:
            self._metrics.submit_finished("error", time.monotonic() - started)
            self._deny(context, "SubmitUpdate", exc)
            raise AssertionError("unreachable: context.abort raises") from None
        except BaseException:  # aborts, and the client going away (GeneratorExit)
            # context.abort raises; a refusal recorded as rejected set the trailing reason.
            outcome = (
                "rejected"
                if self._rejected(context)
                else "deferred"
                if _trailing_has(context, RETRY_AFTER_METADATA_KEY)
                else "error"
            )
            self._metrics.submit_finished(outcome, time.monotonic() - started)
            raise
        # Settled before the client holds its receipt: the metric is counted and the
        # per-identity stream slot is free, so whatever the client does next sees both.
        self._metrics.submit_finished("accepted", time.monotonic() - started)
        yield pb.SubmitUpdateResponse(receipt=receipt.encode("utf-8"))

    def _submit(
        self,
        caller: Caller,
        request_iterator: Iterator[SubmitUpdatePart],
        context: grpc.ServicerContext,
    ) -> Generator[pb.SubmitUpdateResponse, None, str]:
        """Yields send_chunks once the upload is admitted; returns the receipt."""
        # A client that stops sending must not hold a worker thread forever: the watchdog
        # cancels the call (the request iterator then raises) after the header timeout and,
        # once the header is known, when the round's deadline has passed.
        site = caller.name  # the log names the authenticated site, never a claim
        watchdog = _Watchdog(self._deadlines, HEADER_TIMEOUT_SECONDS, context)
        try:
            try:
                first = next(request_iterator)
            except (StopIteration, grpc.RpcError):
                self._abort_rejected(
                    context, self._rounds.reject_malformed(0, site, "the stream ended before its header")
                )
            if isinstance(first, memoryview) or first.WhichOneof("part") != "header":
                self._abort_rejected(
                    context,
                    self._rounds.reject_malformed(0, site, "the first message must be the header"),
                )
            assert not isinstance(first, memoryview)  # _abort_rejected raised
            try:
                header = header_from_proto(first.header)
                header.seal_context(bytes(32), bytes(32))  # validates client id, sizes, suite eagerly
            except FormatError as exc:
                self._abort_rejected(
                    context, self._rounds.reject_malformed(first.header.round_id, site, f"bad header: {exc}")
                )
            self._check_signed_by(caller, header, context)
            self._access.charge_upload(caller, header.ciphertext_size)
            watchdog.restart(self._rounds.upload_time_limit(header.round_id))
            try:
                # While every decryption buffer is busy, a few uploads wait in line (each a
                # stream and a thread, with only its header sent: no chunk comes before
                # send_chunks) and get the next buffer the moment it frees; the others
                # are turned away with a retry hint, so no more streams are held open.
                gone = threading.Event()  # the call ended (cancelled, timed out): leave the line
                if not context.add_callback(gone.set):
                    gone.set()
                try:
                    admission = self._rounds.admit(header, line=gone)
                except UploadDeferredError as exc:
                    self._access.refund_upload(caller, header.ciphertext_size)  # not sent now
                    millis = str(max(1, round(exc.retry_after * 1000)))
                    context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, millis),))
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                except UploadAbandonedError as exc:
                    self._access.refund_upload(caller, header.ciphertext_size)  # never sent
                    context.abort(grpc.StatusCode.CANCELLED, str(exc))
                with admission:
                    if admission.needs_data:
                        yield pb.SubmitUpdateResponse(send_chunks=True)
                    receipt = admission.receive(_chunks(request_iterator, self._metrics))
            except UpdateRejectedError as exc:
                self._abort_rejected(context, exc)
            except AuditLogError as exc:
                _log.error("audit_log_failed", error=str(exc))
                context.abort(grpc.StatusCode.UNAVAILABLE, "the audit log cannot be written; try later")
        finally:
            watchdog.cancel()
        return receipt

    def _check_signed_by(self, caller: Caller, header: UpdateHeader, context: grpc.ServicerContext) -> None:
        """The header must name the authenticated site and carry its enrolled key's signature."""
        site = caller.name
        if header.client_id != site:
            self._abort_rejected(
                context,
                self._rounds.refuse(
                    header.round_id,
                    site,
                    RejectReason.IDENTITY_MISMATCH,
                    f"the header names client {header.client_id[:128]!r}, the caller is enrolled as {site!r}",
                ),
            )
        key = self._access.site_key(site, header.key_id)
        if key is None:
            owner = self._access.site_of_key(header.key_id)
            reason, detail = (
                (RejectReason.IDENTITY_MISMATCH, f"the header is signed by a key of site {owner!r}")
                if owner is not None
                else (RejectReason.BAD_SIGNATURE, f"key {header.key_id} is not enrolled for site {site!r}")
            )
            self._abort_rejected(context, self._rounds.refuse(header.round_id, site, reason, detail))
            raise AssertionError("unreachable")
        try:
            header.verify_signature(key)
        except SignatureError as exc:
            self._abort_rejected(
                context, self._rounds.refuse(header.round_id, site, RejectReason.BAD_SIGNATURE, str(exc))
            )

    def GetAggregate(
        self, request: pb.GetAggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateChunk]:
        caller = self._caller(context, "GetAggregate")
        try:
            with self._access.stream(caller):
                yield from self._aggregate(request, context)
        except AccessDeniedError as exc:
            self._deny(context, "GetAggregate", exc)

    def _aggregate(
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
            chunk = bytes(data[start : start + AGGREGATE_CHUNK_SIZE])
            yield pb.AggregateChunk(data=chunk)
            self._metrics.aggregate_sent(len(chunk))  # counted once the stream took it

    def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        self._public(context, "GetCheckpoint")
        try:
            _, note = self._log.checkpoint(request.tree_size or None)
        except AuditLogError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        return pb.CheckpointResponse(checkpoint=note)

    def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.ProofResponse:
        self._public(context, "GetInclusionProof")
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
        self._public(context, "GetConsistencyProof")
        try:
            new_size = request.new_size or self._log.size
            hashes = self._log.consistency_proof(request.old_size, new_size)
            _, note = self._log.checkpoint(new_size)
        except AuditLogError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        return pb.ProofResponse(hashes=hashes, checkpoint=note)

    # ------------------------------------------------------------------ operator surface
    def Operate(self, request: pb.OperatorRequest, context: grpc.ServicerContext) -> pb.OperatorResponse:
        self._public(context, "Operate")  # anyone can send one: verify signatures at a bounded rate
        roles = {action: entry[0] for action, entry in self._actions.items()}
        try:
            verified = self._access.authorize_request(bytes(request.signed_request), roles)
        except AccessDeniedError as exc:
            self._deny(context, "Operate", exc)
            raise AssertionError("unreachable") from None
        try:
            # Recorded before it runs: the log names who asked for every change it shows.
            recorded = self._log.append(
                OperatorAction(
                    action=verified.action,
                    signer=verified.signer.name,
                    role=verified.signer.role.value,
                    key_id=verified.key_id,
                    request=parse_canonical(verified.body, what="signed request body"),
                    signature=verified.signature,
                    request_digest=verified.digest,
                )
            )
        except AuditLogError as exc:
            _log.error("audit_log_failed", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the audit log cannot be written; try later")
        _log.info(
            "operator_action",
            action=verified.action,
            signer=verified.signer.name,
            role=verified.signer.role.value,
            log_index=recorded.entry.index,
        )
        try:
            result = self._actions[verified.action][1](verified)
        except (ConfigError, FormatError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{verified.action}: {exc}")
        except (RoundError, FedSealError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{verified.action}: {exc}")
        return pb.OperatorResponse(
            action=verified.action, log_index=recorded.entry.index, result=canonical_json(result)
        )

    def _open_round(self, request: VerifiedRequest) -> dict[str, Any]:
        config = RoundConfig.from_json_obj(_param(request, "round_config"))
        return _round_result(self._rounds.open_round(config))

    def _close_round(self, request: VerifiedRequest) -> dict[str, Any]:
        params = request.params
        round_id, reason = params.get("round_id"), params.get("reason")
        if (
            set(params) != {"round_id", "reason"}
            or isinstance(round_id, bool)
            or not isinstance(round_id, int)
            or round_id < 1
            or not isinstance(reason, str)
            or not 0 < len(reason) <= 400
        ):
            raise ConfigError(
                "close_round: params must be exactly {'round_id': int >= 1, 'reason': 1-400 characters}"
            )
        snap = self._rounds.close_round(round_id, reason)
        with_failure = self._rounds.failure(round_id)
        return _round_result(snap) | ({"failure": with_failure} if with_failure is not None else {})

    def _update_job(self, request: VerifiedRequest) -> dict[str, Any]:
        obj = _param(request, "job")
        if not isinstance(obj, dict) or "principals" in obj:
            raise ConfigError("update_job: 'job' must be a job config without 'principals' (they stay fixed)")
        opened = self._rounds.replace_job(JobConfig.from_json_obj(obj))
        return {"rounds": obj.get("rounds"), "opened": _round_result(opened) if opened else None}

    def _rotate_enrolment(self, request: VerifiedRequest) -> dict[str, Any]:
        enrolment = Enrolment.from_json_obj(_param(request, "enrolment"))
        self._access.rotate_enrolment(enrolment)
        return {"version": enrolment.version, "enrolment_digest": b64encode(enrolment.digest())}

    def SubmitApproval(
        self, request: pb.ApprovalRequest, context: grpc.ServicerContext
    ) -> pb.ApprovalResponse:
        # Public: the approval is signed by a key the round config lists (fedseal/approval.py).
        self._public(context, "SubmitApproval")
        try:
            outcome = self._rounds.submit_approval(request.round_id, bytes(request.approval))
        except ApprovalError as exc:
            _log.warning("approval_refused", round_id=request.round_id, reason=exc.reason, detail=str(exc))
            context.set_trailing_metadata(((APPROVAL_REFUSED_METADATA_KEY, exc.reason),))
            context.abort(_APPROVAL_STATUS.get(exc.reason, grpc.StatusCode.FAILED_PRECONDITION), str(exc))
        except AuditLogError as exc:
            _log.error("audit_log_failed", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the audit log cannot be written; try later")
        return pb.ApprovalResponse(
            state=outcome.state.value,
            approvals=outcome.approvals,
            min_approvals=outcome.min_approvals,
            log_index=outcome.log_index,
        )

    @staticmethod
    def _rejected(context: grpc.ServicerContext) -> bool:
        """Whether this call ended as a refusal the log records (its reason is set)."""
        return _trailing_has(context, REJECT_REASON_METADATA_KEY)

    @staticmethod
    def _abort_rejected(context: grpc.ServicerContext, exc: UpdateRejectedError) -> None:
        context.set_trailing_metadata(((REJECT_REASON_METADATA_KEY, exc.reason.value),))
        context.abort(STATUS_FOR_REASON[exc.reason], str(exc))


_APPROVAL_STATUS = {
    "malformed_approval": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_approver": grpc.StatusCode.PERMISSION_DENIED,
    "forged_approval": grpc.StatusCode.PERMISSION_DENIED,
    "replayed_approval": grpc.StatusCode.ALREADY_EXISTS,
}


class _Watchdog:
    """Cancels an RPC when its time runs out (restartable with a new limit)."""

    def __init__(self, deadlines: Deadlines, seconds: float, context: grpc.ServicerContext) -> None:
        self._deadlines = deadlines
        self._cancel = context.cancel
        self._handle = deadlines.arm(seconds, self._cancel)

    def restart(self, seconds: float) -> None:
        self._deadlines.disarm(self._handle)
        self._handle = self._deadlines.arm(seconds, self._cancel)

    def cancel(self) -> None:
        self._deadlines.disarm(self._handle)


def _trailing_has(context: grpc.ServicerContext, name: str) -> bool:
    return any(key == name for key, _ in context.trailing_metadata() or ())


def _param(request: VerifiedRequest, name: str) -> Any:
    if set(request.params) != {name}:
        raise ConfigError(f"{request.action}: params must be exactly {{{name!r}: ...}}")
    return request.params[name]


def _round_result(snap: RoundSnapshot) -> dict[str, Any]:
    return {"round_config": snap.config.to_json_obj(), "state": snap.state.value, "accepted": snap.accepted}


def _chunks(requests: Iterator[SubmitUpdatePart], metrics: Metrics) -> Iterator[bytes | memoryview]:
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
        if isinstance(message, memoryview):
            chunk: bytes | memoryview = message
        elif message.WhichOneof("part") == "chunk":
            chunk = message.chunk
        else:
            raise UpdateRejectedError(
                RejectReason.MALFORMED,
                f"message {index + 1} of the stream is not a chunk (only the first may be a header)",
            )
        metrics.ciphertext_received(len(chunk))
        yield chunk


def decode_submit_update_request(data: bytes) -> SubmitUpdatePart:
    """A chunk message's payload as a zero-copy view, any other message parsed by protobuf."""
    if data and data[0] == _CHUNK_FIELD_KEY:
        length, shift, position = 0, 0, 1
        while position < len(data) and position <= 10:
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if position + length == len(data):
                    return memoryview(data)[position:]
                break
    return pb.SubmitUpdateRequest.FromString(data)


def add_service_to_server(service: AggregatorService, server: grpc.Server) -> None:
    """Register `service` as the generated code would, with SubmitUpdate's decoder above."""
    capture = _HandlerCapture()
    pb_grpc.add_AggregatorServicer_to_server(service, capture)  # type: ignore[no-untyped-call]
    if capture.service_name is None or "SubmitUpdate" not in capture.handlers:
        raise AssertionError("the generated registration changed shape; regenerate and review")
    handlers = dict(capture.handlers)
    handlers["SubmitUpdate"] = handlers["SubmitUpdate"]._replace(
        request_deserializer=decode_submit_update_request
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service_name, handlers),))
    # As the generated code does (grpc >= 1.63; not in grpc's type stubs yet).
    server.add_registered_method_handlers(capture.service_name, handlers)  # type: ignore[attr-defined]


class _HandlerCapture:
    """Stands in for a grpc.Server to collect the generated method handlers."""

    def __init__(self) -> None:
        self.service_name: str | None = None
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers also arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, Any]) -> None:
        self.service_name = service_name
        self.handlers = handlers
