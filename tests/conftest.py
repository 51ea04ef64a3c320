"""Shared fixtures: a live aggregator on loopback with the simulated TEE, and small adapters.

The live aggregator enrols every site id in `identities.TEST_SITES` (keys derived from the
names) and the test operator and approver; `site_client` opens a client as one of them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from identities import enrolment, principal_identity, principals, site_identity

from aggregator import AccessConfig, AccessLimits, RoundConfig, RunningAggregator, start_aggregator
from attestation import InsecureSimulatedTeeCollector, Policy, load_builtin_policy
from client_sdk import FedSealClient, Receipt
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


def access_config(limits: AccessLimits | None = None) -> AccessConfig:
    """Every test site enrolled (keys only), the test operator and approver as principals."""
    return AccessConfig(enrolment(), principals(), limits=limits or AccessLimits())


def simulated_collector(label: str = "fedseal tests") -> InsecureSimulatedTeeCollector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsecureSimulatedTeeCollector(label)


def site_client(endpoint: str, policy: Policy, site: str, **options: object) -> FedSealClient:
    """A client for `endpoint` as the enrolled test site `site`."""
    return FedSealClient(endpoint, policy, identity=site_identity(site), **options)  # type: ignore[arg-type]


def submit_as(
    endpoint: str,
    policy: Policy,
    site: str,
    adapter: Any,
    *,
    receipts: Path | None = None,
    **options: Any,
) -> Receipt:
    """Submit `adapter` as the enrolled test site `site` (its own client, its own key)."""
    with site_client(endpoint, policy, site, timeout=20, receipts=receipts) as client:
        return client.submit_update(adapter, **options)


def operator_client(endpoint: str, policy: Policy, name: str = "olivia-operator") -> FedSealClient:
    return FedSealClient(endpoint, policy, identity=principal_identity(name), timeout=20)


def start_test_aggregator(
    tmp_path: Path, access: AccessConfig | None = None, **options: Any
) -> RunningAggregator:
    """An aggregator on loopback with the simulated collector, its log in `tmp_path`,
    every test site enrolled unless `access` says otherwise; `options` go to start_aggregator."""
    options.setdefault("listen", "127.0.0.1:0")
    return start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/log",
        collectors=[simulated_collector()],
        access=access if access is not None else access_config(),
        **options,
    )


@contextlib.contextmanager
def serving_aggregator(tmp_path: Path, **options: Any) -> Iterator[RunningAggregator]:
    """start_test_aggregator's aggregator, stopped on the way out."""
    running = start_test_aggregator(tmp_path, **options)
    try:
        yield running
    finally:
        running.stop(grace=0.5)


@pytest.fixture
def live_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    with serving_aggregator(tmp_path) as running:
        yield running
