"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

With n updates of which at most f are Byzantine (n >= 2f + 3, checked at config time and
again here), the score of update i is the sum of its squared distances to its n - f - 2
nearest other updates. Krum returns the update with the lowest score; Multi-Krum averages
the m lowest-scoring ones (m <= n - f). Ties go to the earlier update (accept order).

Multi-Krum's average ignores example counts, which clients assert and a Byzantine client
could inflate to dominate the selected set (Blanchard et al. average uniformly; Flower
weights by example count); in async mode it weights by alpha**staleness.

Distances: the nxn Gram matrix is accumulated column block by column block from the
spool, each block centred on its own mean first (distances do not change, and the
float32 GEMM then works on differences instead of large raw values); the sum is float64.
Memory is the output plus a few (n x 64 Ki) blocks; no update is ever held whole, except
the one Krum returns.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aggregator.enclave._spool import DEFAULT_PIECE_ELEMENTS, SpoolPiece, UpdateSpool
from fedseal.roundconfig import KrumParams, MultiKrumParams
from fedseal.spec import AdapterSpec

from ._common import NotEnoughUpdatesError, map_column_blocks
from ._spooled import SpooledStrategy

__all__ = ["Krum", "MultiKrum", "krum_scores"]


def krum_scores(distances: torch.Tensor, f: int) -> list[float]:
    """Krum scores from an nxn matrix of squared distances (diagonal ignored)."""
    n = distances.shape[0]
    closest = n - f - 2
    if n < 2 * f + 3:
        raise NotEnoughUpdatesError(f"Krum with f={f} needs n >= 2f + 3 = {2 * f + 3} updates, got {n}")
    scores = []
    for i in range(n):
        others = torch.cat([distances[i, :i], distances[i, i + 1 :]])
        scores.append(float(torch.sort(others).values[:closest].sum()))
    return scores


class Krum(SpooledStrategy):
    name = "krum"

    def __init__(
        self,
        spec: AdapterSpec,
        params: KrumParams,
        *,
        spool_dir: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        workers: int | None = None,
    ) -> None:
        super().__init__(spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers)
        self.f = params.f
        self.m = params.m if isinstance(params, MultiKrumParams) else 1
        self.selected: tuple[int, ...] = ()  # accept-order indices of the chosen updates

    def _distances(self, spool: UpdateSpool) -> torch.Tensor:
        n = self.num_updates

        def gram(piece: SpoolPiece, block: torch.Tensor) -> torch.Tensor:
            block.sub_(block.mean(dim=0, keepdim=True))  # centre in place: no block-sized temporary
            return (block @ block.T).to(torch.float64)

        total = torch.zeros((n, n), dtype=torch.float64)
        for part in map_column_blocks(spool, range(n), spool.pieces, gram, workers=self._workers):
            total += part
        norms = total.diagonal()
        distances = (norms[:, None] + norms[None, :] - 2 * total).clamp_(min=0.0)
        distances.fill_diagonal_(0.0)
        return distances

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        n = self.num_updates
        if n < 2 * self.f + 3:
            raise NotEnoughUpdatesError(
                f"{self.name} with f={self.f} needs n >= 2f + 3 = {2 * self.f + 3} updates, got {n}"
            )
        if self.m > n - self.f:
            raise NotEnoughUpdatesError(f"{self.name} needs m <= n - f = {n - self.f}, got m={self.m}")
        scores = krum_scores(self._distances(spool), self.f)
        order = sorted(range(n), key=lambda i: (scores[i], i))
        self.selected = tuple(sorted(order[: self.m]))
        factors = torch.tensor([self._factors[i] for i in self.selected], dtype=torch.float32)
        weights = factors / factors.sum()
        out = self._empty_output()
        flat = {name: t.view(-1) for name, t in out.items()}

        def average(piece: SpoolPiece, block: torch.Tensor) -> None:
            torch.mm(weights.view(1, -1), block, out=flat[piece.tensor][piece.start : piece.stop].view(1, -1))

        map_column_blocks(spool, self.selected, spool.pieces, average, workers=self._workers)
        return out


class MultiKrum(Krum):
    name = "multi-krum"

    def __init__(
        self,
        spec: AdapterSpec,
        params: MultiKrumParams,
        *,
        spool_dir: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        workers: int | None = None,
    ) -> None:
        super().__init__(spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers)
