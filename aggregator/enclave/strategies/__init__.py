"""Aggregation strategies, one module each. A round config names one by `strategy`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from fedseal.spec import AdapterSpec

from .fedavg import FedAvg

__all__ = ["FedAvg", "Strategy", "make_strategy"]


class Strategy(Protocol):
    """Folds validated updates in one at a time; `finalize` returns the float32 aggregate."""

    name: str

    def accumulate(self, tensors: Mapping[str, torch.Tensor], num_examples: int) -> None: ...

    def finalize(self) -> dict[str, torch.Tensor]: ...

    def live_tensor_bytes(self) -> int: ...

    def discard(self) -> None: ...


def make_strategy(name: str, spec: AdapterSpec) -> Strategy:
    if name == FedAvg.name:
        return FedAvg(spec)
    raise ValueError(f"unknown strategy {name!r}")
