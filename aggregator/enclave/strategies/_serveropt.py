"""Adaptive federated optimisation (Reddi et al., ICLR 2021): the shared frame.

Clients send adapters; the server streams their weighted mean (as FedAvg, async staleness
weights included), forms the pseudo-gradient Δ = mean - x_t against the carried global
adapter x_t, and takes one optimizer step per round. The step rule is each subclass's.
The state carried between rounds is a `ServerState` (contract in `_serverstate.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from fedseal.roundconfig import FedAvgParams, StrategyName, StrategyParams
from fedseal.spec import AdapterSpec

from ._common import AggregationError, StrategyDiscardedError
from ._serverstate import MOMENT_NAMES, ServerState
from .fedavg import FedAvg

__all__ = ["ServerOptimizer"]


class ServerOptimizer:
    name: ClassVar[str]
    optimizer: ClassVar[StrategyName]

    def __init__(self, spec: AdapterSpec, params: StrategyParams, server_state: ServerState | None) -> None:
        if server_state is not None:
            server_state.check_fits(self.optimizer, spec)
        self._params = params
        self._state = server_state
        self._mean: FedAvg | None = FedAvg(spec, FedAvgParams(staleness=params.staleness))
        self._next: ServerState | None = None

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None:
        self._live().accumulate(tensors, num_examples, staleness=staleness)

    def _step(
        self, delta: torch.Tensor, weights: torch.Tensor, moments: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step for one tensor: (new weights, new moments). Must not modify inputs
        other than `delta`, which is scratch."""
        raise NotImplementedError

    def finalize(self) -> dict[str, torch.Tensor]:
        """x_{t+1}, the new global adapter (fresh tensors the caller may keep or modify)."""
        inner = self._live()
        mean = inner.finalize()
        state = self._state
        if state is None:
            # Bootstrap round: publish the mean, start the state from it.
            self._next = ServerState.initial(self.optimizer, mean)
        else:
            weights: dict[str, torch.Tensor] = {}
            moments: dict[str, dict[str, torch.Tensor]] = {m: {} for m in MOMENT_NAMES[self.optimizer]}
            for name, value in mean.items():
                delta = value.sub_(state.weights[name])  # the accumulator becomes Δ in place
                old = {m: state.moments[m][name] for m in moments}
                weights[name], new = self._step(delta, state.weights[name], old)
                for m, tensor in new.items():
                    moments[m][name] = tensor
            self._next = ServerState(self.optimizer, state.step + 1, weights, moments)
            for value in mean.values():
                value.zero_()  # the clients' mean delta: not what is released
        inner.discard()
        self._mean = None
        return {name: t.clone() for name, t in self._next.weights.items()}

    def next_server_state(self) -> ServerState:
        """The state to carry into the next round; only after `finalize`."""
        if self._next is None:
            raise AggregationError(f"{self.name}: next_server_state() is only available after finalize()")
        return self._next

    def live_tensor_bytes(self) -> int:
        return 0 if self._mean is None else self._mean.live_tensor_bytes()

    def discard(self) -> None:
        if self._mean is not None:
            self._mean.discard()
            self._mean = None

    def _live(self) -> FedAvg:
        if self._mean is None:
            raise StrategyDiscardedError(f"this {self.name} strategy was finalized or discarded")
        return self._mean
