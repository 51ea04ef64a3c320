"""The update spool: every accepted update of a round, kept sealed, readable piece by piece.

Strategies that need all updates at once (median, trimmed mean, Krum, exact LoRA) cannot
fold an update in and drop it, and holding n plaintext copies would make memory grow
with n (Flower's Krum: 97 model copies at n = 32). They spool instead.

Design (why not the client's own ciphertext, and why not plaintext in memory)
-----------------------------------------------------------------------------

* **Re-sealed under a fresh per-update key.** When a strategy accepts an update, the
  spool encrypts it again with AES-256-GCM under a random 32-byte key made for that update
  alone; the key lives only in this object, in enclave memory. The ciphertext goes to an
  anonymous temporary file (unlinked at creation), so it may sit on the host's disk or page
  cache: without the key it is noise. :meth:`UpdateSpool.erase` drops the keys and closes
  the file, which is crypto-erasure: whatever the host kept of the file stays undecryptable.
* Keeping the client's ciphertext instead would cost as much crypto (decrypting it again)
  and fits badly: its 1 MiB chunks cut across tensors, it is bound to the wire format
  rather than to the validated tensors, and the strategy interface receives tensors that
  were already decrypted, parsed and checked. Re-sealing costs one AES-GCM pass
  (about 5 ms per 67 MB on one core) at accept time, hidden behind the next upload.
* **Records aligned to the work.** Each tensor is cut into pieces of at most
  `piece_elements` elements (flattened, in the spec's tensor order); each piece is one AEAD
  record at a fixed offset, so a strategy reads "piece j of every update" (a column block)
  with one positioned read and one `decrypt_into` per update, straight into a row of its
  work buffer. Records keep the wire dtype (bfloat16 stays half size); reading converts
  to float32.
* Each record's nonce is its index within the update and its associated data binds the
  update's slot, the record index and its length: a host that swaps, truncates or edits
  records makes the read fail (:class:`SpoolIntegrityError`), and the round fails closed.
* **Each update laid out by its own spec.** Updates usually share the spool's spec; a
  lora-exact round with `client_ranks` also takes updates at other LoRA ranks (`variants`),
  each laid out by its own spec, one after the other. A piece of the spool's spec then
  names the same elements of another update's tensor (same shape), wherever that update
  stores them; a tensor whose shape differs there (a LoRA factor) is read whole per update.

Memory: the spool holds per update one AES-GCM key and a weight; the tensors are on file.
What a strategy then needs is its work buffers (a few column blocks) and its output.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedseal.errors import FedSealError
from fedseal.spec import AdapterSpec, WireDtype

__all__ = [
    "DEFAULT_PIECE_ELEMENTS",
    "SPOOL_RECORD_DOMAIN",
    "SpoolErasedError",
    "SpoolError",
    "SpoolIntegrityError",
    "SpoolPiece",
    "SpoolReader",
    "UpdateSpool",
]

SPOOL_RECORD_DOMAIN: Final = b"fedseal/spool-record/v1"
# 64 Ki elements (256 KiB in float32): measured as the sweet spot for the transposed copy and
# row sort that median and trimmed mean run per column block (benchmarks/bench_strategies.py).
DEFAULT_PIECE_ELEMENTS: Final = 65_536
_TAG: Final = 16

_TORCH_DTYPE: Final = {
    WireDtype.FLOAT32: torch.float32,
    WireDtype.BFLOAT16: torch.bfloat16,
    WireDtype.FLOAT16: torch.float16,
}


class SpoolError(FedSealError):
    """The spool cannot store or return an update (message says why; never tensor data)."""


class SpoolIntegrityError(SpoolError):
    """A spooled record is short or does not authenticate: the spool file was altered."""


class SpoolErasedError(SpoolError):
    """The spool was erased: its keys are gone and nothing in it can be read again."""


@dataclass(frozen=True)
class SpoolPiece:
    """Elements [start, stop) of the flattened tensor `tensor`; record `record` of each update."""

    tensor: str
    record: int
    start: int
    stop: int
    dtype: WireDtype
    offset: int  # of this record within one update's ciphertext

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def plaintext_size(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class _Layout:
    """Where one spec's tensors lie within an update's ciphertext."""

    spec: AdapterSpec
    shapes: Mapping[str, tuple[int, ...]]
    pieces: tuple[SpoolPiece, ...]
    by_tensor: Mapping[str, tuple[SpoolPiece, ...]]
    size: int  # ciphertext bytes of one update

    @property
    def max_record(self) -> int:
        return max(p.plaintext_size for p in self.pieces) + _TAG


def _layout(spec: AdapterSpec, piece_elements: int) -> _Layout:
    pieces: list[SpoolPiece] = []
    by_tensor: dict[str, tuple[SpoolPiece, ...]] = {}
    offset = 0
    for tspec in spec.tensors:
        for start in range(0, tspec.numel, piece_elements):
            stop = min(start + piece_elements, tspec.numel)
            piece = SpoolPiece(tspec.name, len(pieces), start, stop, tspec.dtype, offset)
            pieces.append(piece)
            by_tensor[tspec.name] = (*by_tensor.get(tspec.name, ()), piece)
            offset += piece.plaintext_size + _TAG
    return _Layout(spec, spec.shapes(), tuple(pieces), by_tensor, offset)


def _nonce(record: int) -> bytes:
    return record.to_bytes(12, "big")


def _aad(slot: int, record: int, size: int) -> bytes:
    return SPOOL_RECORD_DOMAIN + struct.pack(">IIQ", slot, record, size)


def _byte_view(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data.cast("B")


class UpdateSpool:
    """Sealed, file-backed store of a round's accepted updates (see the module docstring).

    `add` and `erase` must not run concurrently with reads; reads from several threads are
    fine, each through its own :class:`SpoolReader`.
    """

    def __init__(
        self,
        spec: AdapterSpec,
        *,
        directory: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        variants: Iterable[AdapterSpec] = (),
    ) -> None:
        """`variants`: other specs an added update may have (module docstring)."""
        if piece_elements < 1:
            raise SpoolError("piece_elements must be positive")
        self._spec = spec
        self._piece_elements = piece_elements
        self._main = _layout(spec, piece_elements)
        self._layouts = {spec: self._main}
        # Per variant, the tensors whose shape is the spool spec's (readable by its pieces).
        self._same_shape: dict[AdapterSpec, frozenset[str]] = {}
        main_shapes = spec.shapes()
        for variant in variants:
            self._layouts.setdefault(variant, _layout(variant, piece_elements))
            self._same_shape[variant] = frozenset(
                name for name, shape in variant.shapes().items() if main_shapes.get(name) == shape
            )
        self._max_record = max(layout.max_record for layout in self._layouts.values())
        # Per slot: where its ciphertext starts, and its layout.
        self._slots: list[tuple[int, _Layout]] = []
        self._end = 0
        try:
            # Unlinked at once: the file has no name and vanishes when closed or on exit.
            self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise SpoolError(f"cannot create the spool file: {exc.strerror}") from None
        self._keys: list[AESGCM] | None = []
        self._write_buffer = bytearray(self._max_record)
        self._lock = threading.Lock()

    @property
    def spec(self) -> AdapterSpec:
        return self._spec

    @property
    def pieces(self) -> tuple[SpoolPiece, ...]:
        """The pieces of the spool's spec (those of every update, unless one has another spec)."""
        return self._main.pieces

    def pieces_of(self, tensor: str, *, slot: int | None = None) -> tuple[SpoolPiece, ...]:
        """The pieces of `tensor` in the spool's spec, or as update `slot` stores it."""
        layout = self._main if slot is None else self._slot(slot)[1]
        return layout.by_tensor[tensor]

    def spec_of(self, slot: int) -> AdapterSpec:
        """The spec update `slot` was added with."""
        return self._slot(slot)[1].spec

    @property
    def max_piece_elements(self) -> int:
        return max(p.numel for p in self._main.pieces)

    def __len__(self) -> int:
        return len(self._live_keys())

    @property
    def spooled_bytes(self) -> int:
        """Ciphertext bytes on file (the host may see this many bytes of noise)."""
        return 0 if self._keys is None else self._end

    def _slot(self, slot: int) -> tuple[int, _Layout]:
        keys = self._live_keys()
        if not 0 <= slot < len(keys):
            raise SpoolError(f"slot {slot} is not in the spool (it holds {len(keys)} updates)")
        return self._slots[slot]

    def _live_keys(self) -> list[AESGCM]:
        if self._keys is None:
            raise SpoolErasedError("the spool was erased; its updates can no longer be read")
        return self._keys

    def add(self, tensors: Mapping[str, torch.Tensor], *, spec: AdapterSpec | None = None) -> int:
        """Seal one validated update (names, shapes and dtypes as in `spec`: the spool's spec
        or one of its variants; default the spool's); return its slot."""
        layout = self._main if spec is None else self._layouts.get(spec)
        if layout is None:
            raise SpoolError("the update's spec is neither the spool's spec nor one of its variants")
        with self._lock:
            keys = self._live_keys()
            slot = len(keys)
            aead = AESGCM(AESGCM.generate_key(bit_length=256))
            fd = self._file.fileno()
            base = self._end
            for name, pieces in layout.by_tensor.items():
                tensor = tensors[name]
                if len(self._layouts) > 1 and tuple(tensor.shape) != layout.shapes[name]:
                    # With several layouts, element counts alone could let one spec pass as another.
                    raise SpoolError(f"tensor {name!r} has shape {tuple(tensor.shape)}, not the spec's")
                expected = _TORCH_DTYPE[pieces[0].dtype]
                if tensor.dtype != expected:
                    raise SpoolError(f"tensor {name!r} is {tensor.dtype}, the spec says {expected}")
                if tensor.numel() != pieces[-1].stop:
                    raise SpoolError(
                        f"tensor {name!r} has {tensor.numel()} elements, the spec says {pieces[-1].stop}"
                    )
                data = _byte_view(tensor)
                item = pieces[0].dtype.itemsize
                for piece in pieces:
                    plain = data[piece.start * item : piece.stop * item]
                    out = memoryview(self._write_buffer)[: len(plain) + _TAG]
                    aead.encrypt_into(_nonce(piece.record), plain, _aad(slot, piece.record, len(plain)), out)
                    self._write_all(fd, out, base + piece.offset)
            keys.append(aead)
            self._slots.append((base, layout))
            self._end = base + layout.size
            return slot

    @staticmethod
    def _write_all(fd: int, data: memoryview, offset: int) -> None:
        try:
            while data:
                written = os.pwrite(fd, data, offset)
                data, offset = data[written:], offset + written
        except OSError as exc:
            raise SpoolError(f"cannot write the spool file: {exc.strerror}") from None

    def reader(self) -> SpoolReader:
        """A reader with its own buffers; use one per thread."""
        return SpoolReader(self)

    def erase(self) -> None:
        """Crypto-erase: drop every update key, then close (and so delete) the file. Idempotent.

        Best effort as far as Python goes: the key bytes inside `cryptography` cannot be
        zeroed, only released.
        """
        with self._lock:
            self._keys = None
            self._file.close()

    def _own_piece(self, slot: int, piece: SpoolPiece) -> SpoolPiece:
        """`piece` of the spool's spec, as update `slot` stores the same elements."""
        layout = self._slot(slot)[1]
        if layout is self._main:
            return piece
        if piece.tensor not in self._same_shape[layout.spec]:
            raise SpoolError(
                f"update {slot} stores tensor {piece.tensor!r} with another shape than the spool's "
                "spec: read it whole (read_tensor), not by the spool spec's pieces"
            )
        # Same shape, same piece_elements: the same cut, at this layout's offsets.
        return layout.by_tensor[piece.tensor][piece.start // self._piece_elements]

    def _read_record(self, slot: int, piece: SpoolPiece, into: memoryview, buffer: bytearray) -> None:
        keys = self._live_keys()
        base, _ = self._slot(slot)
        size = piece.plaintext_size
        record = memoryview(buffer)[: size + _TAG]
        try:
            got = os.preadv(self._file.fileno(), [record], base + piece.offset)
        except (OSError, ValueError):
            # ValueError: the file was closed by a concurrent erase.
            raise SpoolErasedError("the spool file is no longer readable") from None
        if got != size + _TAG:
            raise SpoolIntegrityError(f"spool record {piece.record} of slot {slot} is truncated")
        try:
            keys[slot].decrypt_into(_nonce(piece.record), record, _aad(slot, piece.record, size), into)
        except InvalidTag:
            raise SpoolIntegrityError(
                f"spool record {piece.record} of slot {slot} does not authenticate (altered on file)"
            ) from None


class SpoolReader:
    """Reads pieces of spooled updates as float32; owns its scratch buffers (one per thread)."""

    def __init__(self, spool: UpdateSpool) -> None:
        self._spool = spool
        self._record = bytearray(spool._max_record)
        self._plain = bytearray(spool._max_record)

    def read_piece(self, slot: int, piece: SpoolPiece, out: torch.Tensor) -> None:
        """Decrypt `piece` (of the spool's spec) of update `slot` into `out` (float32,
        contiguous, piece.numel long). SpoolError if that update stores the tensor with
        another shape (a variant's LoRA factor): read it with `read_tensor`."""
        self._read_own(slot, self._spool._own_piece(slot, piece), out)

    def _read_own(self, slot: int, piece: SpoolPiece, out: torch.Tensor) -> None:
        # `piece` is of update `slot`'s own layout.
        if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() != piece.numel:
            raise SpoolError("read target must be a contiguous float32 tensor of the piece's length")
        if piece.dtype is WireDtype.FLOAT32:
            self._spool._read_record(slot, piece, _byte_view_writable(out), self._record)
            return
        plain = memoryview(self._plain)[: piece.plaintext_size]
        self._spool._read_record(slot, piece, plain, self._record)
        # Convert after decrypting: one pass, no mixed-dtype arithmetic later.
        out.copy_(torch.frombuffer(plain, dtype=_TORCH_DTYPE[piece.dtype]))

    def read_tensor(self, slot: int, name: str, out: torch.Tensor) -> None:
        """The whole tensor `name` of update `slot`, into `out` (float32, contiguous, with as
        many elements as that update's spec gives the tensor)."""
        pieces = self._spool.pieces_of(name, slot=slot)
        flat = out.view(-1)
        if flat.numel() != pieces[-1].stop:
            raise SpoolError(
                f"read target for {name!r} has {flat.numel()} elements, update {slot} has {pieces[-1].stop}"
            )
        for piece in pieces:
            self._read_own(slot, piece, flat[piece.start : piece.stop])

    def wipe(self) -> None:
        """Zero the buffer decrypted 16-bit pieces went through. Call when done reading."""
        self._plain[:] = bytes(len(self._plain))

    def iter_update(self, slot: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor of update `slot` (in its own spec's shapes) as fresh float32 tensors."""
        for tspec in self._spool.spec_of(slot).tensors:
            out = torch.empty(tspec.shape, dtype=torch.float32)
            self.read_tensor(slot, tspec.name, out)
            yield tspec.name, out


def _byte_view_writable(tensor: torch.Tensor) -> memoryview:
    return tensor.view(torch.uint8).numpy().data.cast("B")
