"""FedSeal's own types for what crosses the wire, and their conversion to and from protobuf.

Generated protobuf classes stop here: the aggregator's service and the client's transport
call these converters, and everything else speaks in the frozen dataclasses below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal.binding import CHALLENGE_SIZE
from fedseal.envelope import HpkeSuite, SealContext
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import RejectReason

__all__ = [
    "PROTOCOL_VERSION",
    "REJECT_REASON_METADATA_KEY",
    "STATUS_FOR_REASON",
    "UpdateHeader",
    "UpdateRejectedError",
    "header_from_proto",
    "header_to_proto",
]

PROTOCOL_VERSION = 1
REJECT_REASON_METADATA_KEY = "fedseal-reject-reason"
MAX_WRAPPED_KEY_SIZE = 256  # X25519 enc (32) + sealed 32-byte key + tag: far below this


class UpdateRejectedError(FedSealError):
    """The aggregator refused an update; `reason` says why in one word, `detail` in a sentence."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"update rejected ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


# How each refusal maps onto a gRPC status code; the reason itself travels in trailing metadata.
STATUS_FOR_REASON: dict[RejectReason, grpc.StatusCode] = {
    RejectReason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.UNKNOWN_ROUND: grpc.StatusCode.NOT_FOUND,
    RejectReason.ROUND_NOT_OPEN: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.SPEC_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.OVERSIZE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectReason.UNWRAP_FAILED: grpc.StatusCode.PERMISSION_DENIED,
    RejectReason.TAMPERED: grpc.StatusCode.DATA_LOSS,
    RejectReason.TRUNCATED: grpc.StatusCode.DATA_LOSS,
    RejectReason.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    RejectReason.NOT_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.CANCELLED: grpc.StatusCode.CANCELLED,
    RejectReason.ROUND_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True)
class UpdateHeader:
    """The first message of a SubmitUpdate stream."""

    protocol_version: int
    round_id: int
    client_id: str
    adapter_spec_digest: bytes
    num_examples: int
    suite: HpkeSuite
    wrapped_key: bytes
    idempotency_key: bytes
    challenge: bytes
    chunk_size: int
    ciphertext_size: int

    def __post_init__(self) -> None:
        if self.protocol_version != PROTOCOL_VERSION:
            raise FormatError(
                f"protocol version {self.protocol_version} is not supported (this side speaks "
                f"{PROTOCOL_VERSION})"
            )
        if len(self.challenge) != CHALLENGE_SIZE:
            raise FormatError(f"header challenge must be {CHALLENGE_SIZE} bytes")
        if not 0 < len(self.wrapped_key) <= MAX_WRAPPED_KEY_SIZE:
            raise FormatError("header wrapped_key is empty or too long")
        if self.ciphertext_size <= 0:
            raise FormatError("header ciphertext_size must be positive")

    def seal_context(self, binding: bytes) -> SealContext:
        """The envelope context both sides bind into HPKE `info` and every chunk's AAD."""
        return SealContext(
            protocol_version=self.protocol_version,
            round_id=self.round_id,
            client_id=self.client_id,
            adapter_spec_digest=self.adapter_spec_digest,
            num_examples=self.num_examples,
            binding=binding,
            idempotency_key=self.idempotency_key,
            chunk_size=self.chunk_size,
            suite=self.suite,
        )


def header_to_proto(h: UpdateHeader) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        protocol_version=h.protocol_version,
        round_id=h.round_id,
        client_id=h.client_id,
        adapter_spec_digest=h.adapter_spec_digest,
        num_examples=h.num_examples,
        hpke_suite=h.suite.wire_id,
        wrapped_key=h.wrapped_key,
        idempotency_key=h.idempotency_key,
        challenge=h.challenge,
        chunk_size=h.chunk_size,
        ciphertext_size=h.ciphertext_size,
    )


def header_from_proto(m: pb.UpdateHeader) -> UpdateHeader:
    try:
        suite = HpkeSuite.from_wire_id(m.hpke_suite)
    except ValueError:
        raise FormatError(f"unknown HPKE suite id {m.hpke_suite}") from None
    return UpdateHeader(
        protocol_version=m.protocol_version,
        round_id=m.round_id,
        client_id=m.client_id,
        adapter_spec_digest=bytes(m.adapter_spec_digest),
        num_examples=m.num_examples,
        suite=suite,
        wrapped_key=bytes(m.wrapped_key),
        idempotency_key=bytes(m.idempotency_key),
        challenge=bytes(m.challenge),
        chunk_size=m.chunk_size,
        ciphertext_size=m.ciphertext_size,
    )


class RoundState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"
