"""gRPC edge of the client: FedSeal types in, protobuf on the wire, FedSeal types out.

Every call carries a deadline. gRPC failures become typed FedSeal errors with a message
that says what to do next; an aggregator's refusal of an update becomes
`UpdateRejectedError` carrying the reason the aggregator logged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from client_sdk._errors import AggregatorUnavailableError, RoundUnavailableError
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.canonical import parse_canonical
from fedseal.logformat import RejectReason
from fedseal.roundconfig import MAX_CHUNK_SIZE, RoundConfig
from fedseal.wire import (
    REJECT_REASON_METADATA_KEY,
    RoundState,
    UpdateHeader,
    UpdateRejectedError,
    header_to_proto,
)

__all__ = ["AggregatorConnection", "RoundInfo"]

_MAX_MESSAGE_BYTES = MAX_CHUNK_SIZE + 64 * 1024
_MAX_AGGREGATE_BYTES = 8 * 1024**3


@dataclass(frozen=True)
class RoundInfo:
    config: RoundConfig
    state: RoundState
    accepted: int


class AggregatorConnection:
    """One channel to one aggregator. Use as a context manager, or call close()."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        # Plain gRPC for now: confidentiality of updates comes from the envelope, which is
        # sealed to the attested key whatever the transport does. Attested TLS is its own issue.
        self._channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.AggregatorStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> AggregatorConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def get_attestation(self, challenge: bytes) -> bytes:
        try:
            reply = self._stub.GetAttestation(
                pb.AttestationRequest(challenge=challenge), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._unavailable("GetAttestation", exc) from None
        return bytes(reply.evidence_bundle)

    def get_round(self, round_id: int) -> RoundInfo:
        try:
            reply = self._stub.GetRound(pb.GetRoundRequest(round_id=round_id), timeout=self._timeout)
        except grpc.RpcError as exc:
            if _code(exc) is grpc.StatusCode.NOT_FOUND:
                raise RoundUnavailableError(_details(exc)) from None
            raise self._unavailable("GetRound", exc) from None
        config = RoundConfig.from_json_obj(parse_canonical(bytes(reply.round_config), what="round config"))
        return RoundInfo(config, RoundState(reply.state), reply.accepted)

    def submit(self, header: UpdateHeader, chunks: Iterable[bytes], *, timeout: float) -> str:
        def requests() -> Iterator[pb.SubmitUpdateRequest]:
            yield pb.SubmitUpdateRequest(header=header_to_proto(header))
            for chunk in chunks:
                yield pb.SubmitUpdateRequest(chunk=chunk)

        try:
            reply = self._stub.SubmitUpdate(requests(), timeout=timeout)
        except grpc.RpcError as exc:
            reason = _reject_reason(exc)
            if reason is not None:
                raise UpdateRejectedError(reason, _details(exc)) from None
            raise self._unavailable("SubmitUpdate", exc) from None
        return bytes(reply.receipt).decode("utf-8")

    def get_aggregate(self, round_id: int, *, wait_seconds: float) -> tuple[bytes, bytes]:
        """(signed manifest bytes, aggregate bytes) of a closed round; unverified."""
        manifest: bytes | None = None
        data = bytearray()
        try:
            for message in self._stub.GetAggregate(
                pb.GetAggregateRequest(round_id=round_id, wait_seconds=wait_seconds),
                timeout=wait_seconds + self._timeout,
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
            if code in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNAVAILABLE,
            ) and _details(exc):
                raise RoundUnavailableError(_details(exc)) from None
            raise self._unavailable("GetAggregate", exc) from None
        if manifest is None:
            raise AggregatorUnavailableError("aggregate stream carried no manifest")
        return manifest, bytes(data)

    def get_checkpoint(self, tree_size: int = 0) -> str:
        try:
            reply = self._stub.GetCheckpoint(
                pb.GetCheckpointRequest(tree_size=tree_size), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._unavailable("GetCheckpoint", exc) from None
        return str(reply.checkpoint)

    def open_round(self, config: RoundConfig) -> RoundInfo:
        try:
            reply = self._stub.OpenRound(
                pb.OpenRoundRequest(round_config=config.canonical_bytes()), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._unavailable("OpenRound", exc) from None
        config = RoundConfig.from_json_obj(parse_canonical(bytes(reply.round_config), what="round config"))
        return RoundInfo(config, RoundState(reply.state), reply.accepted)

    def _unavailable(self, call: str, exc: grpc.RpcError) -> AggregatorUnavailableError:
        code = _code(exc)
        name = code.name if code is not None else "UNKNOWN"
        hint = ""
        if code is grpc.StatusCode.UNAVAILABLE:
            hint = f" (is the aggregator running and reachable at {self._endpoint}?)"
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = " (the call took longer than its deadline; raise the timeout or try again)"
        return AggregatorUnavailableError(f"{call} to {self._endpoint} failed: {name}: {_details(exc)}{hint}")


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details()) if callable(details) else str(exc)


def _reject_reason(exc: grpc.RpcError) -> RejectReason | None:
    trailing = getattr(exc, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for key, value in trailing() or ():
        if key == REJECT_REASON_METADATA_KEY:
            try:
                return RejectReason(value)
            except ValueError:
                return RejectReason.MALFORMED
    return None
