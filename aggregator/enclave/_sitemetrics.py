"""The sites' metrics of one round, aggregated in the enclave (fedseal/sitemetrics.py).

Each accepted update's metrics enter with its weight, the example count its signed header
names; a metric's round value is the example-weighted mean over the updates that reported
it (as Flower's `weighted_average`). Only the means leave: `round_closed.metrics["client"]`
and the signed aggregate manifest; a single site's values are never logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["SiteMetricsAccumulator"]


class SiteMetricsAccumulator:
    """Σ wᵢxᵢ and Σ wᵢ per metric name; `means()` divides (exactly rounded sums: math.fsum)."""

    def __init__(self) -> None:
        self._terms: dict[str, list[float]] = {}
        self._weights: dict[str, list[float]] = {}
        self.reports = 0  # updates that carried at least one metric

    def add(self, metrics: Mapping[str, float], weight: int) -> None:
        if weight <= 0:
            raise ValueError("a site metric's weight (its example count) must be positive")
        if metrics:
            self.reports += 1
        for name, value in metrics.items():
            self._terms.setdefault(name, []).append(weight * value)
            self._weights.setdefault(name, []).append(float(weight))

    def means(self) -> dict[str, float]:
        """Each metric's example-weighted mean, by name (sorted)."""
        return {
            name: math.fsum(self._terms[name]) / math.fsum(self._weights[name])
            for name in sorted(self._terms)
        }
