"""FedYogi (Reddi et al., ICLR 2021, Algorithm 2): FedAdam with Yogi's additive second moment

    v = v - (1-β₂)·Δ²·sign(v - Δ²)

which grows v more slowly than Adam's average when gradients shrink. Same state as FedAdam
(m, v), but a FedAdam state is refused here: the moments mean different things.
"""

from __future__ import annotations

import torch

from fedseal.roundconfig import FedYogiParams, StrategyName
from fedseal.spec import AdapterSpec

from ._serverstate import ServerState
from .fedadam import FedAdam

__all__ = ["FedYogi"]


class FedYogi(FedAdam):
    name = "fedyogi"
    optimizer = StrategyName.FEDYOGI

    def __init__(self, spec: AdapterSpec, params: FedYogiParams, server_state: ServerState | None) -> None:
        super().__init__(spec, params, server_state)

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        sign = torch.sign(v - delta_sq)
        return v - (1.0 - self._p.beta2) * delta_sq * sign
