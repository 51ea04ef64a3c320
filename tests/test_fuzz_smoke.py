"""A bounded smoke of every fuzz target (tests/fuzz_targets.py) from its real seeds; `make
fuzz` runs the same targets long. Each seed must also pass its target unchanged."""

from __future__ import annotations

import pytest
from fuzz_strategies import mutated
from fuzz_targets import TARGETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SMOKE_EXAMPLES = 150


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_smoke(name: str) -> None:
    target = TARGETS[name]
    seeds = list(target.seeds())
    assert seeds, f"{name} has no seed inputs"
    for seed in seeds:
        target.run(seed)

    @settings(
        max_examples=SMOKE_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # CI is reproducible; `make fuzz` explores
        suppress_health_check=list(HealthCheck),
    )
    @given(data=mutated(seeds) | st.binary(max_size=2048))
    def fuzz(data: bytes) -> None:
        target.run(data)

    fuzz()
