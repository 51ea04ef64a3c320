"""Base of the strategies that need every update at once: they spool, then work by column block.

`accumulate` seals the update into an `UpdateSpool` (encrypted on file under a key held
only here) and keeps its example count and staleness factor; `finalize` reads the spool
back piece by piece (see `map_column_blocks`) and erases it, whatever happens, so the
round's updates are crypto-erased as soon as the aggregate exists or cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from aggregator.enclave._spool import DEFAULT_PIECE_ELEMENTS, UpdateSpool
from fedseal.roundconfig import StrategyParams
from fedseal.spec import AdapterSpec

from ._common import (
    AggregationError,
    NotEnoughUpdatesError,
    StrategyDiscardedError,
    check_finite,
    default_workers,
    update_weight,
)
from ._serverstate import ServerState

__all__ = ["SpooledStrategy"]


class SpooledStrategy:
    name: ClassVar[str]

    def __init__(
        self,
        spec: AdapterSpec,
        params: StrategyParams,
        *,
        spool_dir: Path | None = None,
        piece_elements: int = DEFAULT_PIECE_ELEMENTS,
        workers: int | None = None,
        variants: Sequence[AdapterSpec] = (),
    ) -> None:
        """`variants`: other specs an update may match (lora-exact's client ranks)."""
        self._spec = spec
        self._params = params
        # Each update is matched to exactly one of these by its shapes (`_spec_of`).
        self._specs = (spec, *(v for v in variants if v != spec))
        self._spool: UpdateSpool | None = UpdateSpool(
            spec, directory=spool_dir, piece_elements=piece_elements, variants=self._specs[1:]
        )
        self._examples: list[int] = []
        self._factors: list[float] = []  # alpha**staleness, 1.0 in synchronous rounds
        self._workers = workers or default_workers()

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None:
        factor = update_weight(num_examples, staleness, self._params.staleness) / num_examples
        self._live().add(tensors, spec=self._spec_of(tensors))
        self._examples.append(num_examples)
        self._factors.append(factor)

    def _spec_of(self, tensors: Mapping[str, torch.Tensor]) -> AdapterSpec:
        if len(self._specs) == 1:
            return self._spec  # the spool checks names, element counts and dtypes
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        for spec in self._specs:
            if spec.shapes() == shapes:
                return spec
        raise AggregationError(
            f"{self.name}: the update's tensor shapes match neither the round's adapter spec nor "
            "the spec of an allowed client rank"
        )

    @property
    def num_updates(self) -> int:
        return len(self._examples)

    @property
    def spooled_bytes(self) -> int:
        """Sealed bytes on file (not memory): grows with n while live tensor bytes do not."""
        return 0 if self._spool is None else self._spool.spooled_bytes

    def finalize(self) -> dict[str, torch.Tensor]:
        spool = self._live()
        try:
            if not self._examples:
                raise NotEnoughUpdatesError(f"{self.name} cannot finalize a round with no accepted update")
            return check_finite(self._aggregate(spool), self.name)
        finally:
            self.discard()

    def _aggregate(self, spool: UpdateSpool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _empty_output(self) -> dict[str, torch.Tensor]:
        return {t.name: torch.empty(t.shape, dtype=torch.float32) for t in self._spec.tensors}

    def live_tensor_bytes(self) -> int:
        # Accepted updates live sealed on file; tensors exist only while finalize runs.
        return 0

    def next_server_state(self) -> ServerState | None:
        return None

    def discard(self) -> None:
        """Crypto-erase the spool (drop its keys, delete its file). Idempotent."""
        if self._spool is not None:
            self._spool.erase()
            self._spool = None

    def _live(self) -> UpdateSpool:
        if self._spool is None:
            raise StrategyDiscardedError(f"this {self.name} strategy was finalized or discarded")
        return self._spool
