"""Weighted FedAvg (McMahan et al. 2017), streaming.

One float32 accumulator per tensor holds Σ wᵢ·xᵢ; `finalize` divides by Σ wᵢ. The weight
wᵢ is the update's example count, times alpha**staleness in async mode (see
`update_weight`). Each update is folded in as it is accepted and then dropped, so memory
is one model copy whatever the number of clients. Wire tensors in bfloat16/float16 are
converted to float32 before `add_`: a mixed-dtype `add_` is several times slower (see
NOTES.md).

The accumulators are views into one flat float32 tensor, in name order (the order in which
safetensors writes same-dtype tensors). An update whose tensors lie back to back in that
same order (`FlatTensors`, what the receiver produces for a usual safetensors upload) is
folded in with one `add_` over the whole adapter instead of one per tensor.

`device` places the accumulator: "cuda" on the aggregator's GPU (inside the CC boundary
of a Hopper in confidential-computing mode), where each update is copied once and added;
`finalize` hands back CPU tensors either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aggregator.enclave._receive import FlatTensors, all_finite
from fedseal.roundconfig import FedAvgParams, FedProxParams, StrategyParams
from fedseal.spec import AdapterSpec

from ._common import NotEnoughUpdatesError, StrategyDiscardedError, check_finite, update_weight
from ._serverstate import ServerState

__all__ = ["FedAvg"]


class FedAvg:
    name = "fedavg"

    def __init__(
        self,
        spec: AdapterSpec,
        params: FedAvgParams | FedProxParams | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self._params: StrategyParams = params or FedAvgParams()
        self._device = torch.device(device)
        ordered = sorted(spec.tensors, key=lambda t: t.name)
        self._flat = torch.zeros(sum(t.numel for t in ordered), dtype=torch.float32, device=self._device)
        self._order = tuple(t.name for t in ordered)
        self._sums: dict[str, torch.Tensor] | None = {}
        start = 0
        for t in ordered:
            self._sums[t.name] = self._flat[start : start + t.numel].view(t.shape)
            start += t.numel
        self._total_weight = 0.0
        self._count = 0

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None:
        """Add one validated update (names and shapes already checked against the spec)."""
        weight = update_weight(num_examples, staleness, self._params.staleness)
        sums = self._live()
        if isinstance(tensors, FlatTensors) and tensors.order == self._order:
            if self._device.type == "cpu":
                _add_flat(self._flat, tensors.flat, weight)
            else:  # one host-to-device copy, converted to float32 on the device
                copied = tensors.flat.to(self._device, non_blocking=False)
                converted = copied.float()
                self._flat.add_(converted, alpha=weight)
                converted.zero_()  # device copies of the update: zeroed before they are freed
                copied.zero_()
            self._total_weight += weight
            self._count += 1
            return
        for name, acc in sums.items():
            value = tensors[name]
            if value.dtype == torch.float32 and value.device == self._device:
                acc.add_(value, alpha=weight)
                continue
            # A converted (or moved) copy of the update: zeroed before it is freed.
            scratch = torch.empty(value.shape, dtype=torch.float32, device=self._device)
            scratch.copy_(value)
            acc.add_(scratch, alpha=weight)
            scratch.zero_()
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
        self._flat.mul_(1.0 / self._total_weight)
        if self._device.type != "cpu":
            # One device-to-host copy; the views then alias the host copy.
            host = self._flat.cpu()
            self._flat = host
            start = 0
            for name, acc in sums.items():
                sums[name] = host[start : start + acc.numel()].view(acc.shape)
                start += acc.numel()
        if all_finite(self._flat):  # one pass over the whole aggregate
            return sums
        return check_finite(sums, self.name)  # names the tensor that overflowed

    def live_tensor_bytes(self) -> int:
        if self._sums is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    def next_server_state(self) -> ServerState | None:
        return None

    def discard(self) -> None:
        if self._sums is not None:
            self._flat.zero_()
        self._sums = None

    def _live(self) -> dict[str, torch.Tensor]:
        if self._sums is None:
            raise StrategyDiscardedError(f"this {self.name} accumulator was finalized or discarded")
        return self._sums


_BLOCK = 1 << 20  # elements converted at a time: a 4 MiB float32 scratch, not a model copy


def _add_flat(acc: torch.Tensor, update: torch.Tensor, weight: float) -> None:
    if update.dtype == torch.float32:
        acc.add_(update, alpha=weight)
        return
    scratch = torch.empty(min(_BLOCK, update.numel()), dtype=torch.float32)
    try:
        for start in range(0, update.numel(), _BLOCK):
            piece = update[start : start + _BLOCK]
            block = scratch[: piece.numel()]
            block.copy_(piece)
            acc[start : start + piece.numel()].add_(block, alpha=weight)
    finally:
        scratch.zero_()  # it held the float32 conversion of the update's last block
