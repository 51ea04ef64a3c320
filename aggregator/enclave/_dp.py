"""Central DP on plaintext: clipping each update's delta and adding Gaussian noise to the mean.

The mechanism and its accounting are described in aggregator/_dp.py, which keeps the
budget ledger (metadata only); this module is the part that touches update values, so it
lives in the enclave package. Every float32 copy made here is owned by its caller's
`ClippedUpdate`, which the round zeroes once the update is folded in (`wipe`).

Randomness: noise comes from numpy's PCG64 generator seeded with 256 bits from
`os.urandom`. PCG64 is not a cryptographic generator: its state could in principle be
recovered from enough of its raw outputs, which is why they are never published (only
sums of noise and data leave the enclave). Floating-point Gaussian sampling has known
side effects on the exact guarantee (Mironov, CCS 2012); a discrete or snapping mechanism
would remove them and is not done here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedseal.errors import FedSealError

__all__ = ["ClippedUpdate", "DpNoiseError", "add_noise", "clip_update"]


class DpNoiseError(FedSealError):
    """Noise cannot be added as asked (an aggregate of no update)."""


@dataclass(frozen=True)
class ClippedUpdate:
    tensors: dict[str, torch.Tensor]  # global + clipped delta, float32, owned: wipe() when done
    norm: float  # L2 norm of the delta before clipping
    clipped: bool

    def wipe(self) -> None:
        for tensor in self.tensors.values():
            tensor.zero_()


def clip_update(
    tensors: Mapping[str, torch.Tensor], global_adapter: Mapping[str, torch.Tensor], clip_norm: float
) -> ClippedUpdate:
    """global + delta·min(1, C/‖delta‖), with delta = update - global over all tensors.

    One float32 buffer per tensor, converted into in place (no dtype-conversion temporary
    left to the allocator) and returned; the norm is a reduction (no squared copy)."""
    deltas: dict[str, torch.Tensor] = {}
    for name, base in global_adapter.items():
        delta = torch.empty(base.shape, dtype=torch.float32)
        delta.copy_(tensors[name])
        deltas[name] = delta.sub_(base)
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(d)) ** 2 for d in deltas.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = {name: d.mul_(scale).add_(global_adapter[name]) for name, d in deltas.items()}
    return ClippedUpdate(out, norm, scale < 1.0)


def add_noise(mean: Mapping[str, torch.Tensor], stddev_of_sum: float, count: int) -> None:
    """Add N(0, stddev_of_sum²)/count to every coordinate of `mean`, in place."""
    if count < 1:
        raise DpNoiseError("cannot add noise to an aggregate of no update")
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "big")))
    scale = stddev_of_sum / count
    for tensor in mean.values():
        noise = rng.standard_normal(tensor.numel(), dtype=np.float32)
        tensor.view(-1).add_(torch.from_numpy(noise), alpha=scale)
