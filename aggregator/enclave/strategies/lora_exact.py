"""Exact LoRA aggregation as a round strategy ("lora-exact").

For each LoRA module of the adapter spec, the aggregate is the optimal rank-r factor pair
of ΔW = Σ pᵢ BᵢAᵢ (r = the spec's rank for that module), computed by
`aggregator.enclave.lora_exact.refactor` without forming the dxk matrix; pᵢ are the example
counts (times alpha**staleness in async mode), normalised. Tensors that are not LoRA
factors are averaged with the same weights. After `finalize`, `report` holds each module's
relative residual (how much of ΔW the rank-r result loses), which is safe to publish: it
is a property of the aggregate, not of any one update.

All clients in a round share the spec, hence the rank; rounds with mixed client ranks need
an adapter spec per client, which `aggregate_adapters` supports and this strategy does not
(yet). Updates are spooled sealed and read back module by module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aggregator.enclave._spool import DEFAULT_PIECE_ELEMENTS, SpoolPiece, UpdateSpool
from aggregator.enclave.lora_exact import (
    LoraFactorError,
    LoraFactors,
    ModuleResidual,
    pair_lora_names,
    refactor,
)
from fedseal.roundconfig import LoraExactParams
from fedseal.spec import AdapterSpec

from ._common import map_column_blocks
from ._spooled import SpooledStrategy

__all__ = ["LoraExact"]


class LoraExact(SpooledStrategy):
    name = "lora-exact"

    report: tuple[ModuleResidual, ...] = ()

    def __init__(
        self,
        spec: AdapterSpec,
        params: LoraExactParams,
        *,
        spool_dir: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        workers: int | None = None,
    ) -> None:
        # Refuse a spec that cannot be aggregated exactly now, before any update is accepted.
        shapes = {t.name: t.shape for t in spec.tensors}
        pairs, _ = pair_lora_names(shapes)
        if not pairs:
            raise LoraFactorError("lora-exact needs an adapter spec with LoRA factor pairs")
        for pair in pairs:
            a, b = shapes[pair.a], shapes[pair.b]
            if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
                raise LoraFactorError(f"LoRA module {pair.module!r}: B {b} and A {a} do not chain")
        super().__init__(spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers)

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        n = self.num_updates
        raw = [e * f for e, f in zip(self._examples, self._factors, strict=True)]
        total = sum(raw)
        weights = [w / total for w in raw]
        shapes = {t.name: t.shape for t in self._spec.tensors}
        pairs, others = pair_lora_names(shapes)
        out = self._empty_output()

        def module(index: int) -> ModuleResidual:
            pair = pairs[index]
            reader = spool.reader()
            a_all = torch.empty((n, *shapes[pair.a]), dtype=torch.float32)
            b_all = torch.empty((n, *shapes[pair.b]), dtype=torch.float32)
            for slot in range(n):
                reader.read_tensor(slot, pair.a, a_all[slot])
                reader.read_tensor(slot, pair.b, b_all[slot])
            rank = shapes[pair.a][0]
            result = refactor([LoraFactors(b_all[i], a_all[i]) for i in range(n)], weights, rank)
            out[pair.a].copy_(result.factors.a)
            out[pair.b].copy_(result.factors.b)
            return ModuleResidual(pair.module, rank, n * rank, result.residual)

        # One module at a time: QR and SVD are threaded inside LAPACK already, and running
        # modules in parallel threads on top oversubscribes the cores (measured 10x slower).
        self.report = tuple(module(i) for i in range(len(pairs)))

        flat = {name: out[name].view(-1) for name in others}
        row_weights = torch.tensor(weights, dtype=torch.float32)
        pieces = [p for name in others for p in spool.pieces_of(name)]

        def average(piece: SpoolPiece, block: torch.Tensor) -> None:
            torch.mm(
                row_weights.view(1, -1), block, out=flat[piece.tensor][piece.start : piece.stop].view(1, -1)
            )

        map_column_blocks(spool, range(n), pieces, average, workers=self._workers)
        return out
