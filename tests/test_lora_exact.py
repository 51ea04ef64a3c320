"""Exact LoRA aggregation: ΔW = Σ pᵢ sᵢ BᵢAᵢ, stacked exactly or refactored at optimal rank,
compared with the dense matrix and its truncated SVD (float64, small sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from aggregator.enclave.lora_exact import (
    LoraFactorError,
    LoraFactors,
    LoraMode,
    aggregate_adapters,
    pair_lora_names,
    refactor,
    relative_residual,
    stack_factors,
    weighted_delta,
)

F64 = torch.float64


def clients(ranks: list[int], d: int = 40, k: int = 30, seed: int = 0) -> list[LoraFactors]:
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraFactors(torch.randn(d, r, generator=gen, dtype=F64), torch.randn(r, k, generator=gen, dtype=F64))
        for r in ranks
    ]


def dense_truth(factors: list[LoraFactors], weights: list[float]) -> torch.Tensor:
    """Σ pᵢ sᵢ BᵢAᵢ the slow, obvious way."""
    return sum(
        (w * f.scale * (f.b @ f.a) for f, w in zip(factors, weights, strict=True)), torch.zeros(1, dtype=F64)
    )


def truncated_svd(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    result: torch.Tensor = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return result


WEIGHTS = [0.5, 0.3, 0.2]


def test_fedavg_of_factors_is_not_the_mean_of_the_updates() -> None:
    factors = clients([4, 4, 4])
    mean_b = sum((w * f.b for f, w in zip(factors, WEIGHTS, strict=True)), torch.zeros(1, dtype=F64))
    mean_a = sum((w * f.a for f, w in zip(factors, WEIGHTS, strict=True)), torch.zeros(1, dtype=F64))
    truth = dense_truth(factors, WEIGHTS)
    error = torch.linalg.norm(mean_b @ mean_a - truth) / torch.linalg.norm(truth)
    assert error > 0.3  # the cross terms Σᵢ≠ⱼ pᵢpⱼ BᵢAⱼ are not small
    stacked = stack_factors(factors, WEIGHTS, dtype=F64)
    assert torch.allclose(stacked.b @ stacked.a, truth, rtol=0, atol=1e-12)


def test_stacking_is_exact_with_mixed_ranks_and_scales() -> None:
    factors = clients([2, 8, 5])
    factors = [LoraFactors(f.b, f.a, scale=16 / f.rank) for f in factors]  # PEFT's alpha / r
    stacked = stack_factors(factors, WEIGHTS, out_scale=2.0, dtype=F64)
    assert stacked.rank == 15 and stacked.scale == 2.0
    assert torch.allclose(stacked.delta(), dense_truth(factors, WEIGHTS), atol=1e-12)
    # float32 stays within float tolerance
    stacked32 = stack_factors(factors, WEIGHTS, out_scale=2.0)
    assert stacked32.b.dtype == torch.float32
    assert torch.allclose(stacked32.delta().to(F64), dense_truth(factors, WEIGHTS), rtol=1e-5, atol=1e-4)
    assert torch.allclose(
        weighted_delta(factors, WEIGHTS, dtype=F64) * 1.0, dense_truth(factors, WEIGHTS), atol=1e-12
    )


@pytest.mark.parametrize(
    ("ranks", "target"), [([4, 4, 4], 4), ([2, 8, 5], 8), ([2, 8, 5], 3), ([1, 1, 1], 2)]
)
def test_refactor_is_the_optimal_truncated_svd(ranks: list[int], target: int) -> None:
    factors = clients(ranks)
    truth = dense_truth(factors, WEIGHTS)
    result = refactor(factors, WEIGHTS, target, dtype=F64)
    assert result.factors.rank == target
    best = truncated_svd(truth, target)
    assert torch.allclose(result.factors.delta(), best, atol=1e-10)
    # Singular values are exactly ΔW's; the residual is the dense truncation error.
    dense_s = torch.linalg.svdvals(truth)
    assert torch.allclose(result.singular_values, dense_s[: result.singular_values.numel()], atol=1e-10)
    expected = float(torch.linalg.norm(truth - best) / torch.linalg.norm(truth))
    assert result.residual == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # A keeps orthonormal rows (live directions even where sigma is zero).
    a = result.factors.a
    assert torch.allclose(a @ a.T, torch.eye(target, dtype=F64), atol=1e-10)


def test_refactor_in_float32_with_out_scale() -> None:
    factors = clients([4, 6, 2])
    truth = dense_truth(factors, WEIGHTS)
    result = refactor(factors, WEIGHTS, 6, out_scale=0.5)
    assert result.factors.b.dtype == torch.float32 and result.factors.scale == 0.5
    got = result.factors.delta().to(F64)
    assert torch.allclose(got, truncated_svd(truth, 6), rtol=1e-4, atol=1e-3)


def test_residual_is_zero_when_the_rank_suffices_and_for_zero_updates() -> None:
    factors = clients([3, 3])
    result = refactor(factors, [0.5, 0.5], 6, dtype=F64)
    assert result.residual == pytest.approx(0.0, abs=1e-12)
    zero = [LoraFactors(torch.zeros(40, 4, dtype=F64), torch.randn(4, 30, dtype=F64))]
    result = refactor(zero, [1.0], 4, dtype=F64)
    assert result.residual == 0.0
    assert float(result.factors.b.abs().sum()) == 0.0
    assert torch.allclose(result.factors.a @ result.factors.a.T, torch.eye(4, dtype=F64), atol=1e-12)
    assert relative_residual(torch.tensor([3.0, 4.0]), 1) == pytest.approx(0.8)


def test_refactor_never_forms_the_dense_matrix() -> None:
    # 200,000 x 200,000 float32 would be 160 GB; the factors are 3 x (200,000 x 2).
    gen = torch.Generator().manual_seed(1)
    d = k = 200_000
    factors = [
        LoraFactors(torch.randn(d, 2, generator=gen), torch.randn(2, k, generator=gen)) for _ in range(3)
    ]
    result = refactor(factors, WEIGHTS, 2)
    assert result.factors.b.shape == (d, 2) and result.factors.a.shape == (2, k)
    assert 0.0 < result.residual < 1.0
    # Check a random entry block against the exact sum.
    rows, cols = torch.arange(0, d, 20_011), torch.arange(0, k, 19_997)
    exact = sum(w * (f.b[rows] @ f.a[:, cols]) for f, w in zip(factors, WEIGHTS, strict=True))
    got = result.factors.b[rows] @ result.factors.a[:, cols]
    assert float(torch.linalg.norm(got - exact) / torch.linalg.norm(exact)) <= result.residual * 1.5 + 1e-5


def test_pairing_by_peft_names() -> None:
    names = [
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.layers.0.self_attn.v_proj.lora_A.default.weight",
        "base_model.model.layers.0.self_attn.v_proj.lora_B.default.weight",
        "base_model.model.lm_head.weight",
    ]
    pairs, others = pair_lora_names(names)
    assert [p.module for p in pairs] == [
        "base_model.model.layers.0.self_attn.q_proj",
        "base_model.model.layers.0.self_attn.v_proj.default",
    ]
    assert pairs[1].a.endswith("lora_A.default.weight") and pairs[1].b.endswith("lora_B.default.weight")
    assert others == ("base_model.model.lm_head.weight",)
    with pytest.raises(LoraFactorError, match="has no lora_B factor"):
        pair_lora_names(names[:1])


def test_aggregate_adapters_with_mixed_client_ranks() -> None:
    gen = torch.Generator().manual_seed(5)
    ranks = [2, 4, 8]

    def adapter(r: int) -> dict[str, torch.Tensor]:
        return {
            "m.q.lora_A.weight": torch.randn(r, 24, generator=gen, dtype=F64),
            "m.q.lora_B.weight": torch.randn(32, r, generator=gen, dtype=F64),
            "m.norm.weight": torch.randn(6, generator=gen, dtype=F64),
        }

    ups = [adapter(r) for r in ranks]
    examples = [100.0, 300.0, 600.0]
    p = [e / sum(examples) for e in examples]
    truth = torch.stack(
        [p[i] * ups[i]["m.q.lora_B.weight"] @ ups[i]["m.q.lora_A.weight"] for i in range(3)]
    ).sum(0)

    exact = aggregate_adapters(ups, examples, mode=LoraMode.STACK, dtype=F64)
    assert exact.tensors["m.q.lora_A.weight"].shape == (14, 24)
    assert torch.allclose(
        exact.tensors["m.q.lora_B.weight"] @ exact.tensors["m.q.lora_A.weight"], truth, atol=1e-12
    )
    assert exact.max_residual == 0.0

    best = aggregate_adapters(ups, examples, dtype=F64)  # rank = the largest client rank, 8
    assert best.tensors["m.q.lora_A.weight"].shape == (8, 24)
    got = best.tensors["m.q.lora_B.weight"] @ best.tensors["m.q.lora_A.weight"]
    assert torch.allclose(got, truncated_svd(truth, 8), atol=1e-10)
    (module,) = best.modules
    assert (module.rank, module.stacked_rank) == (8, 14)
    assert module.residual == pytest.approx(float(torch.linalg.norm(truth - got) / torch.linalg.norm(truth)))
    norm = torch.stack([p[i] * ups[i]["m.norm.weight"] for i in range(3)]).sum(0)
    assert torch.allclose(best.tensors["m.norm.weight"], norm, atol=1e-12)


def test_bad_factors_are_refused() -> None:
    with pytest.raises(LoraFactorError, match="do not chain"):
        LoraFactors(torch.zeros(4, 3), torch.zeros(2, 5))
    with pytest.raises(LoraFactorError, match="2-D"):
        LoraFactors(torch.zeros(4, 3, 1), torch.zeros(3, 5))
    with pytest.raises(LoraFactorError, match="client 1's"):
        stack_factors(
            [
                LoraFactors(torch.zeros(4, 2), torch.zeros(2, 5)),
                LoraFactors(torch.zeros(5, 2), torch.zeros(2, 5)),
            ],
            [0.5, 0.5],
        )
    with pytest.raises(LoraFactorError, match="weights"):
        stack_factors(clients([2]), [math.nan])
    with pytest.raises(LoraFactorError, match="2 weights"):
        refactor(clients([2]), [0.5, 0.5], 2)
    with pytest.raises(LoraFactorError, match="other tensor names"):
        aggregate_adapters([{"x": torch.zeros(2)}, {"y": torch.zeros(2)}], [1.0, 1.0])
    with pytest.raises(LoraFactorError, match="positive"):
        aggregate_adapters([{"x": torch.zeros(2)}], [0.0])


def test_rank_above_what_the_clients_offer_is_padded_with_live_rows() -> None:
    factors = clients([1, 1], d=12, k=9)
    result = refactor(factors, [0.6, 0.4], 5, dtype=F64)
    b, a = result.factors.b, result.factors.a
    assert b.shape == (12, 5) and a.shape == (5, 9)
    assert float(b[:, 2:].abs().sum()) == 0.0  # nothing to say in the extra directions
    assert torch.allclose(a @ a.T, torch.eye(5, dtype=F64), atol=1e-12)  # but A's rows are live
    assert torch.allclose(b @ a, dense_truth(factors, [0.6, 0.4]), atol=1e-12)
    assert result.residual == 0.0
