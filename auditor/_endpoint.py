"""The auditor's gRPC edge: the log-serving calls of a running aggregator, nothing else.

Everything it returns is unverified: callers check signatures, attestation and proofs.
The channel is TLS to whatever certificate the endpoint presents (fedseal/tls.py): an
auditor's trust comes from the signatures it checks, not from the channel, and the log
calls are public.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.errors import FedSealError
from fedseal.tls import TlsProbeError, pinned_channel, probe_server_certificate

__all__ = ["AuditEndpointError", "AuditorConnection", "ProofReply"]

_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # an enclave_started entry carries an evidence bundle


class AuditEndpointError(FedSealError):
    """The aggregator could not be reached or refused a log call."""


@dataclass(frozen=True)
class ProofReply:
    hashes: tuple[bytes, ...]
    checkpoint: str
    entry: bytes


class AuditorConnection:
    def __init__(self, endpoint: str, *, timeout: float = 30.0) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        try:
            certificate = probe_server_certificate(endpoint, timeout=timeout)
        except TlsProbeError as exc:
            raise AuditEndpointError(f"connecting to {endpoint} failed: UNAVAILABLE: {exc}") from None
        self._channel = pinned_channel(
            endpoint, certificate, options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]
        )
        self._stub = pb_grpc.AggregatorStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> AuditorConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def get_attestation(self, challenge: bytes) -> bytes:
        try:
            reply = self._stub.GetAttestation(
                pb.AttestationRequest(challenge=challenge), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._error("GetAttestation", exc) from None
        return bytes(reply.evidence_bundle)

    def get_checkpoint(self, tree_size: int = 0) -> str:
        try:
            reply = self._stub.GetCheckpoint(
                pb.GetCheckpointRequest(tree_size=tree_size), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._error("GetCheckpoint", exc) from None
        return str(reply.checkpoint)

    def get_inclusion_proof(self, index: int, tree_size: int, *, with_entry: bool = False) -> ProofReply:
        try:
            reply = self._stub.GetInclusionProof(
                pb.GetInclusionProofRequest(index=index, tree_size=tree_size, with_entry=with_entry),
                timeout=self._timeout,
            )
        except grpc.RpcError as exc:
            raise self._error("GetInclusionProof", exc) from None
        return ProofReply(tuple(bytes(h) for h in reply.hashes), str(reply.checkpoint), bytes(reply.entry))

    def get_consistency_proof(self, old_size: int, new_size: int) -> ProofReply:
        try:
            reply = self._stub.GetConsistencyProof(
                pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._error("GetConsistencyProof", exc) from None
        return ProofReply(tuple(bytes(h) for h in reply.hashes), str(reply.checkpoint), b"")

    def _error(self, call: str, exc: grpc.RpcError) -> AuditEndpointError:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return AuditEndpointError(f"{call} to {self._endpoint} failed: {name}: {details}")
