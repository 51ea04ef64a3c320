"""Receiving one update: unwrap, decrypt chunk by chunk, parse, validate. Plaintext lives here.

Sizes are bounded before anything is allocated: the round's adapter spec gives the largest
possible serialized update, hence the largest ciphertext; a header that declares more, or
a chunk longer than the declared chunk size plus the AEAD tag, is refused at once.

An update becomes a `ValidatedUpdate` only after its final chunk authenticated and its
tensors matched the spec and were all finite. Anything less raises `UpdateRejectedError`
with a reason; the caller logs the refusal and nothing partial is ever aggregated.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from aggregator.enclave._roundkey import RoundKeyDroppedError, RoundKeyPair
from fedseal import strictjson
from fedseal.envelope import TAG_SIZE, StreamOpener
from fedseal.errors import EnvelopeError, EnvelopeSizeError, EnvelopeUnwrapError
from fedseal.logformat import RejectReason
from fedseal.sitemetrics import METRICS_METADATA_KEY, SiteMetricsError, decode_site_metrics
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.strictjson import JsonDepthError
from fedseal.wire import UpdateHeader, UpdateRejectedError

__all__ = [
    "BuffersBusyError",
    "FlatTensors",
    "InLine",
    "PlaintextBuffers",
    "UpdateReceiver",
    "ValidatedUpdate",
    "all_finite",
    "max_ciphertext_size",
]

_TORCH_DTYPE = {
    WireDtype.FLOAT32: torch.float32,
    WireDtype.BFLOAT16: torch.bfloat16,
    WireDtype.FLOAT16: torch.float16,
}


def max_ciphertext_size(spec: AdapterSpec, chunk_size: int) -> int:
    plaintext = spec.max_serialized_size()
    return plaintext + TAG_SIZE * max(1, math.ceil(plaintext / chunk_size))


class FlatTensors(Mapping[str, torch.Tensor]):
    """An update's tensors that lie back to back in one buffer, in data order.

    A read-only mapping like any other; `flat` is all of them as one 1-D view, so a
    consumer whose own storage has the same layout (`order`) can work on the whole update
    in one operation instead of one per tensor. Each tensor's view is made when first
    asked for: a consumer of `flat` alone never pays two torch calls per tensor (~2 ms
    per 256-tensor update).
    """

    def __init__(self, layout: dict[str, tuple[int, int, tuple[int, ...]]], flat: torch.Tensor) -> None:
        """`layout`: name -> (first element, end element, shape) in `flat`, in data order."""
        self._layout = layout
        self._views: dict[str, torch.Tensor] = {}
        self.flat = flat
        self.order = tuple(layout)

    def __getitem__(self, name: str) -> torch.Tensor:
        view = self._views.get(name)
        if view is None:
            begin, end, shape = self._layout[name]
            view = self._views[name] = self.flat[begin:end].view(shape)
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)


@dataclass(frozen=True)
class ValidatedUpdate:
    header: UpdateHeader
    tensors: Mapping[str, torch.Tensor] = field(repr=False)  # plaintext: never in a repr
    ciphertext_digest: bytes
    ciphertext_size: int
    # The site's metrics, sealed in the update's safetensors metadata (fedseal/sitemetrics.py).
    metrics: Mapping[str, float] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class InLine:
    """How an upload waits for a plaintext buffer: in PlaintextBuffers' bounded line, for up
    to `seconds`, or until `wake` is set (its caller went away)."""

    seconds: float
    wake: threading.Event


class UpdateReceiver:
    """One upload in progress. Feed chunks in arrival order, then call `finish()`."""

    def __init__(
        self,
        header: UpdateHeader,
        spec: AdapterSpec,
        max_chunk_size: int,
        round_key: RoundKeyPair,
        binding: bytes,
        *,
        buffers: PlaintextBuffers | None = None,
        wait_seconds: float | InLine = 0.0,
    ) -> None:
        """`round_key` is the key pair of the round the header names (its private key opens
        the data key). `buffers`, if given, bounds how many updates are decrypted at once
        and lends a reused buffer; the call waits up to `wait_seconds` for one (then
        CANCELLED), or with `InLine` waits in the buffers' bounded line (BuffersBusyError
        if it is full or nothing comes)."""
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
        self._buffers = buffers
        self._buffer: bytearray | None = None
        self._wiped = False
        if buffers is not None:
            # Sized for the spec's largest update, so one buffer serves every upload.
            size = spec.max_serialized_size()
            self._buffer = (
                buffers.acquire_in_line(size, wait_seconds.seconds, wait_seconds.wake)
                if isinstance(wait_seconds, InLine)
                else buffers.acquire(size, wait_seconds)
            )
        try:
            try:
                self._opener = StreamOpener.open(
                    header.wrapped_key,
                    round_key.private_key(),
                    header.seal_context(binding, round_key.public_key),
                    max_plaintext_size=spec.max_serialized_size(),
                    # Sizes the buffer to exactly what this stream can carry, before allocating.
                    declared_ciphertext_size=header.ciphertext_size,
                    buffer=self._buffer,
                )
            except EnvelopeSizeError as exc:
                raise UpdateRejectedError(RejectReason.OVERSIZE, str(exc)) from None
            except EnvelopeUnwrapError:
                raise UpdateRejectedError(
                    RejectReason.UNWRAP_FAILED,
                    "the data key does not open under this round's key with this header: it was "
                    "sealed to another key (another round's, or an earlier enclave's), or for "
                    "another round, client, adapter spec, example count, idempotency key, data card, "
                    "validation summary or attestation binding",
                ) from None
            except RoundKeyDroppedError as exc:
                raise UpdateRejectedError(RejectReason.ROUND_NOT_OPEN, str(exc)) from None
        except BaseException:
            self._release()  # a lent buffer goes back whatever failed
            raise

    def feed(self, chunk: bytes | memoryview) -> None:
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
        tensors, metrics = _parse_update(plaintext, self._spec)
        return ValidatedUpdate(self._header, tensors, self._opener.ciphertext_digest, self._received, metrics)

    def wipe(self) -> None:
        """Zero the plaintext buffer (best effort: Python may hold other copies briefly) and
        give a lent buffer back. The tensors of `finish()` are views of it: use them first.
        Once only: a second call does nothing (the buffer may already be lent to another
        upload, whose plaintext it must not touch)."""
        if self._wiped:
            return
        self._wiped = True
        try:
            self._opener.wipe()
        finally:
            self._release()

    def _release(self) -> None:
        if self._buffers is not None and self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            self._buffers.release(buffer)


class _Waiter:
    """An upload waiting in PlaintextBuffers' line; `granted` once a release handed it a slot."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.granted = False


class BuffersBusyError(Exception):
    """Every plaintext buffer is lent and none came in time (`acquire_in_line`): not a
    refusal of the update, which can be sent again once a buffer frees (`hold_seconds`
    says how soon)."""


class PlaintextBuffers:
    """At most `slots` plaintext buffers, lent to one receiver at a time and reused.

    This is what keeps the aggregator's memory flat in the number of clients: however many
    uploads are in flight, at most `slots` of them hold decrypted bytes; the others wait
    before reading their first chunk (gRPC flow control then holds their data back at the
    sender). Reuse also saves first-touching fresh pages for every update, which costs about
    as much as decrypting them. Two slots keep two cores busy: one update is being
    received and decrypted while another is validated and accumulated.

    A released buffer goes straight to the first of the uploads waiting for one (first
    come, first served), so a buffer never idles while an upload waits. `line` bounds how
    many uploads may wait with `acquire_in_line` (the service's uploads, each holding a
    stream and a thread while it waits); beyond that they are turned away at once.
    """

    def __init__(self, slots: int = 2, *, line: int = 4) -> None:
        if slots < 1:
            raise ValueError("PlaintextBuffers needs at least one slot")
        if line < 0:
            raise ValueError("PlaintextBuffers' waiting line cannot be negative")
        self._slot_count = slots
        self._line = line
        self._lock = threading.Lock()
        self._available = slots  # slots neither lent nor handed to a waiter
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._free: list[bytearray] = []
        self._lent = 0
        self._lent_at: dict[int, float] = {}  # id(buffer) -> when it was lent
        self._hold = _FIRST_HOLD_SECONDS  # moving average of how long a buffer is lent
        self._sized_for = 0  # the update size the hold time was last estimated or measured for

    @property
    def slots(self) -> int:
        return self._slot_count

    @property
    def line(self) -> int:
        """How many uploads may wait in line (`acquire_in_line`)."""
        return self._line

    def acquire(self, capacity: int, wait_seconds: float) -> bytearray:
        """A buffer of at least `capacity` bytes, waiting in line (without bound) for one;
        UpdateRejectedError (cancelled) if none is handed over within `wait_seconds`."""
        if not self._take(threading.Event(), wait_seconds, bounded=False):
            raise UpdateRejectedError(
                RejectReason.CANCELLED,
                f"the aggregator was busy decrypting other updates for {wait_seconds:.0f} s; try again",
            )
        return self._lend(capacity)

    def acquire_in_line(self, capacity: int, wait_seconds: float, wake: threading.Event) -> bytearray:
        """A buffer of at least `capacity` bytes now, or after waiting in the bounded line
        until one is handed over. BuffersBusyError if the line is full, or if `wake` is set
        (the caller went away) or `wait_seconds` pass before a buffer comes."""
        if not self._take(wake, wait_seconds, bounded=True):
            raise BuffersBusyError("no plaintext buffer came free in time")
        return self._lend(capacity)

    def waiting(self) -> int:
        """Uploads waiting in line for a buffer now."""
        with self._lock:
            return len(self._waiters)

    def _take(self, wake: threading.Event, wait_seconds: float, *, bounded: bool) -> bool:
        """Take a slot, now or when a release hands one over; False if none came."""
        with self._lock:
            if self._available > 0:  # then nobody waits: releases hand slots to waiters first
                self._available -= 1
                return True
            if bounded and len(self._waiters) >= self._line:
                raise BuffersBusyError("every plaintext buffer is lent and the waiting line is full")
            waiter = _Waiter(wake)
            self._waiters.append(waiter)
        wake.wait(max(0.0, wait_seconds))
        with self._lock:
            if waiter.granted:  # handed a slot (even if `wake` was also set: it is ours now)
                return True
            self._waiters.remove(waiter)
            return False

    def _lend(self, capacity: int) -> bytearray:
        with self._lock:
            buffer = self._free.pop() if self._free else None
            self._lent += 1
        if buffer is None or len(buffer) < capacity:
            # A larger spec than before (or the first use): the smaller buffer is dropped.
            buffer = bytearray(capacity)
        with self._lock:
            self._lent_at[id(buffer)] = time.monotonic()
        return buffer

    def release(self, buffer: bytearray) -> None:
        """Give back a buffer from `acquire` (the caller has zeroed what it wrote); its slot
        goes to the first upload waiting in line, if any."""
        with self._lock:
            lent_at = self._lent_at.pop(id(buffer), None)
            if lent_at is None:  # a slot counted twice would let a third upload decrypt
                raise ValueError("this buffer is not lent (released twice, or not from this pool)")
            self._hold += _HOLD_WEIGHT * (time.monotonic() - lent_at - self._hold)
            self._free.append(buffer)
            self._lent -= 1
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True
                waiter.wake.set()
            else:
                self._available += 1

    def hold_seconds(self) -> float:
        """How long an upload holds a buffer, lately: a moving average of the last few, or
        half the time the oldest lent buffer has been out if that is longer. Uploads much
        slower than the average (or the first guess) must not have the waiting ones retry
        at a pace only a release would correct; half, so the usual spread of hold times
        around the average leaves the hints alone."""
        with self._lock:
            now = time.monotonic()
            oldest = max((now - lent_at for lent_at in self._lent_at.values()), default=0.0)
            return max(self._hold, oldest / 2)

    def reserve(self, capacity: int) -> None:
        """Allocate (and so first-touch) every idle slot's buffer of at least `capacity`
        bytes now. The round manager calls this when a round opens: faulting in two
        updates' worth of fresh pages costs ~30 ms per 67 MB, which would otherwise land on
        the first uploads. It adds nothing to the round's peak, which holds them anyway."""
        with self._lock:
            if capacity != self._sized_for:
                # Until uploads of this size have been timed, guess from the size: the
                # retry hints of the uploads turned away first are spread over it
                # (benchmarks/bench_ingest.py measured both ways of guessing wrong).
                self._sized_for = capacity
                self._hold = max(_MIN_HOLD_SECONDS, capacity / _FIRST_HOLD_BYTES_PER_SECOND)
            self._free = [b for b in self._free if len(b) >= capacity]
            while len(self._free) + self._lent < self._slot_count:
                self._free.append(bytearray(capacity))  # zero-filled: every page touched

    def held_bytes(self) -> int:
        """Bytes of idle buffers kept for reuse."""
        with self._lock:
            return sum(len(b) for b in self._free)

    def drop_idle(self) -> None:
        """Free the idle buffers (lent ones stay lent). The round manager calls this when a
        round closes, so serializing the aggregate does not stack on top of them."""
        with self._lock:
            self._free.clear()


def _parse_and_validate(plaintext: memoryview, spec: AdapterSpec) -> Mapping[str, torch.Tensor]:
    """The tensors of `_parse_update`."""
    return _parse_update(plaintext, spec)[0]


def _parse_update(
    plaintext: memoryview, spec: AdapterSpec
) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
    """Strictly parse safetensors bytes against `spec`; tensors are zero-copy views of `plaintext`,
    with the site metrics the metadata carries (fedseal/sitemetrics.py; none: empty).

    safetensors.torch.load(bytes(...)) copies the update twice (to bytes, then into each
    tensor); here the 8-byte header length and the JSON header are checked against the
    spec and each tensor is a `torch.frombuffer` view of the decrypted buffer. Strict: the
    header must list exactly the spec's tensors with its dtypes and shapes, data offsets
    must tile the data region exactly in order (no gaps, overlaps or trailing bytes), and
    JSON duplicate keys are refused. The views alias the receiver's buffer: use them before
    `UpdateReceiver.wipe`.
    """
    total = plaintext.nbytes
    if total < _HEADER_LEN_SIZE:
        raise _malformed(f"{total} bytes is shorter than the 8-byte header length")
    header_len = int.from_bytes(plaintext[:_HEADER_LEN_SIZE], "little")
    if header_len > total - _HEADER_LEN_SIZE or header_len > _header_limit(spec):
        raise _malformed(f"header length {header_len} does not fit the update or the spec")
    data_start = _HEADER_LEN_SIZE + header_len
    try:
        header = strictjson.loads(
            plaintext[_HEADER_LEN_SIZE:data_start], what="header", object_pairs_hook=_no_duplicates
        )
    except JsonDepthError as exc:
        raise _malformed(str(exc)) from None
    except ValueError as exc:  # FormatError and the duplicate-key hook's ValueError
        raise _malformed(f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _malformed("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise _malformed("__metadata__ must map strings to strings")
    metrics: dict[str, float] = {}
    if metadata is not None and METRICS_METADATA_KEY in metadata:
        try:
            metrics = decode_site_metrics(metadata[METRICS_METADATA_KEY])
        except SiteMetricsError:
            # Their text would quote the sealed metadata into the public log: the kind only
            # (the SDK checks metrics by name before it seals them).
            raise _malformed("site metrics do not follow the site-metrics rules") from None
    expected = spec.by_name()
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        # The spec's names are public; the others come from the sealed update, so only
        # their number leaves the enclave.
        raise UpdateRejectedError(
            RejectReason.SPEC_MISMATCH,
            f"tensor names differ from the round's adapter spec: missing {missing[:5]}"
            f"{' and more' if len(missing) > 5 else ''}, {len(extra)} not in the spec",
        )
    data_len = total - data_start
    layout: list[tuple[int, int, str]] = []
    for name, tspec in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _malformed(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
            raise _malformed(f"tensor {name!r}: shape and data_offsets must be lists of integers")
        if tuple(shape) != tspec.shape:
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"tensor {name!r} has shape {tuple(shape)}, the spec says {tspec.shape}",
            )
        if entry["dtype"] != tspec.dtype.value:
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"tensor {name!r} has another dtype than the spec's {tspec.dtype.value}",
            )
        begin, end = offsets
        if end - begin != tspec.nbytes:
            raise _malformed(f"tensor {name!r}: data offsets span {end - begin} bytes, not {tspec.nbytes}")
        layout.append((begin, end, name))
    layout.sort()
    position = 0
    for begin, end, name in layout:
        if begin != position:
            raise _malformed(f"tensor {name!r}: data offsets leave a gap or overlap at byte {position}")
        position = end
    if position != data_len:
        raise _malformed(f"tensor data covers {position} bytes, the update carries {data_len}")
    dtypes = {expected[name].dtype for _, _, name in layout}
    dtype = _TORCH_DTYPE[next(iter(dtypes))] if len(dtypes) == 1 else None
    if dtype is not None and data_len and data_start % _ITEMSIZE[dtype] == 0:
        # The usual case: one dtype, aligned. One view over the whole data region, checked
        # in one pass (256 small reductions cost several times one large one), and each
        # tensor a view into it.
        flat = _view(plaintext, data_start, data_len, dtype)
        item = _ITEMSIZE[dtype]
        named = FlatTensors(
            {name: (begin // item, end // item, expected[name].shape) for begin, end, name in layout}, flat
        )
        if not all_finite(flat):
            bad = next(name for name, value in named.items() if not all_finite(value))
            raise UpdateRejectedError(
                RejectReason.NOT_FINITE, f"tensor {bad!r} contains NaN or infinite values"
            )
        return named, metrics
    tensors: dict[str, torch.Tensor] = {}
    for begin, end, name in layout:
        tspec = expected[name]
        value = _view(plaintext, data_start + begin, end - begin, _TORCH_DTYPE[tspec.dtype]).view(tspec.shape)
        if not all_finite(value):
            raise UpdateRejectedError(
                RejectReason.NOT_FINITE, f"tensor {name!r} contains NaN or infinite values"
            )
        tensors[name] = value
    return tensors, metrics


_HEADER_LEN_SIZE = 8
_FIRST_HOLD_SECONDS = 0.1  # before any round reserved its buffers
# A first guess of how fast one upload moves through a buffer (receive, decrypt, check,
# fold in): about what one stream reaches on loopback here. Both ways of being wrong cost:
# too short and the first uploads turned away come back too early and are turned away
# again (1e9 B/s: 32 instead of 20 such retries, 0.49 instead of 0.60 GB/s, r16 float32,
# n = 16); too long and buffers sit idle while they wait (a fixed 0.1 s: 0.15 instead of
# 0.4 GB/s for 8 MB updates).
_FIRST_HOLD_BYTES_PER_SECOND = 4e8
_MIN_HOLD_SECONDS = 0.002
_HOLD_WEIGHT = 0.25


def all_finite(value: torch.Tensor) -> bool:
    # One reduction pass without a bool temporary: ~10x faster than isfinite().all().
    # torch documents that aminmax propagates NaN, and +-inf would be the min or the max.
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _header_limit(spec: AdapterSpec) -> int:
    # max_serialized_size bounds header + data; the header alone can be no longer.
    return spec.max_serialized_size() - spec.data_bytes


def _malformed(detail: str) -> UpdateRejectedError:
    return UpdateRejectedError(RejectReason.MALFORMED, f"decrypted update is not valid safetensors: {detail}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Two entries for one name would let the header say one thing and the data another.
        raise ValueError("duplicate key in header")
    return result


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def _view(buffer: memoryview, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    if offset % _ITEMSIZE[dtype]:
        # safetensors pads its header to 8 bytes, so this is a foreign writer's layout:
        # still valid, but a misaligned view is not safe to compute on. Copy it aligned.
        return torch.frombuffer(bytearray(buffer[offset : offset + nbytes]), dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=nbytes // _ITEMSIZE[dtype], offset=offset)


_ITEMSIZE = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
