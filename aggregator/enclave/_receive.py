"""Receiving one update: unwrap, decrypt chunk by chunk, parse, validate. Plaintext lives here.

Sizes are bounded before anything is allocated: the round's adapter spec gives the largest
possible serialized update, hence the largest ciphertext; a header that declares more, or
a chunk longer than the declared chunk size plus the AEAD tag, is refused at once.

An update becomes a `ValidatedUpdate` only after its final chunk authenticated and its
tensors matched the spec and were all finite. Anything less raises `UpdateRejectedError`
with a reason; the caller logs the refusal and nothing partial is ever aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedseal.envelope import TAG_SIZE, StreamOpener
from fedseal.errors import EnvelopeError, EnvelopeSizeError, EnvelopeUnwrapError
from fedseal.logformat import RejectReason
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.wire import UpdateHeader, UpdateRejectedError

__all__ = ["UpdateReceiver", "ValidatedUpdate", "max_ciphertext_size"]

_TORCH_DTYPE = {
    WireDtype.FLOAT32: torch.float32,
    WireDtype.BFLOAT16: torch.bfloat16,
    WireDtype.FLOAT16: torch.float16,
}


def max_ciphertext_size(spec: AdapterSpec, chunk_size: int) -> int:
    plaintext = spec.max_serialized_size()
    return plaintext + TAG_SIZE * max(1, math.ceil(plaintext / chunk_size))


@dataclass(frozen=True)
class ValidatedUpdate:
    header: UpdateHeader
    tensors: Mapping[str, torch.Tensor]
    ciphertext_digest: bytes
    ciphertext_size: int


class UpdateReceiver:
    """One upload in progress. Feed chunks in arrival order, then call `finish()`."""

    def __init__(
        self,
        header: UpdateHeader,
        spec: AdapterSpec,
        max_chunk_size: int,
        hpke_private_key: X25519PrivateKey,
        binding: bytes,
    ) -> None:
        if not 1 <= header.chunk_size <= max_chunk_size:
            raise UpdateRejectedError(
                RejectReason.OVERSIZE,
                f"chunk size {header.chunk_size} is outside [1, {max_chunk_size}] for this round",
            )
        limit = max_ciphertext_size(spec, header.chunk_size)
        if header.ciphertext_size > limit:
            raise UpdateRejectedError(
                RejectReason.OVERSIZE,
                f"declared ciphertext size {header.ciphertext_size} exceeds the round's limit {limit}",
            )
        self._header = header
        self._spec = spec
        self._received = 0
        self._chunk_index = 0
        try:
            self._opener = StreamOpener.open(
                header.wrapped_key,
                hpke_private_key,
                header.seal_context(binding),
                max_plaintext_size=spec.max_serialized_size(),
                # Sizes the buffer to exactly what this stream can carry, before allocating.
                declared_ciphertext_size=header.ciphertext_size,
            )
        except EnvelopeSizeError as exc:
            raise UpdateRejectedError(RejectReason.OVERSIZE, str(exc)) from None
        except EnvelopeUnwrapError:
            raise UpdateRejectedError(
                RejectReason.UNWRAP_FAILED,
                "the data key does not open under this enclave's key with this header: it was "
                "sealed to another key, or for another round, client, adapter spec, example "
                "count, idempotency key or attestation binding",
            ) from None

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._header.ciphertext_size:
            raise UpdateRejectedError(
                RejectReason.OVERSIZE,
                f"stream carries more than the declared {self._header.ciphertext_size} bytes",
            )
        if len(chunk) > self._header.chunk_size + TAG_SIZE:
            raise UpdateRejectedError(
                RejectReason.OVERSIZE,
                f"chunk {self._chunk_index} has {len(chunk)} bytes, more than chunk size + tag",
            )
        try:
            self._opener.feed(chunk)
        except EnvelopeSizeError as exc:
            raise UpdateRejectedError(RejectReason.OVERSIZE, str(exc)) from None
        except EnvelopeError as exc:
            raise UpdateRejectedError(RejectReason.TAMPERED, str(exc)) from None
        self._chunk_index += 1

    def finish(self) -> ValidatedUpdate:
        """Authenticate the end of the stream, then parse and validate the tensors."""
        if self._received != self._header.ciphertext_size:
            raise UpdateRejectedError(
                RejectReason.TRUNCATED,
                f"stream ended after {self._received} of {self._header.ciphertext_size} declared bytes",
            )
        try:
            plaintext = self._opener.finish()
        except EnvelopeError as exc:
            raise UpdateRejectedError(RejectReason.TRUNCATED, str(exc)) from None
        tensors = _parse_and_validate(plaintext, self._spec)
        return ValidatedUpdate(self._header, tensors, self._opener.ciphertext_digest, self._received)

    def wipe(self) -> None:
        """Zero the plaintext buffer (best effort: Python may hold other copies briefly)."""
        self._opener.wipe()


def _parse_and_validate(plaintext: memoryview, spec: AdapterSpec) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load(bytes(plaintext))
    except Exception as exc:  # safetensors raises its own and builtin errors on bad bytes
        raise UpdateRejectedError(
            RejectReason.MALFORMED,
            f"decrypted update is not valid safetensors ({type(exc).__name__})",
        ) from None
    expected = spec.by_name()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise UpdateRejectedError(
            RejectReason.SPEC_MISMATCH,
            f"tensor names differ from the round's adapter spec: missing {missing[:5]}, "
            f"unexpected {extra[:5]}",
        )
    for name, tspec in expected.items():
        value = tensors[name]
        if tuple(value.shape) != tspec.shape:
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"tensor {name!r} has shape {tuple(value.shape)}, the spec says {tspec.shape}",
            )
        if value.dtype != _TORCH_DTYPE[tspec.dtype]:
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"tensor {name!r} has dtype {value.dtype}, the spec says {tspec.dtype.value}",
            )
        if not bool(torch.isfinite(value).all()):
            raise UpdateRejectedError(
                RejectReason.NOT_FINITE, f"tensor {name!r} contains NaN or infinite values"
            )
    return tensors
