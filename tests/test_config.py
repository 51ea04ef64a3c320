"""Round and job configuration: the shipped example loads; bad files get errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import adapter_spec, round_config

from aggregator import ConfigError, JobConfig, RoundConfig
from fedseal.roundconfig import DpParams, DpSamplingRefusedError

ROOT = Path(__file__).resolve().parents[1]


def test_example_job_file_loads() -> None:
    job = JobConfig.from_file(ROOT / "deploy" / "examples" / "job.json")
    assert job.rounds == 3
    assert job.round_config(2).round_id == 2


def test_round_config_round_trips() -> None:
    config = round_config(4)
    assert RoundConfig.from_json_obj(json.loads(config.canonical_bytes())) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_clients": 0}, "min_clients"),
        ({"max_clients": "3"}, "max_clients"),
        ({"strategy": "bulyan"}, "unknown strategy"),
        ({"surprise": 1}, "unknown field"),
        ({"deadline_ms": -5}, "deadline_ms"),
        ({"max_chunk_size": 10**9}, "max_chunk_size"),
    ],
)
def test_bad_round_config_names_the_field(change: dict[str, object], message: str) -> None:
    obj = round_config(1).to_json_obj() | change
    with pytest.raises(ConfigError, match=message):
        RoundConfig.from_json_obj(obj)


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_clients"):
        RoundConfig(1, adapter_spec(), min_clients=5, max_clients=3, deadline_seconds=1)


def test_bad_job_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "job.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        JobConfig.from_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        JobConfig.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize("rate", [0.1, 0.999])
def test_dp_sampling_below_one_is_refused_at_load(tmp_path: Path, rate: float) -> None:
    """Nothing samples clients, so a job that asks the accountant for amplification by
    sampling would record a spend it does not get: the job file is refused by name."""
    job = json.loads((ROOT / "deploy" / "examples" / "job.json").read_text())
    dp = {
        "epsilon": 8.0,
        "delta": 1e-5,
        "clip_norm": 1.0,
        "rounds": 3,
        "initial_adapter_digest": "A" * 43 + "=",
    }
    job["round_template"]["dp"] = dp | {"sampling_rate": 1.0}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    assert JobConfig.from_file(path).round_config(1).dp is not None  # 1 (or absent) is accepted
    job["round_template"]["dp"] = dp | {"sampling_rate": rate}
    path.write_text(json.dumps(job))
    with pytest.raises(DpSamplingRefusedError, match=r"'dp.sampling_rate' = .* nothing samples clients"):
        JobConfig.from_file(path)
    with pytest.raises(DpSamplingRefusedError):
        DpParams(8.0, 1e-5, 1.0, 3, bytes(32), sampling_rate=rate)
