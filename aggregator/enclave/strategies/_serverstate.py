"""`ServerState`: what a server optimizer (FedAvgM, FedAdam, FedYogi) carries between rounds.

Contract with the round manager
-------------------------------

1. **Round 1.** Pass ``ServerState.initial(optimizer, adapter)`` when the job has a
   starting global adapter (the one clients fine-tune from), or ``None``. With ``None`` the
   first round is a bootstrap round: it publishes the plain weighted mean, and the state
   starts from that mean with zero moments (no optimizer step is taken).
2. **Each round.** Build the strategy with the state carried so far
   (``make_strategy(..., server_state=state)``). After ``finalize()`` returns the
   aggregate (which *is* the new global adapter x_{t+1}), take
   ``strategy.next_server_state()`` and keep it for the next round. It stays available
   after ``discard()``.
3. **A round that fails** (or whose aggregate is not released) leaves the carried state as
   it was: strategies never modify the state they were given; they build a new one.
4. **Checks.** A state is refused (`ServerStateError`) by a different optimizer (FedAdam's
   moments mean nothing to FedYogi) or a different adapter spec (names and shapes). The
   hyperparameters (learning rate, betas...) come from each round's config and may change
   between rounds, as a schedule would.
5. **Where it lives.** Enclave memory only: the moments are derived from update plaintext.
   The weights are the published aggregate; the moments are never published. When the job
   ends, call ``discard()`` to zero them.

Memory: weights plus one (FedAvgM) or two (FedAdam, FedYogi) moment copies of the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedseal.roundconfig import StrategyName
from fedseal.spec import AdapterSpec

from ._common import ServerStateError

__all__ = ["MOMENT_NAMES", "ServerState"]

MOMENT_NAMES: Mapping[StrategyName, tuple[str, ...]] = {
    StrategyName.FEDAVGM: ("momentum",),
    StrategyName.FEDADAM: ("m", "v"),
    StrategyName.FEDYOGI: ("m", "v"),
}


@dataclass(frozen=True)
class ServerState:
    """x_t (the current global adapter, float32) and the optimizer's moments, per tensor."""

    optimizer: StrategyName
    step: int  # optimizer steps applied so far (a bootstrap round applies none)
    weights: Mapping[str, torch.Tensor]
    moments: Mapping[str, Mapping[str, torch.Tensor]]  # moment name -> tensor name -> tensor

    def __post_init__(self) -> None:
        if self.optimizer not in MOMENT_NAMES:
            raise ServerStateError(f"{self.optimizer.value!r} is not a server optimizer")
        if self.step < 0:
            raise ServerStateError("server state step must be >= 0")
        if set(self.moments) != set(MOMENT_NAMES[self.optimizer]):
            raise ServerStateError(
                f"{self.optimizer.value} state needs moments {MOMENT_NAMES[self.optimizer]}, "
                f"got {sorted(self.moments)}"
            )
        for moment, tensors in self.moments.items():
            if set(tensors) != set(self.weights):
                raise ServerStateError(f"moment {moment!r} does not cover the same tensors as the weights")
            for name, value in tensors.items():
                if value.shape != self.weights[name].shape or value.dtype != torch.float32:
                    raise ServerStateError(f"moment {moment!r} of {name!r} has the wrong shape or dtype")
        if any(w.dtype != torch.float32 for w in self.weights.values()):
            raise ServerStateError("server state weights must be float32")

    @classmethod
    def initial(cls, optimizer: StrategyName, weights: Mapping[str, torch.Tensor]) -> ServerState:
        """Start from a known global adapter (copied, as float32) with zero moments."""
        start = {name: t.detach().to(torch.float32, copy=True) for name, t in weights.items()}
        zeros = {m: {n: torch.zeros_like(t) for n, t in start.items()} for m in MOMENT_NAMES[optimizer]}
        return cls(optimizer, 0, start, zeros)

    def check_fits(self, optimizer: StrategyName, spec: AdapterSpec) -> None:
        if optimizer is not self.optimizer:
            raise ServerStateError(
                f"the carried server state belongs to {self.optimizer.value}, this round runs "
                f"{optimizer.value}"
            )
        expected = {t.name: t.shape for t in spec.tensors}
        actual = {name: tuple(t.shape) for name, t in self.weights.items()}
        if actual != expected:
            raise ServerStateError("the carried server state does not match this round's adapter spec")

    def live_tensor_bytes(self) -> int:
        tensors = [*self.weights.values(), *(t for m in self.moments.values() for t in m.values())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def discard(self) -> None:
        """Zero every tensor (best effort: copies made elsewhere are out of reach)."""
        for t in self.weights.values():
            t.zero_()
        for moment in self.moments.values():
            for t in moment.values():
                t.zero_()
