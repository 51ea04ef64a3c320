"""The benchmark scripts' own correctness (not their timings): a script that measures a
hand-built log must build one the real auditor accepts, or its figures mean nothing; the
ingest benchmark must still run end to end.

benchmarks/bench_log.py writes its large log from templates of the real entry encodings
(to be fast); when the log or signature format moves on, this test fails instead of the
benchmark quietly measuring an invalid log.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fedseal_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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


def test_bench_ingest_runs_end_to_end(tmp_path: Path) -> None:
    """The ingest benchmark's whole path on a tiny workload: real aggregator, clients, bare
    server and Flower in their own processes, so the benchmark cannot rot between the runs
    that produce the README's table. Its figures at this size mean nothing and are not checked
    beyond being measured."""
    out = tmp_path / "ingest.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_ingest.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["n"] == 2 and row["gbps"] > 0 and row["bare_gbps"] > 0
    assert 0 < row["bound_pct"] <= 100 and row["own_work_ms"] > 0
    # The aggregator gets as many tries as the two bare ways together, and the bound uses
    # the least of the own-work measurements.
    assert row["runs_each"] == 2 and row["own_work_ms"] == min(row["own_work_measured_ms"])
    # Time and CPU both come from the aggregator's fastest run, the peak from its worst.
    fastest = min(row["fedseal_runs"], key=lambda r: r["wall_s"])
    assert len(row["fedseal_runs"]) == 2 and len(row["bare_runs"]) == 2
    assert (row["wall_s"], row["agg_cpu_s"]) == (fastest["wall_s"], fastest["agg_cpu_s"])
    assert row["agg_peak_of_limit"] == max(r["agg_peak_of_limit"] for r in row["fedseal_runs"])
    # The own work is measured again while the bare transport streams, and bounds a second ratio.
    assert row["own_work_loaded_ms"] > 0 and row["own_work_loaded_updates"] >= 3
    assert 0 < row["bound_loaded_pct"] <= 100
    assert row["agg_hwm_mb"] > row["agg_idle_mb"] > 0
    # The round's close is counted apart from ingest, from the aggregator's own metric.
    assert row["close_cpu_s"] > 0 and row["agg_cpu_s"] >= 0
    assert row["flower"]["s"] > 0
    assert report["micro"]["hpke_unwrap_us"] > 0 and report["transport_sweep"]
    assert "| r4/32 f32 | 2 |" in result.stdout


def test_bench_noise_smoke_times_both_samplers() -> None:
    """The noise benchmark's whole path on a tiny adapter (its figures at that size mean
    nothing): calibration, the secure sampler and today's float Gaussian both run."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_noise.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "16 tensors, 65,536 float32 coordinates" in result.stdout
    assert "secure (CKS20" in result.stdout and "peer (numpy PCG64" in result.stdout


def test_the_70b_shape_is_the_one_the_readme_describes() -> None:
    # README: 80 layers, hidden 8192, LoRA r16 on q/k/v/o: 83.9 M parameters, 168 MB per
    # bfloat16 update.
    shape = _load("bench_ingest").SHAPE_70B
    assert (shape.layers, shape.hidden, shape.rank, shape.dtype) == (80, 8192, 16, "bfloat16")
    assert shape.params == 83_886_080
    assert round(shape.params * 2 / 1e6) == 168
