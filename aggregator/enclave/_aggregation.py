"""A round's plaintext side, and the global adapter it is measured against.

The round manager (aggregator/_rounds.py and its parts) decides *whether* and *when*: which
upload is admitted, accepted, folded in, when a round closes, what is logged. It handles
the objects of this module as opaque handles and reads their metadata only (a norm, a
digest, a size). Everything that holds an update's values, or anything derived from them
elementwise, is made and dropped here:

- `GlobalModel`: the current global adapter (the job's initial adapter, then each released
  aggregate, float32) and the server optimizer's carried state. Both are published to the
  participants (the initial adapter by the job, the others as aggregates) and may stay.
- `RoundAggregator`: one round's strategy (a DP round's is `DpSum`, aggregator/enclave/_dp.py).
  `prepare` turns a validated upload into what is folded in (the DP clip; the norm of the
  delta that a gated round publishes and a norm bound checks); `accumulate` folds it in and
  zeroes every copy `prepare` made; `close` finalizes (a DP round's noise is added there)
  and serializes the aggregate.
- `ClosedAggregate`: the aggregate between close and release. A withheld one is zeroed.

Buffers that held plaintext are zeroed before they are dropped: the DP path's float32
copies, the float32 conversions of bfloat16/float16 updates (for norms), and the scratch
used for deltas. The receiver's own buffer is zeroed by the receiver (`_receive.py`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from aggregator.enclave._dp import DpNoisePlan, DpSum, clip_delta
from aggregator.enclave._receive import FlatTensors, ValidatedUpdate
from aggregator.enclave._serialize import serialize_safetensors
from aggregator.enclave.lora_exact import ModuleResidual
from aggregator.enclave.strategies import ServerState, Strategy, strategy_for_round
from aggregator.enclave.strategies._serverstate import MOMENT_NAMES
from fedseal.roundconfig import RoundConfig
from fedseal.spec import AdapterSpec

__all__ = ["ClosedAggregate", "GlobalModel", "PreparedUpdate", "RoundAggregator"]


class PreparedUpdate:
    """An upload as it will be folded in, with the metadata the round publishes of it."""

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        weight: int,
        *,
        norm: float | None,
        clipped: bool,
        owned: bool,
    ) -> None:
        self._tensors: Mapping[str, torch.Tensor] | None = tensors
        self._owned = owned  # copies made by prepare (else views of the receiver's buffer)
        self.weight = weight
        self.norm = norm  # L2 norm of the delta (None: not computed)
        self.clipped = clipped

    def take(self) -> Mapping[str, torch.Tensor]:
        if self._tensors is None:
            raise ValueError("this prepared update was already folded in or wiped")
        return self._tensors

    def wipe(self) -> None:
        """Zero the copies this update owns and drop its tensors. Idempotent."""
        tensors, self._tensors = self._tensors, None
        if tensors is not None and self._owned:
            for tensor in tensors.values():
                tensor.zero_()


class ClosedAggregate:
    """A round's aggregate between its close and its release (or withholding)."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        data: bytes | bytearray,
        next_state: ServerState | None,
        residuals: tuple[ModuleResidual, ...],
        noised_unclipped_count: int | None = None,
    ) -> None:
        self._tensors: dict[str, torch.Tensor] | None = tensors
        self._data: bytes | bytearray | None = data
        self._next_state = next_state
        self.digest = hashlib.sha256(data).digest()
        self.size = len(data)
        self.residuals = residuals  # lora-exact: what its rank-r factors lose, per module
        # A DP round with adaptive clipping: the released (noised) count of unclipped updates.
        self.noised_unclipped_count = noised_unclipped_count

    def publish(self) -> bytes:
        """The serialized aggregate, to be served. A wipeable (gated) copy is zeroed once copied."""
        data = self._data
        if data is None:
            raise ValueError("this aggregate was withheld or published already")
        self._data = None
        if isinstance(data, bytes):
            return data
        published = bytes(data)
        data[:] = bytes(len(data))
        return published

    def wipe(self) -> None:
        """Zero the aggregate (a withheld round's: it is never released). Idempotent."""
        tensors, self._tensors = self._tensors, None
        for tensor in (tensors or {}).values():
            tensor.zero_()
        data, self._data = self._data, None
        if isinstance(data, bytearray):
            data[:] = bytes(len(data))
        if self._next_state is not None:
            self._next_state.discard()
            self._next_state = None


class RoundAggregator:
    """One round's strategy, and the global adapter its updates are measured against."""

    def __init__(
        self, config: RoundConfig, strategy: Strategy, global_adapter: Mapping[str, torch.Tensor] | None
    ) -> None:
        self._config = config
        self.strategy = strategy
        self._global = global_adapter

    def prepare(
        self, update: ValidatedUpdate, num_examples: int, *, same_spec: bool, want_norm: bool
    ) -> PreparedUpdate:
        """What to fold in, its weight, the L2 norm of its delta and whether it was clipped.

        Under DP the delta is clipped (what is folded in is the clipped delta) and weights are
        equal; outside the round lock (it is a full pass). An update at another LoRA rank
        than the round spec (`same_spec` False), or one of a round without a global adapter,
        has no elementwise delta: its own norm is taken. Without DP the norm is only needed
        by a gated round's metrics and a norm bound: `want_norm` False skips that pass (norm
        None)."""
        tensors = update.tensors
        glob = self._global if same_spec else None
        dp = self._config.dp
        if dp is not None:
            if glob is None:  # a DP round opens only with a global adapter
                raise ValueError("a DP round needs the global adapter")
            if not isinstance(self.strategy, DpSum):
                raise ValueError("a DP round folds into a DpSum")
            clip = clip_delta(tensors, glob, self.strategy.plan.clip_norm)
            return PreparedUpdate(clip.tensors, 1, norm=clip.norm, clipped=clip.clipped, owned=True)
        norm = _norm(tensors, glob) if want_norm else None
        return PreparedUpdate(tensors, num_examples, norm=norm, clipped=False, owned=False)

    def accumulate(self, prepared: PreparedUpdate, *, staleness: int) -> None:
        """Fold `prepared` in, then zero the copies it owns (also if folding in fails)."""
        try:
            self.strategy.accumulate(prepared.take(), prepared.weight, staleness=staleness)
            if isinstance(self.strategy, DpSum):
                self.strategy.note(clipped=prepared.clipped)
        finally:
            prepared.wipe()

    def close(self, *, wipeable: bool) -> ClosedAggregate:
        """Finalize (AggregationError: no aggregate; a DP round's noise is added there),
        serialize. The strategy is discarded whatever happens. `wipeable`: keep the bytes
        zeroable (a gated round's)."""
        try:
            tensors = self.strategy.finalize()
            next_state = self.strategy.next_server_state()
        finally:
            self.strategy.discard()  # crypto-erases a spool; idempotent
        count = self.strategy.noised_unclipped_count if isinstance(self.strategy, DpSum) else None
        try:
            data = serialize_safetensors(tensors, wipeable=wipeable)
        except BaseException:
            for tensor in tensors.values():
                tensor.zero_()
            raise
        residuals: tuple[ModuleResidual, ...] = tuple(getattr(self.strategy, "report", ()))
        return ClosedAggregate(tensors, data, next_state, residuals, count)

    def discard(self) -> None:
        self.strategy.discard()


class GlobalModel:
    """The current global adapter and the server optimizer's state, from release to release."""

    def __init__(self, initial_adapter: bytes | None, *, device: torch.device | str = "cpu") -> None:
        """`initial_adapter`: safetensors bytes of the job's starting global adapter (what
        clients fine-tune in round 1). `device`: where FedAvg/FedProx accumulate."""
        self._device = torch.device(device)
        self.initial_digest = (
            hashlib.sha256(initial_adapter).digest() if initial_adapter is not None else None
        )
        self._global: dict[str, torch.Tensor] | None = (
            {n: t.to(torch.float32) for n, t in safetensors.torch.load(initial_adapter).items()}
            if initial_adapter is not None
            else None
        )
        self._server_state: ServerState | None = None

    def fits(self, spec: AdapterSpec) -> bool:
        """Whether there is a global adapter, with exactly the tensors and shapes of `spec`."""
        glob = self._global
        return glob is not None and {n: tuple(t.shape) for n, t in glob.items()} == {
            t.name: t.shape for t in spec.tensors
        }

    def round(
        self, config: RoundConfig, *, spool_dir: Path | None, dp: DpNoisePlan | None = None
    ) -> RoundAggregator:
        """The aggregator of a round about to open (its strategy, and the global if it fits).
        A DP round (`dp`: its noise, from the ledger) folds into a `DpSum`."""
        fits = self.fits(config.adapter_spec)
        glob = self._global if fits else None
        strategy: Strategy
        if config.dp is not None or dp is not None:
            if dp is None or config.dp is None or glob is None:
                raise ValueError("a DP round needs its noise plan, its dp section and the global adapter")
            strategy = DpSum(config.adapter_spec, glob, dp)
        else:
            strategy = strategy_for_round(
                config,
                server_state=self._carried_state(config, fits),
                spool_dir=spool_dir,
                device=self._device,
            )
        return RoundAggregator(config, strategy, glob)

    def _carried_state(self, config: RoundConfig, fits: bool) -> ServerState | None:
        """The server optimizer's state for this round: carried, else started from the global."""
        name = config.strategy_name
        if name not in MOMENT_NAMES:
            return None
        state = self._server_state
        if state is not None and state.optimizer is name:
            state.check_fits(name, config.adapter_spec)
            return state
        # Another optimizer's moments mean nothing here: start from the global adapter.
        return ServerState.initial(name, self._global) if self._global is not None and fits else None

    def release(self, aggregate: ClosedAggregate) -> None:
        """`aggregate` becomes the global adapter (and its server state the carried one)."""
        tensors, aggregate._tensors = aggregate._tensors, None
        if tensors is None:
            raise ValueError("this aggregate was withheld")
        self._global = tensors
        if aggregate._next_state is not None:
            self._server_state = aggregate._next_state
            aggregate._next_state = None

    def discard(self) -> None:
        if self._server_state is not None:
            self._server_state.discard()


def _norm(tensors: Mapping[str, torch.Tensor], glob: Mapping[str, torch.Tensor] | None) -> float:
    """L2 norm of the update's delta against `glob` (or of the update itself).

    One reduction per tensor into one reused float32 scratch (no full-size temporary), and
    the scratch is zeroed before it is dropped: it held converted plaintext."""
    if glob is None and isinstance(tensors, FlatTensors) and tensors.flat.dtype == torch.float32:
        return float(torch.linalg.vector_norm(tensors.flat))
    squares = 0.0
    scratch: torch.Tensor | None = None
    try:
        for name, value in tensors.items():
            v = value
            if glob is not None or value.dtype != torch.float32:
                if scratch is None or scratch.numel() < value.numel():
                    if scratch is not None:
                        scratch.zero_()
                    scratch = torch.empty(value.numel(), dtype=torch.float32)
                v = scratch[: value.numel()].view(value.shape)
                v.copy_(value)
                if glob is not None:
                    v.sub_(glob[name])
            squares += float(torch.linalg.vector_norm(v)) ** 2
    finally:
        if scratch is not None:
            scratch.zero_()
    return math.sqrt(squares)
