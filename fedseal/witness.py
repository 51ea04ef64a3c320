"""What a witness and the log that offers it checkpoints share: the request, the refusals, and
their form on the wire (C2SP tlog-witness semantics over gRPC).

The witness itself (its state, its key, the gRPC service behind `fedseal-audit witness serve`)
is in auditor/_witness.py and auditor/_witness_server.py; the log's side, which the aggregator
runs, is in aggregator/_witness.py. Both map refusals to and from gRPC here, so the two ends
cannot drift.

Refusals on the wire: NOT_FOUND (unknown log), FAILED_PRECONDITION with trailing metadata
`fedseal-witness-size: <n>` (old size conflict, as tlog-witness's 409) or
`fedseal-witness-need: key-entry`, PERMISSION_DENIED (refused), INVALID_ARGUMENT (malformed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal.errors import FedSealError

__all__ = [
    "NEED_METADATA_KEY",
    "SIZE_METADATA_KEY",
    "AddCheckpointRequest",
    "KeyEntryNeededError",
    "UnknownLogError",
    "WitnessConflictError",
    "WitnessError",
    "WitnessRefusedError",
    "WitnessUnavailableError",
    "error_from_status",
    "status_of",
]

SIZE_METADATA_KEY = "fedseal-witness-size"
NEED_METADATA_KEY = "fedseal-witness-need"
_NEED_KEY_ENTRY = "key-entry"


class WitnessError(FedSealError):
    """Root of the witness's refusals."""


class UnknownLogError(WitnessError):
    """The checkpoint is for a log origin this witness does not watch."""


class WitnessConflictError(WitnessError):
    """`old_size` is not the size of the witness's last cosigned checkpoint (`size`)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class KeyEntryNeededError(WitnessError):
    """The checkpoint's key is new to this witness: send its `enclave_started` entry."""


class WitnessRefusedError(WitnessError):
    """The checkpoint does not verify (signature, attestation, proof, timestamp, retired key)."""


class WitnessUnavailableError(WitnessError):
    """The witness could not be reached or answered with an unexpected error."""


@dataclass(frozen=True)
class AddCheckpointRequest:
    """A checkpoint offered for cosigning, with the proofs the witness needs to accept it."""

    old_size: int
    consistency_proof: tuple[bytes, ...]
    checkpoint: str
    key_entry: bytes | None = None
    key_entry_proof: tuple[bytes, ...] = ()

    def to_proto(self) -> pb.AddCheckpointRequest:
        return pb.AddCheckpointRequest(
            old_size=self.old_size,
            consistency_proof=list(self.consistency_proof),
            checkpoint=self.checkpoint,
            key_entry=self.key_entry or b"",
            key_entry_proof=list(self.key_entry_proof),
        )

    @classmethod
    def from_proto(cls, message: pb.AddCheckpointRequest) -> AddCheckpointRequest:
        return cls(
            old_size=message.old_size,
            consistency_proof=tuple(bytes(h) for h in message.consistency_proof),
            checkpoint=message.checkpoint,
            key_entry=bytes(message.key_entry) or None,
            key_entry_proof=tuple(bytes(h) for h in message.key_entry_proof),
        )


def status_of(exc: FedSealError) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The gRPC status code and trailing metadata a witness answers `exc` with."""
    if isinstance(exc, UnknownLogError):
        return grpc.StatusCode.NOT_FOUND, ()
    if isinstance(exc, WitnessConflictError):
        return grpc.StatusCode.FAILED_PRECONDITION, ((SIZE_METADATA_KEY, str(exc.size)),)
    if isinstance(exc, KeyEntryNeededError):
        return grpc.StatusCode.FAILED_PRECONDITION, ((NEED_METADATA_KEY, _NEED_KEY_ENTRY),)
    if isinstance(exc, WitnessRefusedError):
        return grpc.StatusCode.PERMISSION_DENIED, ()
    return grpc.StatusCode.INVALID_ARGUMENT, ()


def error_from_status(
    code: grpc.StatusCode | None, details: str, trailing: Mapping[str, str], endpoint: str
) -> WitnessError:
    """The typed refusal for a witness's gRPC error (the inverse of `status_of`)."""
    if code is grpc.StatusCode.FAILED_PRECONDITION and SIZE_METADATA_KEY in trailing:
        try:
            return WitnessConflictError(details, int(trailing[SIZE_METADATA_KEY]))
        except ValueError:
            pass
    if code is grpc.StatusCode.FAILED_PRECONDITION and trailing.get(NEED_METADATA_KEY) == _NEED_KEY_ENTRY:
        return KeyEntryNeededError(details)
    if code is grpc.StatusCode.NOT_FOUND:
        return UnknownLogError(details)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
        return WitnessRefusedError(details)
    name = code.name if code is not None else "UNKNOWN"
    return WitnessUnavailableError(f"witness {endpoint}: {name}: {details}")
