"""Central DP on plaintext: clipping each update's delta, and the noised sum of a round.

The mechanism, per round (its accounting is in aggregator/_dp.py, which keeps the ledger):

1. Each accepted update's delta against the round's global adapter is clipped to L2 norm
   C (all tensors together, float32; `clip_delta`). Updates are weighted equally.
2. `DpSum` adds the clipped deltas into one float32 sum S.
3. At close, S is rounded to the grid gamma·Z and the exact discrete Gaussian
   gamma·N_Z(0, (sigma/gamma)²) is added (aggregator/enclave/_noise.py, `add_secure_noise`:
   CKS20 over a ChaCha20 CSPRNG). Two sums that differ by one clipped delta are at L2
   distance at most C after rounding plus √d·gamma, the sensitivity sigma is calibrated for.
4. The aggregate is ``global + noised(S) / D`` with D the round's `max_clients`: a fixed
   denominator, written in the round config before any update arrives. Dividing by the
   number of updates that did arrive would not be post-processing of the noised sum: that
   number changes when one client is added or removed, so the released values would carry
   a data-dependent scale the sensitivity analysis does not cover (the fixed-denominator
   estimator of McMahan et al. 2018, as in Flower's and Opacus's fixed-size central DP).
   A round that closes below `max_clients` therefore takes a shorter step, by design.
5. Adaptive clipping (Andrew et al. 2021): the number of updates that were not clipped is
   released with discrete Gaussian noise of its own (`count_noise_stddev`; sensitivity 1);
   the ledger derives the next round's clip from it.

Every float32 copy made here is owned and zeroed: each clipped delta by its caller's
`PreparedUpdate` once folded in, the sum by `DpSum` (the noised sum is a released value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from aggregator.enclave._noise import add_secure_noise, discrete_gaussian
from aggregator.enclave.strategies import NotEnoughUpdatesError, ServerState, StrategyDiscardedError
from fedseal.spec import AdapterSpec

__all__ = ["ClippedDelta", "DpNoisePlan", "DpSum", "clip_delta"]


@dataclass(frozen=True)
class ClippedDelta:
    # delta·min(1, C/‖delta‖), float32, owned: zero when done; plaintext, so never in a repr
    tensors: dict[str, torch.Tensor] = field(repr=False)
    norm: float  # L2 norm of the delta before clipping
    clipped: bool


def clip_delta(
    tensors: Mapping[str, torch.Tensor], global_adapter: Mapping[str, torch.Tensor], clip_norm: float
) -> ClippedDelta:
    """delta·min(1, C/‖delta‖), with delta = update - global over all tensors.

    One float32 buffer per tensor, converted into in place (no dtype-conversion temporary
    left to the allocator) and returned; the norm is a reduction (no squared copy)."""
    deltas: dict[str, torch.Tensor] = {}
    for name, base in global_adapter.items():
        delta = torch.empty(base.shape, dtype=torch.float32)
        delta.copy_(tensors[name])
        deltas[name] = delta.sub_(base)
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(d)) ** 2 for d in deltas.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if scale < 1.0:
        for delta in deltas.values():
            delta.mul_(scale)
    return ClippedDelta(deltas, norm, scale < 1.0)


@dataclass(frozen=True)
class DpNoisePlan:
    """What one DP round runs with, fixed when it opens (aggregator/_dp.py `DpLedger.plan`)."""

    clip_norm: float  # C of this round
    noise_stddev: float  # sigma of the noise on the sum (noise multiplier x sensitivity)
    grid_step: float  # gamma
    denominator: int  # D: the round's max_clients
    count_noise_stddev: float | None  # adaptive clipping: the noise on the unclipped count


class DpSum:
    """A DP round's accumulator: the sum of clipped deltas, noised and normalised at close.

    Follows the `Strategy` protocol (aggregator/enclave/strategies), so the round closes a
    DP round as any other; `note` counts the updates that were not clipped."""

    name = "dp-sum"

    def __init__(
        self, spec: AdapterSpec, global_adapter: Mapping[str, torch.Tensor], plan: DpNoisePlan
    ) -> None:
        ordered = sorted(spec.tensors, key=lambda t: t.name)
        self._flat = torch.zeros(sum(t.numel for t in ordered), dtype=torch.float32)
        self._sums: dict[str, torch.Tensor] | None = {}
        start = 0
        for t in ordered:
            self._sums[t.name] = self._flat[start : start + t.numel].view(t.shape)
            start += t.numel
        self._global = global_adapter
        self.plan = plan
        self._count = 0
        self._unclipped = 0
        # Set by finalize under adaptive clipping: the released (noised) unclipped count.
        self.noised_unclipped_count: int | None = None

    @property
    def num_updates(self) -> int:
        return self._count

    def note(self, *, clipped: bool) -> None:
        self._unclipped += int(not clipped)

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None:
        """Add one clipped delta (weights are equal under DP: `num_examples` is not used)."""
        sums = self._live()
        for name, acc in sums.items():
            acc.add_(tensors[name])
        self._count += 1

    def finalize(self) -> dict[str, torch.Tensor]:
        """global + (S rounded to the grid + discrete Gaussian noise) / D, in the sum's buffer."""
        sums = self._live()
        if self._count == 0:
            raise NotEnoughUpdatesError("a DP round cannot finalize with no accepted update")
        plan = self.plan
        try:
            add_secure_noise(sums, plan.noise_stddev, gamma=plan.grid_step)
        except BaseException:
            self.discard()
            raise
        self._sums = None  # the noised sum is released: the caller owns it now
        self._flat.mul_(1.0 / plan.denominator)
        for name, acc in sums.items():
            acc.add_(self._global[name])
        if plan.count_noise_stddev is not None:
            noise = discrete_gaussian(plan.count_noise_stddev, 1)
            self.noised_unclipped_count = self._unclipped + int(noise[0])
            noise.fill(0)
        return sums

    def live_tensor_bytes(self) -> int:
        return 0 if self._sums is None else self._flat.numel() * 4

    def next_server_state(self) -> ServerState | None:
        return None

    def discard(self) -> None:
        if self._sums is not None:
            self._flat.zero_()
        self._sums = None

    def _live(self) -> dict[str, torch.Tensor]:
        if self._sums is None:
            raise StrategyDiscardedError("this DP sum was finalized or discarded")
        return self._sums
