"""Exact aggregation of LoRA updates: the weighted mean of the products, not of the factors.

A LoRA module's update is ΔWᵢ = sᵢ·BᵢAᵢ (B: dxrᵢ, A: rᵢxk, sᵢ the PEFT scaling alpha/rᵢ).
Averaging A and B separately gives (Σ pᵢBᵢ)(Σ pⱼAⱼ) = Σᵢ Σⱼ pᵢpⱼ BᵢAⱼ: the cross terms are
error (FedEx-LoRA, arXiv 2410.09432). The exact mean is ΔW = Σ pᵢ sᵢ BᵢAᵢ = B_s A_s with

    B_s = [p₁s₁B₁ … pₙsₙBₙ]   (d x R),   A_s = [A₁; …; Aₙ]   (R x k),   R = Σ rᵢ

which this module offers three ways, none of which forms the dxk matrix unless asked:

* :func:`stack_factors` — rank R factors whose product is ΔW exactly (FLoRA stacking,
  arXiv 2409.05976). Clients may have different ranks.
* :func:`refactor` — the optimal rank-r factors (Eckart-Young): QR of B_s and of A_sᵀ,
  SVD of the small core R_B R_Aᵀ (at most RxR), keep the top r. ΔW = Q_B (U Σ Vᵀ) Q_Aᵀ
  with orthonormal Q_B, Q_A, so Σ are exactly ΔW's singular values: the residual
  ‖ΔW - ΔW_r‖_F / ‖ΔW‖_F = sqrt(Σ_{i>r} sigma_i²) / sqrt(Σ sigma_i²) comes from them for free.
  The result is B' = Q_B U_r Σ_r / s_out and A' = V_rᵀ Q_Aᵀ: A' keeps orthonormal rows,
  so a direction with sigma = 0 leaves a zero column in B' but a live row in A', as PEFT's own
  initialisation does (B = 0, A random); splitting sqrt(sigma) into both would zero both and that
  direction could never train again.
* :func:`weighted_delta` — the dense ΔW, for tests and for callers who ask for it.

:func:`aggregate_adapters` applies this to whole PEFT state dicts: factors are paired by
name (``<module>.lora_A[.<adapter>].weight`` / ``<module>.lora_B[.<adapter>].weight``,
`fedseal.spec.pair_lora_names`); every other tensor is a plain weighted mean.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

# The naming rule and its error live with the adapter spec (clients and auditors derive
# per-rank specs from it); re-exported here, where the aggregation code has always found them.
from fedseal.spec import LoraFactorError, LoraModuleNames, pair_lora_names

__all__ = [
    "LoraAggregate",
    "LoraFactorError",
    "LoraFactors",
    "LoraMode",
    "LoraModuleNames",
    "ModuleResidual",
    "Refactorisation",
    "aggregate_adapters",
    "pair_lora_names",
    "refactor",
    "relative_residual",
    "stack_factors",
    "weighted_delta",
]


class LoraMode(enum.Enum):
    """How :func:`aggregate_adapters` returns each module."""

    OPTIMAL_RANK = "optimal-rank"  # best rank-r factors (r given, or the largest client rank)
    STACK = "stack"  # exact, rank Σ rᵢ


@dataclass(frozen=True)
class LoraFactors:
    """One module's update ΔW = scale · b @ a, with b: dxr and a: rxk."""

    b: torch.Tensor
    a: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.b.dim() != 2 or self.a.dim() != 2:
            raise LoraFactorError(
                f"LoRA factors must be 2-D, got B {tuple(self.b.shape)} and A {tuple(self.a.shape)}"
            )
        if self.b.shape[1] != self.a.shape[0] or self.a.shape[0] < 1:
            raise LoraFactorError(
                f"LoRA factors do not chain: B is {tuple(self.b.shape)}, A is {tuple(self.a.shape)}"
            )
        if not (self.b.is_floating_point() and self.a.is_floating_point()):
            raise LoraFactorError("LoRA factors must be floating-point tensors")
        if not math.isfinite(self.scale):
            raise LoraFactorError("LoRA scale must be finite")

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d, k): the shape of the dense ΔW."""
        return int(self.b.shape[0]), int(self.a.shape[1])

    def delta(self) -> torch.Tensor:
        """The dense dxk update (only when asked: it is what everything else avoids)."""
        return (self.b @ self.a).mul_(self.scale)


@dataclass(frozen=True)
class Refactorisation:
    factors: LoraFactors
    singular_values: torch.Tensor  # of ΔW, descending; min(d, k, R) of them
    residual: float  # relative Frobenius norm of what the rank-r factors lose


def _check(factors: Sequence[LoraFactors], weights: Sequence[float]) -> tuple[int, int]:
    if not factors:
        raise LoraFactorError("need at least one client's factors")
    if len(weights) != len(factors):
        raise LoraFactorError(f"{len(factors)} factor pairs but {len(weights)} weights")
    if not all(math.isfinite(w) for w in weights):
        raise LoraFactorError("weights must be finite")
    shape = factors[0].shape
    for i, f in enumerate(factors):
        if f.shape != shape:
            raise LoraFactorError(f"client {i}'s ΔW is {f.shape}, client 0's is {shape}")
    return shape


def stack_factors(
    factors: Sequence[LoraFactors],
    weights: Sequence[float],
    *,
    out_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> LoraFactors:
    """Factors of rank Σ rᵢ with out_scale · B A = Σ pᵢ sᵢ BᵢAᵢ exactly."""
    d, k = _check(factors, weights)
    if not math.isfinite(out_scale) or out_scale == 0:
        raise LoraFactorError("out_scale must be finite and non-zero")
    # Filled in place: no scaled or converted temporary of a client's factors is left to the
    # allocator (the enclave zeroes what it holds, but it cannot zero what it never sees).
    total = sum(f.rank for f in factors)
    b = torch.empty((d, total), dtype=dtype)
    a = torch.empty((total, k), dtype=dtype)
    start = 0
    for f, w in zip(factors, weights, strict=True):
        stop = start + f.rank
        b[:, start:stop].copy_(f.b).mul_(w * f.scale / out_scale)
        a[start:stop].copy_(f.a)
        start = stop
    return LoraFactors(b, a, out_scale)


def weighted_delta(
    factors: Sequence[LoraFactors], weights: Sequence[float], *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The dense Σ pᵢ sᵢ BᵢAᵢ (dxk). For tests and for callers who need the matrix itself."""
    stacked = stack_factors(factors, weights, dtype=dtype)
    return stacked.b @ stacked.a


def relative_residual(singular_values: torch.Tensor, rank: int) -> float:
    """‖ΔW - ΔW_r‖_F / ‖ΔW‖_F from ΔW's singular values (0 when ΔW = 0)."""
    squares = singular_values.to(torch.float64).square()
    total = float(squares.sum())
    if total == 0.0:
        return 0.0
    return math.sqrt(max(0.0, float(squares[rank:].sum())) / total)


def refactor(
    factors: Sequence[LoraFactors],
    weights: Sequence[float],
    rank: int,
    *,
    out_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Refactorisation:
    """The optimal rank-`rank` factors of ΔW = Σ pᵢ sᵢ BᵢAᵢ, with ΔW's singular values and
    the relative residual. Never forms the dxk matrix: the largest object is dxR or kxR.

    If ΔW has fewer than `rank` dimensions to offer (R or min(d, k) below `rank`), the extra
    columns of B' are zero and the extra rows of A' complete an orthonormal set.
    """
    if rank < 1:
        raise LoraFactorError("rank must be at least 1")
    if not math.isfinite(out_scale) or out_scale == 0:
        raise LoraFactorError("out_scale must be finite and non-zero")
    stacked = stack_factors(factors, weights, out_scale=1.0, dtype=dtype)
    # Everything below but the result is derived from the clients' factors: zeroed before
    # it is dropped (the stacked A holds every client's A verbatim).
    scratch: list[torch.Tensor] = [stacked.b, stacked.a]
    try:
        # Householder QR without forming Q (geqrf): Q is only ever applied to r columns
        # (ormqr), which halves the cost of the d x R orthogonalisations that dominate at large n.
        a_t = stacked.a.T.contiguous()
        scratch.append(a_t)
        house_b, tau_b = torch.geqrf(stacked.b)
        house_a, tau_a = torch.geqrf(a_t)
        scratch += [house_b, tau_b, house_a, tau_a]
        d, k = stacked.shape
        q1, q2 = min(d, stacked.rank), min(k, stacked.rank)
        tri_b, tri_a = torch.triu(house_b[:q1]), torch.triu(house_a[:q2])
        scratch += [tri_b, tri_a]
        core = tri_b @ tri_a.T  # R_B R_A^T, q1 x q2
        scratch.append(core)
        u, s, vh = torch.linalg.svd(core, full_matrices=False)
        scratch += [u, vh]
        keep = min(rank, s.numel())
        left = torch.zeros((d, keep), dtype=dtype)
        scratch.append(left)
        left[:q1].copy_(u[:, :keep]).mul_(s[:keep] / out_scale)
        b = torch.ormqr(house_b, tau_b, left)  # Q_B U_r S_r / s_out
        right = torch.zeros((k, keep), dtype=dtype)
        scratch.append(right)
        right[:q2].copy_(vh[:keep].T)
        a_right = torch.ormqr(house_a, tau_a, right)
        scratch.append(a_right)
        a = a_right.T.clone(memory_format=torch.contiguous_format)  # V_r^T Q_A^T (own storage)
    finally:
        for tensor in scratch:
            tensor.zero_()
    if keep < rank:
        if rank > k:
            raise LoraFactorError(f"rank {rank} exceeds the input dimension k = {k}")
        # Complete A's rows to an orthonormal set (deterministically) and give them zero B columns.
        full, _ = torch.linalg.qr(torch.cat([a.T, torch.eye(k, dtype=dtype)], 1), mode="reduced")
        a = torch.cat([a, full[:, keep:rank].T], 0)
        b = torch.cat([b, torch.zeros((d, rank - keep), dtype=dtype)], 1)
    return Refactorisation(LoraFactors(b, a, out_scale), s, relative_residual(s, keep))


# ---------------------------------------------------------------- whole adapters


@dataclass(frozen=True)
class ModuleResidual:
    module: str
    rank: int  # rank of the returned factors
    stacked_rank: int  # Σ rᵢ
    residual: float  # relative Frobenius norm lost at `rank` (0 for stacking)


@dataclass(frozen=True)
class LoraAggregate:
    tensors: dict[str, torch.Tensor]
    modules: tuple[ModuleResidual, ...]

    @property
    def max_residual(self) -> float:
        return max((m.residual for m in self.modules), default=0.0)


def _normalised(weights: Sequence[float]) -> list[float]:
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise LoraFactorError("weights must be positive and finite")
    total = math.fsum(weights)
    return [w / total for w in weights]


def aggregate_adapters(
    updates: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    mode: LoraMode = LoraMode.OPTIMAL_RANK,
    rank: int | None = None,
    scales: Sequence[float] | None = None,
    out_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> LoraAggregate:
    """Aggregate whole PEFT LoRA state dicts exactly; weights are normalised to sum to 1.

    Every update must carry the same tensor names; LoRA factors may differ in rank between
    updates (other tensors must have equal shapes). `scales` are the clients' LoRA scalings
    sᵢ (default 1) and `out_scale` the scaling the result will be used with. In
    OPTIMAL_RANK mode each module gets rank `rank`, or the largest client rank if None.
    """
    if not updates:
        raise LoraFactorError("need at least one update")
    if len(weights) != len(updates):
        raise LoraFactorError(f"{len(updates)} updates but {len(weights)} weights")
    p = _normalised(weights)
    scales = [1.0] * len(updates) if scales is None else list(scales)
    if len(scales) != len(updates):
        raise LoraFactorError(f"{len(updates)} updates but {len(scales)} scales")
    names = set(updates[0])
    for i, update in enumerate(updates):
        if set(update) != names:
            raise LoraFactorError(f"update {i} carries other tensor names than update 0")
    pairs, others = pair_lora_names(names)
    out: dict[str, torch.Tensor] = {}
    report = []
    for pair in pairs:
        factors = [LoraFactors(u[pair.b], u[pair.a], s) for u, s in zip(updates, scales, strict=True)]
        stacked_rank = sum(f.rank for f in factors)
        if mode is LoraMode.STACK:
            result = stack_factors(factors, p, out_scale=out_scale, dtype=dtype)
            residual = 0.0
        else:
            target = rank if rank is not None else max(f.rank for f in factors)
            refactored = refactor(factors, p, target, out_scale=out_scale, dtype=dtype)
            result, residual = refactored.factors, refactored.residual
        out[pair.a], out[pair.b] = result.a, result.b
        report.append(ModuleResidual(pair.module, result.rank, stacked_rank, residual))
    for name in others:
        shapes = {tuple(u[name].shape) for u in updates}
        if len(shapes) != 1:
            raise LoraFactorError(f"tensor {name!r} has different shapes across updates: {sorted(shapes)}")
        acc = torch.zeros(updates[0][name].shape, dtype=dtype)
        for u, w in zip(updates, p, strict=True):
            acc.add_(u[name].to(dtype), alpha=w)
        out[name] = acc
    return LoraAggregate(out, tuple(report))
