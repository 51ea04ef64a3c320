"""FedAdam (Reddi et al., ICLR 2021, Algorithm 2), without bias correction as in the paper:

    Δ = mean - x_t;   m = β₁m + (1-β₁)Δ;   v = β₂v + (1-β₂)Δ²;   x_{t+1} = x_t + η·m/(√v + τ)

Moments start at zero. (Flower's FedAdam additionally rescales η by Adam's bias-correction
factor; FedYogi in Flower does not. Here both follow the paper.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedseal.roundconfig import FedAdamParams, FedYogiParams, StrategyName
from fedseal.spec import AdapterSpec

from ._serveropt import ServerOptimizer
from ._serverstate import ServerState

__all__ = ["FedAdam"]


class FedAdam(ServerOptimizer):
    name = "fedadam"
    optimizer = StrategyName.FEDADAM

    def __init__(
        self, spec: AdapterSpec, params: FedAdamParams | FedYogiParams, server_state: ServerState | None
    ) -> None:
        super().__init__(spec, params, server_state)
        self._p = params

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return torch.lerp(delta_sq, v, self._p.beta2)  # β₂v + (1-β₂)Δ²

    def _step(
        self, delta: torch.Tensor, weights: torch.Tensor, moments: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = torch.lerp(delta, moments["m"], self._p.beta1)  # β₁m + (1-β₁)Δ
        v = self._second_moment(moments["v"], delta.square_())
        denominator = v.sqrt().add_(self._p.tau)
        return torch.addcdiv(weights, m, denominator, value=self._p.server_lr), {"m": m, "v": v}
