"""Coordinate-wise order statistics of a column block, for median and trimmed mean.

A block is (n, L): row i is piece j of update i. Sorting each column of n values is what
both strategies need. torch's sort/median along a short dimension is slow on CPU (16.8 M
columns of 32: 6.5 s for torch.median, 15-19 s for torch.sort, measured); numpy's
SIMD sort of contiguous short rows is ~8x faster. So the block is copied transposed into
an (L, n) buffer (torch's blocked transpose copy) and sorted in place row by row.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["SortedColumns"]


class SortedColumns:
    """Per-thread reusable (L, n) buffers; `sort(block)` returns the sorted columns as rows."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._buffers: list[torch.Tensor] = []  # every thread's, to zero them in wipe()

    def sort(self, block: torch.Tensor) -> npt.NDArray[np.float32]:
        n, width = block.shape
        buffer: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < n * width:
            if self._local_buffer_is_set():
                self._local.buffer.zero_()  # outgrown: zeroed before it is dropped
            buffer = torch.empty(n * width, dtype=torch.float32)
            self._local.buffer = buffer
            with self._lock:
                self._buffers.append(buffer)
        rows = buffer[: n * width].view(width, n)
        rows.copy_(block.T)
        array: npt.NDArray[np.float32] = rows.numpy()
        array.sort(axis=1)
        return array

    def wipe(self) -> None:
        """Zero every thread's buffer (they held update values, sorted). Call when done."""
        with self._lock:
            buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            buffer.zero_()

    def _local_buffer_is_set(self) -> bool:
        return getattr(self._local, "buffer", None) is not None
