"""Shared fixtures: a live aggregator on loopback with the simulated TEE, and small adapters."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aggregator import RoundConfig, RunningAggregator, start_aggregator
from attestation import InsecureSimulatedTeeCollector, Policy, load_builtin_policy
from fedseal.spec import AdapterSpec, WireDtype

ADAPTER_SHAPES = {
    "layers.0.q_proj.lora_A.weight": (8, 64),
    "layers.0.q_proj.lora_B.weight": (64, 8),
    "layers.0.v_proj.lora_A.weight": (8, 64),
    "layers.0.v_proj.lora_B.weight": (64, 8),
}


def make_adapter(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in ADAPTER_SHAPES.items()}


def adapter_spec(dtype: WireDtype = WireDtype.FLOAT32) -> AdapterSpec:
    return AdapterSpec.from_tensors(make_adapter(0), dtype=dtype)


def round_config(round_id: int = 1, **overrides: object) -> RoundConfig:
    fields: dict[str, object] = {
        "round_id": round_id,
        "adapter_spec": adapter_spec(),
        "min_clients": 3,
        "max_clients": 3,
        "deadline_seconds": 30.0,
        "max_chunk_size": 4096,
    }
    fields.update(overrides)
    return RoundConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def dev_policy() -> Policy:
    return load_builtin_policy("dev-insecure-allow-simulated")


@pytest.fixture
def default_policy() -> Policy:
    return load_builtin_policy("default")


@pytest.fixture
def live_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = InsecureSimulatedTeeCollector("fedseal tests")
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/log",
        collectors=[collector],
        listen="127.0.0.1:0",
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)
