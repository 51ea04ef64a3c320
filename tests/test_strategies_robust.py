"""Robustness: f of n clients send scaled or sign-flipped updates (and claim 10x the examples).

Setting (deterministic seeds): n = 10 clients, f = 3 Byzantine at accept positions 2, 5, 9.
Honest update i is h_i = mu + 0.1 * z_i with mu, z_i ~ N(0, I), d = 2,048 parameters.
Attacks: "scaled" sends 100 * h_i, "sign-flipped" sends -h_i, "colluding" has two send
50 * mu and the last send the centroid of the nine others; each attacker claims 1,000
examples against the honest 100. f < n/2 (median), f <= floor(beta * n) = 3 (trimmed mean,
beta 0.3) and n >= 2f + 3 = 9 (Krum's bound).

Stated bounds, checked exactly (no tolerance beyond float32 rounding):
* median and trimmed mean: every coordinate of the aggregate lies within the honest
  updates' range at that coordinate (Yin et al. 2018: with f < n/2, resp. f <= trimmed
  count, the order statistic used is bracketed by honest values). Hence
  ||agg - mean_h|| <= R_coord := || max_i |h_i - mean_h| (coordinate-wise) ||.
* Krum and Multi-Krum: only honest updates are selected, so
  ||agg - mean_h|| <= R_honest := max_i ||h_i - mean_h||.
* FedAvg, same inputs: ||avg - mean_h|| > 5 * max(R_coord, R_honest).
"""

from __future__ import annotations

import pytest
import torch

from aggregator.enclave.strategies import Krum, make_strategy
from fedseal.roundconfig import KrumParams, MultiKrumParams, StrategyParams, TrimmedMeanParams
from fedseal.spec import AdapterSpec

SHAPES = {"m.lora_A.weight": (8, 128), "m.lora_B.weight": (128, 8)}
N, BYZANTINE = 10, (2, 5, 9)
HONEST = tuple(i for i in range(N) if i not in BYZANTINE)


def flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([update[k].reshape(-1) for k in SHAPES]).to(torch.float64)


def scenario(attack: str) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    gen = torch.Generator().manual_seed(2024)
    mu = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}
    honest = [{k: mu[k] + 0.1 * torch.randn(s, generator=gen) for k, s in SHAPES.items()} for _ in range(N)]
    updates: list[dict[str, torch.Tensor]] = []
    counts: list[int] = []
    for i in range(N):
        if i in BYZANTINE and attack == "colluding":
            # Two send one far point; the last sends the centroid of all the others, which
            # is what a score over every other update (not Krum's n - f - 2 closest) picks.
            if i == BYZANTINE[-1]:
                updates.append({k: torch.stack([u[k] for u in updates]).mean(0) for k in SHAPES})
            else:
                updates.append({k: 50.0 * v for k, v in mu.items()})
            counts.append(1000)
        elif i in BYZANTINE:
            factor = 100.0 if attack == "scaled" else -1.0
            updates.append({k: factor * v for k, v in honest[i].items()})
            counts.append(1000)
        else:
            updates.append(honest[i])
            counts.append(100)
    return updates, counts


def aggregate(name: str, params: StrategyParams | None, attack: str) -> tuple[torch.Tensor, object]:
    updates, counts = scenario(attack)
    spec = AdapterSpec.from_tensors(updates[0])
    strategy = make_strategy(name, spec, params, piece_elements=512)
    for update, count in zip(updates, counts, strict=True):
        strategy.accumulate(update, count)
    return flat(strategy.finalize()), strategy


def honest_stats(attack: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    updates, _ = scenario(attack)
    honest = torch.stack([flat(updates[i]) for i in HONEST])
    mean = honest.mean(0)
    lo, hi = honest.min(0).values, honest.max(0).values
    r_coord = float(torch.maximum(hi - mean, mean - lo).norm())
    r_honest = float(max((h - mean).norm() for h in honest))
    return mean, lo, hi, r_coord, r_honest


ATTACKS = ["scaled", "sign-flipped", "colluding"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_fedavg_is_pulled_away(attack: str) -> None:
    mean, _, _, r_coord, r_honest = honest_stats(attack)
    avg, _ = aggregate("fedavg", None, attack)
    assert float((avg - mean).norm()) > 5 * max(r_coord, r_honest)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize(
    ("name", "params"), [("fedmedian", None), ("trimmed-mean", TrimmedMeanParams(beta=0.3))]
)
def test_coordinate_wise_strategies_stay_in_the_honest_range(
    attack: str, name: str, params: StrategyParams | None
) -> None:
    mean, lo, hi, r_coord, _ = honest_stats(attack)
    agg, _ = aggregate(name, params, attack)
    slack = 1e-6 * (1 + hi.abs())  # float32 rounding of the inputs
    assert bool(((agg >= lo - slack) & (agg <= hi + slack)).all())
    assert float((agg - mean).norm()) <= r_coord * (1 + 1e-6)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize(
    ("name", "params"), [("krum", KrumParams(f=3)), ("multi-krum", MultiKrumParams(f=3, m=5))]
)
def test_krum_selects_only_honest_updates(attack: str, name: str, params: StrategyParams) -> None:
    mean, _, _, _, r_honest = honest_stats(attack)
    agg, strategy = aggregate(name, params, attack)
    assert isinstance(strategy, Krum)
    assert set(strategy.selected) <= set(HONEST)
    assert len(strategy.selected) == (5 if name == "multi-krum" else 1)
    assert float((agg - mean).norm()) <= r_honest * (1 + 1e-6)
