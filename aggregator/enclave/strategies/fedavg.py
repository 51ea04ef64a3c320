"""Weighted FedAvg (McMahan et al. 2017), streaming.

One float32 accumulator per tensor holds Σ wᵢ·xᵢ; `finalize` divides by Σ wᵢ. The weight
wᵢ is the update's example count, times alpha**staleness in async mode (see
`update_weight`). Each update is folded in as it is accepted and then dropped, so memory
is one model copy whatever the number of clients. Wire tensors in bfloat16/float16 are
converted to float32 before `add_`: a mixed-dtype `add_` is several times slower (see
NOTES.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedseal.roundconfig import FedAvgParams, FedProxParams, StrategyParams
from fedseal.spec import AdapterSpec

from ._common import NotEnoughUpdatesError, StrategyDiscardedError, check_finite, update_weight
from ._serverstate import ServerState

__all__ = ["FedAvg"]


class FedAvg:
    name = "fedavg"

    def __init__(self, spec: AdapterSpec, params: FedAvgParams | FedProxParams | None = None) -> None:
        self._params: StrategyParams = params or FedAvgParams()
        self._sums: dict[str, torch.Tensor] | None = {
            t.name: torch.zeros(t.shape, dtype=torch.float32) for t in spec.tensors
        }
        self._total_weight = 0.0
        self._count = 0

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None:
        """Add one validated update (names and shapes already checked against the spec)."""
        weight = update_weight(num_examples, staleness, self._params.staleness)
        sums = self._live()
        for name, acc in sums.items():
            value = tensors[name]
            if value.dtype != torch.float32:
                value = value.to(torch.float32)
            acc.add_(value, alpha=weight)
        self._total_weight += weight
        self._count += 1

    @property
    def num_updates(self) -> int:
        return self._count

    def finalize(self) -> dict[str, torch.Tensor]:
        """The weighted mean, scaled in place in the accumulators, which the caller then owns."""
        sums = self._live()
        if self._count == 0:
            raise NotEnoughUpdatesError(f"{self.name} cannot finalize a round with no accepted update")
        self._sums = None
        scale = 1.0 / self._total_weight
        for acc in sums.values():
            acc.mul_(scale)
        return check_finite(sums, self.name)

    def live_tensor_bytes(self) -> int:
        if self._sums is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def next_server_state(self) -> ServerState | None:
        return None

    def discard(self) -> None:
        if self._sums is not None:
            for acc in self._sums.values():
                acc.zero_()
        self._sums = None

    def _live(self) -> dict[str, torch.Tensor]:
        if self._sums is None:
            raise StrategyDiscardedError(f"this {self.name} accumulator was finalized or discarded")
        return self._sums
