"""Weighted FedAvg (McMahan et al. 2017), streaming.

One float32 accumulator per tensor holds Σ nᵢ·xᵢ; `finalize` divides by Σ nᵢ. Each update
is folded in as it is accepted and then dropped, so memory is one model copy whatever
the number of clients. Wire tensors in bfloat16/float16 are converted to float32 before
`add_`: a mixed-dtype `add_` is several times slower (see NOTES.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedseal.spec import AdapterSpec

__all__ = ["FedAvg"]


class FedAvg:
    name = "fedavg"

    def __init__(self, spec: AdapterSpec) -> None:
        self._sums: dict[str, torch.Tensor] | None = {
            t.name: torch.zeros(t.shape, dtype=torch.float32) for t in spec.tensors
        }
        self._total_examples = 0

    def accumulate(self, tensors: Mapping[str, torch.Tensor], num_examples: int) -> None:
        """Add one validated update (names and shapes already checked against the spec)."""
        if num_examples <= 0:
            raise ValueError("num_examples must be positive")
        sums = self._live()
        for name, acc in sums.items():
            value = tensors[name]
            if value.dtype != torch.float32:
                value = value.to(torch.float32)
            acc.add_(value, alpha=num_examples)
        self._total_examples += num_examples

    def finalize(self) -> dict[str, torch.Tensor]:
        sums = self._live()
        if self._total_examples == 0:
            raise ValueError("FedAvg cannot finalize a round with no accepted update")
        scale = 1.0 / self._total_examples
        return {name: acc.mul_(scale) for name, acc in sums.items()}

    def live_tensor_bytes(self) -> int:
        if self._sums is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def discard(self) -> None:
        if self._sums is not None:
            for acc in self._sums.values():
                acc.zero_()
        self._sums = None

    def _live(self) -> dict[str, torch.Tensor]:
        if self._sums is None:
            raise ValueError("this FedAvg accumulator was discarded")
        return self._sums
