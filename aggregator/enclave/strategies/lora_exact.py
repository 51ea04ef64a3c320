"""Exact LoRA aggregation as a round strategy ("lora-exact").

For each LoRA module of the adapter spec, the aggregate is the optimal rank-r factor pair
of ΔW = Σ pᵢ BᵢAᵢ (r = the round spec's rank for that module), computed by
`aggregator.enclave.lora_exact.refactor` without forming the dxk matrix; pᵢ are the example
counts (times alpha**staleness in async mode), normalised. Tensors that are not LoRA
factors are averaged with the same weights. After `finalize`, `report` holds each module's
relative residual (how much of ΔW the rank-r result loses), which is safe to publish: it
is a property of the aggregate, not of any one update. The round manager publishes it as
`lora_residuals` in the round's `round_closed` log entry; `fedseal-audit verify` shows it.

Mixed client ranks: with `client_ranks` in the round's `LoraExactParams`, a client may
train at any listed rank rᵢ; its update then matches the derived spec
``adapter_spec.with_lora_rank(rᵢ)`` (A: rᵢ x k, B: d x rᵢ, every other tensor as in the
round spec), and the round manager has already checked that the header names one of the
allowed specs' digests and validated the update against that spec. Here each update is
matched to its spec by its shapes, spooled with its own layout, and every module stacks
factors of whatever ranks arrived (R = Σ rᵢ) before the rank-r re-factorisation: the output
spec, hence the aggregate's ranks, stays the round spec's. Updates are spooled sealed and
read back module by module.
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
        super().__init__(
            spec,
            params,
            spool_dir=spool_dir,
            piece_elements=piece_elements,
            workers=workers,
            variants=params.client_specs(spec),
        )

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        n = self.num_updates
        raw = [e * f for e, f in zip(self._examples, self._factors, strict=True)]
        total = sum(raw)
        weights = [w / total for w in raw]
        shapes = self._spec.shapes()
        slot_shapes = [spool.spec_of(slot).shapes() for slot in range(n)]
        pairs, others = pair_lora_names(shapes)
        out = self._empty_output()

        def module(index: int) -> ModuleResidual:
            pair = pairs[index]
            reader = spool.reader()
            factors = []
            try:
                for slot in range(n):
                    # Each update's own rank: the spec it was spooled with.
                    a = torch.empty(slot_shapes[slot][pair.a], dtype=torch.float32)
                    b = torch.empty(slot_shapes[slot][pair.b], dtype=torch.float32)
                    factors.append(LoraFactors(b, a))
                    reader.read_tensor(slot, pair.a, a)
                    reader.read_tensor(slot, pair.b, b)
                rank = shapes[pair.a][0]
                result = refactor(factors, weights, rank)
                out[pair.a].copy_(result.factors.a)
                out[pair.b].copy_(result.factors.b)
                return ModuleResidual(pair.module, rank, sum(f.rank for f in factors), result.residual)
            finally:
                # Each site's factors, decrypted: zeroed before they are dropped.
                for f in factors:
                    f.a.zero_()
                    f.b.zero_()
                reader.wipe()

        # One module at a time: QR and SVD are threaded inside LAPACK already, and running
        # modules in parallel threads on top oversubscribes the cores (measured 10x slower).
        self.report = tuple(module(i) for i in range(len(pairs)))

        # Non-LoRA tensors have one shape in every allowed spec: column blocks across all
        # updates, whatever their ranks (the spool finds each update's own records).
        flat = {name: out[name].view(-1) for name in others}
        row_weights = torch.tensor(weights, dtype=torch.float32)
        pieces = [p for name in others for p in spool.pieces_of(name)]

        def average(piece: SpoolPiece, block: torch.Tensor) -> None:
            torch.mm(
                row_weights.view(1, -1), block, out=flat[piece.tensor][piece.start : piece.stop].view(1, -1)
            )

        map_column_blocks(spool, range(n), pieces, average, workers=self._workers)
        return out
