"""The log's side of witnessing: offering each new checkpoint to the witnesses over gRPC.

The witness itself runs in the auditor (auditor/_witness.py, `fedseal-audit witness serve`);
the request and the refusals both ends share are in fedseal/witness.py. `WitnessCosigner` is
what the aggregator hands its audit log: after every commit it offers the new checkpoint to
each configured witness in parallel (with the consistency proof from the size that witness
last cosigned, and the signing key's `enclave_started` entry until the witness has accepted
that key), verifies every cosignature it gets back, and adds the lines to the checkpoint it
publishes, so receipts carry them. A witness that is down, slow or refuses only costs its
cosignature (clients that require it then refuse the receipt: fail closed on their side).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog

from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.checkpoint import Checkpoint, verify_cosignature
from fedseal.errors import FedSealError, FormatError
from fedseal.note import SIG_TYPE_COSIGNATURE_V1, NoteVerifier, split_note
from fedseal.witness import (
    AddCheckpointRequest,
    KeyEntryNeededError,
    WitnessConflictError,
    WitnessError,
    error_from_status,
)

__all__ = [
    "LogProofSource",
    "WitnessClient",
    "WitnessCosigner",
    "WitnessEndpoint",
]

_log = structlog.get_logger("fedseal.witness")


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the aggregator offers its checkpoints to: its verifier key and address."""

    verifier: NoteVerifier
    endpoint: str

    @classmethod
    def parse(cls, text: str) -> WitnessEndpoint:
        """Parse `VERIFIER_KEY@HOST:PORT` (the key string itself never contains '@' after its name)."""
        vkey, sep, endpoint = text.rpartition("@")
        if not sep or not endpoint or not vkey:
            raise FormatError("a witness is given as VERIFIER_KEY@HOST:PORT")
        verifier = NoteVerifier.from_key_string(vkey)
        if verifier.sig_type != SIG_TYPE_COSIGNATURE_V1:
            raise FormatError(f"witness key {verifier.name!r} is not a cosignature (type 0x04) key")
        return cls(verifier, endpoint)


class WitnessClient:
    def __init__(self, endpoint: str, *, timeout: float = 5.0) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = pb_grpc.WitnessStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def add_checkpoint(self, request: AddCheckpointRequest) -> str:
        """The witness's cosignature line, or a typed WitnessError."""
        try:
            reply = self._stub.AddCheckpoint(
                request.to_proto(),
                timeout=self._timeout,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return str(reply.cosignature)

    def _error(self, exc: grpc.RpcError) -> WitnessError:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        trailing: dict[str, str] = {}
        metadata = getattr(exc, "trailing_metadata", None)
        if callable(metadata):
            trailing = {str(k): str(v) for k, v in metadata() or ()}
        return error_from_status(code, str(details), trailing, self._endpoint)


class LogProofSource(Protocol):
    """What the cosigner needs from the log (aggregator.AuditLog provides it)."""

    @property
    def key_entry(self) -> int | None: ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def entry_leaf(self, index: int) -> bytes: ...


@dataclass
class _Tracked:
    witness: WitnessEndpoint
    client: WitnessClient
    size: int = 0  # the size this witness last cosigned, as far as the log knows
    key_known: bool = False  # whether it accepted a checkpoint of the current key


class WitnessCosigner:
    """Collects cosignatures for each new checkpoint from every configured witness."""

    def __init__(self, witnesses: Sequence[WitnessEndpoint], *, timeout: float = 5.0) -> None:
        self._tracked = [_Tracked(w, WitnessClient(w.endpoint, timeout=timeout)) for w in witnesses]
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max(1, len(self._tracked)), thread_name_prefix="fedseal-cosign"
        )
        self._lock = threading.Lock()  # one commit at a time offers its checkpoint

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for t in self._tracked:
            t.client.close()

    def cosign(self, log: LogProofSource, note: str, size: int) -> str:
        """`note` with the verified cosignature lines of every witness that gave one."""
        if not self._tracked:
            return note
        cp = Checkpoint.parse_body(split_note(note)[0])
        with self._lock:
            jobs = [self._pool.submit(self._offer, t, log, note, cp) for t in self._tracked]
            lines = [line for job in jobs if (line := job.result()) is not None]
        return note + "".join(lines)

    def _offer(self, t: _Tracked, log: LogProofSource, note: str, cp: Checkpoint) -> str | None:
        for _ in range(3):  # a conflict or a new key costs one more round trip each
            try:
                request = self._request(t, log, note, cp)
                line = t.client.add_checkpoint(request)
                verify_cosignature(cp, line, t.witness.verifier)
            except WitnessConflictError as exc:
                if exc.size > cp.size:
                    break  # the witness saw a later checkpoint of this log than this one
                t.size = exc.size
                continue
            except KeyEntryNeededError:
                t.key_known = False
                continue
            except FedSealError as exc:
                _log.warning("witness_cosignature_missing", witness=t.witness.endpoint, error=str(exc))
                return None
            t.size, t.key_known = cp.size, True
            return line if line.endswith("\n") else line + "\n"
        _log.warning("witness_cosignature_missing", witness=t.witness.endpoint, size=cp.size)
        return None

    @staticmethod
    def _request(t: _Tracked, log: LogProofSource, note: str, cp: Checkpoint) -> AddCheckpointRequest:
        old = t.size
        proof = log.consistency_proof(old, cp.size) if 0 < old < cp.size else []
        key_entry: bytes | None = None
        key_proof: list[bytes] = []
        index = log.key_entry
        if not t.key_known and index is not None:
            key_entry = log.entry_leaf(index)
            key_proof = log.inclusion_proof(index, cp.size)
        return AddCheckpointRequest(old, tuple(proof), note, key_entry, tuple(key_proof))
