"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

At each coordinate, drop the k = floor(beta·n) smallest and k largest values and average
the rest (scipy's `trim_mean`, Flower's `aggregate_trimmed_avg`). Unweighted, like the
median, for the same reason. Tolerates f Byzantine updates when k >= f; the round config
refuses a beta that trims nothing at `min_clients`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from aggregator.enclave._spool import DEFAULT_PIECE_ELEMENTS, SpoolPiece, UpdateSpool
from fedseal.roundconfig import TrimmedMeanParams
from fedseal.spec import AdapterSpec

from ._common import map_column_blocks
from ._sorting import SortedColumns
from ._spooled import SpooledStrategy

__all__ = ["TrimmedMean"]


class TrimmedMean(SpooledStrategy):
    name = "trimmed-mean"

    def __init__(
        self,
        spec: AdapterSpec,
        params: TrimmedMeanParams,
        *,
        spool_dir: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        workers: int | None = None,
    ) -> None:
        super().__init__(spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers)
        self.beta = params.beta

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        out = self._empty_output()
        flat = {name: t.view(-1) for name, t in out.items()}
        n = self.num_updates
        cut = math.floor(self.beta * n)
        kept = n - 2 * cut  # >= 1 since beta < 0.5
        sorter = SortedColumns()

        def work(piece: SpoolPiece, block: torch.Tensor) -> None:
            rows = torch.from_numpy(sorter.sort(block))
            target = flat[piece.tensor][piece.start : piece.stop]
            torch.sum(rows[:, cut : n - cut], dim=1, out=target)
            target.div_(kept)

        try:
            map_column_blocks(spool, range(n), spool.pieces, work, workers=self._workers)
        finally:
            sorter.wipe()
        return out
