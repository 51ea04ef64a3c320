"""FedMedian: the coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

Unweighted: example counts are asserted by the clients, and a robust aggregate must not let
one client buy weight. For even n the median is the mean of the two middle values (as
numpy and Flower's `aggregate_median`). Tolerates f < n/2 arbitrary updates per coordinate:
the result lies within the range of the honest values at every coordinate.

Updates are spooled sealed (`_spool.py`) and read back by column block; memory is the
output plus a few (n x 64 Ki) blocks, whatever n.
"""

from __future__ import annotations

import torch

from aggregator.enclave._spool import SpoolPiece, UpdateSpool

from ._common import map_column_blocks
from ._sorting import SortedColumns
from ._spooled import SpooledStrategy

__all__ = ["FedMedian"]


class FedMedian(SpooledStrategy):
    name = "fedmedian"

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        out = self._empty_output()
        flat = {name: t.view(-1) for name, t in out.items()}
        n = self.num_updates
        sorter = SortedColumns()

        def work(piece: SpoolPiece, block: torch.Tensor) -> None:
            rows = torch.from_numpy(sorter.sort(block))
            target = flat[piece.tensor][piece.start : piece.stop]
            if n % 2:
                target.copy_(rows[:, n // 2])
            else:  # halves first: (a + b) / 2 could overflow float32 near its maximum
                torch.mul(rows[:, n // 2 - 1], 0.5, out=target)  # no temporary of update values
                target.add_(rows[:, n // 2], alpha=0.5)

        try:
            map_column_blocks(spool, range(n), spool.pieces, work, workers=self._workers)
        finally:
            sorter.wipe()
        return out
