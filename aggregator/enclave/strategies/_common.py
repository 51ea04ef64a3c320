"""What the strategy modules share: errors, update weights (async staleness), column blocks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from aggregator.enclave._receive import all_finite
from aggregator.enclave._spool import SpoolPiece, SpoolReader, UpdateSpool
from fedseal.errors import FedSealError
from fedseal.roundconfig import StalenessParams

__all__ = [
    "AggregationError",
    "NotEnoughUpdatesError",
    "ServerStateError",
    "StaleUpdateError",
    "StrategyDiscardedError",
    "check_finite",
    "map_column_blocks",
    "update_weight",
]

T = TypeVar("T")


class AggregationError(FedSealError, ValueError):
    """A strategy cannot accept an update or produce an aggregate (message says why)."""


class StaleUpdateError(AggregationError):
    """An update's staleness is outside what the round allows (async mode off, or too old)."""


class NotEnoughUpdatesError(AggregationError):
    """Too few updates for the strategy's guarantee (e.g. Krum needs n >= 2f + 3); fail closed."""


class ServerStateError(AggregationError):
    """A server optimizer's carried state does not fit this round (other optimizer or spec)."""


class StrategyDiscardedError(AggregationError):
    """The strategy was finalized or discarded and holds nothing any more."""


def update_weight(num_examples: int, staleness: int, params: StalenessParams | None) -> float:
    """num_examples · alpha**staleness (async mode), after checking the staleness bound.

    Synchronous rounds (`params` None) accept only staleness 0.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise AggregationError("num_examples must be a positive integer")
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0:
        raise StaleUpdateError("staleness must be a non-negative integer")
    if params is None:
        if staleness:
            raise StaleUpdateError(
                f"update is {staleness} round(s) stale, but this round is synchronous (no staleness params)"
            )
        return float(num_examples)
    if staleness > params.max_staleness:
        raise StaleUpdateError(
            f"update is {staleness} round(s) stale, more than this round's max_staleness "
            f"{params.max_staleness}"
        )
    return num_examples * params.alpha**staleness


def check_finite(tensors: dict[str, torch.Tensor], strategy: str) -> dict[str, torch.Tensor]:
    """Fail closed on an aggregate that overflowed float32 (finite inputs can still sum to inf)."""
    for name, tensor in tensors.items():
        if not all_finite(tensor):
            raise AggregationError(f"{strategy}: aggregate tensor {name!r} is not finite (float32 overflow)")
    return tensors


def default_workers() -> int:
    # The column-block work (numpy sort, AES-GCM, GEMM) releases the GIL; more threads than
    # torch's intra-op pool would only oversubscribe the cores.
    return max(1, min(8, torch.get_num_threads()))


def map_column_blocks(
    spool: UpdateSpool,
    slots: Sequence[int],
    pieces: Iterable[SpoolPiece],
    work: Callable[[SpoolPiece, torch.Tensor], T],
    *,
    workers: int | None = None,
) -> list[T]:
    """For each piece, stack that piece of every update in `slots` into a (len(slots), numel)
    float32 block and call ``work(piece, block)``; results in piece order.

    Blocks are per-thread buffers reused across pieces, so memory is `workers` blocks
    whatever the number of updates' total size. `work` may modify its block in place (the
    next piece overwrites it) and must not keep a reference to it.
    """
    pieces = list(pieces)
    workers = workers or default_workers()
    width = max((p.numel for p in pieces), default=0)
    local = threading.local()
    made: list[tuple[SpoolReader, torch.Tensor]] = []  # every thread's, zeroed at the end
    made_lock = threading.Lock()

    def one(piece: SpoolPiece) -> T:
        state = getattr(local, "state", None)
        if state is None:
            state = (spool.reader(), torch.empty(len(slots) * width, dtype=torch.float32))
            local.state = state
            with made_lock:
                made.append(state)
        reader, buffer = state
        # A contiguous (rows, numel) view of the flat buffer: rows are what decrypt_into fills.
        block = buffer[: len(slots) * piece.numel].view(len(slots), piece.numel)
        for row, slot in enumerate(slots):
            reader.read_piece(slot, piece, block[row])
        return work(piece, block)

    try:
        if workers == 1 or len(pieces) <= 1:
            return [one(p) for p in pieces]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedseal-agg") as pool:
            return list(pool.map(one, pieces))
    finally:
        # The blocks and the readers' buffers held decrypted update values.
        for reader, buffer in made:
            buffer.zero_()
            reader.wipe()
