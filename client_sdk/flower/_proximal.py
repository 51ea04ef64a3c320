"""FedProx on the client: the proximal term a FedSeal ``fedprox`` round asks for.

A FedSeal strategy running ``fedprox`` puts ``proximal-mu`` (the round's ``proximal_mu``)
into every train message's config, under the key Flower's own FedProx uses. The client
adds (mu/2)·Σ‖w - w_global‖² over its trainable parameters to its loss::

    model = ...  # the global adapter loaded
    prox = ProximalTerm(model, proximal_mu(msg))
    for batch in data:
        loss = task_loss(model, batch) + prox()
"""

from __future__ import annotations

import math

import torch
from flwr.app import Message

from client_sdk.flower._records import PROXIMAL_MU_KEY, FlowerIntegrationError

__all__ = ["ProximalTerm", "proximal_mu"]


def proximal_mu(message: Message) -> float:
    """The message's ``proximal-mu`` (0.0 when its round is not FedProx)."""
    found = [c[PROXIMAL_MU_KEY] for c in message.content.config_records.values() if PROXIMAL_MU_KEY in c]
    if not found:
        return 0.0
    value = found[0]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FlowerIntegrationError(f"{PROXIMAL_MU_KEY!r} must be a non-negative number, got {value!r}")
    return float(value)


class ProximalTerm:
    """(mu/2)·Σ‖w - w₀‖² over `model`'s trainable parameters, w₀ their values when made
    (make it right after loading the global adapter, before the first step)."""

    def __init__(self, model: torch.nn.Module, mu: float) -> None:
        if mu < 0 or not math.isfinite(mu):
            raise FlowerIntegrationError(f"proximal mu must be a non-negative number, got {mu!r}")
        self.mu = mu
        self._params = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise FlowerIntegrationError("the model has no trainable parameters")

    def __call__(self) -> torch.Tensor:
        if self.mu == 0.0:
            return torch.zeros((), device=self._params[0][0].device)
        total = sum(((p - start) ** 2).sum() for p, start in self._params)
        return (self.mu / 2) * torch.as_tensor(total)
