"""FedAvgM (Hsu, Qi, Brown 2019): server momentum over the averaged pseudo-gradient.

    Δ = mean - x_t;   u_{t+1} = momentum · u_t + Δ;   x_{t+1} = x_t + server_lr · u_{t+1}

This is Flower's FedAvgM with its sign convention flipped (Flower's pseudo-gradient is
x_t - mean and it subtracts): the same iterates. momentum 0 and server_lr 1 give FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedseal.roundconfig import FedAvgMParams, StrategyName
from fedseal.spec import AdapterSpec

from ._serveropt import ServerOptimizer
from ._serverstate import ServerState

__all__ = ["FedAvgM"]


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    optimizer = StrategyName.FEDAVGM

    def __init__(self, spec: AdapterSpec, params: FedAvgMParams, server_state: ServerState | None) -> None:
        super().__init__(spec, params, server_state)
        self._lr = params.server_lr
        self._momentum = params.momentum

    def _step(
        self, delta: torch.Tensor, weights: torch.Tensor, moments: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        velocity = torch.add(delta, moments["momentum"], alpha=self._momentum)
        return torch.add(weights, velocity, alpha=self._lr), {"momentum": velocity}
