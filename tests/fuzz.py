"""`make fuzz`: run every fuzz target (tests/fuzz_targets.py) long; print inputs per second
and the total per target. CI runs a bounded smoke of the same targets
(tests/test_fuzz_smoke.py).

    python tests/fuzz.py [--seconds N] [TARGET ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz_strategies import mutated
from fuzz_targets import TARGETS, Target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def run_for(target: Target, seconds: float) -> tuple[int, float]:
    """Run `target` in batches of fresh hypothesis runs until `seconds` pass; (inputs, elapsed)."""
    seeds = list(target.seeds())
    count = 0

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=mutated(seeds) | st.binary(max_size=4096))
    def batch(data: bytes) -> None:
        nonlocal count
        count += 1
        target.run(data)

    started = time.monotonic()
    while time.monotonic() - started < seconds:
        batch()
    return count, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default: %(default)s)")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], help="default: all")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    total = 0
    for name in names:
        count, elapsed = run_for(TARGETS[name], args.seconds)
        total += count
        print(f"{name:36} {count:>10} inputs {count / elapsed:>9.0f}/s", flush=True)
    print(f"{'total':36} {total:>10} inputs over {len(names)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
