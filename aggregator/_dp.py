"""Central differential privacy: what a job's DP gives, the budget ledger, and its resumption.

Mechanism (aggregator/enclave/_dp.py holds the part that touches values). Per round: every
accepted update's delta against the round's global adapter is clipped to L2 norm C_t; the
sum S of the clipped deltas is rounded to the grid gamma_t·Z with gamma_t = 0.01·C_t/√d (d the
adapter's number of coordinates) and the exact discrete Gaussian of Canonne, Kamath and
Steinke (2020) with stddev sigma_t = z·(C_t + √d·gamma_t) is added, from a ChaCha20 CSPRNG
(aggregator/enclave/_noise.py); the aggregate is global + noised(S)/D with D the round's
`max_clients`, a fixed denominator (the enclave module says why). Neighbouring inputs: one
client's update added, removed, or replaced by a zero delta; either way S moves by at
most C_t, and by C_t + √d·gamma_t after rounding (the sensitivity). Who took part is in
the log: DP covers the values of the aggregate, not membership.

Accounting. The multivariate discrete Gaussian with sensitivity Δ and stddev sigma is
½(Δ/sigma)²-zCDP (CKS20), so a round of the model noise is rho_model = 1/(2z²)-zCDP
whatever C_t is. Adaptive clipping (Andrew et al. 2021) also releases the number of
unclipped updates with discrete Gaussian noise of stddev sigma_b (sensitivity 1): rho_count
= 1/(2·sigma_b²) per round. zCDP composes by addition; dp-accounting's RDP accountant
composes `rounds` rounds of both events and converts to (ε, δ). The job's total z is
calibrated once (`calibrate_secure_noise`) so that `rounds` rounds spend at most (ε, δ);
with adaptive clipping the model's own multiplier is z_model = (z⁻² - sigma_b⁻²)^(-1/2)
(Flower's split), so the two together spend what z alone would. No amplification by
sampling is claimed (`DpParams` refuses a sampling rate below 1).

The ledger. The job's budget is logged in a `dp_budget` entry when its first DP round
opens; each closed DP round's `round_closed.dp` records the clip, noise and grid it used,
its cumulative spend and (adaptive) the released count and the next clip; a round over
the budget is refused and logged (`dp_round_refused`). A restarted enclave reads both
back from the log (`DpLedger.resume`, fed by the resume scanner in aggregator/_log.py):
the spend never resets, and a round over the budget is still refused. The auditor
re-derives every logged figure with its own code (auditor/_release.py).

This module holds metadata only (budget, spend, calibration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting

from aggregator.enclave._dp import DpNoisePlan
from aggregator.enclave._noise import (
    NoiseParameterError,
    calibrate_secure_noise,
    grid_step,
    quantised_sensitivity,
)
from fedseal.errors import FedSealError, FormatError
from fedseal.roundconfig import DpParams, RoundConfig

__all__ = [
    "ACCOUNTANT",
    "COUNT_MECHANISM",
    "GRID_INFLATION",
    "MECHANISM",
    "DpBudget",
    "DpBudgetExhaustedError",
    "DpError",
    "DpLedger",
    "DpMismatchError",
    "DpSpend",
    "epsilon_after",
]

MECHANISM = "discrete-gaussian-cks20-grid-on-sum-of-clipped-deltas"
COUNT_MECHANISM = "discrete-gaussian-cks20-on-unclipped-count"
ACCOUNTANT = "zcdp-rdp-dp_accounting"
# The grid's worst-case rounding adds this fraction of C to the sensitivity.
GRID_INFLATION = 0.01
# Relative slack between a logged float and the value recomputed from the same numbers.
_SLACK = 1e-9


class DpError(FedSealError):
    """A DP round cannot run as configured (message says why)."""


class DpBudgetExhaustedError(DpError):
    """The round would spend more than the job's DP budget; refused."""


class DpMismatchError(DpError):
    """The round's DP parameters or initial adapter differ from the job's budget."""


def _rho_events(rho_per_round: Sequence[float], rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(rho), rounds) for rho in rho_per_round]
    )


def epsilon_after(budget: DpBudget, rounds: int) -> float:
    """ε (at the job's δ) spent by `rounds` rounds: every zCDP event of each, composed by
    dp-accounting's RDP accountant."""
    if rounds == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(_rho_events(budget.rho_per_round, rounds))
    return float(accountant.get_epsilon(budget.params.delta))


@dataclass(frozen=True)
class DpBudget:
    """The job's budget as the `dp_budget` entry records it."""

    params: DpParams
    dimension: int  # d: coordinates of the adapter
    noise_multiplier: float  # z_model = sigma_t / (C_t + √d·gamma_t), every round

    @property
    def count_noise_stddev(self) -> float | None:
        adaptive = self.params.adaptive_clip
        return adaptive.clipped_count_stddev if adaptive is not None else None

    @property
    def rho_per_round(self) -> tuple[float, ...]:
        """zCDP of one round: the model noise, then (adaptive clipping) the count's."""
        rhos = [0.5 / self.noise_multiplier**2]
        if self.count_noise_stddev is not None:
            rhos.append(0.5 / self.count_noise_stddev**2)
        return tuple(rhos)

    @classmethod
    def calibrate(cls, params: DpParams, dimension: int) -> DpBudget:
        try:
            calibration = calibrate_secure_noise(
                params,
                dimension=dimension,
                gamma=grid_step(params.clip_norm, dimension, inflation=GRID_INFLATION),
            )
        except NoiseParameterError as exc:
            raise DpError(str(exc)) from None
        total = calibration.noise_multiplier
        count = params.adaptive_clip.clipped_count_stddev if params.adaptive_clip is not None else None
        if count is None:
            return cls(params, dimension, total)
        if count <= total:
            raise DpError(
                f"dp.clip.clipped_count_stddev = {count:g} must exceed the job's total noise multiplier "
                f"{total:.4g}: the count's noise alone would spend the budget (raise it, e.g. to "
                "max_clients / 20 as Flower does, or the budget)"
            )
        return cls(params, dimension, (total**-2 - count**-2) ** -0.5)

    def plan(self, clip_norm: float, denominator: int) -> DpNoisePlan:
        """The noise of a round at clip C_t with `denominator` (its max_clients)."""
        gamma = grid_step(clip_norm, self.dimension, inflation=GRID_INFLATION)
        sensitivity = quantised_sensitivity(clip_norm, self.dimension, gamma)
        return DpNoisePlan(
            clip_norm=clip_norm,
            noise_stddev=self.noise_multiplier * sensitivity,
            grid_step=gamma,
            denominator=denominator,
            count_noise_stddev=self.count_noise_stddev,
        )

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "params": self.params.to_json_obj(),
            "mechanism": MECHANISM,
            "accountant": ACCOUNTANT,
            "dimension": self.dimension,
            "grid_inflation": GRID_INFLATION,
            "noise_multiplier": self.noise_multiplier,
            "zcdp_rho_per_round": sum(self.rho_per_round),
            "epsilon_planned": epsilon_after(self, self.params.rounds),
            "denominator": "max_clients",
        }
        if self.count_noise_stddev is not None:
            obj["count_mechanism"] = COUNT_MECHANISM
            obj["count_noise_stddev"] = self.count_noise_stddev
        return obj

    @classmethod
    def from_logged(cls, obj: Mapping[str, Any]) -> DpBudget:
        """The budget a `dp_budget` entry records; DpError if it is not one this enclave
        would write, or if its noise does not keep the job within its (ε, δ)."""
        try:
            params = DpParams.from_json_obj(obj["params"])
            budget = cls(params, int(obj["dimension"]), float(obj["noise_multiplier"]))
        except (FormatError, KeyError, TypeError, ValueError) as exc:
            raise DpError(f"the log's dp_budget entry cannot be read back: {exc}") from None
        if budget.to_json_obj() != dict(obj):
            raise DpError(
                "the log's dp_budget entry is not one this enclave writes (another mechanism or "
                "accountant, or figures that do not follow from its parameters)"
            )
        if epsilon_after(budget, params.rounds) > params.epsilon * (1 + 1e-6):
            raise DpError("the log's dp_budget noise would exceed its own epsilon")
        return budget


@dataclass(frozen=True)
class DpSpend:
    """What one closed round spent and ran with, recorded in its `round_closed` entry."""

    rounds_spent: int  # including this round
    epsilon_spent: float  # cumulative, at the budget's delta
    clipped: int  # updates whose delta was scaled down
    updates: int
    plan: DpNoisePlan
    noised_unclipped_count: int | None  # adaptive clipping: the released count
    next_clip_norm: float | None  # adaptive clipping: C_{t+1}

    def to_json_obj(self, budget: DpBudget) -> dict[str, Any]:
        plan = self.plan
        obj: dict[str, Any] = {
            "rounds_spent": self.rounds_spent,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_budget": budget.params.epsilon,
            "delta": budget.params.delta,
            "clipped": self.clipped,
            "updates": self.updates,
            "clip_norm": plan.clip_norm,
            "grid_step": plan.grid_step,
            "noise_multiplier": budget.noise_multiplier,
            "noise_stddev": plan.noise_stddev,
            "denominator": plan.denominator,
        }
        if self.noised_unclipped_count is not None:
            obj["noised_unclipped_count"] = self.noised_unclipped_count
            obj["next_clip_norm"] = self.next_clip_norm
        return obj


def next_clip(budget: DpBudget, clip_norm: float, noised_unclipped: int, denominator: int) -> float:
    """Andrew et al. 2021's geometric update: C·exp(-eta·(b̃ - target)), b̃ the noised
    unclipped fraction; kept within the range a `clip_norm` may have."""
    adaptive = budget.params.adaptive_clip
    assert adaptive is not None
    fraction = noised_unclipped / denominator
    value = clip_norm * math.exp(-adaptive.learning_rate * (fraction - adaptive.target_quantile))
    return min(max(value, 1e-9), 1e6)


class DpLedger:
    """The job's DP budget and how much of it closed rounds spent. Enclave memory, rebuilt
    from the log on a restart."""

    def __init__(self, budget: DpBudget, rounds_spent: int = 0, clip_norm: float | None = None) -> None:
        self.budget = budget
        self.rounds_spent = rounds_spent
        self.clip_norm = clip_norm if clip_norm is not None else budget.params.clip_norm

    @classmethod
    def start(cls, params: DpParams, dimension: int) -> DpLedger:
        return cls(DpBudget.calibrate(params, dimension))

    @classmethod
    def resume(cls, budget_obj: Mapping[str, Any], spends: Sequence[Mapping[str, Any]]) -> DpLedger:
        """The ledger an earlier enclave left in the log: its `dp_budget` entry and the `dp`
        record of every DP round closed since, in log order. DpError if they do not chain."""
        budget = DpBudget.from_logged(budget_obj)
        ledger = cls(budget)
        for n, spend in enumerate(spends, start=1):
            if spend.get("rounds_spent") != n:
                raise DpError(
                    f"the log's DP round {n} records rounds_spent={spend.get('rounds_spent')!r}; "
                    "the spend does not chain"
                )
            clip = spend.get("clip_norm")
            if not isinstance(clip, float | int) or not math.isclose(clip, ledger.clip_norm, rel_tol=_SLACK):
                raise DpError(f"the log's DP round {n} used clip {clip!r}, not {ledger.clip_norm!r}")
            if budget.params.adaptive_clip is not None:
                following = spend.get("next_clip_norm")
                if not isinstance(following, float | int) or not 0 < following <= 1e6:
                    raise DpError(f"the log's DP round {n} records no valid next_clip_norm")
                ledger.clip_norm = float(following)
            ledger.rounds_spent = n
        return ledger

    def check_round(self, params: DpParams, dimension: int) -> None:
        """Refuse a round whose DP section is not the job's, or that would exceed the budget."""
        if params != self.budget.params or dimension != self.budget.dimension:
            raise DpMismatchError(
                "the round's 'dp' section (or its adapter's size) differs from the job's DP budget "
                "(recorded in the dp_budget entry); a job has one budget"
            )
        if self.rounds_spent >= params.rounds:
            raise DpBudgetExhaustedError(
                f"the job's DP budget (epsilon={params.epsilon:g}, delta={params.delta:g}) covers "
                f"{params.rounds} round(s), all spent"
            )

    def plan(self, config: RoundConfig) -> DpNoisePlan:
        """The noise of the round `config` opens (after `check_round`)."""
        return self.budget.plan(self.clip_norm, config.max_clients)

    def charge(
        self, plan: DpNoisePlan, *, clipped: int, updates: int, noised_unclipped: int | None
    ) -> DpSpend:
        """Count one closed round; its cumulative ε comes from the accountant."""
        self.check_round(self.budget.params, self.budget.dimension)
        following = None
        if self.budget.params.adaptive_clip is not None:
            if noised_unclipped is None:
                raise DpError("an adaptive-clip round closed without its released count")
            following = next_clip(self.budget, plan.clip_norm, noised_unclipped, plan.denominator)
        self.rounds_spent += 1
        if following is not None:
            self.clip_norm = following
        spent = epsilon_after(self.budget, self.rounds_spent)
        return DpSpend(self.rounds_spent, spent, clipped, updates, plan, noised_unclipped, following)
