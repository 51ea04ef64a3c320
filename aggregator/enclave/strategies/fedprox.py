"""FedProx (Li et al., MLSys 2020): the proximal term is the clients' business.

Each client minimises its loss plus (mu/2)·‖w - w_global‖²; the server aggregates exactly
as FedAvg does. So this strategy is FedAvg under another name, and `proximal_mu` is a
validated round-config value (`strategy_params.proximal_mu`) that clients read from the
round config before training. Recording it in the round config puts it in the audit log.
"""

from __future__ import annotations

import torch

from fedseal.roundconfig import FedProxParams
from fedseal.spec import AdapterSpec

from .fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(
        self, spec: AdapterSpec, params: FedProxParams, *, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(spec, params, device=device)
        self.proximal_mu = params.proximal_mu
