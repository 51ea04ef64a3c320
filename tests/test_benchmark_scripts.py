"""The benchmark scripts' own correctness (not their timings): a script that measures a
hand-built log must build one the real auditor accepts, or its figures mean nothing.

benchmarks/bench_log.py writes its large log from templates of the real entry encodings
(to be fast); when the log or signature format moves on, this test fails instead of the
benchmark quietly measuring an invalid log.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fedseal_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_log_builds_a_log_the_auditor_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_log = _load("bench_log")
    # main() audits the generated log and asserts there is no finding.
    assert bench_log.main(["--skip-appends", "--entries", "600", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "600-entry log" in out and "checkpoints verified" in out
