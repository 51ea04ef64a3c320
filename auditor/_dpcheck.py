"""The job's DP, re-derived by the auditor from the logged numbers with its own code.

The enclave logs its budget (`dp_budget`) and each DP round's noise and spend
(`round_closed.dp`). The auditor trusts none of the figures: from the budget's parameters
(the round config's `dp`, fedseal/roundconfig.py) and the few numbers the enclave chose
(the noise multiplier, the adapter's size) it recomputes, with dp-accounting's RDP
accountant and its own formulas:

* the mechanism and accountant named are the ones it can check (the discrete Gaussian on
  the grid over the sum of clipped deltas, accounted as zCDP: ½(Δ/sigma)² per round of the
  model noise, 1/(2·sigma_b²) per round of an adaptive clip's count noise);
* the zCDP per round, and that `rounds` rounds of it stay within the budget's (ε, δ);
* per round: the count of DP rounds so far, the cumulative ε, the clip the round had to
  use (the initial one, then each adaptive round's next clip, recomputed from its released
  count as C·exp(-eta·(count/D - target))), the grid step 0.01·C/√d (the logged inflation),
  the noise stddev z·(C + √d·gamma) and the denominator (the round's `max_clients`).

Any difference is an `invalid_dp_spend` finding naming the round and the figure.
What it cannot check from the log: that the noise was drawn (it is in the aggregate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dp_accounting

from fedseal.errors import FormatError
from fedseal.roundconfig import DpParams, RoundConfig

__all__ = ["DpAudit"]

MECHANISM = "discrete-gaussian-cks20-grid-on-sum-of-clipped-deltas"
COUNT_MECHANISM = "discrete-gaussian-cks20-on-unclipped-count"
ACCOUNTANT = "zcdp-rdp-dp_accounting"
_REL = 1e-9  # figures recomputed by the same formula
_REL_ACCOUNTANT = 1e-6  # figures recomputed by the accountant (a numerical optimisation)


@dataclass(frozen=True)
class _Budget:
    params: DpParams
    dimension: int
    inflation: float
    z: float
    count_stddev: float | None

    def rhos(self) -> list[float]:
        rhos = [0.5 / self.z**2]
        if self.count_stddev is not None:
            rhos.append(0.5 / self.count_stddev**2)
        return rhos

    def epsilon(self, rounds: int) -> float:
        if rounds == 0:
            return 0.0
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(
            dp_accounting.ComposedDpEvent(
                [dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(r), rounds) for r in self.rhos()]
            )
        )
        return float(accountant.get_epsilon(self.params.delta))


def _close(a: object, b: float, rel: float = _REL) -> bool:
    return isinstance(a, int | float) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=rel)


def _count(value: object) -> int | None:
    """`value` if it is a JSON integer; None otherwise (`true` is not 1 here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class DpAudit:
    """Follows the job's DP through the log; `problems` are messages for findings."""

    def __init__(self) -> None:
        self.budget: _Budget | None = None
        self.rounds_spent = 0
        self.clip: float | None = None

    def budget_entry(self, obj: Mapping[str, Any]) -> list[str]:
        """The `dp_budget` entry: every figure it states, re-derived."""
        problems: list[str] = []
        try:
            params = DpParams.from_json_obj(obj.get("params"))
        except FormatError as exc:
            return [f"dp_budget: its params are not a DP config: {exc}"]
        if obj.get("mechanism") != MECHANISM or obj.get("accountant") != ACCOUNTANT:
            return [
                f"dp_budget names mechanism {obj.get('mechanism')!r} with accountant "
                f"{obj.get('accountant')!r}; the auditor re-derives {MECHANISM!r} under {ACCOUNTANT!r} only"
            ]
        dimension, inflation, z = obj.get("dimension"), obj.get("grid_inflation"), obj.get("noise_multiplier")
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
            return [f"dp_budget: dimension {dimension!r} is not a positive integer"]
        if not isinstance(inflation, int | float) or isinstance(inflation, bool) or not 0 < inflation <= 1:
            return [f"dp_budget: grid_inflation {inflation!r} is not in (0, 1]"]
        if not isinstance(z, int | float) or isinstance(z, bool) or not math.isfinite(z) or z <= 0:
            return [f"dp_budget: noise_multiplier {z!r} is not a positive number"]
        adaptive = params.adaptive_clip
        count = adaptive.clipped_count_stddev if adaptive is not None else None
        if obj.get("count_noise_stddev") != count or (count is not None) != (
            obj.get("count_mechanism") == COUNT_MECHANISM
        ):
            problems.append(
                f"dp_budget: count noise {obj.get('count_noise_stddev')!r} ({obj.get('count_mechanism')!r}) "
                f"is not the adaptive clip's clipped_count_stddev {count!r}"
            )
        budget = _Budget(params, dimension, float(inflation), float(z), count)
        if not _close(obj.get("zcdp_rho_per_round"), sum(budget.rhos())):
            problems.append(
                f"dp_budget: zcdp_rho_per_round {obj.get('zcdp_rho_per_round')!r} is not "
                f"{sum(budget.rhos())!r} (1/(2z²) per round, plus 1/(2·sigma_b²) with an adaptive clip)"
            )
        planned = budget.epsilon(params.rounds)
        if planned > params.epsilon * (1 + _REL_ACCOUNTANT):
            problems.append(
                f"dp_budget: {params.rounds} round(s) at noise multiplier {z!r} spend epsilon={planned:.6g}, "
                f"more than the budget's {params.epsilon:g}"
            )
        if not _close(obj.get("epsilon_planned"), planned, _REL_ACCOUNTANT):
            problems.append(f"dp_budget: epsilon_planned {obj.get('epsilon_planned')!r} is not {planned!r}")
        if obj.get("denominator") != "max_clients":
            problems.append(f"dp_budget: denominator {obj.get('denominator')!r} is not 'max_clients'")
        self.budget = budget
        self.clip = params.clip_norm
        return problems

    def round_opened(self, config: RoundConfig) -> list[str]:
        if config.dp is None:
            return []
        if self.budget is None:
            return [f"DP round {config.round_id} opened with no dp_budget entry before it"]
        if config.dp != self.budget.params:
            return [f"DP round {config.round_id}'s dp section is not the job's budget (dp_budget)"]
        return []

    def round_closed(self, config: RoundConfig, spend: Mapping[str, Any], participants: int) -> list[str]:
        """A DP round's `round_closed.dp`: every figure, recomputed."""
        budget, rid = self.budget, config.round_id
        if budget is None or config.dp is None:
            return [f"round {rid} records a DP spend without a DP budget and config"]
        where = f"round {rid}'s DP spend"
        problems = []
        self.rounds_spent += 1
        t = self.rounds_spent
        if _count(spend.get("rounds_spent")) != t:
            problems.append(f"{where}: rounds_spent {spend.get('rounds_spent')!r}, but it is DP round {t}")
        if t > budget.params.rounds:
            problems.append(f"{where}: DP round {t} of a budget of {budget.params.rounds} round(s)")
        spent = budget.epsilon(t)
        if not _close(spend.get("epsilon_spent"), spent, _REL_ACCOUNTANT):
            problems.append(f"{where}: epsilon_spent {spend.get('epsilon_spent')!r}, recomputed {spent!r}")
        for key, expected in (
            ("epsilon_budget", budget.params.epsilon),
            ("delta", budget.params.delta),
            ("noise_multiplier", budget.z),
        ):
            if not _close(spend.get(key), expected):
                problems.append(f"{where}: {key} {spend.get(key)!r} is not the budget's {expected!r}")
        if _count(spend.get("denominator")) != config.max_clients:
            problems.append(
                f"{where}: denominator {spend.get('denominator')!r} is not the round's max_clients "
                f"{config.max_clients}"
            )
        updates, clipped = _count(spend.get("updates")), _count(spend.get("clipped"))
        if updates != participants or clipped is None or not 0 <= clipped <= participants:
            problems.append(
                f"{where}: updates {spend.get('updates')!r} / clipped {spend.get('clipped')!r} "
                f"for {participants} participant(s)"
            )
        clip = self.clip
        assert clip is not None
        if not _close(spend.get("clip_norm"), clip):
            problems.append(
                f"{where}: clip_norm {spend.get('clip_norm')!r}, but the round had to use {clip!r}"
            )
        gamma = budget.inflation * clip / math.sqrt(budget.dimension)
        if not _close(spend.get("grid_step"), gamma):
            problems.append(f"{where}: grid_step {spend.get('grid_step')!r}, recomputed {gamma!r}")
        stddev = budget.z * (clip + math.sqrt(budget.dimension) * gamma)
        if not _close(spend.get("noise_stddev"), stddev):
            problems.append(f"{where}: noise_stddev {spend.get('noise_stddev')!r}, recomputed {stddev!r}")
        adaptive = budget.params.adaptive_clip
        if adaptive is not None:
            count = _count(spend.get("noised_unclipped_count"))
            if count is None:
                problems.append(f"{where}: an adaptive clip round without its noised_unclipped_count")
            else:
                fraction = count / config.max_clients
                following = clip * math.exp(-adaptive.learning_rate * (fraction - adaptive.target_quantile))
                following = min(max(following, 1e-9), 1e6)
                if not _close(spend.get("next_clip_norm"), following):
                    problems.append(
                        f"{where}: next_clip_norm {spend.get('next_clip_norm')!r}, recomputed {following!r}"
                    )
                self.clip = following
        elif "next_clip_norm" in spend or "noised_unclipped_count" in spend:
            problems.append(f"{where}: a fixed-clip round records an adaptive clip's figures")
        return problems
