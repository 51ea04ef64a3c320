"""gRPC edge of the client: FedSeal types in, protobuf on the wire, FedSeal types out.

The channel is TLS. By default it is *attested* TLS (fedseal/tls.py): the connection
probes the certificate the endpoint presents and pins it; until `bind()` is given a
VerifiedAttestation whose TLS certificate digest is that certificate's, the only call it
makes is GetAttestation (and the public log calls). `ChannelSecurity.TERMINATED_TLS` is
for an aggregator behind a load balancer that terminates TLS: the channel is then checked
against the load balancer's CA, and only the envelope protects the update from it.

Every call carries a deadline, and every call that needs a caller carries a one-time call
token signed by the client's identity (fedseal/signed_request.py) for the attested
enclave. gRPC failures become typed FedSeal errors with a message that says what to do
next: an aggregator's refusal of an update becomes `UpdateRejectedError` carrying the
reason it logged; a refusal at its access gate becomes `AccessDeniedError`.
"""

from __future__ import annotations

import enum
import hmac
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from attestation import VerifiedAttestation
from client_sdk._errors import (
    AggregatorUnavailableError,
    OperatorActionError,
    RoundUnavailableError,
    UnattestedChannelError,
)
from client_sdk._identity import ClientIdentity
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.approval import APPROVAL_ERRORS, APPROVAL_REFUSED_METADATA_KEY
from fedseal.canonical import parse_canonical
from fedseal.errors import FedSealError
from fedseal.logformat import RejectReason
from fedseal.roundconfig import MAX_CHUNK_SIZE, RoundConfig
from fedseal.roundkey import RoundKeyStatement, SignedRoundKey
from fedseal.tls import ServerCertificate, TlsProbeError, ca_channel, pinned_channel, probe_server_certificate
from fedseal.wire import (
    ACCESS_DENIED_METADATA_KEY,
    CALL_AUTH_METADATA_KEY,
    REJECT_REASON_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    AccessDeniedError,
    AccessDeniedReason,
    RoundState,
    UpdateHeader,
    UpdateRejectedError,
    header_to_proto,
)

__all__ = ["AggregatorConnection", "ApprovalResult", "ChannelSecurity", "OperatorResult", "RoundInfo"]

_MAX_MESSAGE_BYTES = MAX_CHUNK_SIZE + 64 * 1024
_MAX_AGGREGATE_BYTES = 8 * 1024**3
_METHOD = "/fedseal.v1.Aggregator/"
# An upload the aggregator turned away for now (busy) is sent again after its hint, with
# jitter so that clients turned away together do not come back together (little: the
# aggregator already gives each its own hint, and it must land while the line has room for
# it, aggregator/_intake.py); one wait is at
# most this long, whatever the hint says, and all of them end with the call's timeout.
_MAX_RETRY_WAIT_SECONDS = 5.0
_RETRY_JITTER = (0.9, 1.1)
_JITTER = random.SystemRandom()


class _Deferred(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class ChannelSecurity(enum.Enum):
    """How the client knows its TLS channel ends in the enclave."""

    # Pin the certificate the attestation names (the default; refuses any TLS-terminating proxy).
    ATTESTED_TLS = "attested-tls"
    # TLS to a load balancer that terminates it, checked against the given CA roots. The
    # envelope still protects the update; the channel proves nothing about the enclave.
    TERMINATED_TLS = "terminated-tls"


@dataclass(frozen=True)
class RoundInfo:
    config: RoundConfig
    state: RoundState
    accepted: int
    # The latest released rounds, in release order; the last is the current global (see
    # the proto's RoundInfo and fedseal.wire.update_staleness).
    released_round_ids: tuple[int, ...] = ()
    # The round's HPKE key as served, signed by the log key; not verified yet (the client
    # verifies it under the attested log key before sealing). None: none was served.
    round_key: SignedRoundKey | None = None

    @property
    def global_round_id(self) -> int:
        """The round whose aggregate is the current global adapter (0: the initial adapter)."""
        return self.released_round_ids[-1] if self.released_round_ids else 0


@dataclass(frozen=True)
class OperatorResult:
    """What the aggregator answered to an operator request."""

    action: str
    log_index: int  # the `operator_action` entry that records the request
    result: dict[str, Any]


class AggregatorConnection:
    """One TLS channel to one aggregator. Use as a context manager, or call close()."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: ClientIdentity | None = None,
        security: ChannelSecurity = ChannelSecurity.ATTESTED_TLS,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self.deferrals = 0  # times the last submit was turned away busy and sent again
        self._identity = identity
        self._security = security
        self._audience: bytes | None = None
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        client_tls = identity.tls if identity is not None else None
        self.server_certificate: ServerCertificate | None = None
        if security is ChannelSecurity.ATTESTED_TLS:
            try:
                self.server_certificate = probe_server_certificate(endpoint, timeout=timeout)
            except TlsProbeError as exc:
                raise AggregatorUnavailableError(
                    f"{exc} (is the aggregator running and reachable at {endpoint}?)"
                ) from None
            self._channel = pinned_channel(
                endpoint, self.server_certificate, client=client_tls, options=options
            )
        else:
            self._channel = ca_channel(
                endpoint, root_certificates=root_certificates, client=client_tls, options=options
            )
        self._open_stub = pb_grpc.AggregatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    def __enter__(self) -> AggregatorConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    @property
    def _stub(self) -> pb_grpc.AggregatorStub:
        # grpc answers a call on a closed channel with a bare ValueError: name it instead.
        if self._closed:
            raise AggregatorUnavailableError(
                f"the connection to {self._endpoint} is closed (close() was called, or reconnect() "
                "could not reach the aggregator): call reconnect() once it is reachable"
            )
        return self._open_stub

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def identity(self) -> ClientIdentity | None:
        return self._identity

    def bind(self, attested: VerifiedAttestation) -> None:
        """Accept `attested` as the enclave this channel talks to, or raise
        UnattestedChannelError (attested TLS: its certificate must be the one seen)."""
        if self._security is ChannelSecurity.ATTESTED_TLS:
            seen = self.server_certificate
            assert seen is not None  # made in __init__ for this mode
            named = attested.tls_certificate_sha256
            if named is None:
                raise UnattestedChannelError(
                    "the evidence names no TLS certificate (binding v1), so this channel cannot be "
                    "tied to the enclave; nothing was sent"
                )
            if not hmac.compare_digest(named, seen.sha256):
                raise UnattestedChannelError(
                    f"the TLS certificate {self._endpoint} presented (SHA-256 {seen.sha256.hex()[:16]}...) "
                    f"is not the enclave's attested one ({named.hex()[:16]}...): something between "
                    "this client and the enclave terminates TLS; nothing was sent"
                )
        self._audience = attested.log_public_key

    def get_attestation(self, challenge: bytes) -> bytes:
        try:
            reply = self._stub.GetAttestation(
                pb.AttestationRequest(challenge=challenge),
                timeout=self._timeout,
                metadata=self._attestation_auth(),
            )
        except grpc.RpcError as exc:
            raise self._failed("GetAttestation", exc) from None
        return bytes(reply.evidence_bundle)

    def get_round(self, round_id: int) -> RoundInfo:
        try:
            reply = self._stub.GetRound(
                pb.GetRoundRequest(round_id=round_id), timeout=self._timeout, metadata=self._auth("GetRound")
            )
        except grpc.RpcError as exc:
            if _code(exc) is grpc.StatusCode.NOT_FOUND:
                raise RoundUnavailableError(_details(exc)) from None
            raise self._failed("GetRound", exc) from None
        config = RoundConfig.from_json_obj(parse_canonical(bytes(reply.round_config), what="round config"))
        return RoundInfo(
            config,
            RoundState(reply.state),
            reply.accepted,
            tuple(reply.released_round_ids),
            _round_key(reply, config),
        )

    def submit(self, header: UpdateHeader, chunks: Iterable[bytes], *, timeout: float) -> str:
        """Send the header, wait for the aggregator's send_chunks, stream the chunks; the receipt.

        Nothing but the header leaves before the aggregator has admitted the upload (it holds
        a decryption buffer for it). When every buffer is busy the aggregator turns the
        upload away with a retry hint instead of holding its stream open: it is sent again
        after the hint (jittered), until `timeout` has passed in all. A retry of an accepted
        upload gets its receipt without sending chunks.
        """
        deadline = time.monotonic() + timeout
        self.deferrals = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._submit_once(header, chunks, timeout=max(remaining, 0.001))
            except _Deferred as busy:
                wait = min(busy.seconds, _MAX_RETRY_WAIT_SECONDS) * _JITTER.uniform(*_RETRY_JITTER)
                if time.monotonic() + wait >= deadline:
                    raise AggregatorUnavailableError(
                        f"SubmitUpdate to {self._endpoint}: the aggregator stayed busy with other "
                        f"uploads for the whole timeout ({timeout:.0f} s); try again later"
                    ) from None
                self.deferrals += 1
                time.sleep(wait)

    def _submit_once(self, header: UpdateHeader, chunks: Iterable[bytes], *, timeout: float) -> str:
        admitted = threading.Event()
        send_nothing_more = threading.Event()

        def requests() -> Iterator[pb.SubmitUpdateRequest]:
            yield pb.SubmitUpdateRequest(header=header_to_proto(header))
            admitted.wait()
            if send_nothing_more.is_set():
                return
            for chunk in chunks:
                yield pb.SubmitUpdateRequest(chunk=chunk)

        metadata = self._auth("SubmitUpdate")
        try:
            for reply in self._stub.SubmitUpdate(requests(), timeout=timeout, metadata=metadata):
                part = reply.WhichOneof("part")
                if part == "send_chunks" and not admitted.is_set():
                    admitted.set()
                elif part == "receipt":
                    return bytes(reply.receipt).decode("utf-8")
                else:
                    raise AggregatorUnavailableError(f"SubmitUpdate answered an unexpected {part!r} message")
            raise AggregatorUnavailableError("SubmitUpdate ended without a receipt")
        except grpc.RpcError as exc:
            reason = _reject_reason(exc)
            if reason is not None:
                raise UpdateRejectedError(reason, _details(exc)) from None
            retry = _trailing(exc, RETRY_AFTER_METADATA_KEY)
            if retry is not None and _code(exc) is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise _Deferred(_retry_seconds(retry)) from None
            raise self._failed("SubmitUpdate", exc) from None
        finally:
            # However the call ended, the request generator must not wait forever.
            if not admitted.is_set():
                send_nothing_more.set()
            admitted.set()

    def get_aggregate(self, round_id: int, *, wait_seconds: float) -> tuple[bytes, bytes]:
        """(signed manifest bytes, aggregate bytes) of a closed round; unverified."""
        manifest: bytes | None = None
        data = bytearray()
        metadata = self._auth("GetAggregate")
        try:
            for message in self._stub.GetAggregate(
                pb.GetAggregateRequest(round_id=round_id, wait_seconds=wait_seconds),
                timeout=wait_seconds + self._timeout,
                metadata=metadata,
            ):
                part = message.WhichOneof("part")
                if part == "manifest" and manifest is None:
                    manifest = bytes(message.manifest)
                elif part == "data" and manifest is not None:
                    data += message.data
                    if len(data) > _MAX_AGGREGATE_BYTES:
                        raise AggregatorUnavailableError("aggregate stream exceeds 8 GiB; refusing it")
                else:
                    raise AggregatorUnavailableError("aggregate stream is out of order")
        except grpc.RpcError as exc:
            code = _code(exc)
            if (
                code
                in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.UNAVAILABLE,
                )
                and _details(exc)
                and _access_reason(exc) is None
            ):
                raise RoundUnavailableError(_details(exc)) from None
            raise self._failed("GetAggregate", exc) from None
        if manifest is None:
            raise AggregatorUnavailableError("aggregate stream carried no manifest")
        return manifest, bytes(data)

    def get_checkpoint(self, tree_size: int = 0) -> str:
        try:
            reply = self._stub.GetCheckpoint(
                pb.GetCheckpointRequest(tree_size=tree_size), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._failed("GetCheckpoint", exc) from None
        return str(reply.checkpoint)

    def operate(self, signed_request: bytes) -> OperatorResult:
        """Send a signed operator request (ClientIdentity.sign_request) and return the answer."""
        self._require_bound("Operate")
        try:
            reply = self._stub.Operate(
                pb.OperatorRequest(signed_request=signed_request), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            if _access_reason(exc) is None and _code(exc) in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                raise OperatorActionError(_details(exc)) from None
            raise self._failed("Operate", exc) from None
        result = parse_canonical(bytes(reply.result), what="operator result")
        if not isinstance(result, dict):
            raise AggregatorUnavailableError("Operate answered a result that is not a JSON object")
        return OperatorResult(str(reply.action), int(reply.log_index), result)

    def submit_approval(self, round_id: int, approval: bytes) -> ApprovalResult:
        """Send a signed approval; raise the named ApprovalError the aggregator answered."""
        self._require_bound("SubmitApproval")
        try:
            reply = self._stub.SubmitApproval(
                pb.ApprovalRequest(round_id=round_id, approval=approval), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            reason = _trailing(exc, APPROVAL_REFUSED_METADATA_KEY)
            if reason is not None and reason in APPROVAL_ERRORS:
                raise APPROVAL_ERRORS[reason](_details(exc)) from None
            raise self._failed("SubmitApproval", exc) from None
        return ApprovalResult(
            str(reply.state), int(reply.approvals), int(reply.min_approvals), int(reply.log_index)
        )

    @property
    def audience(self) -> bytes:
        """The attested log key of the enclave this channel is bound to (for signed requests)."""
        self._require_bound("a signed request")
        assert self._audience is not None
        return self._audience

    def _require_bound(self, call: str) -> None:
        if self._audience is None:
            # Fail closed: nothing but the attestation request leaves before bind().
            raise UnattestedChannelError(
                f"{call}: the channel to {self._endpoint} is not bound to a verified attestation yet"
            )

    def _attestation_auth(self) -> tuple[tuple[str, bytes], ...]:
        """An enrolled caller's GetAttestation carries a call token bound to the pinned TLS
        certificate, so the enclave charges it to this identity's budget rather than to the
        public one that anonymous callers share (and can exhaust)."""
        if self._identity is None or self.server_certificate is None:
            return ()
        audience = self.server_certificate.sha256
        return ((CALL_AUTH_METADATA_KEY, self._identity.call_token(_METHOD + "GetAttestation", audience)),)

    def _auth(self, method: str) -> tuple[tuple[str, bytes], ...]:
        self._require_bound(method)
        if self._identity is None:
            return ()
        assert self._audience is not None
        return ((CALL_AUTH_METADATA_KEY, self._identity.call_token(_METHOD + method, self._audience)),)

    def _failed(self, call: str, exc: grpc.RpcError) -> FedSealError:
        reason = _access_reason(exc)
        if reason is not None:
            return AccessDeniedError(reason, f"{call}: {_details(exc)}")
        code = _code(exc)
        name = code.name if code is not None else "UNKNOWN"
        hint = ""
        if code is grpc.StatusCode.UNAVAILABLE:
            hint = f" (is the aggregator running and reachable at {self._endpoint}?)"
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = " (the call took longer than its deadline; raise the timeout or try again)"
        return AggregatorUnavailableError(f"{call} to {self._endpoint} failed: {name}: {_details(exc)}{hint}")


@dataclass(frozen=True)
class ApprovalResult:
    """The aggregator's answer to an approval: the gate's state and the log entry."""

    state: str  # "pending", "released" or "withheld"
    approvals: int
    min_approvals: int
    log_index: int


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details()) if callable(details) else str(exc)


def _trailing(exc: grpc.RpcError, key: str) -> str | None:
    trailing = getattr(exc, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for name, value in trailing() or ():
        if name == key:
            return str(value)
    return None


def _retry_seconds(value: str) -> float:
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise AggregatorUnavailableError(
            f"SubmitUpdate: the aggregator's retry hint {value[:20]!r} is not a number"
        )
    return int(value) / 1000


def _reject_reason(exc: grpc.RpcError) -> RejectReason | None:
    value = _trailing(exc, REJECT_REASON_METADATA_KEY)
    if value is None:
        return None
    try:
        return RejectReason(value)
    except ValueError:
        return RejectReason.MALFORMED


def _access_reason(exc: grpc.RpcError) -> AccessDeniedReason | None:
    value = _trailing(exc, ACCESS_DENIED_METADATA_KEY)
    if value is None:
        return None
    try:
        return AccessDeniedReason(value)
    except ValueError:
        return AccessDeniedReason.UNAUTHENTICATED


def _round_key(reply: pb.RoundInfo, config: RoundConfig) -> SignedRoundKey | None:
    """The served round key as a signed statement about the served config (unverified);
    None when the reply carries none. FormatError for one that cannot be a round key."""
    if not reply.round_public_key and not reply.round_key_signature:
        return None
    statement = RoundKeyStatement(
        log_origin=reply.log_origin,
        round_id=config.round_id,
        config_digest=config.digest(),
        hpke_public_key=bytes(reply.round_public_key),
    )
    return SignedRoundKey(statement, bytes(reply.round_key_signature))
